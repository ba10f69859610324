//! Every statement on `exports` and `export_runs`: creation, claim, fenced checkpoints, outcomes.
//!
//! Fencing: a run owns an export while `exports.owner` equals its token. Every write a run
//! makes (checkpoint, completion, release) is guarded by `owner = $token` in the same
//! statement, so a runner that lost ownership (paused, partitioned, presumed dead) changes
//! nothing: its update matches no row and it stops.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgExecutor, PgPool, types::Json};
use uuid::Uuid;

use crate::{
    db::dataset,
    error::Result,
    export::{ExportSpec, ExportStatus, dataset::Dataset},
};

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
    pub job_id: Option<String>,
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

/// A new export, as the API creates it.
#[derive(Debug)]
pub struct NewExport<'a> {
    pub id: Uuid,
    pub dataset: &'a Dataset,
    pub spec: &'a ExportSpec,
    pub bounds: Bounds,
    pub job_id: &'a str,
    pub idempotency_key: Option<&'a str>,
}

/// Where a run has got to: everything up to `last_id` is in `file_name`, `bytes` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub last_id: Option<i64>,
    pub rows: i64,
    pub bytes: i64,
    pub file_name: String,
}

/// Result of trying to claim an export for a new run.
#[derive(Debug)]
pub enum Claim {
    /// The run owns the export. `adopt_file` is true when the run that wrote the checkpointed
    /// file is the one that released the export cleanly, so that file can be continued in
    /// place; otherwise its writer may still be alive somewhere (paused, partitioned) and the
    /// file must not be touched.
    Owned { export: Box<ExportRecord>, adopt_file: bool },
    /// Nothing to do: the export is finished (or was never there).
    Finished,
    /// Too many runs in a row made no progress: the export is now `failed`.
    GaveUp,
    /// The row cannot be read by this version (`reason`); counted as the `stalled`-th run in a
    /// row without progress: try again later (another version may read it), up to the bound.
    Unreadable { reason: String, stalled: i32 },
}

/// The columns of [`ExportRecord`], as a macro so queries stay `&'static str`.
macro_rules! columns {
    () => {
        "id, dataset, spec, status, upper_bound_id, owner, last_processed_id, rows_written, \
         bytes_written, file_name, total_rows, attempts, stalled_attempts, last_error, error, \
         job_id, created_at, started_at, finished_at, expires_at, file_writer, released_by"
    };
}

/// The high-water mark (largest key now) and the planner's estimate of the rows a filtered
/// export covers (`EXPLAIN` of the filtered query up to the mark, values bound; no count).
pub async fn filtered_bounds(conn: &mut PgConnection, ds: &Dataset, spec: &ExportSpec) -> Result<Bounds> {
    let (upper, _): (Option<i64>, Option<i64>) =
        sqlx::query_as(sqlx::AssertSqlSafe(dataset::bounds_query(ds))).fetch_one(&mut *conn).await?;
    let Some(upper_id) = upper else { return Ok(Bounds::Known { upper_bound_id: None, total_rows: Some(0) }) };
    let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(dataset::estimate_filtered_query(ds, spec)));
    for value in dataset::filter_values(spec) {
        query = query.bind(value);
    }
    let plan: Json<serde_json::Value> = query.bind(upper_id).fetch_one(&mut *conn).await?;
    let rows = plan.0[0]["Plan"]["Plan Rows"].as_f64().map(|r| r as i64);
    Ok(Bounds::Known { upper_bound_id: upper, total_rows: rows })
}

/// Checks that `value` reads as `sql_type`; the error is PostgreSQL's message.
pub async fn check_value(db: impl PgExecutor<'_>, sql_type: &str, value: &str) -> Result<Result<(), String>> {
    data_error(sqlx::query(sqlx::AssertSqlSafe(dataset::value_check_query(sql_type))).bind(value).execute(db).await)
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
/// round trip and one commit): never one without the other. None when its idempotency key is
/// taken (then no job is inserted either). The job row is what apalis-postgres' own
/// `push_tasks` inserts (`queries/task/sink.sql` of apalis-postgres 1.0); the queue tests
/// run it through real apalis workers.
pub async fn insert_export_with_job(
    db: impl PgExecutor<'_>,
    new: &NewExport<'_>,
    job: &NewJob<'_>,
) -> Result<Option<ExportRecord>> {
    let ((upper_sql, total_sql), (upper, total)) = match new.bounds {
        Bounds::Known { upper_bound_id, total_rows } => {
            (("$4::bigint".to_owned(), "$5::bigint".to_owned()), (upper_bound_id, total_rows))
        }
        Bounds::FromTable => (dataset::bounds_exprs(new.dataset), (None, None)),
    };
    let sql = format!(
        "with e as ( \
           insert into exports (id, dataset, spec, upper_bound_id, total_rows, job_id, idempotency_key) \
           values ($1, $2, $3, {upper_sql}, {total_sql}, $6, $7) \
           on conflict (idempotency_key) where idempotency_key is not null do nothing \
           returning *), \
         j as ( \
           insert into apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata) \
           select e.job_id, $8, $9, 'Pending', 0, $10, now(), 0, ''::hstore from e) \
         select {} from e",
        columns!()
    );
    let row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(new.id)
        .bind(&new.dataset.name)
        .bind(Json(new.spec))
        .bind(upper)
        .bind(total)
        .bind(new.job_id)
        .bind(new.idempotency_key)
        .bind(job.queue)
        .bind(job.payload)
        .bind(job.max_attempts)
        .fetch_optional(db)
        .await?;
    Ok(row)
}

/// The high-water mark and row estimate of a new export.
#[derive(Debug, Clone, Copy)]
pub enum Bounds {
    /// Taken beforehand (filtered exports: the estimate is the filtered query's).
    Known { upper_bound_id: Option<i64>, total_rows: Option<i64> },
    /// Read from the table by the insert itself (largest key, planner's row count).
    FromTable,
}

/// A queue job to insert with its export.
#[derive(Debug)]
pub struct NewJob<'a> {
    pub queue: &'a str,
    /// The job's arguments as apalis stores them (JSON bytes).
    pub payload: &'a [u8],
    pub max_attempts: i32,
}

/// The export created with this idempotency key, if any.
pub async fn find_by_idempotency_key(db: impl PgExecutor<'_>, key: &str) -> Result<Option<ExportRecord>> {
    Ok(sqlx::query_as(concat!("select ", columns!(), " from exports where idempotency_key = $1"))
        .bind(key)
        .fetch_optional(db)
        .await?)
}

/// Exports newest first, after the cursor `(created_at, id)` (exclusive), optionally of one status.
pub async fn list_exports(
    db: impl PgExecutor<'_>,
    status: Option<ExportStatus>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<ExportRecord>> {
    // No cursor: start above every possible row.
    let far_future =
        chrono::NaiveDate::from_ymd_opt(9999, 12, 31).expect("valid date").and_time(chrono::NaiveTime::MIN);
    let (at, id) = after.unwrap_or((far_future.and_utc(), Uuid::max()));
    let query = match status {
        Some(_) => concat!(
            "select ",
            columns!(),
            " from exports where status = $4 and (created_at, id) < ($1, $2) \
             order by created_at desc, id desc limit $3"
        ),
        None => concat!(
            "select ",
            columns!(),
            " from exports where (created_at, id) < ($1, $2) \
             order by created_at desc, id desc limit $3"
        ),
    };
    let mut q = sqlx::query_as(query).bind(at).bind(id).bind(limit);
    if let Some(s) = status {
        q = q.bind(s.as_str());
    }
    Ok(q.fetch_all(db).await?)
}

/// Cancels an unfinished export (`cancelled`) or deletes a completed one's file (`expired`);
/// a failed, cancelled or expired export is left as it is. Ownership is dropped, so a run still
/// working on it fails its next fenced checkpoint and stops. Returns the export as it now is.
pub async fn cancel_export(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<ExportRecord>> {
    Ok(sqlx::query_as(concat!(
        "update exports set \
           status = case when status in ('queued', 'running') then 'cancelled' \
                         when status = 'completed' then 'expired' else status end, \
           owner = case when status in ('queued', 'running', 'completed') then null else owner end, \
           finished_at = coalesce(finished_at, now()), \
           expires_at = case when status = 'completed' then now() else expires_at end \
         where id = $1 returning ",
        columns!()
    ))
    .bind(id)
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
        "select token, attempt, worker, start_id, started_at, ended_at, outcome, error \
         from export_runs where export_id = $1 order by started_at, attempt",
    )
    .bind(id)
    .fetch_all(db)
    .await?)
}

/// What a claim needs to know of an export before it owns it: the status undecoded and the
/// spec read leniently (a row written by another version may not decode here).
#[derive(sqlx::FromRow)]
struct ClaimState {
    status: String,
    owner: Option<Uuid>,
    released_by: Option<Uuid>,
    file_writer: Option<Uuid>,
    stalled_attempts: i32,
    last_error: Option<String>,
    spec: StoredSpec,
}

/// Makes `token` the owner of an unfinished export and records the run. Any run still marked
/// open is ended as `superseded`. When `max_stalled` runs in a row made no progress the
/// export fails instead, with the last error met. A row this version cannot read (a spec or
/// status written by another version) counts as a run without progress, with the reason, so
/// it fails after the same bound instead of being retried for ever.
pub async fn claim_export(
    db: &mut PgConnection,
    id: Uuid,
    token: Uuid,
    worker: &str,
    max_stalled: u32,
) -> Result<Claim> {
    let mut tx = db.begin().await?;
    let current: Option<ClaimState> = sqlx::query_as(
        "select status, owner, released_by, file_writer, stalled_attempts, last_error, spec \
         from exports where id = $1 for update",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(current) = current else {
        return Ok(Claim::Finished);
    };
    let version = env!("CARGO_PKG_VERSION");
    let unreadable = match ExportStatus::try_from(current.status.clone()) {
        Ok(status) if status.is_terminal() => return Ok(Claim::Finished),
        Ok(_) => current.spec.get().err().map(|e| e.to_string()),
        Err(e) => {
            Some(format!("the export's stored status cannot be read by this version of exportd ({version}): {e}"))
        }
    };
    // Not just "nobody owns it": the file's own writer must be the run that let go cleanly. A
    // run that released before its first checkpoint never wrote `file_name`, whose writer may
    // still be alive.
    let adopt_file =
        current.owner.is_none() && current.released_by.is_some() && current.released_by == current.file_writer;
    sqlx::query(
        "update export_runs set ended_at = now(), outcome = 'superseded' where export_id = $1 and ended_at is null",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    if current.stalled_attempts >= max_stalled as i32 {
        let cause = current
            .last_error
            .as_deref()
            .unwrap_or("the worker process stopped (crash or kill) before its first checkpoint");
        let message =
            format!("{cause} (gave up after {} attempts in a row without progress)", current.stalled_attempts);
        sqlx::query(
            "update exports set status = 'failed', error = $2, owner = null, finished_at = now() where id = $1",
        )
        .bind(id)
        .bind(&message)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(Claim::GaveUp);
    }
    if let Some(reason) = unreadable {
        sqlx::query(
            "update exports set stalled_attempts = stalled_attempts + 1, attempts = attempts + 1, \
             last_error = $2, owner = null where id = $1",
        )
        .bind(id)
        .bind(&reason)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(Claim::Unreadable { reason, stalled: current.stalled_attempts + 1 });
    }
    let export: ExportRecord = sqlx::query_as(concat!(
        "update exports set owner = $2, released_by = null, status = 'running', attempts = attempts + 1, \
         stalled_attempts = stalled_attempts + 1, started_at = coalesce(started_at, now()) \
         where id = $1 returning ",
        columns!()
    ))
    .bind(id)
    .bind(token)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("insert into export_runs (token, export_id, attempt, worker, start_id) values ($1, $2, $3, $4, $5)")
        .bind(token)
        .bind(id)
        .bind(export.attempts)
        .bind(worker)
        .bind(export.last_processed_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Claim::Owned { export: Box::new(export), adopt_file })
}

/// Saves a checkpoint, fenced by the run's token. Progress resets the stalled-run count.
/// Returns false when the run no longer owns the export.
///
/// Committed without waiting for the WAL flush (`synchronous_commit = off`): a checkpoint
/// lost in a database crash only sends the next run back to the previous one, whose bytes are
/// still in the file (and anything after it is cut off), so durability is not needed here,
/// and skipping a flush per chunk keeps the disk free for commits that need it (new exports).
/// Visibility, and so the fencing, is unaffected.
pub async fn save_checkpoint(db: &mut PgConnection, id: Uuid, token: Uuid, cp: &Checkpoint) -> Result<bool> {
    let mut tx = db.begin().await?;
    sqlx::query("set local synchronous_commit = off").execute(&mut *tx).await?;
    let done = sqlx::query(
        "update exports set last_processed_id = $3, rows_written = $4, bytes_written = $5, \
         file_name = $6, file_writer = $2, stalled_attempts = 0 \
         where id = $1 and owner = $2 and status = 'running'",
    )
    .bind(id)
    .bind(token)
    .bind(cp.last_id)
    .bind(cp.rows)
    .bind(cp.bytes)
    .bind(&cp.file_name)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// Marks the export completed with its final checkpoint, fenced by the run's token; its file
/// is kept for `retention`.
pub async fn complete_export(
    db: &mut PgConnection,
    id: Uuid,
    token: Uuid,
    cp: &Checkpoint,
    retention: Duration,
) -> Result<bool> {
    let mut tx = db.begin().await?;
    let done = sqlx::query(
        "update exports set status = 'completed', last_processed_id = $3, rows_written = $4, \
         bytes_written = $5, file_name = $6, file_writer = $2, owner = null, stalled_attempts = 0, \
         finished_at = now(), error = null, expires_at = now() + make_interval(secs => $7) \
         where id = $1 and owner = $2 and status = 'running'",
    )
    .bind(id)
    .bind(token)
    .bind(cp.last_id)
    .bind(cp.rows)
    .bind(cp.bytes)
    .bind(&cp.file_name)
    .bind(retention.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    end_run(&mut tx, token, "completed", None).await?;
    tx.commit().await?;
    Ok(true)
}

/// Gives the export up without finishing it, fenced by the run's token: at shutdown
/// (`give_back`: the attempt does not count) or after an error (recorded as `last_error`).
/// The export stays `running` with no owner until the queue hands it to the next run.
pub async fn release_export(
    db: &mut PgConnection,
    id: Uuid,
    token: Uuid,
    error: Option<&str>,
    give_back: bool,
) -> Result<bool> {
    let mut tx = db.begin().await?;
    let done = sqlx::query(
        "update exports set owner = null, released_by = $2, last_error = coalesce($3, last_error), \
         attempts = attempts - $4, stalled_attempts = greatest(stalled_attempts - $4, 0) \
         where id = $1 and owner = $2 and status = 'running'",
    )
    .bind(id)
    .bind(token)
    .bind(error)
    .bind(if give_back { 1 } else { 0 })
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    end_run(&mut tx, token, if give_back { "released" } else { "failed" }, error).await?;
    tx.commit().await?;
    Ok(true)
}

/// Forgets the checkpoint (its file is gone): the run starts the export over, fenced.
pub async fn reset_checkpoint(db: impl PgExecutor<'_>, id: Uuid, token: Uuid) -> Result<bool> {
    let done = sqlx::query(
        "update exports set last_processed_id = null, rows_written = 0, bytes_written = 0, file_name = null, \
         file_writer = null \
         where id = $1 and owner = $2 and status = 'running'",
    )
    .bind(id)
    .bind(token)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks a run that found it had lost ownership.
pub async fn mark_run_lost(conn: &mut PgConnection, token: Uuid) -> Result<()> {
    end_run(conn, token, "lost", None).await
}

async fn end_run(conn: &mut PgConnection, token: Uuid, outcome: &str, error: Option<&str>) -> Result<()> {
    sqlx::query("update export_runs set ended_at = coalesce(ended_at, now()), outcome = coalesce(outcome, $2), error = coalesce(error, $3) where token = $1")
        .bind(token)
        .bind(outcome)
        .bind(error)
        .execute(conn)
        .await?;
    Ok(())
}

/// Where the orphan scan has got to, separately for running and queued exports:
/// `(created_at, id)` of the last one seen (None: from the start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanCursor {
    pub running: Option<(DateTime<Utc>, Uuid)>,
    pub queued: Option<(DateTime<Utc>, Uuid)>,
}

/// An unfinished export whose queue job is gone or finished, with the job it pointed at when
/// the scan saw it (the rescue replaces exactly that one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub id: Uuid,
    pub job_id: Option<String>,
}

/// A row the orphan scan looked at.
#[derive(sqlx::FromRow)]
struct ScannedRow {
    id: Uuid,
    job_id: Option<String>,
    created_at: DateTime<Utc>,
    queued: bool,
    orphan: bool,
}

/// One round of the search for unfinished exports whose queue job is gone or finished (e.g.
/// the queue gave up on it): the next `limit` running exports and the next `limit` queued ones
/// after `cursor`, by key, so a round costs the same however many there are (a scan of every
/// queued export took 250 ms with 100k of them) and every one is looked at within the rounds
/// the backlog needs. The job of each is looked up by its key (a subquery per row: a join
/// read the whole jobs table). Exports not updated for `min_age_secs` only. Returns the
/// orphans and where the next round goes on.
pub async fn exports_without_live_job(
    pool: &PgPool,
    queue: &str,
    min_age_secs: f64,
    cursor: ScanCursor,
    limit: i64,
) -> Result<(Vec<Orphan>, ScanCursor)> {
    let start = (DateTime::<Utc>::UNIX_EPOCH, Uuid::nil());
    let (queued_at, queued_id) = cursor.queued.unwrap_or(start);
    let (running_at, running_id) = cursor.running.unwrap_or(start);
    let rows: Vec<ScannedRow> = sqlx::query_as(
        "with scanned as ( \
           (select id, job_id, created_at, updated_at, false as queued from exports \
            where status = 'running' and (created_at, id) > ($6, $7) order by created_at, id limit $3) \
           union all \
           (select id, job_id, created_at, updated_at, true from exports \
            where status = 'queued' and (created_at, id) > ($4, $5) order by created_at, id limit $3)) \
         select s.id, s.job_id, s.created_at, s.queued, \
                s.updated_at < now() - make_interval(secs => $2) and coalesce( \
                  (select j.status in ('Done', 'Killed') or (j.status = 'Failed' and j.attempts >= j.max_attempts) \
                   from apalis.jobs j where j.id = s.job_id and j.job_type = $1), true) as orphan \
         from scanned s \
         order by s.queued, s.created_at, s.id",
    )
    .bind(queue)
    .bind(min_age_secs)
    .bind(limit)
    .bind(queued_at)
    .bind(queued_id)
    .bind(running_at)
    .bind(running_id)
    .fetch_all(pool)
    .await?;
    // A full slice: go on after its last row next round; a short one: start over.
    let next = |queued: bool| {
        let slice: Vec<_> = rows.iter().filter(|r| r.queued == queued).collect();
        (slice.len() as i64 == limit).then(|| slice.last().map(|r| (r.created_at, r.id))).flatten()
    };
    let cursor = ScanCursor { running: next(false), queued: next(true) };
    let orphans = rows.into_iter().filter(|r| r.orphan).map(|r| Orphan { id: r.id, job_id: r.job_id }).collect();
    Ok((orphans, cursor))
}

/// Points an unfinished export at a new queue job (same transaction as the job's insert), only
/// if it still points at the job the scan saw (`old_job_id`): of several processes rescuing
/// the same orphan at once, exactly one succeeds (the others' update finds the new job id and
/// changes nothing), so an export never gets two live jobs.
pub async fn set_job(conn: &mut PgConnection, id: Uuid, old_job_id: Option<&str>, job_id: &str) -> Result<bool> {
    let done = sqlx::query(
        "update exports set job_id = $3 \
         where id = $1 and job_id is not distinct from $2 and status in ('queued', 'running')",
    )
    .bind(id)
    .bind(old_job_id)
    .bind(job_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Which files an export with a directory in storage still needs: its checkpointed (or
/// completed) file, and its current run's (named after the owner token). Only exports that
/// can still be served or resumed are returned; the sweeper deletes the directories of the others.
#[derive(Debug, sqlx::FromRow)]
pub struct FileRefs {
    pub id: Uuid,
    pub file_name: Option<String>,
    pub owner: Option<Uuid>,
}

/// [`FileRefs`] of those of `ids` that are queued, running or completed.
pub async fn file_refs(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<FileRefs>> {
    Ok(sqlx::query_as(
        "select id, file_name, owner from exports \
         where id = any($1) and status in ('queued', 'running', 'completed')",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?)
}

/// Deletes ended exports (expired, failed, cancelled) that ended more than `keep` ago, at
/// most `limit`, with their runs (cascade), idempotency keys (on the row) and queue jobs that
/// are finished. Returns how many exports were deleted.
pub async fn purge_ended_exports(pool: &PgPool, keep: Duration, limit: i64) -> Result<u64> {
    let (deleted,): (i64,) = sqlx::query_as(
        "with ended as ( \
           delete from exports where id in ( \
             select id from exports \
             where status in ('expired', 'failed', 'cancelled') \
               and coalesce(expires_at, finished_at, updated_at) < now() - make_interval(secs => $1) \
             limit $2 for update skip locked) \
           returning job_id), \
         jobs as ( \
           delete from apalis.jobs where id in (select job_id from ended) \
             and status in ('Done', 'Killed', 'Failed')) \
         select count(*) from ended",
    )
    .bind(keep.as_secs_f64())
    .bind(limit)
    .fetch_one(pool)
    .await?;
    Ok(deleted as u64)
}
