//! `/api/export`: create an export, follow its progress, download its file.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::Body;
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::Path,
    payload::{Binary, Json},
};
use tokio::io::AsyncReadExt;
use uuid::Uuid;

use crate::{
    api::{ApiTags, AppState, body::OptionalJson, error::ApiError},
    db::exports::ExportRecord,
    error::Error,
    export::{self, ExportSpec, ExportStatus, dataset},
};

/// Export operations.
pub struct ExportApi {
    pub state: Arc<AppState>,
}

/// What to export and how. Every field is optional: `{}` (or no body) exports the whole
/// `orders` dataset with the server's defaults.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateExportRequest {
    /// Dataset to export. Only `orders` exists for now.
    #[oai(default = "default_dataset")]
    pub dataset: String,
    /// Rows read per chunk (100 to 100000; server default 10000). A durable checkpoint follows
    /// every chunk, so a crash loses at most one chunk of work.
    #[oai(validator(minimum(value = "100"), maximum(value = "100000")))]
    pub chunk_size: Option<u32>,
    /// Throttle: read at most this many rows per second (1 to 10000000), to keep the export
    /// gentle on a busy database. Omit for full speed.
    #[oai(validator(minimum(value = "1"), maximum(value = "10000000")))]
    pub max_rows_per_second: Option<u32>,
}

fn default_dataset() -> String {
    dataset::ORDERS.name.to_owned()
}

/// Where an export is in its life: `queued` → `running` → `completed` | `failed` | `cancelled`.
#[derive(Debug, Enum, Clone, Copy)]
#[oai(rename_all = "lowercase")]
pub enum StatusName {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl From<ExportStatus> for StatusName {
    fn from(s: ExportStatus) -> Self {
        match s {
            ExportStatus::Queued => StatusName::Queued,
            ExportStatus::Running => StatusName::Running,
            ExportStatus::Completed => StatusName::Completed,
            ExportStatus::Failed => StatusName::Failed,
            ExportStatus::Cancelled => StatusName::Cancelled,
        }
    }
}

/// The answer to a new export: where to follow it.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ExportCreated {
    /// The export's id.
    pub job_id: Uuid,
    /// Always `queued`: no row has been read yet.
    pub status: StatusName,
    /// Where to poll progress.
    pub status_url: String,
    /// Where the file will be once `status` is `completed`.
    pub download_url: String,
}

/// Progress and outcome of an export.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ExportStatusView {
    pub job_id: Uuid,
    pub status: StatusName,
    /// Data rows in the file so far (checkpointed).
    pub rows_written: i64,
    /// Bytes in the file so far (checkpointed), header included.
    pub bytes_written: i64,
    /// Key of the last row written; the export resumes after it.
    pub last_processed_id: Option<i64>,
    /// The export covers keys up to this one: the largest key when it was created.
    pub upper_bound_id: Option<i64>,
    /// Estimate of the rows to export (planner statistics, no count); may be null.
    pub total_rows: Option<i64>,
    /// 0 to 1; exactly 1 only when completed.
    pub progress: f64,
    /// Runs started so far (a run interrupted by a crash counts; one released at shutdown does not).
    pub attempts: i32,
    /// Why the export failed; null unless `status` is `failed`.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Where to download the file (valid once completed).
    pub download_url: String,
}

/// `POST /api/export`.
#[derive(Debug, ApiResponse)]
pub enum CreateExportResponse {
    /// Accepted: the export is queued and runs in the background. `Location` points at its status.
    #[oai(status = 202)]
    Accepted(Json<ExportCreated>, #[oai(header = "Location")] String),
}

/// `GET /api/export/{id}/status`.
#[derive(Debug, ApiResponse)]
pub enum StatusResponse {
    /// The export's progress.
    #[oai(status = 200)]
    Ok(Json<ExportStatusView>),
}

/// `GET /api/export/{id}/download`.
#[derive(Debug, ApiResponse)]
pub enum DownloadResponse {
    /// The CSV file, streamed from storage.
    #[oai(status = 200, content_type = "text/csv; charset=utf-8")]
    Ok(Binary<Body>, #[oai(header = "Content-Length")] u64, #[oai(header = "Content-Disposition")] String),
}

#[OpenApi(tag = "ApiTags::Exports")]
impl ExportApi {
    /// Start an export
    ///
    /// Creates the export and its queue job, and answers at once, before any row is read.
    #[oai(path = "/api/export", method = "post", operation_id = "createExport")]
    async fn create(&self, body: OptionalJson<CreateExportRequest>) -> Result<CreateExportResponse, ApiError> {
        let req = body.0.unwrap_or_else(|| CreateExportRequest {
            dataset: default_dataset(),
            chunk_size: None,
            max_rows_per_second: None,
        });
        let ds = dataset::find(&req.dataset)
            .ok_or_else(|| Error::BadRequest(format!("dataset: unknown dataset {:?} (known: orders)", req.dataset)))?;
        let spec = ExportSpec {
            chunk_size: req.chunk_size.unwrap_or(self.state.default_chunk_size),
            max_rows_per_second: req.max_rows_per_second,
        };
        let record = export::create_export(&self.state.pool, ds, &spec).await?;
        let status_url = self.state.url(&format!("/api/export/{}/status", record.id));
        Ok(CreateExportResponse::Accepted(
            Json(ExportCreated {
                job_id: record.id,
                status: StatusName::Queued,
                status_url: status_url.clone(),
                download_url: self.state.url(&format!("/api/export/{}/download", record.id)),
            }),
            status_url,
        ))
    }

    /// Export status
    ///
    /// Progress, counts and outcome of an export.
    #[oai(path = "/api/export/:id/status", method = "get", operation_id = "getExportStatus")]
    async fn status(&self, id: Path<Uuid>) -> Result<StatusResponse, ApiError> {
        let record = self.find(id.0).await?;
        Ok(StatusResponse::Ok(Json(self.view(&record))))
    }

    /// Download the file
    ///
    /// Streams the finished CSV from storage. 409 while the export is not completed.
    #[oai(path = "/api/export/:id/download", method = "get", operation_id = "downloadExport")]
    async fn download(&self, id: Path<Uuid>) -> Result<DownloadResponse, ApiError> {
        let record = self.find(id.0).await?;
        let (ExportStatus::Completed, Some(name)) = (record.status, record.file_name.as_deref()) else {
            return Err(Error::Conflict {
                message: format!(
                    "export {} is {}, not completed: there is no file to download yet",
                    record.id,
                    record.status.as_str()
                ),
                status: record.status.as_str().to_owned(),
            }
            .into());
        };
        let len = record.bytes_written as u64;
        let file = self.state.storage.open(name).await.map_err(Error::Io)?;
        // Exactly the checkpointed bytes, read 256 KiB at a time: memory stays flat, and the
        // pieces are large enough for loopback speeds.
        let body = Body::from_bytes_stream(tokio_util::io::ReaderStream::with_capacity(file.take(len), 256 * 1024));
        let filename = format!("{}-{}.csv", record.dataset, record.id);
        Ok(DownloadResponse::Ok(Binary(body), len, format!("attachment; filename=\"{filename}\"")))
    }
}

impl ExportApi {
    async fn find(&self, id: Uuid) -> Result<ExportRecord, Error> {
        crate::db::exports::find_export(&self.state.pool, id).await?.ok_or(Error::NotFound(id))
    }

    fn view(&self, r: &ExportRecord) -> ExportStatusView {
        ExportStatusView {
            job_id: r.id,
            status: r.status.into(),
            rows_written: r.rows_written,
            bytes_written: r.bytes_written,
            last_processed_id: r.last_processed_id,
            upper_bound_id: r.upper_bound_id,
            total_rows: r.total_rows,
            progress: progress(r),
            attempts: r.attempts,
            error: if r.status == ExportStatus::Failed { r.error.clone() } else { None },
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            download_url: self.state.url(&format!("/api/export/{}/download", r.id)),
        }
    }
}

/// 1 when completed; otherwise rows over the estimate, or (without one) position in the key
/// range, capped below 1.
fn progress(r: &ExportRecord) -> f64 {
    match r.status {
        ExportStatus::Completed => return 1.0,
        ExportStatus::Queued => return 0.0,
        _ => {}
    }
    let p = match (r.total_rows, r.last_processed_id, r.upper_bound_id) {
        (Some(total), _, _) if total > 0 => r.rows_written as f64 / total as f64,
        (_, Some(last), Some(upper)) if upper > 0 => last as f64 / upper as f64,
        _ => 0.0,
    };
    p.clamp(0.0, 0.99)
}
