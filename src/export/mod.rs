//! The export engine: what an export is, the keyset chunk loop with fenced checkpoints, and
//! the queue that carries exports to workers.

pub mod csv;
pub mod dataset;
pub mod engine;
pub mod queue;

use serde::{Deserialize, Serialize};

/// The options an export was created with, stored with it so every run uses the same ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportSpec {
    /// Rows per chunk; a durable checkpoint follows each chunk.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: u32,
    /// Throttle: at most this many rows per second (None = as fast as the database gives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows_per_second: Option<u32>,
}

fn default_chunk_size() -> u32 {
    10_000
}

/// Where an export is in its life. Moves one way only (a database trigger enforces it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
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
        }
    }

    /// True once the export will never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, ExportStatus::Completed | ExportStatus::Failed | ExportStatus::Cancelled)
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
            _ => return Err(format!("unknown export status {s:?}")),
        })
    }
}

/// Creates an export and its queue job in one transaction (never one without the other), with
/// the dataset's high-water mark and row estimate taken now. Fast: nothing is read but the
/// key index's last entry and the planner's statistics.
pub async fn create_export(
    pool: &sqlx::PgPool,
    ds: &'static dataset::Dataset,
    spec: &ExportSpec,
) -> crate::error::Result<crate::db::exports::ExportRecord> {
    use crate::db::exports;
    let mut tx = pool.begin().await?;
    let (upper_bound_id, total_rows) = exports::dataset_bounds(&mut tx, ds).await?;
    let job_id = queue::new_job_id();
    let id = uuid::Uuid::new_v4();
    let record = exports::insert_export(
        &mut tx,
        &exports::NewExport { id, dataset: ds, spec, upper_bound_id, total_rows, job_id: &job_id },
    )
    .await?;
    queue::enqueue(&mut tx, &job_id, id).await.map_err(|e| anyhow::anyhow!(e).context("enqueueing the export job"))?;
    tx.commit().await?;
    queue::wake_workers(pool, &job_id).await;
    Ok(record)
}
