//! The database: connection pool, migrations, and (in submodules) every SQL statement exportd runs.

/// The columns of [`crate::model::ExportRecord`], as a macro so queries stay `&'static str`.
macro_rules! columns {
    () => {
        "id, dataset, spec, status, upper_bound_key, owner, last_processed_key, rows_written, \
         bytes_written, file_name, total_rows, attempts, stalled_attempts, last_error, error, \
         queue_job_id, created_at, started_at, finished_at, expires_at, file_writer, released_by, owned_by, callback_url, \
         file_state, rows_read, created_lsn::text as created_lsn"
    };
}

pub mod catalog;
pub mod dataset;
pub mod exports;
pub mod housekeeping;
pub mod keys;
pub mod links;
pub mod queue;
pub mod ranges;
pub mod runs;
pub mod seed;
pub mod stats;
pub mod webhooks;

use std::{future::Future, str::FromStr, time::Duration};

use anyhow::Context as _;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{config::DbArgs, error::Error};

/// A pooled connection idle longer than this is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_millis(500);

/// Opens the pool. Every connection runs in UTC (so timestamps come out as PostgreSQL's own
/// `COPY` prints them with `TimeZone = 'UTC'`) with a statement timeout, so that no query, a
/// chunk query included, can hold the database or a request for longer than that.
///
/// A connection can also hang without any error: a half-open TCP connection, a stuck proxy or
/// pooler, a frozen server. Keepalive probes do not catch those (the proxy answers them), so
/// every wait on the database has a deadline ([`with_conn`], and the idle check here), and a
/// connection that misses one is closed, never handed out again. (Not the pool's check on
/// return: sqlx pings every returned connection without a deadline, so a connection dropped
/// in the middle of a query on a silent database would hold its pool slot for ever; the
/// deadline's owner closes it instead. Timing that ping too cost a round trip per query: 10%
/// of `GET status` throughput.)
pub async fn connect(args: &DbArgs) -> anyhow::Result<PgPool> {
    let io_timeout = args.db_io_timeout;
    let timeout_ms = args.statement_timeout.as_millis().max(1).to_string();
    // A transaction left open by a client that froze (SIGSTOP, a partition) holds its locks
    // until the server ends its session: after a statement's time and the I/O deadline of
    // silence, the server does (longer than any transaction of ours stays open: a webhook
    // attempt holds one for at most 15 s).
    let idle_ms = (args.statement_timeout + args.db_io_timeout).max(Duration::from_secs(20)).as_millis().to_string();
    let options = PgConnectOptions::from_str(&args.database_url)
        .with_context(|| format!("invalid DATABASE_URL {:?}", args.database_url))?
        .application_name("exportd")
        .options([
            ("TimeZone", "UTC"),
            ("DateStyle", "ISO, MDY"),
            ("IntervalStyle", "postgres"),
            ("extra_float_digits", "1"),
            ("statement_timeout", timeout_ms.as_str()),
            ("idle_in_transaction_session_timeout", idle_ms.as_str()),
        ]);
    Ok(PgPoolOptions::new()
        .max_connections(args.db_pool_size.unwrap_or(pool_size(None, 0, 1)?))
        // A request waits at most this long for a connection: with the database down, the API
        // answers 503 quickly instead of hanging.
        .acquire_timeout(Duration::from_secs(3))
        // Ping a connection before handing it out only if it sat idle for a while: a ping
        // per acquire was one extra round trip per query (half of `POST /api/export`'s),
        // while a connection in constant use is known to be alive. One that the server
        // dropped while it was idle (a database restart) is caught here and replaced, so
        // requests after a restart do not fail on stale connections.
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IF_IDLE_FOR {
                    timed_ping(conn, io_timeout).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options))
}

/// Connections each worker slot may hold at once: its queue listener (apalis' `Pubsub` keeps
/// one for good), its run's chunk reader (one for the whole run), and one for its claims,
/// checkpoints and queue heartbeats.
pub const CONNECTIONS_PER_WORKER_SLOT: u32 = 3;
/// Connections each further key range of a parallel export holds (its reader and its writer's).
pub const CONNECTIONS_PER_RANGE: u32 = 2;
/// Connections left for the API, housekeeping and the waker by default.
const CONNECTIONS_FOR_THE_REST: u32 = 10;
/// The fewest connections left for them when the pool size is set by hand.
const CONNECTIONS_FOR_THE_REST_AT_LEAST: u32 = 4;

/// The pool size for `worker_slots` slots whose exports read up to `parallelism` key ranges at
/// once: `requested` if it is enough, else an error with the numbers (a pool too small for its
/// workers made exports fail their runs on "pool timed out" and retry, and starved the API);
/// without a request, enough plus room for the API.
pub fn pool_size(requested: Option<u32>, worker_slots: u32, parallelism: u32) -> anyhow::Result<u32> {
    let per_slot = CONNECTIONS_PER_WORKER_SLOT + CONNECTIONS_PER_RANGE * parallelism.saturating_sub(1);
    let held = per_slot * worker_slots;
    let Some(requested) = requested else { return Ok(held + CONNECTIONS_FOR_THE_REST) };
    let least = held + CONNECTIONS_FOR_THE_REST_AT_LEAST;
    anyhow::ensure!(
        requested >= least,
        "EXPORTD_DB_POOL_SIZE={requested} is too small for {worker_slots} worker slots (EXPORTD_WORKER_CONCURRENCY \
         plus EXPORTD_THROTTLED_CONCURRENCY): each worker \
         slot holds up to {per_slot} connections at parallelism {parallelism} ({held} in all) and the API and \
         housekeeping need \
         at least {CONNECTIONS_FOR_THE_REST_AT_LEAST}; set it to {least} or more, or leave it unset for \
         {}",
        held + CONNECTIONS_FOR_THE_REST
    );
    Ok(requested)
}

/// How a pool size (see [`pool_size`]) is shared between the two pools of a process: the main
/// one (API, queue, claims and checkpoints) and the chunk readers' (one connection per key range
/// a worker slot may read at once; a pool of its own, so readers connect from the engine's
/// threads, see [`crate::export::threads`]). A process without worker slots never reads
/// chunks (its readers' pool never connects): runs driven directly, as tests do, get two
/// exports' worth of readers there, and the main pool keeps every connection.
pub fn split_pool(total: u32, worker_slots: u32, parallelism: u32) -> (u32, u32) {
    match worker_slots * parallelism {
        0 => (total, 2 * parallelism.max(1)),
        readers => (total.saturating_sub(readers).max(1), readers),
    }
}

/// A round trip on `conn`, failing (so the pool closes the connection) when it takes longer than `limit`.
async fn timed_ping(conn: &mut sqlx::PgConnection, limit: Duration) -> Result<(), sqlx::Error> {
    use sqlx::Connection as _;
    match tokio::time::timeout(limit, conn.ping()).await {
        Ok(r) => r,
        Err(_) => Err(timed_out(limit, "connection check")),
    }
}

/// The error of a wait on the database that hit its deadline (a 503 in the API).
pub fn timed_out(limit: Duration, what: &str) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer from the database within {limit:?} ({what}); the connection is dropped"),
    ))
}

/// Bounds a wait on the database by `limit` (for a connection the caller owns and closes).
pub async fn within<T>(
    limit: Duration,
    what: &str,
    work: impl Future<Output = crate::error::Result<T>>,
) -> crate::error::Result<T> {
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(Error::Unavailable(timed_out(limit, what))),
    }
}

/// `with_conn!(pool, limit, what, |c| work).await`: runs `work` (a future using `c: &mut
/// PgConnection`) on a pooled connection of its own, within `limit` (the wait for the
/// connection included). A connection that misses the deadline is closed, never returned to
/// the pool: it may be silent for good, and a query cut off mid-way leaves it out of step
/// anyway. (A macro rather than a function taking a closure: the future must stay `Send` for
/// the queue's handler, which an `AsyncFnOnce` bound cannot promise.)
#[macro_export]
macro_rules! with_conn {
    ($pool:expr, $limit:expr, $what:expr, |$c:ident| $work:expr) => {
        async {
            let (limit, what): (::std::time::Duration, &str) = ($limit, $what);
            let started = ::tokio::time::Instant::now();
            match $crate::db::within(limit, what, async { Ok($crate::db::acquire(&$pool).await?) }).await {
                Err(e) => Err(e),
                Ok(mut conn) => {
                    let outcome = ::tokio::time::timeout(limit.saturating_sub(started.elapsed()), async {
                        let $c: &mut ::sqlx::PgConnection = &mut conn;
                        $work.await
                    })
                    .await;
                    match outcome {
                        Ok(r) => r,
                        Err(_) => {
                            conn.close_on_drop();
                            Err($crate::error::Error::Unavailable($crate::db::timed_out(limit, what)))
                        }
                    }
                }
            }
        }
    };
}

/// A database URL as logs may show it: its password replaced by `***`.
pub fn describe_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(an unparsable URL)".into(),
    }
}

/// A pooled connection, counted as waiting (`/metrics`) until it comes.
pub async fn acquire(pool: &PgPool) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, sqlx::Error> {
    let _waiting = crate::telemetry::metrics::WaitingGuard::start();
    pool.acquire().await
}

/// Applies the job queue's migrations (schema `apalis`), then exportd's (which adjust the
/// queue's schema too, so they come second).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    apalis_postgres::PostgresStorage::setup(pool)
        .await
        .context("applying the job queue's migrations (schema apalis)")?;
    sqlx::migrate!("./migrations").run(pool).await.context("applying exportd migrations")?;
    Ok(())
}

/// Waits until the database answers, for at most `patience` (start-up may race the database).
pub async fn wait_until_ready(pool: &PgPool, patience: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match ping(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e).context("the database did not answer");
            }
            Err(e) => {
                tracing::warn!(error = %e, "waiting for the database");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// A round trip to the database (health check, start-up wait).
pub async fn ping(db: impl sqlx::PgExecutor<'_>) -> crate::error::Result<()> {
    sqlx::query("select 1").execute(db).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_urls_hide_the_password() {
        assert_eq!(describe_url("postgres://app:s3cret@db:5432/x"), "postgres://app:***@db:5432/x");
        assert_eq!(describe_url("postgres://app@db/x"), "postgres://app@db/x");
    }

    #[test]
    fn pool_size_follows_the_worker_slots() {
        assert_eq!(pool_size(None, 2, 1).unwrap(), 16);
        assert_eq!(pool_size(None, 8, 1).unwrap(), 34);
        assert_eq!(pool_size(Some(28), 8, 1).unwrap(), 28);
        assert_eq!(pool_size(None, 2, 4).unwrap(), 2 * 9 + 10, "3 ranges more, 2 connections each");
        assert_eq!(split_pool(16, 2, 1), (14, 2));
        assert_eq!(split_pool(28, 2, 4), (20, 8), "the readers' share: a connection per range of every slot");
        assert_eq!(split_pool(10, 0, 4), (10, 8), "no workers: the main pool keeps all, readers never connect");
        let e = pool_size(Some(16), 8, 1).unwrap_err().to_string();
        assert!(
            e.contains("EXPORTD_DB_POOL_SIZE=16") && e.contains("for 8 worker slots") && e.contains("28 or more"),
            "{e}"
        );
    }
}
