//! What `/metrics` reads from the database at scrape time: exports by status and dataset,
//! and the depth and age of each queue lane (the same for every process on the database).

use sqlx::PgConnection;

use crate::error::Result;

/// The database's gauges.
#[derive(Debug, Default)]
pub struct Stats {
    /// (status, dataset, exports).
    pub exports: Vec<(String, String, i64)>,
    /// (lane, jobs waiting, age in seconds of the oldest one that is due).
    pub queues: Vec<(String, i64, f64)>,
    /// Age in seconds of the oldest export waiting to start (0 when none waits).
    pub oldest_queued_export: f64,
}

/// Reads the gauges (three small aggregate queries over indexed columns).
pub async fn read(conn: &mut PgConnection) -> Result<Stats> {
    let exports = sqlx::query_as("select status, dataset, count(*) from exports group by 1, 2 order by 1, 2")
        .fetch_all(&mut *conn)
        .await?;
    let queues = sqlx::query_as(
        "select lane, count(j.id), coalesce(extract(epoch from now() - min(j.run_at) \
                filter (where j.run_at <= now()))::float8, 0) \
         from unnest($1::text[]) as lane \
         left join apalis.jobs j on j.job_type = lane and j.status = 'Pending' \
         group by lane order by lane",
    )
    .bind(crate::export::queue::ALL_QUEUES)
    .fetch_all(&mut *conn)
    .await?;
    let oldest_queued_export: f64 = sqlx::query_scalar(
        "select coalesce(extract(epoch from now() - min(created_at))::float8, 0) from exports where status = 'queued'",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(Stats { exports, queues, oldest_queued_export })
}

/// Rows of exports that finished (completed) in each minute of the last hour, of `owner`'s
/// exports (every owner's for None), oldest minute first.
pub async fn rows_per_minute(
    conn: &mut PgConnection,
    owner: Option<&str>,
) -> Result<Vec<(chrono::DateTime<chrono::Utc>, i64)>> {
    Ok(sqlx::query_as(
        "select date_trunc('minute', finished_at), sum(rows_written)::int8 from exports \
         where finished_at > now() - interval '1 hour' and status in ('completed', 'expired') \
           and ($1::text is null or owned_by = $1) \
         group by 1 order by 1",
    )
    .bind(owner)
    .fetch_all(conn)
    .await?)
}
