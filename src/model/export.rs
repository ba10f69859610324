//! What an export is: its status, the row as stored, its options as stored, its checkpoint
//! and its runs.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use uuid::Uuid;

use crate::{error::Result, model::ExportSpec};

/// Where an export is in its life: `queued` → `running` → `completed` | `failed` |
/// `cancelled`; `completed` → `expired` when its file is deleted (retention, or DELETE).
// Moves one way only (a database trigger enforces it). Also the API's enum (as `StatusName`,
// the name the published spec has always used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, poem_openapi::Enum)]
#[serde(rename_all = "lowercase")]
#[oai(rename = "StatusName", rename_all = "lowercase")]
pub enum ExportStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    /// Completed, then its file was deleted (retention ran out, or its owner deleted it).
    Expired,
}

impl ExportStatus {
    /// The name stored in the database and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportStatus::Queued => "queued",
            ExportStatus::Running => "running",
            ExportStatus::Completed => "completed",
            ExportStatus::Failed => "failed",
            ExportStatus::Cancelled => "cancelled",
            ExportStatus::Expired => "expired",
        }
    }

    /// True once the export will never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, ExportStatus::Completed | ExportStatus::Failed | ExportStatus::Cancelled | ExportStatus::Expired)
    }
}

impl TryFrom<String> for ExportStatus {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Ok(match s.as_str() {
            "queued" => ExportStatus::Queued,
            "running" => ExportStatus::Running,
            "completed" => ExportStatus::Completed,
            "failed" => ExportStatus::Failed,
            "cancelled" => ExportStatus::Cancelled,
            "expired" => ExportStatus::Expired,
            _ => return Err(format!("unknown export status {s:?}")),
        })
    }
}

/// An export as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExportRecord {
    pub id: Uuid,
    pub dataset: String,
    pub spec: StoredSpec,
    #[sqlx(try_from = "String")]
    pub status: ExportStatus,
    pub upper_bound_id: Option<i64>,
    pub owner: Option<Uuid>,
    pub last_processed_id: Option<i64>,
    pub rows_written: i64,
    pub bytes_written: i64,
    pub file_name: Option<String>,
    pub total_rows: Option<i64>,
    pub attempts: i32,
    pub stalled_attempts: i32,
    pub last_error: Option<String>,
    pub error: Option<String>,
    /// The queue job (`apalis.jobs.id`) that carries the export to a worker.
    pub queue_job_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The run (token) that wrote the checkpointed bytes of `file_name`.
    pub file_writer: Option<Uuid>,
    /// The run that last released the export cleanly (its writes finished); None once claimed.
    pub released_by: Option<Uuid>,
}

/// An export's options as stored, read leniently: a row written by another version (a field or
/// value this one does not know) is still listed and shown as stored, and only a run, which
/// needs them, fails (a bounded number of times; see [`claim_export`]).
#[derive(Debug, Clone)]
pub struct StoredSpec {
    /// The JSON as stored.
    pub raw: serde_json::Value,
    /// The options, or why this version cannot read them.
    read: std::result::Result<ExportSpec, String>,
}

impl StoredSpec {
    /// The options, or an error naming why this version cannot read them.
    pub fn get(&self) -> Result<&ExportSpec> {
        self.read.as_ref().map_err(|e| {
            crate::error::Error::Other(anyhow::anyhow!(
                "the export's stored options cannot be read by this version of exportd ({}): {e}",
                env!("CARGO_PKG_VERSION")
            ))
        })
    }
}

impl sqlx::Type<sqlx::Postgres> for StoredSpec {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <Json<serde_json::Value> as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <Json<serde_json::Value> as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for StoredSpec {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> std::result::Result<Self, sqlx::error::BoxDynError> {
        let Json(raw) = <Json<serde_json::Value> as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        let read = <ExportSpec as serde::Deserialize>::deserialize(&raw).map_err(|e| e.to_string());
        Ok(Self { raw, read })
    }
}

/// One run (attempt) of an export, from `export_runs`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunRecord {
    pub token: Uuid,
    pub attempt: i32,
    pub worker: String,
    pub start_id: Option<i64>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub error: Option<String>,
}

/// Where a run has got to: everything up to `last_id` is in `file_name`, `bytes` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub last_id: Option<i64>,
    pub rows: i64,
    pub bytes: i64,
    pub file_name: String,
}
