//! Webhook deliveries: the owner's signing secret, a delivery and its attempts, and the next
//! attempt's queue job (migration 0010 inserts the first with the export's end).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{error::Result, model::webhook};

/// The owner's signing secret, made on first use.
pub async fn owner_secret(db: &mut PgConnection, owner: &str) -> Result<String> {
    sqlx::query("insert into webhook_secrets (owned_by, secret) values ($1, $2) on conflict (owned_by) do nothing")
        .bind(owner)
        .bind(webhook::new_secret())
        .execute(&mut *db)
        .await?;
    Ok(sqlx::query_scalar("select secret from webhook_secrets where owned_by = $1").bind(owner).fetch_one(db).await?)
}

/// A delivery with what its message says about the export.
#[derive(Debug, sqlx::FromRow)]
pub struct Delivery {
    /// The `webhook-id`.
    pub id: String,
    /// The export announced.
    pub export_id: Uuid,
    /// `export.completed`, `export.failed` or `export.cancelled`.
    pub event: String,
    /// Where it goes.
    pub url: String,
    /// The body as first sent (None before the first attempt).
    pub body: Option<String>,
    /// When it was created (the event's time).
    pub created_at: DateTime<Utc>,
    /// Delivered or given up: nothing left to do.
    pub done: bool,
    /// Attempts made so far.
    pub attempts: i32,
    /// The export's owner.
    pub owned_by: String,
}

/// One delivery, locked for this attempt (None: gone, e.g. its export was purged).
pub async fn lock(db: &mut PgConnection, id: &str) -> Result<Option<Delivery>> {
    Ok(sqlx::query_as(
        "select d.id, d.export_id, d.event, d.url, d.body, d.created_at, \
                (d.delivered_at is not null or d.gave_up_at is not null) as done, \
                (select count(*)::int from webhook_attempts a where a.delivery_id = d.id) as attempts, \
                e.owned_by \
         from webhook_deliveries d join exports e on e.id = d.export_id where d.id = $1 for update of d",
    )
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// Keeps the body of the first attempt, so every retry sends the same message.
pub async fn keep_body(db: impl PgExecutor<'_>, id: &str, body: &str) -> Result<()> {
    sqlx::query("update webhook_deliveries set body = $2 where id = $1").bind(id).bind(body).execute(db).await?;
    Ok(())
}

/// What one attempt found.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// How long it took.
    pub duration_ms: i32,
    /// The receiver's status, if it answered.
    pub status_code: Option<i32>,
    /// Why it failed (None: delivered).
    pub error: Option<String>,
}

/// Records attempt number `n`; then the delivery is delivered, retried at `retry_at` (a new
/// queue job `job_id` in `queue`, in this transaction), or given up.
pub async fn record(
    db: &mut PgConnection,
    id: &str,
    n: i32,
    attempt: &Attempt,
    retry: Option<(DateTime<Utc>, &str, &str, &[u8])>,
) -> Result<()> {
    sqlx::query(
        "insert into webhook_attempts (delivery_id, attempt, started_at, duration_ms, status_code, error) \
         values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(n)
    .bind(attempt.started_at)
    .bind(attempt.duration_ms)
    .bind(attempt.status_code)
    .bind(&attempt.error)
    .execute(&mut *db)
    .await?;
    let delivered = attempt.error.is_none();
    sqlx::query(
        "update webhook_deliveries set \
           delivered_at = case when $2 then now() end, \
           next_attempt_at = $3, \
           gave_up_at = case when not $2 and $3::timestamptz is null then now() end \
         where id = $1",
    )
    .bind(id)
    .bind(delivered)
    .bind(retry.filter(|_| !delivered).map(|(at, ..)| at))
    .execute(&mut *db)
    .await?;
    if let Some((at, queue, job_id, payload)) = retry.filter(|_| !delivered) {
        sqlx::query(
            "insert into apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata) \
             values ($1, $2, $3, 'Pending', 0, 1000, $4, 0, ''::hstore)",
        )
        .bind(job_id)
        .bind(queue)
        .bind(payload)
        .bind(at)
        .execute(&mut *db)
        .await?;
    }
    Ok(())
}

/// A delivery as an export's status shows it.
#[derive(Debug, sqlx::FromRow)]
pub struct DeliveryRow {
    /// The `webhook-id`.
    pub id: String,
    /// The event.
    pub event: String,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When the next attempt is due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was given up.
    pub gave_up_at: Option<DateTime<Utc>>,
    /// Its attempts as JSON `[{attempt, at, durationMs, statusCode, error}]`, in order.
    pub attempts: sqlx::types::Json<Vec<AttemptRow>>,
}

/// One attempt, as an export's status shows it.
#[derive(Debug, serde::Deserialize)]
pub struct AttemptRow {
    /// 1, 2, ...
    pub attempt: i32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// How long it took.
    pub duration_ms: i32,
    /// The receiver's status.
    pub status_code: Option<i32>,
    /// Why it failed.
    pub error: Option<String>,
}

/// The deliveries of an export, oldest first, with their attempts.
pub async fn of_export(db: impl PgExecutor<'_>, export_id: Uuid) -> Result<Vec<DeliveryRow>> {
    Ok(sqlx::query_as(
        "select d.id, d.event, d.delivered_at, d.next_attempt_at, d.gave_up_at, \
                coalesce((select json_agg(json_build_object('attempt', a.attempt, 'started_at', a.started_at, \
                            'duration_ms', a.duration_ms, 'status_code', a.status_code, 'error', a.error) \
                          order by a.attempt) \
                          from webhook_attempts a where a.delivery_id = d.id), '[]') as attempts \
         from webhook_deliveries d where d.export_id = $1 order by d.created_at, d.id",
    )
    .bind(export_id)
    .fetch_all(db)
    .await?)
}
