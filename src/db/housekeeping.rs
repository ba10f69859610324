//! What housekeeping asks of the database: unfinished exports whose queue job is gone, the
//! files live exports still need, and ended exports old enough to delete.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::error::Result;

/// Where the orphan scan has got to, separately for running and queued exports:
/// `(created_at, id)` of the last one seen (None: from the start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanCursor {
    /// Last running export seen.
    pub running: Option<(DateTime<Utc>, Uuid)>,
    /// Last queued export seen.
    pub queued: Option<(DateTime<Utc>, Uuid)>,
}

/// An unfinished export whose queue job is gone or finished, with the job it pointed at when
/// the scan saw it (the rescue replaces exactly that one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The export.
    pub id: Uuid,
    /// The queue job it pointed at when the scan saw it.
    pub queue_job_id: Option<String>,
    /// Whether it is throttled (its new job goes to the throttled lane).
    pub throttled: bool,
}

/// A row the orphan scan looked at.
#[derive(sqlx::FromRow)]
struct ScannedRow {
    id: Uuid,
    queue_job_id: Option<String>,
    created_at: DateTime<Utc>,
    queued: bool,
    throttled: bool,
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
    queues: &[&str],
    min_age_secs: f64,
    cursor: ScanCursor,
    limit: i64,
) -> Result<(Vec<Orphan>, ScanCursor)> {
    let start = (DateTime::<Utc>::UNIX_EPOCH, Uuid::nil());
    let (queued_at, queued_id) = cursor.queued.unwrap_or(start);
    let (running_at, running_id) = cursor.running.unwrap_or(start);
    let rows: Vec<ScannedRow> = sqlx::query_as(
        "with scanned as ( \
           (select id, queue_job_id, created_at, updated_at, spec, false as queued from exports \
            where status = 'running' and (created_at, id) > ($6, $7) order by created_at, id limit $3) \
           union all \
           (select id, queue_job_id, created_at, updated_at, spec, true from exports \
            where status = 'queued' and (created_at, id) > ($4, $5) order by created_at, id limit $3)) \
         select s.id, s.queue_job_id, s.created_at, s.queued, \
                (s.spec ->> 'maxRowsPerSecond') is not null as throttled, \
                s.updated_at < now() - make_interval(secs => $2) and coalesce( \
                  (select j.status in ('Done', 'Killed') or (j.status = 'Failed' and j.attempts >= j.max_attempts) \
                   from apalis.jobs j where j.id = s.queue_job_id and j.job_type = any($1)), true) as orphan \
         from scanned s \
         order by s.queued, s.created_at, s.id",
    )
    .bind(queues)
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
    let orphans = rows
        .into_iter()
        .filter(|r| r.orphan)
        .map(|r| Orphan { id: r.id, queue_job_id: r.queue_job_id, throttled: r.throttled })
        .collect();
    Ok((orphans, cursor))
}

/// Points an unfinished export at a new queue job (same transaction as the job's insert), only
/// if it still points at the job the scan saw (`old_job_id`): of several processes rescuing
/// the same orphan at once, exactly one succeeds (the others' update finds the new job id and
/// changes nothing), so an export never gets two live jobs.
pub async fn set_job(conn: &mut PgConnection, id: Uuid, old_job_id: Option<&str>, job_id: &str) -> Result<bool> {
    let done = sqlx::query(
        "update exports set queue_job_id = $3 \
         where id = $1 and queue_job_id is not distinct from $2 and status in ('queued', 'running')",
    )
    .bind(id)
    .bind(old_job_id)
    .bind(job_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Which files an export with a directory in storage still needs: its checkpointed (or
/// completed) file and its key ranges' checkpointed pieces, and its current run's (named after
/// the owner token). Only exports that can still be served or resumed are returned; the
/// sweeper deletes the directories of the others.
#[derive(Debug, sqlx::FromRow)]
pub struct FileRefs {
    /// The export.
    pub id: Uuid,
    /// Its checkpointed (or completed) file and pieces.
    pub files: Vec<String>,
    /// Its current run's token (that run's file is named after it).
    pub owner: Option<Uuid>,
}

/// [`FileRefs`] of those of `ids` that are queued, running or completed.
pub async fn file_refs(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<FileRefs>> {
    Ok(sqlx::query_as(
        "select e.id, array_remove(array_prepend(e.file_name, \
           array(select r.file_name from export_ranges r where r.export_id = e.id)), \
           null) as files, e.owner \
         from exports e where e.id = any($1) and e.status in ('queued', 'running', 'completed')",
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
           returning queue_job_id), \
         jobs as ( \
           delete from apalis.jobs where id in (select queue_job_id from ended) \
             and status in ('Done', 'Killed', 'Failed')) \
         select count(*) from ended",
    )
    .bind(keep.as_secs_f64())
    .bind(limit)
    .fetch_one(pool)
    .await?;
    Ok(deleted as u64)
}
