//! What an export is: its status, the row as stored, its options as stored, its checkpoint
//! and its runs.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use uuid::Uuid;

use crate::{
    error::Result,
    model::{ExportSpec, Key},
};

/// Where an export is in its life: `queued` → `running` → `completed` | `failed` |
/// `cancelled`; `completed` → `expired` when its file is deleted (retention, or DELETE).
// Moves one way only (a database trigger enforces it). Also the API's enum (as `StatusName`,
// the name the published spec has always used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, poem_openapi::Enum)]
#[serde(rename_all = "lowercase")]
#[oai(rename = "StatusName", rename_all = "lowercase")]
pub enum ExportStatus {
    /// Waiting for a worker.
    Queued,
    /// A run owns it (or it waits between runs).
    Running,
    /// Its file is complete and can be downloaded.
    Completed,
    /// Gave up: too many runs in a row without progress (see `error`).
    Failed,
    /// Cancelled by a client before it completed.
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
    /// The export's id (the API's `jobId`).
    pub id: Uuid,
    /// The dataset's name.
    pub dataset: String,
    /// Its options as stored.
    pub spec: StoredSpec,
    #[sqlx(try_from = "String")]
    /// Where it is in its life.
    pub status: ExportStatus,
    /// The largest key when it was created: the export stops there (None: the table was empty).
    pub upper_bound_key: Option<Key>,
    /// The token of the run that owns it now (the fencing token), if any.
    pub owner: Option<Uuid>,
    /// Key of the last row checkpointed; the next run resumes after it.
    pub last_processed_key: Option<Key>,
    /// Data rows checkpointed.
    pub rows_written: i64,
    /// Bytes of `file_name` checkpointed (header and BOM included).
    pub bytes_written: i64,
    /// The file the checkpoint refers to (a name in storage).
    pub file_name: Option<String>,
    /// The planner's estimate of the rows to export, taken at creation.
    pub total_rows: Option<i64>,
    /// Runs started (a run released at shutdown gives its attempt back).
    pub attempts: i32,
    /// Runs in a row without progress; at the bound the export fails.
    pub stalled_attempts: i32,
    /// The last run's error, kept while the export is retried.
    pub last_error: Option<String>,
    /// Why the export failed, once it has.
    pub error: Option<String>,
    /// The queue job (`apalis.jobs.id`) that carries the export to a worker.
    pub queue_job_id: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its first run started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// When its file is deleted (completed exports).
    pub expires_at: Option<DateTime<Utc>>,
    /// The run (token) that wrote the checkpointed bytes of `file_name`.
    pub file_writer: Option<Uuid>,
    /// The run that last released the export cleanly (its writes finished); None once claimed.
    pub released_by: Option<Uuid>,
    /// The owner (API key name) it belongs to; empty for none (seen by admin keys only).
    pub owned_by: String,
    /// Where its end is announced (a webhook), if anywhere.
    pub callback_url: Option<String>,
    /// What the checkpoint recorded of `file_name` besides its length (an object store's upload
    /// and parts; see [`crate::storage::Durable`]).
    pub file_state: Option<sqlx::types::Json<serde_json::Value>>,
    /// Rows the owning run has appended, checkpointed or not (object storage checkpoints a part
    /// at a time); what progress shows when it is ahead of `rows_written`.
    pub rows_read: Option<i64>,
    /// The primary's WAL position when the export was created (`pg_lsn` as text): a read
    /// replica must have replayed this far before a run reads chunks from it.
    pub created_lsn: Option<String>,
}

impl ExportRecord {
    /// Rows exported so far, as progress shows them: checkpointed, or appended by the run.
    pub fn progress_rows(&self) -> i64 {
        self.rows_read.map_or(self.rows_written, |r| r.max(self.rows_written))
    }

    /// A completed parallel export's file: its key ranges' pieces, in order (None: one file,
    /// `file_name`).
    pub fn pieces(&self) -> Option<Vec<crate::storage::PieceFile>> {
        let pieces = self.file_state.as_ref()?.0.get("pieces")?;
        serde_json::from_value(pieces.clone()).ok()
    }
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
    /// The run's owner token.
    pub token: Uuid,
    /// Which attempt it was (1-based).
    pub attempt: i32,
    /// The worker that ran it (host, process id, slot).
    pub worker: String,
    /// The checkpoint it resumed from (None: from the start).
    pub start_key: Option<Key>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended (None while it runs, or when its process died).
    pub ended_at: Option<DateTime<Utc>>,
    /// `completed`, `released`, `failed`, `lost` or `superseded`.
    pub outcome: Option<String>,
    /// Its error, when it failed.
    pub error: Option<String>,
}

/// Where a run has got to: everything up to `last` is in `file_name`, `bytes` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Key of the last row in the file (None: no row yet).
    pub last: Option<Key>,
    /// Data rows in the file.
    pub rows: i64,
    /// Bytes in the file, all durable.
    pub bytes: i64,
    /// The file, by its name in storage.
    pub file_name: String,
    /// What else the storage needs to find the bytes again (an object store's upload and parts).
    pub file_state: Option<serde_json::Value>,
}

/// One key range of a parallel export (`export_ranges`): the keys in `(lower, upper]` and its
/// own checkpoint, as an export's (see [`Checkpoint`]).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyRange {
    /// Its place in key order (from 0); its piece comes at this place in the file.
    pub position: i32,
    /// Keys above this (None: from the first key).
    pub lower_key: Option<Key>,
    /// Keys up to this.
    pub upper_key: Key,
    /// Key of the last row checkpointed (None: no row yet).
    pub last_processed_key: Option<Key>,
    /// Data rows checkpointed.
    pub rows_written: i64,
    /// Bytes of `file_name` checkpointed.
    pub bytes_written: i64,
    /// The range's piece file (None: nothing written yet).
    pub file_name: Option<String>,
    /// What the checkpoint recorded of `file_name` besides its length (an object store's upload).
    pub file_state: Option<sqlx::types::Json<serde_json::Value>>,
    /// The run (token) that wrote the checkpointed bytes of `file_name`.
    pub file_writer: Option<Uuid>,
    /// Every row of the range is in `file_name`.
    pub done: bool,
}

impl KeyRange {
    /// The range's checkpoint, as the writer continues it.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            last: self.last_processed_key.clone().or_else(|| self.lower_key.clone()),
            rows: self.rows_written,
            bytes: self.bytes_written,
            file_name: self.file_name.clone().unwrap_or_default(),
            file_state: self.file_state.as_ref().map(|s| s.0.clone()),
        }
    }
}
