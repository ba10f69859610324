//! The queue's tables beyond what apalis-postgres does: waking workers after a commit, and
//! hygiene (apalis-postgres never deletes finished jobs or dead workers; we do).

use std::time::Duration;

use sqlx::PgPool;

use crate::error::Result;

/// Deletes this queue's finished jobs (done, killed, or failed for good) older than `keep`.
pub async fn purge_finished_jobs(pool: &PgPool, queue: &str, keep: Duration) -> Result<u64> {
    let done = sqlx::query(
        "delete from apalis.jobs \
         where job_type = $1 and done_at < now() - make_interval(secs => $2) \
           and (status in ('Done', 'Killed') or (status = 'Failed' and attempts >= max_attempts))",
    )
    .bind(queue)
    .bind(keep.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes this queue's workers silent for longer than `dead_after` that no job refers to.
pub async fn purge_dead_workers(pool: &PgPool, queue: &str, dead_after: Duration) -> Result<u64> {
    let done = sqlx::query(
        "delete from apalis.workers w \
         where w.worker_type = $1 and w.last_seen < now() - make_interval(secs => $2) \
           and not exists (select 1 from apalis.jobs j where j.lock_by = w.id)",
    )
    .bind(queue)
    .bind(dead_after.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Tells listening workers that jobs are ready (`job_ids[i]` in `queues[i]`), one notification
/// per job with the payload apalis' own (disabled, see migrations/0002) insert trigger sends,
/// all in one statement. Call after the commit that inserted them.
pub async fn notify_workers(pool: &PgPool, queues: &[&str], job_ids: &[&str]) -> Result<()> {
    sqlx::query(
        "select pg_notify('apalis::job::insert', \
         json_build_object('job_type', queue, 'id', id, 'run_at', now())::text) \
         from unnest($1::text[], $2::text[]) as u(queue, id)",
    )
    .bind(queues)
    .bind(job_ids)
    .execute(pool)
    .await?;
    Ok(())
}
