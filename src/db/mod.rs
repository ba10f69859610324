//! The database: connection pool, migrations, and (in submodules) every SQL statement exportd runs.

pub mod catalog;
pub mod dataset;
pub mod exports;
pub mod queue;
pub mod seed;

use std::{str::FromStr, time::Duration};

use anyhow::Context as _;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::DbArgs;

/// A pooled connection idle longer than this is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_millis(500);

/// Opens the pool. Every connection runs in UTC (so timestamps come out as PostgreSQL's own
/// `COPY` prints them with `TimeZone = 'UTC'`) with a statement timeout, so that no query, a
/// chunk query included, can hold the database or a request for longer than that.
pub async fn connect(args: &DbArgs) -> anyhow::Result<PgPool> {
    let timeout_ms = args.statement_timeout.as_millis().max(1).to_string();
    let options = PgConnectOptions::from_str(&args.database_url)
        .with_context(|| format!("invalid DATABASE_URL {:?}", args.database_url))?
        .application_name("exportd")
        .options([
            ("TimeZone", "UTC"),
            ("DateStyle", "ISO, MDY"),
            ("IntervalStyle", "postgres"),
            ("extra_float_digits", "1"),
            ("statement_timeout", timeout_ms.as_str()),
        ]);
    Ok(PgPoolOptions::new()
        .max_connections(args.db_pool_size.max(4))
        // A request waits at most this long for a connection: with the database down, the API
        // answers 503 quickly instead of hanging.
        .acquire_timeout(Duration::from_secs(3))
        // Ping a connection before handing it out only if it sat idle for a while: a ping
        // per acquire was one extra round trip per query (half of `POST /api/export`'s),
        // while a connection in constant use is known to be alive. One that the server
        // dropped while it was idle (a database restart) is caught here and replaced, so
        // requests after a restart do not fail on stale connections.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IF_IDLE_FOR {
                    use sqlx::Connection as _;
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options))
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

/// A round trip to the database (health check).
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("select 1").execute(pool).await.map(|_| ())
}
