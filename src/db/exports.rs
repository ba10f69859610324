//! Statements on exports as the API sees them: creation (with its queue job), lookups,
//! listing, cancellation, expiry, and the checks a request's values go through.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, types::Json};
use uuid::Uuid;

use crate::{
    db::dataset,
    error::Result,
    model::{Dataset, ExportRecord, ExportSpec, ExportStatus, Key, RunRecord},
};

/// A new export, as the API creates it.
#[derive(Debug)]
pub struct NewExport<'a> {
    /// The export's id.
    pub id: Uuid,
    /// What it exports.
    pub dataset: &'a Dataset,
    /// Its validated options.
    pub spec: &'a ExportSpec,
    /// Its high-water mark and row estimate.
    pub bounds: Bounds,
    /// The queue job inserted with it.
    pub queue_job_id: &'a str,
    /// The client's `Idempotency-Key`, if it sent one.
    pub idempotency_key: Option<&'a str>,
    /// The owner it belongs to (the caller's key name).
    pub owned_by: &'a str,
    /// Where its end is announced (checked: an allowed address).
    pub callback_url: Option<&'a str>,
}

/// The high-water mark (largest key now) and the planner's estimate of the rows a filtered
/// export covers (`EXPLAIN` of the filtered query up to the mark, values bound; no count).
pub async fn filtered_bounds(conn: &mut PgConnection, ds: &Dataset, spec: &ExportSpec) -> Result<Bounds> {
    let (upper, _): (Option<Key>, Option<i64>) =
        sqlx::query_as(sqlx::AssertSqlSafe(dataset::bounds_query(ds))).fetch_one(&mut *conn).await?;
    let Some(upper) = upper else { return Ok(Bounds::Known { upper_bound_key: None, total_rows: Some(0) }) };
    let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(dataset::estimate_filtered_query(ds, spec, &upper)));
    for value in dataset::filter_values(spec) {
        query = query.bind(value);
    }
    let plan: Json<serde_json::Value> = query.fetch_one(&mut *conn).await?;
    let rows = plan.0[0]["Plan"]["Plan Rows"].as_f64().map(|r| r as i64);
    Ok(Bounds::Known { upper_bound_key: Some(upper), total_rows: rows })
}

/// Checks that every one of `values` reads as `sql_type`; the error is PostgreSQL's message.
pub async fn check_values(db: impl PgExecutor<'_>, sql_type: &str, values: &[String]) -> Result<Result<(), String>> {
    data_error(sqlx::query(sqlx::AssertSqlSafe(dataset::value_check_query(sql_type))).bind(values).execute(db).await)
}

/// Checks that a time zone name is known; the error is PostgreSQL's message.
pub async fn check_time_zone(db: impl PgExecutor<'_>, name: &str) -> Result<Result<(), String>> {
    data_error(sqlx::query(dataset::time_zone_check_query()).bind(name).execute(db).await)
}

/// Splits a check's outcome: a data exception (SQLSTATE class 22: bad input) is the client's
/// problem, with PostgreSQL's message; any other error is ours.
fn data_error<T>(r: std::result::Result<T, sqlx::Error>) -> Result<Result<(), String>> {
    match r {
        Ok(_) => Ok(Ok(())),
        Err(sqlx::Error::Database(db)) if db.code().is_some_and(|c| c.starts_with("22")) => {
            Ok(Err(db.message().to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Inserts a new export in the `queued` state and its queue job, in one statement (so one
/// round trip and one commit): never one without the other. `exportd.admit` first checks the
/// owner's quota (exactly, under a per-owner lock held to the commit; over it, the statement
/// fails with [`Error::QuotaExceeded`](crate::error::Error)). None when its idempotency key
/// is taken (then no job is inserted either). The job row is what apalis-postgres' own
/// `push_tasks` inserts (`queries/task/sink.sql` of apalis-postgres 1.0); the queue tests
/// run it through real apalis workers.
pub async fn insert_export_with_job(
    db: impl PgExecutor<'_>,
    new: &NewExport<'_>,
    job: &NewJob<'_>,
) -> Result<Option<ExportRecord>> {
    let ((upper_sql, total_sql), (upper, total)) = match &new.bounds {
        Bounds::Known { upper_bound_key, total_rows } => {
            (("$4::text[]".to_owned(), "$5::bigint".to_owned()), (upper_bound_key.clone(), *total_rows))
        }
        Bounds::FromTable => (dataset::bounds_exprs(new.dataset), (None, None)),
    };
    let sql = format!(
        "with a as (select exportd.admit($11)), \
         e as ( \
           insert into exports (id, dataset, spec, upper_bound_key, total_rows, queue_job_id, idempotency_key, owned_by, \
                                callback_url) \
           select $1, $2, $3, {upper_sql}, {total_sql}, $6, $7, $11, $12 from a \
           on conflict (owned_by, idempotency_key) where idempotency_key is not null do nothing \
           returning *), \
         j as ( \
           insert into apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata) \
           select e.queue_job_id, $8, $9, 'Pending', 0, $10, now(), 0, ''::hstore from e) \
         select {} from e",
        columns!()
    );
    let row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(new.id)
        .bind(&new.dataset.name)
        .bind(Json(new.spec))
        .bind(upper)
        .bind(total)
        .bind(new.queue_job_id)
        .bind(new.idempotency_key)
        .bind(job.queue)
        .bind(job.payload)
        .bind(job.max_attempts)
        .bind(new.owned_by)
        .bind(new.callback_url)
        .fetch_optional(db)
        .await?;
    Ok(row)
}

/// The high-water mark and row estimate of a new export.
#[derive(Debug, Clone)]
pub enum Bounds {
    /// Taken beforehand (filtered exports: the estimate is the filtered query's).
    Known {
        /// The largest key now (None: the table is empty).
        upper_bound_key: Option<Key>,
        /// The estimate of the rows covered.
        total_rows: Option<i64>,
    },
    /// Read from the table by the insert itself (largest key, planner's row count).
    FromTable,
}

/// A queue job to insert with its export.
#[derive(Debug)]
pub struct NewJob<'a> {
    /// The queue's name (apalis `job_type`).
    pub queue: &'a str,
    /// The job's arguments as apalis stores them (JSON bytes).
    pub payload: &'a [u8],
    /// How often the queue may hand the job out before it gives up.
    pub max_attempts: i32,
}

/// The export `owner` created with this idempotency key, if any.
pub async fn find_by_idempotency_key(db: impl PgExecutor<'_>, owner: &str, key: &str) -> Result<Option<ExportRecord>> {
    Ok(sqlx::query_as(concat!("select ", columns!(), " from exports where owned_by = $1 and idempotency_key = $2"))
        .bind(owner)
        .bind(key)
        .fetch_optional(db)
        .await?)
}

/// Exports newest first, after the cursor `(created_at, id)` (exclusive), of one owner (None:
/// every owner's), optionally of one status.
pub async fn list_exports(
    db: impl PgExecutor<'_>,
    owner: Option<&str>,
    status: Option<ExportStatus>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<ExportRecord>> {
    // No cursor: start above every possible row.
    let far_future =
        chrono::NaiveDate::from_ymd_opt(9999, 12, 31).expect("valid date").and_time(chrono::NaiveTime::MIN);
    let (at, id) = after.unwrap_or((far_future.and_utc(), Uuid::max()));
    // One statement per case, each served by its index (owner, status, created_at, id).
    let query = match (owner, status) {
        (Some(_), Some(_)) => concat!(
            "select ",
            columns!(),
            " from exports where owned_by = $4 and status = $5 and (created_at, id) < ($1, $2) \
             order by created_at desc, id desc limit $3"
        ),
        (Some(_), None) => concat!(
            "select ",
            columns!(),
            " from exports where owned_by = $4 and (created_at, id) < ($1, $2) \
             order by created_at desc, id desc limit $3"
        ),
        (None, Some(_)) => concat!(
            "select ",
            columns!(),
            " from exports where status = $5 and (created_at, id) < ($1, $2) \
             order by created_at desc, id desc limit $3"
        ),
        (None, None) => concat!(
            "select ",
            columns!(),
            " from exports where (created_at, id) < ($1, $2) \
             order by created_at desc, id desc limit $3"
        ),
    };
    // Unused parameters are still bound (as typed nulls), so the numbering is the same in each.
    let q = sqlx::query_as(query).bind(at).bind(id).bind(limit).bind(owner).bind(status.map(|s| s.as_str()));
    Ok(q.fetch_all(db).await?)
}

/// Cancels an unfinished export (`cancelled`) or deletes a completed one's file (`expired`);
/// a failed, cancelled or expired export is left as it is. Ownership is dropped, so a run still
/// working on it fails its next fenced checkpoint and stops. Only `owner`'s export (any with
/// None). Returns the export as it now is.
pub async fn cancel_export(db: impl PgExecutor<'_>, id: Uuid, owner: Option<&str>) -> Result<Option<ExportRecord>> {
    Ok(sqlx::query_as(concat!(
        "update exports set \
           status = case when status in ('queued', 'running') then 'cancelled' \
                         when status = 'completed' then 'expired' else status end, \
           owner = case when status in ('queued', 'running', 'completed') then null else owner end, \
           finished_at = coalesce(finished_at, now()), \
           expires_at = case when status = 'completed' then now() else expires_at end \
         where id = $1 and ($2::text is null or owned_by = $2) returning ",
        columns!()
    ))
    .bind(id)
    .bind(owner)
    .fetch_optional(db)
    .await?)
}

/// Marks completed exports whose retention ran out as `expired` (at most `limit`) and returns
/// their ids, so their files can be deleted.
pub async fn expire_due(db: impl PgExecutor<'_>, limit: i64) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(
        "update exports set status = 'expired' where id in ( \
           select id from exports where status = 'completed' and expires_at <= now() \
           order by expires_at limit $1 for update skip locked) \
         returning id",
    )
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Reads one export.
pub async fn find_export(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<ExportRecord>> {
    Ok(sqlx::query_as(concat!("select ", columns!(), " from exports where id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?)
}

/// The runs of an export, oldest first (its ownership history).
pub async fn list_runs(db: impl PgExecutor<'_>, id: Uuid) -> Result<Vec<RunRecord>> {
    Ok(sqlx::query_as(
        "select token, attempt, worker, start_key, started_at, ended_at, outcome, error \
         from export_runs where export_id = $1 order by started_at, attempt",
    )
    .bind(id)
    .fetch_all(db)
    .await?)
}
