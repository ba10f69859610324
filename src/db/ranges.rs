//! The key ranges of a parallel export (`export_ranges`): created once by the first run, each
//! checkpointed on its own, every write fenced by the export's owner token like the export's own.
//!
//! Fencing: each write first locks the export's row where `owner = $token` (the claim of a new
//! run locks it too), so a range of a run that lost the export changes nothing and stops.

use sqlx::{Connection, PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{
    db::runs::Fence,
    error::Result,
    model::{Checkpoint, Key, KeyRange, types::SavedRowGroup},
};

/// The export's ranges in key order (none: a serial export, or one not split yet).
pub async fn ranges(db: impl PgExecutor<'_>, export_id: Uuid) -> Result<Vec<KeyRange>> {
    Ok(sqlx::query_as(
        "select position, lower_key, upper_key, last_processed_key, rows_written, bytes_written, file_name, \
         file_state, file_writer, done from export_ranges where export_id = $1 order by position",
    )
    .bind(export_id)
    .fetch_all(db)
    .await?)
}

/// Splits the export into ranges ending at `uppers` (ascending; the last is the export's upper
/// bound), fenced; returns the ranges as stored (another run's split if one was saved first).
pub async fn split(db: &mut PgConnection, run: Fence, uppers: &[Key]) -> Result<Option<Vec<KeyRange>>> {
    let mut tx = db.begin().await?;
    if !owns(&mut tx, run).await? {
        return Ok(None);
    }
    // A few rows (at most EXPORTD_MAX_PARALLELISM), one statement each: sqlx binds no array of
    // arrays.
    for (position, upper) in uppers.iter().enumerate() {
        let lower = position.checked_sub(1).map(|p| &uppers[p]);
        sqlx::query(
            "insert into export_ranges (export_id, position, lower_key, upper_key) values ($1, $2, $3, $4) \
             on conflict do nothing",
        )
        .bind(run.export_id)
        .bind(position as i32)
        .bind(lower)
        .bind(upper)
        .execute(&mut *tx)
        .await?;
    }
    let stored = ranges(&mut *tx, run.export_id).await?;
    tx.commit().await?;
    Ok(Some(stored))
}

/// Locks the export's row if `run` owns it (the fence of every range write).
async fn owns(conn: &mut PgConnection, run: Fence) -> Result<bool> {
    let owned: Option<i32> = sqlx::query_scalar(
        "select 1 from exports where id = $1 and owner = $2 and status = 'running' for no key update",
    )
    .bind(run.export_id)
    .bind(run.token)
    .fetch_optional(conn)
    .await?;
    Ok(owned.is_some())
}

/// Saves range `position`'s checkpoint (`done`: its last), fenced, with the Parquet row groups it
/// covers since its previous one (`before`; the first at `first_row_group` in the range), and
/// adds the rows and bytes since then to the export's progress; progress resets the export's
/// stalled-run count. False when the run no longer owns the export.
pub async fn save_checkpoint(
    db: &mut PgConnection,
    run: Fence,
    position: i32,
    (before, cp): (&Checkpoint, &Checkpoint),
    done: bool,
    (first_row_group, row_groups): (usize, &[SavedRowGroup]),
) -> Result<bool> {
    // One statement: the fenced export row, then (only if it was) the range's own. As the
    // export's own checkpoints, committed without waiting for the WAL flush (`set_config(..,
    // true)` is `set local` for the statement's transaction): a lost one only sends the range
    // back to its previous.
    let save = sqlx::query_scalar::<_, i64>(
        "with fenced as (\
           update exports set rows_written = rows_written + $3, bytes_written = bytes_written + $4, \
           stalled_attempts = 0 from (select set_config('synchronous_commit', 'off', true)) as without_flush \
           where id = $1 and owner = $2 and status = 'running' returning id), \
         range as (\
           update export_ranges set last_processed_key = $6, rows_written = $7, bytes_written = $8, \
           file_name = $9, file_writer = $2, done = $10, file_state = $11 \
           where export_id = $1 and position = $5 and exists (select from fenced)) \
         select count(*) from fenced",
    )
    .bind(run.export_id)
    .bind(run.token)
    .bind(cp.rows - before.rows)
    .bind(cp.bytes - before.bytes)
    .bind(position)
    .bind(&cp.last)
    .bind(cp.rows)
    .bind(cp.bytes)
    .bind(&cp.file_name)
    .bind(done)
    .bind(cp.file_state.as_ref().map(sqlx::types::Json));
    if row_groups.is_empty() {
        // CSV, JSON Lines (every chunk): one round trip.
        return Ok(save.fetch_one(&mut *db).await? == 1);
    }
    let mut tx = db.begin().await?;
    if save.fetch_one(&mut *tx).await? != 1 {
        return Ok(false);
    }
    crate::db::runs::save_row_groups(&mut tx, run.export_id, position, first_row_group, row_groups).await?;
    tx.commit().await?;
    Ok(true)
}

/// Records the rows range `position` has appended past its checkpoint (bytes not yet durable),
/// fenced, and the export's `rows_read` as the sum over its ranges; rows beyond any run's before
/// reset the stalled-run count (as [`crate::db::runs::note_progress`] does for a serial export).
/// False when the run no longer owns the export (cancelled, taken over).
pub async fn note_progress(db: &mut PgConnection, run: Fence, position: i32, rows: i64) -> Result<bool> {
    let mut tx = db.begin().await?;
    if !owns(&mut tx, run).await? {
        return Ok(false);
    }
    sqlx::query(
        "update export_ranges set rows_read = greatest(coalesce(rows_read, 0), $3) \
         where export_id = $1 and position = $2",
    )
    .bind(run.export_id)
    .bind(position)
    .bind(rows)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "update exports set rows_read = s.rows, \
         stalled_attempts = case when s.rows > coalesce(rows_read, rows_written) then 0 else stalled_attempts end \
         from (select sum(greatest(coalesce(rows_read, 0), rows_written)) as rows from export_ranges \
               where export_id = $1) s \
         where id = $1",
    )
    .bind(run.export_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Forgets range `position`'s checkpoint (its piece is gone): it starts over, and its rows and
/// bytes leave the export's progress. Fenced.
pub async fn reset(db: &mut PgConnection, run: Fence, position: i32) -> Result<bool> {
    let mut tx = db.begin().await?;
    let updated = sqlx::query(
        "update exports e set rows_written = e.rows_written - r.rows_written, \
         bytes_written = e.bytes_written - r.bytes_written \
         from export_ranges r where e.id = $1 and e.owner = $2 and e.status = 'running' \
         and r.export_id = e.id and r.position = $3",
    )
    .bind(run.export_id)
    .bind(run.token)
    .bind(position)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query(
        "update export_ranges set last_processed_key = null, rows_written = 0, bytes_written = 0, \
         file_name = null, file_state = null, file_writer = null, rows_read = null, done = false \
         where export_id = $1 and position = $2",
    )
    .bind(run.export_id)
    .bind(position)
    .execute(&mut *tx)
    .await?;
    sqlx::query("delete from export_row_groups where export_id = $1 and range_position = $2")
        .bind(run.export_id)
        .bind(position)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// Keys sampled to find where ranges split (a sample of the table's pages holding about this
/// many rows; every row of a smaller table).
const SAMPLE_ROWS: f64 = 30_000.0;

/// Where `n` ranges of similar row counts end: the quantiles of the export's keys below `upper`
/// (filtered, on a connection whose session has the filter values bound) in a sample, in key
/// order and distinct, then `upper`. Fewer when the keys are few (one: read serially).
pub async fn split_points(
    conn: &mut PgConnection,
    ds: &crate::model::Dataset,
    spec: &crate::model::ExportSpec,
    upper: &Key,
    n: u32,
) -> Result<Vec<Key>> {
    use crate::db::dataset;
    let table_rows: Option<i64> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(dataset::table_rows_query(ds))).fetch_one(&mut *conn).await?;
    let percent = table_rows
        .filter(|rows| *rows as f64 > SAMPLE_ROWS * 4.0)
        .map(|rows| (SAMPLE_ROWS * 100.0 / rows as f64).clamp(0.001, 100.0));
    let fractions: Vec<f64> = (1..n).map(|i| f64::from(i) / f64::from(n)).collect();
    let mut uppers: Vec<Key> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(dataset::split_points_query(ds, spec, percent, upper)))
            .bind(fractions)
            .fetch_all(&mut *conn)
            .await?;
    // Several quantiles can fall on one key (few distinct keys); each is below `upper`.
    uppers.dedup();
    uppers.push(upper.clone());
    Ok(uppers)
}
