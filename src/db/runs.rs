//! The fenced writes of a run: claim, checkpoint, completion, release.
//!
//! Fencing: a run owns an export while `exports.owner` equals its token. Every write a run
//! makes (checkpoint, completion, release) is guarded by `owner = $token` in the same
//! statement, so a runner that lost ownership (paused, partitioned, presumed dead) changes
//! nothing: its update matches no row and it stops.

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{
    error::Result,
    model::{Checkpoint, ExportRecord, ExportStatus, StoredSpec, types::SavedRowGroup},
};

/// A run's hold on an export: the export and the run's owner token. Every write a run makes
/// is fenced by both (`where id = $1 and owner = $2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The export.
    pub export_id: Uuid,
    /// The run's owner token.
    pub token: Uuid,
}

/// Result of trying to claim an export for a new run.
#[derive(Debug)]
pub enum Claim {
    /// The run owns the export. A file (or piece) whose writer is `released_by`, the run that
    /// released the export cleanly, can be continued in place; any other file's writer may still
    /// be alive somewhere (paused, partitioned) and it must not be touched.
    Owned {
        /// The export as the claim left it (`running`, owned by the run).
        export: Box<ExportRecord>,
        /// Whether a run still marked open (a dead or stalled worker's) was superseded.
        took_over: bool,
        /// The run that released the export cleanly just before this claim, if one did (None
        /// also when a run still owned it): the files it wrote may be continued in place.
        released_by: Option<Uuid>,
    },
    /// Nothing to do: the export is finished (or was never there).
    Finished,
    /// Too many runs in a row made no progress: the export is now `failed`.
    GaveUp,
    /// The row cannot be read by this version (`reason`); counted as the `stalled`-th run in a
    /// row without progress: try again later (another version may read it), up to the bound.
    Unreadable {
        /// What this version cannot read.
        reason: String,
        /// Runs in a row without progress, this one included.
        stalled: i32,
    },
}

/// What a claim needs to know of an export before it owns it: the status undecoded and the
/// spec read leniently (a row written by another version may not decode here).
#[derive(sqlx::FromRow)]
struct ClaimState {
    status: String,
    owner: Option<Uuid>,
    released_by: Option<Uuid>,
    stalled_attempts: i32,
    last_error: Option<String>,
    spec: StoredSpec,
}

/// Makes `token` the owner of an unfinished export and records the run. Any run still marked
/// open is ended as `superseded`. When `max_stalled` runs in a row made no progress the
/// export fails instead, with the last error met. A row this version cannot read (a spec or
/// status written by another version) counts as a run without progress, with the reason, so
/// it fails after the same bound instead of being retried for ever.
pub async fn claim_export(db: &mut PgConnection, run: Fence, worker: &str, max_stalled: u32) -> Result<Claim> {
    let Fence { export_id: id, token } = run;
    let mut tx = db.begin().await?;
    let current: Option<ClaimState> = sqlx::query_as(
        "select status, owner, released_by, stalled_attempts, last_error, spec \
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
    let superseded = sqlx::query(
        "update export_runs set ended_at = now(), outcome = 'superseded' where export_id = $1 and ended_at is null",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
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
    sqlx::query("insert into export_runs (token, export_id, attempt, worker, start_key) values ($1, $2, $3, $4, $5)")
        .bind(token)
        .bind(id)
        .bind(export.attempts)
        .bind(worker)
        .bind(&export.last_processed_key)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let released_by = current.released_by.filter(|_| current.owner.is_none());
    Ok(Claim::Owned { export: Box::new(export), took_over: superseded > 0, released_by })
}

/// Saves a checkpoint, fenced by the run's token. Progress resets the stalled-run count.
/// Returns false when the run no longer owns the export.
///
/// Committed without waiting for the WAL flush (`synchronous_commit = off`): a checkpoint
/// lost in a database crash only sends the next run back to the previous one, whose bytes are
/// still in the file (and anything after it is cut off), so durability is not needed here,
/// and skipping a flush per chunk keeps the disk free for commits that need it (new exports).
/// Visibility, and so the fencing, is unaffected.
pub async fn save_checkpoint(
    db: &mut PgConnection,
    run: Fence,
    cp: &Checkpoint,
    first_row_group: usize,
    row_groups: &[SavedRowGroup],
) -> Result<bool> {
    const SAVE: &str = "update exports set last_processed_key = $3, rows_written = $4, bytes_written = $5, \
         file_name = $6, file_state = $7, file_writer = $2, stalled_attempts = 0 \
         from (select set_config('synchronous_commit', 'off', true)) as without_flush \
         where id = $1 and owner = $2 and status = 'running'";
    if row_groups.is_empty() {
        // One statement, one round trip (CSV, JSON Lines: every chunk); `set_config(.., true)`
        // is `set local` for the statement's own transaction.
        let done = bind_checkpoint(sqlx::query(SAVE), run, cp).execute(&mut *db).await?;
        return Ok(done.rows_affected() == 1);
    }
    let mut tx = db.begin().await?;
    let done = bind_checkpoint(sqlx::query(SAVE), run, cp).execute(&mut *tx).await?;
    if done.rows_affected() == 1 {
        save_row_groups(&mut tx, run.export_id, 0, first_row_group, row_groups).await?;
    }
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// Parquet: the row groups a checkpoint of range `range` (0: a serial export) covers since its
/// previous one, the first at `first` in the range's order, in the checkpoint's transaction (so
/// the table never holds one a checkpoint does not cover). Any left from a run whose checkpoint
/// was reset are replaced.
pub(crate) async fn save_row_groups(
    tx: &mut PgConnection,
    export_id: Uuid,
    range: i32,
    first: usize,
    row_groups: &[SavedRowGroup],
) -> Result<()> {
    if row_groups.is_empty() {
        return Ok(());
    }
    sqlx::query("delete from export_row_groups where export_id = $1 and range_position = $2 and position >= $3")
        .bind(export_id)
        .bind(range)
        .bind(first as i32)
        .execute(&mut *tx)
        .await?;
    let positions: Vec<i32> = (first..first + row_groups.len()).map(|p| p as i32).collect();
    let bases: Vec<i64> = row_groups.iter().map(|g| g.base).collect();
    let footers: Vec<&[u8]> = row_groups.iter().map(|g| g.footer.as_slice()).collect();
    sqlx::query(
        "insert into export_row_groups (export_id, range_position, position, base, footer) \
         select $1, $2, * from unnest($3::int4[], $4::int8[], $5::bytea[])",
    )
    .bind(export_id)
    .bind(range)
    .bind(positions)
    .bind(bases)
    .bind(footers)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A Parquet export's row groups of range `range` (0: a serial export) within its first `bytes`
/// (the checkpoint's), in file order.
pub async fn row_groups(
    db: impl PgExecutor<'_>,
    export_id: Uuid,
    range: i32,
    bytes: i64,
) -> Result<Vec<SavedRowGroup>> {
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "select base, footer from export_row_groups where export_id = $1 and range_position = $2 and base < $3 \
         order by position",
    )
    .bind(export_id)
    .bind(range)
    .bind(bytes)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(base, footer)| SavedRowGroup { base, footer }).collect())
}

/// Records the rows a run has appended past its checkpoint (bytes not yet durable), fenced by
/// the run's token: false when the run no longer owns the export (cancelled, taken over).
/// Rows beyond any run's before count as progress (the stalled-run count restarts), so runs
/// interrupted before an object store's part is full still finish an export as long as each
/// gets further; runs that keep dying at the same point still stall it. Progress shown never
/// goes back.
pub async fn note_progress(db: impl PgExecutor<'_>, run: Fence, rows: i64) -> Result<bool> {
    let done = sqlx::query(
        "update exports set rows_read = greatest(rows_read, $3), \
         stalled_attempts = case when $3 > coalesce(rows_read, rows_written) then 0 else stalled_attempts end \
         where id = $1 and owner = $2 and status = 'running'",
    )
    .bind(run.export_id)
    .bind(run.token)
    .bind(rows)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Binds `$1` export, `$2` token and `$3`..`$7` the checkpoint, as the fenced writes take them.
fn bind_checkpoint<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    run: Fence,
    cp: &'q Checkpoint,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(run.export_id)
        .bind(run.token)
        .bind(&cp.last)
        .bind(cp.rows)
        .bind(cp.bytes)
        .bind(&cp.file_name)
        .bind(cp.file_state.as_ref().map(sqlx::types::Json))
}

/// Marks the export completed with its final checkpoint, fenced by the run's token; its file
/// is kept for `retention`.
pub async fn complete_export(db: &mut PgConnection, run: Fence, cp: &Checkpoint, retention: Duration) -> Result<bool> {
    let mut tx = db.begin().await?;
    let done = bind_checkpoint(
        sqlx::query(
            "update exports set status = 'completed', last_processed_key = $3, rows_written = $4, \
             bytes_written = $5, file_name = $6, file_state = $7, file_writer = $2, owner = null, \
             stalled_attempts = 0, finished_at = now(), error = null, \
             expires_at = now() + make_interval(secs => $8) \
             where id = $1 and owner = $2 and status = 'running'",
        ),
        run,
        cp,
    )
    .bind(retention.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    end_run(&mut tx, run.token, "completed", None).await?;
    tx.commit().await?;
    Ok(true)
}

/// Gives the export up without finishing it, fenced by the run's token: at shutdown
/// (`give_back`: the attempt does not count) or after an error (recorded as `last_error`).
/// The export stays `running` with no owner until the queue hands it to the next run.
pub async fn release_export(db: &mut PgConnection, run: Fence, error: Option<&str>, give_back: bool) -> Result<bool> {
    let Fence { export_id: id, token } = run;
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

/// Fails the export for good, fenced by the run's token, with `error` (the run cannot go on:
/// the storage is below its free-space floor).
pub async fn fail_export(db: &mut PgConnection, run: Fence, error: &str) -> Result<bool> {
    let Fence { export_id: id, token } = run;
    let mut tx = db.begin().await?;
    let done = sqlx::query(
        "update exports set status = 'failed', error = $3, owner = null, finished_at = now() \
         where id = $1 and owner = $2 and status = 'running'",
    )
    .bind(id)
    .bind(token)
    .bind(error)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    end_run(&mut tx, token, "failed", Some(error)).await?;
    tx.commit().await?;
    Ok(true)
}

/// Forgets the checkpoint (its file is gone): the run starts the export over, fenced.
pub async fn reset_checkpoint(db: impl PgExecutor<'_>, run: Fence) -> Result<bool> {
    let Fence { export_id: id, token } = run;
    let done = sqlx::query(
        "update exports set last_processed_key = null, rows_written = 0, bytes_written = 0, file_name = null, \
         file_state = null, rows_read = null, file_writer = null \
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
