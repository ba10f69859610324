//! `/api/export` and `/api/exports`: create, follow, list and cancel exports.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Header, Path, Query},
    payload::{EventStream, Json},
};
use uuid::Uuid;

use crate::{
    api::{
        ApiTags, AppState,
        auth::Caller,
        body::OptionalJson,
        error::{Fails, declare::*},
        request::CreateExportRequest,
    },
    db,
    error::Error,
    export::{self, Created},
    model::{ExportRecord, ExportStatus, Key},
};

/// Export operations.
pub struct ExportApi {
    /// Shared state: pool, waker, datasets.
    pub state: Arc<AppState>,
}

/// The answer to a new export: where to follow it. `status` is `queued` for a new export (no
/// row has been read yet); for a repeated idempotent request, the export's status now.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ExportCreated {
    /// The export's id (the name `jobId` is kept for existing clients; it is not the id of
    /// the internal queue job).
    pub job_id: Uuid,
    // Described on the struct: a doc comment here would make poem-openapi wrap the `$ref` in
    // an `allOf` that generators (openapi-python-client) refuse.
    #[allow(missing_docs)]
    pub status: ExportStatus,
    /// Where to poll progress.
    pub status_url: String,
    /// Where the file will be once `status` is `completed`.
    pub download_url: String,
}

/// Progress and outcome of an export: `status` says where it is in its life; `options` are
/// the options it runs with, after defaults, as a request body (posted to `POST /api/export`
/// they make the same export again; left out when this version of exportd cannot read the
/// stored options, written by a newer version). Fields that do not apply yet are `null`.
/// `webhook` is there for an export created with a `callbackUrl` (in a status, not in lists):
/// where its end is announced and every attempt so far.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ExportStatusView {
    /// The export's id.
    pub job_id: Uuid,
    // Described on the struct (see `ExportCreated::status`).
    #[allow(missing_docs)]
    pub status: ExportStatus,
    /// The dataset exported.
    pub dataset: String,
    /// Who it belongs to: the name of the API key that created it (null for exports made
    /// without one, which only admin keys see).
    #[oai(nullable)]
    pub owner: Option<String>,
    // Described on the struct (see `ExportCreated::status`).
    #[allow(missing_docs)]
    #[oai(skip_serializing_if_is_none)]
    pub options: Option<CreateExportRequest>,
    /// Data rows in the file so far (checkpointed).
    pub rows_written: i64,
    /// Bytes in the file so far (checkpointed), header included (compressed bytes for gzip).
    pub bytes_written: i64,
    /// Key of the last row written, when the dataset's key is one integer column (else null:
    /// see `lastProcessedKey`); the export resumes after it (null while a parallel export runs:
    /// each of its key ranges resumes after its own).
    #[oai(nullable)]
    pub last_processed_id: Option<i64>,
    /// Key of the last row written, whatever the key's type: each key column's value as
    /// PostgreSQL's text of it, in key order (null as `lastProcessedId` is).
    #[oai(nullable)]
    pub last_processed_key: Option<Vec<String>>,
    /// The export covers keys up to this one: the largest key when it was created, when the
    /// dataset's key is one integer column (else null: see `upperBoundKey`). Rows inserted later
    /// with larger keys are not in the file.
    #[oai(nullable)]
    pub upper_bound_id: Option<i64>,
    /// The largest key when the export was created, whatever the key's type: each key
    /// column's value as PostgreSQL's text of it, in key order (null: the table was empty).
    #[oai(nullable)]
    pub upper_bound_key: Option<Vec<String>>,
    /// Estimate of the rows to export, taken at creation without counting (planner
    /// statistics, of the filtered query when there are filters); may be null.
    #[oai(nullable)]
    pub total_rows: Option<i64>,
    /// 0 to 1; exactly 1 only once completed (and still 1 once expired).
    pub progress: f64,
    /// Average rows per second since the export started (null before its first checkpoint).
    #[oai(nullable)]
    pub rows_per_second: Option<f64>,
    /// Seconds left at that rate, from the estimate (null when unknown; 0 when completed).
    #[oai(nullable)]
    pub eta_seconds: Option<i64>,
    /// Runs started so far (a run interrupted by a crash counts; one released at shutdown does not).
    pub attempts: i32,
    /// Why the export failed; null unless `status` is `failed`.
    #[oai(nullable)]
    pub error: Option<String>,
    /// When the export was created.
    pub created_at: DateTime<Utc>,
    /// When its first run started (null while queued).
    #[oai(nullable)]
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended: completed, failed or cancelled (null before).
    #[oai(nullable)]
    pub finished_at: Option<DateTime<Utc>>,
    /// When the file will be (or was) deleted; set once completed.
    #[oai(nullable)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Where to download the file. Once completed: a signed link that works without an API
    /// key until `downloadUrlExpiresAt`, to hand to a browser or another system (a new one
    /// with every status). Before: the API path the file will be at (it needs a key).
    pub download_url: String,
    /// When `downloadUrl`, a signed link, stops working (null before the export completed).
    #[oai(nullable)]
    pub download_url_expires_at: Option<DateTime<Utc>>,
    // Described on the type (a doc comment here would wrap the `$ref` in an `allOf`).
    #[allow(missing_docs)]
    #[oai(skip_serializing_if_is_none)]
    pub webhook: Option<WebhookView>,
}

/// Where the export's end is announced, and how each announcement went.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct WebhookView {
    /// The `callbackUrl` of the request.
    pub url: String,
    /// One per announced event (the export's end), oldest first.
    pub deliveries: Vec<DeliveryView>,
}

/// One announcement and its attempts.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct DeliveryView {
    /// Its `webhook-id` header, the same on every attempt (receivers deduplicate by it).
    pub webhook_id: String,
    /// `export.completed`, `export.failed` or `export.cancelled`.
    pub event: String,
    /// When the receiver took it (a 2xx answer); null before.
    #[oai(nullable)]
    pub delivered_at: Option<DateTime<Utc>>,
    /// When the next attempt is due; null once delivered or given up.
    #[oai(nullable)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the last attempt failed and no more are made; null otherwise.
    #[oai(nullable)]
    pub gave_up_at: Option<DateTime<Utc>>,
    /// Every attempt so far, in order.
    pub attempts: Vec<AttemptView>,
}

/// One delivery attempt.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct AttemptView {
    /// 1, 2, ...
    pub attempt: i32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// How long it took, in milliseconds.
    pub duration_ms: i32,
    /// The receiver's HTTP status; null when it did not answer (or its address was refused).
    #[oai(nullable)]
    pub status_code: Option<i32>,
    /// Why it failed; null when delivered.
    #[oai(nullable)]
    pub error: Option<String>,
}

/// A page of exports.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ExportList {
    /// Newest first.
    pub items: Vec<ExportStatusView>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// `POST /api/export`.
#[derive(Debug, ApiResponse)]
pub enum CreateExportResponse {
    /// Accepted: the export is queued and runs in the background (or, with an
    /// `Idempotency-Key` used before for the same request, that export). `Location` points at its status.
    #[oai(status = 202)]
    Accepted(Json<ExportCreated>, #[oai(header = "Location")] String),
}

/// `GET /api/export/{id}/status` and `DELETE /api/export/{id}`.
#[derive(Debug, ApiResponse)]
pub enum StatusResponse {
    /// The export's progress. While it is queued or running, `Retry-After` gives the seconds
    /// to wait before asking again (FHIR bulk data's convention): 1 while queued, then a tenth
    /// of the time left, 1 to 10 s (2 s while that is unknown).
    #[oai(status = 200)]
    Ok(Json<ExportStatusView>, #[oai(header = "Retry-After")] Option<u64>),
}

/// `GET /api/exports`.
#[derive(Debug, ApiResponse)]
pub enum ListResponse {
    /// A page of exports, newest first.
    #[oai(status = 200)]
    Ok(Json<ExportList>),
}

/// What `POST /api/export` can answer besides 202.
type CreateErrors = Fails<
    {
        BAD_REQUEST
            | UNAUTHORIZED
            | FORBIDDEN
            | TOO_MANY_REQUESTS
            | PAYLOAD_TOO_LARGE
            | UNSUPPORTED_MEDIA_TYPE
            | UNPROCESSABLE
            | INTERNAL
            | UNAVAILABLE
            | INSUFFICIENT_STORAGE
    },
>;
/// What the operations on one export can answer besides 200 (400: the id is not a UUID; 404
/// also for another owner's export).
/// How often an event stream looks the export up.
const EVENTS_LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
/// How often an idle event stream sends a comment line (keeps proxies from closing it).
const EVENTS_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// The answer to `GET /api/export/{id}/events`.
#[derive(ApiResponse)]
pub enum EventsResponse {
    /// The export's status as Server-Sent Events: `progress` events, then one `end` event.
    #[oai(status = 200)]
    Ok(EventStream<futures::stream::BoxStream<'static, ExportStatusView>>),
}

type OneExportErrors = Fails<{ BAD_REQUEST | UNAUTHORIZED | NOT_FOUND | INTERNAL | UNAVAILABLE }>;
/// What `GET /api/exports` can answer besides 200 (400: a bad `status`, `limit` or `cursor`).
type ListErrors = Fails<{ BAD_REQUEST | UNAUTHORIZED | INTERNAL | UNAVAILABLE }>;

/// Page size bounds of `GET /api/exports`.
const DEFAULT_PAGE: u32 = 20;

impl ExportApi {
    /// Refuses new exports while the storage is below its free-space floor.
    fn check_free_space(&self) -> Result<(), Error> {
        let floor = self.state.min_free_disk;
        match self.state.storage.below_floor(floor) {
            Some(free) => Err(Error::InsufficientStorage(format!(
                "the export storage has {} MiB free, below its floor of {} MiB: no new export until \
                 space is freed (finished exports' files are deleted as they expire, or with DELETE)",
                free >> 20,
                floor >> 20
            ))),
            None => Ok(()),
        }
    }
}

#[OpenApi(tag = "ApiTags::Exports")]
impl ExportApi {
    /// Start an export
    ///
    /// Validates the request (dataset, columns, filters, format), creates the export and its
    /// queue job, and answers at once, before any row is read. With an `Idempotency-Key`
    /// header, repeating the same request returns the same export; the same key with a
    /// different request is a 422.
    #[oai(path = "/api/export", method = "post", operation_id = "createExport")]
    async fn create(
        &self,
        caller: Caller,
        body: OptionalJson<CreateExportRequest>,
        /// Any string up to 200 characters identifying this request, e.g. a UUID.
        #[oai(name = "Idempotency-Key", validator(max_length = 200))]
        idempotency_key: Header<Option<String>>,
    ) -> Result<CreateExportResponse, CreateErrors> {
        let key = idempotency_key.0.filter(|k| !k.is_empty());
        if key.as_ref().is_some_and(|k| k.len() > 200) {
            return Err(Error::BadRequest("Idempotency-Key: at most 200 characters".into()).into());
        }
        let req = body.0.unwrap_or_else(CreateExportRequest::empty);
        let callback = req.callback_url.clone();
        let (ds, spec) = req.into_spec(&self.state, &caller).await?;
        if let Some(url) = &callback {
            export::webhook::check_callback(&self.state.webhook_allow, url).await.map_err(Error::Unprocessable)?;
        }
        self.check_free_space()?;
        let created = crate::with_conn!(self.state.pool, self.state.request_timeout, "creating the export", |c| {
            export::create_export(c, &self.state.waker, &caller.name, callback.as_deref(), &ds, &spec, key.as_deref())
        })
        .await?;
        if let Created::New(record) = &created {
            metrics::counter!(crate::telemetry::metrics::EXPORTS_CREATED, "dataset" => record.dataset.clone())
                .increment(1);
        }
        let (Created::New(record) | Created::Existing(record)) = created;
        let status_url = self.state.url(&format!("/api/export/{}/status", record.id));
        Ok(CreateExportResponse::Accepted(
            Json(ExportCreated {
                job_id: record.id,
                status: record.status,
                status_url: status_url.clone(),
                download_url: self.state.url(&format!("/api/export/{}/download", record.id)),
            }),
            status_url,
        ))
    }

    /// Export status
    ///
    /// Progress, counts, rate, estimate and outcome of an export.
    #[oai(path = "/api/export/:id/status", method = "get", operation_id = "getExportStatus")]
    async fn status(&self, caller: Caller, id: Path<Uuid>) -> Result<StatusResponse, OneExportErrors> {
        let record = find_visible(&self.state, &caller, id.0).await?;
        let mut view = self.view(&record);
        view.webhook = self.webhook(&record).await?;
        let poll = poll_after(view.status, view.eta_seconds);
        Ok(StatusResponse::Ok(Json(view), poll))
    }

    /// Follow an export (Server-Sent Events)
    ///
    /// The export's status as a stream of Server-Sent Events, so clients need not poll: a
    /// `progress` event at once and whenever the rows written or the status change (looked
    /// up twice a second), then one `end` event with the final status (completed, failed,
    /// cancelled or expired), after which the stream closes. Each event's `data` is the
    /// status as `GET /api/export/{id}/status` answers it (without webhook deliveries); idle
    /// streams carry a comment line every 15 s.
    #[oai(path = "/api/export/:id/events", method = "get", operation_id = "streamExportEvents")]
    async fn events(&self, caller: Caller, id: Path<Uuid>) -> Result<EventsResponse, OneExportErrors> {
        let first = find_visible(&self.state, &caller, id.0).await?;
        let state = self.state.clone();
        let stream = futures::stream::unfold((Some(first), None::<(ExportStatus, i64)>), move |(next, sent)| {
            let api = ExportApi { state: state.clone() };
            async move { api.next_event(id.0, next, sent).await }
        });
        let events = EventStream::new(Box::pin(stream) as futures::stream::BoxStream<'static, ExportStatusView>)
            .keep_alive(EVENTS_KEEP_ALIVE)
            .to_event(|view| {
                let kind = if view.status.is_terminal() { "end" } else { "progress" };
                poem::web::sse::Event::message(
                    serde_json::to_string(&poem_openapi::types::ToJSON::to_json(&view)).unwrap_or_default(),
                )
                .event_type(kind)
            });
        Ok(EventsResponse::Ok(events))
    }

    /// Cancel or delete an export
    ///
    /// A queued or running export is cancelled: the runner stops at its next chunk boundary,
    /// the partial file is deleted and the status becomes `cancelled` for good. A completed
    /// export's file is deleted and its status becomes `expired`. A failed, cancelled or
    /// expired export is left as it is. Answers with the export's status.
    #[oai(path = "/api/export/:id", method = "delete", operation_id = "cancelExport")]
    async fn cancel(&self, caller: Caller, id: Path<Uuid>) -> Result<StatusResponse, OneExportErrors> {
        let record = crate::with_conn!(self.state.pool, self.state.request_timeout, "cancelling the export", |c| {
            db::exports::cancel_export(c, id.0, caller.listed_owner())
        })
        .await?
        .ok_or(Error::NotFound(id.0))?;
        if matches!(record.status, ExportStatus::Cancelled | ExportStatus::Expired) {
            self.state.storage.remove_export(record.id).await;
        }
        let view = self.view(&record);
        let poll = poll_after(view.status, view.eta_seconds);
        Ok(StatusResponse::Ok(Json(view), poll))
    }

    /// List exports
    ///
    /// The caller's exports (every owner's for an admin key), newest first, `limit` at a time (1 to 100, default 20); pass `nextCursor` back as
    /// `cursor` for the next page. `status` keeps only exports in that status.
    #[oai(path = "/api/exports", method = "get", operation_id = "listExports")]
    async fn list(
        &self,
        caller: Caller,
        /// Only exports in this status.
        status: Query<Option<ExportStatus>>,
        /// Page size, 1 to 100 (default 20).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        limit: Query<Option<u32>>,
        /// `nextCursor` of the previous page.
        #[oai(validator(pattern = "^([0-9]{1,19}_[0-9a-f]{32})?$"))]
        cursor: Query<Option<String>>,
    ) -> Result<ListResponse, ListErrors> {
        let limit = limit.0.unwrap_or(DEFAULT_PAGE);
        let after = match cursor.0.as_deref() {
            None | Some("") => None,
            Some(c) => Some(parse_cursor(c).ok_or_else(|| {
                Error::BadRequest("cursor: malformed; pass nextCursor of the previous page as it is".into())
            })?),
        };
        let mut rows = crate::with_conn!(self.state.pool, self.state.request_timeout, "listing exports", |c| {
            db::exports::list_exports(c, caller.listed_owner(), status.0, after, i64::from(limit) + 1)
        })
        .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = if more { rows.last().map(|r| make_cursor(r.created_at, r.id)) } else { None };
        Ok(ListResponse::Ok(Json(ExportList { items: rows.iter().map(|r| self.view(r)).collect(), next_cursor })))
    }
}

/// The export `id` if the caller may see it: another owner's export is answered as one that
/// does not exist (404), so ids cannot be probed.
pub(crate) async fn find_visible(state: &AppState, caller: &Caller, id: Uuid) -> Result<ExportRecord, Error> {
    crate::with_conn!(state.pool, state.request_timeout, "reading the export", |c| {
        crate::db::exports::find_export(c, id)
    })
    .await?
    .filter(|r| caller.may_see(&r.owned_by))
    .ok_or(Error::NotFound(id))
}

/// The cursor after an export: its creation time (microseconds) and id.
fn make_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    format!("{}_{}", at.timestamp_micros(), id.simple())
}

fn parse_cursor(c: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let (micros, id) = c.split_once('_')?;
    Some((DateTime::from_timestamp_micros(micros.parse().ok()?)?, id.parse().ok()?))
}

impl ExportApi {
    /// The next event of a stream: the export when it changed since `sent` (the status and
    /// rows last sent), after waiting for a change; None once the final status was sent (or
    /// the export is gone). Errors reading the export are retried at the next look.
    async fn next_event(
        &self,
        id: Uuid,
        mut next: Option<ExportRecord>,
        sent: Option<(ExportStatus, i64)>,
    ) -> Option<(ExportStatusView, (Option<ExportRecord>, Option<(ExportStatus, i64)>))> {
        if sent.is_some_and(|(status, _)| status.is_terminal()) {
            return None;
        }
        loop {
            if let Some(r) = next.take() {
                let now = (r.status, r.progress_rows());
                if sent != Some(now) {
                    return Some((self.view(&r), (None, Some(now))));
                }
            }
            tokio::time::sleep(EVENTS_LOOK_EVERY).await;
            let found = crate::with_conn!(self.state.pool, self.state.request_timeout, "reading the export", |c| {
                db::exports::find_export(c, id)
            })
            .await;
            match found {
                Ok(Some(r)) => next = Some(r),
                Ok(None) => return None,
                Err(e) => tracing::warn!(export_id = %id, error = %e, "events: reading the export failed; will retry"),
            }
        }
    }

    /// The webhook of an export with a `callbackUrl`: its deliveries and their attempts.
    async fn webhook(&self, r: &ExportRecord) -> Result<Option<WebhookView>, Error> {
        let Some(url) = &r.callback_url else { return Ok(None) };
        let rows = crate::with_conn!(self.state.pool, self.state.request_timeout, "reading webhook deliveries", |c| {
            db::webhooks::of_export(c, r.id)
        })
        .await?;
        let deliveries = rows
            .into_iter()
            .map(|d| DeliveryView {
                webhook_id: d.id,
                event: d.event,
                delivered_at: d.delivered_at,
                next_attempt_at: d.next_attempt_at,
                gave_up_at: d.gave_up_at,
                attempts: d
                    .attempts
                    .0
                    .into_iter()
                    .map(|a| AttemptView {
                        attempt: a.attempt,
                        started_at: a.started_at,
                        duration_ms: a.duration_ms,
                        status_code: a.status_code,
                        error: a.error,
                    })
                    .collect(),
            })
            .collect();
        Ok(Some(WebhookView { url: url.clone(), deliveries }))
    }

    pub(crate) fn view(&self, r: &ExportRecord) -> ExportStatusView {
        let rate = rows_per_second(r);
        let link = crate::api::link::signed_link(&self.state, r);
        // The key as a number only where the dataset's key is one integer column (a text key
        // of digits is not a number).
        let integer_key = self.state.datasets.find(&r.dataset).is_none_or(|d| d.integer_key());
        let as_int = |k: &Option<Key>| k.as_ref().and_then(Key::as_int).filter(|_| integer_key);
        let (last_id, upper_id) = (as_int(&r.last_processed_key), as_int(&r.upper_bound_key));
        ExportStatusView {
            job_id: r.id,
            status: r.status,
            dataset: r.dataset.clone(),
            owner: Some(r.owned_by.clone()).filter(|o| !o.is_empty()),
            // As a request that makes the same export, or as stored when this version cannot read them.
            options: r.spec.get().ok().map(|spec| CreateExportRequest::from_spec(&r.dataset, spec)),
            rows_written: r.progress_rows(),
            bytes_written: r.bytes_written,
            last_processed_id: last_id,
            last_processed_key: r.last_processed_key.clone().map(|k| k.0),
            upper_bound_id: upper_id,
            upper_bound_key: r.upper_bound_key.clone().map(|k| k.0),
            total_rows: r.total_rows,
            progress: progress(r, last_id, upper_id),
            rows_per_second: rate,
            eta_seconds: eta(r, rate),
            attempts: r.attempts,
            error: if r.status == ExportStatus::Failed { r.error.clone() } else { None },
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            expires_at: r.expires_at,
            download_url: link
                .as_ref()
                .map_or_else(|| self.state.url(&format!("/api/export/{}/download", r.id)), |(url, _)| url.clone()),
            download_url_expires_at: link.map(|(_, at)| at),
            webhook: None,
        }
    }
}

/// When a client following an export should ask again, in seconds (None once it has ended).
fn poll_after(status: ExportStatus, eta_seconds: Option<i64>) -> Option<u64> {
    match status {
        ExportStatus::Queued => Some(1),
        ExportStatus::Running => Some(eta_seconds.map_or(2, |eta| (eta / 10).clamp(1, 10) as u64)),
        _ => None,
    }
}

/// Rows written over the time since the export started (until it finished).
fn rows_per_second(r: &ExportRecord) -> Option<f64> {
    let started = r.started_at?;
    let end = r.finished_at.unwrap_or_else(Utc::now);
    let secs = (end - started).num_milliseconds() as f64 / 1000.0;
    (r.progress_rows() > 0 && secs > 0.0).then(|| (r.progress_rows() as f64 / secs * 10.0).round() / 10.0)
}

/// Seconds left: 0 once completed; while running, the rows the estimate says are left at the current rate.
fn eta(r: &ExportRecord, rate: Option<f64>) -> Option<i64> {
    match r.status {
        ExportStatus::Completed => Some(0),
        ExportStatus::Running => {
            let left = (r.total_rows? - r.progress_rows()).max(0) as f64;
            rate.filter(|v| *v > 0.0).map(|v| (left / v).ceil() as i64)
        }
        _ => None,
    }
}

/// 1 when completed; otherwise rows over the estimate, or (without one) position in the key
/// range (`last_id` of `upper_id`: an integer key's), capped below 1.
fn progress(r: &ExportRecord, last_id: Option<i64>, upper_id: Option<i64>) -> f64 {
    match r.status {
        // An expired export completed before its file was deleted.
        ExportStatus::Completed | ExportStatus::Expired => return 1.0,
        ExportStatus::Queued => return 0.0,
        _ => {}
    }
    let p = match (r.total_rows, last_id, upper_id) {
        (Some(total), _, _) if total > 0 => r.progress_rows() as f64 / total as f64,
        (_, Some(last), Some(upper)) if upper > 0 => last as f64 / upper as f64,
        _ => 0.0,
    };
    p.clamp(0.0, 0.99)
}
