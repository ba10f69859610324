//! Shared by the benches: settings from the environment, medians, and the demo dataset of a
//! given size in a database of its own, seeded once and reused by later runs.

use std::{path::Path, process::Command, time::Instant};

use exportd::{config::DbArgs, db};

use super::helpers::with_database;

/// `name` from the environment, parsed, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The median (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 }
}

/// The demo dataset of `rows` rows in database `exportd_bench_<rows>` (created and seeded
/// when missing), its earlier exports and jobs truncated; its URL.
pub async fn dataset(admin: &str, rows: i64) -> anyhow::Result<String> {
    let name = format!("exportd_bench_{rows}");
    let admin_pool = sqlx::PgPool::connect(admin).await?;
    let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(&name)
        .fetch_one(&admin_pool)
        .await?;
    if !exists {
        sqlx::query(sqlx::AssertSqlSafe(format!("create database \"{name}\""))).execute(&admin_pool).await?;
    }
    let url = with_database(admin, &name);
    let mut args = DbArgs::parse_defaults();
    args.database_url = url.clone();
    let pool = db::connect(&args).await?;
    db::migrate(&pool).await?;
    if db::seed::orders_count(&pool).await? != Some(rows) {
        db::seed::seed_orders(&pool, rows, db::seed::print_progress(rows)).await?;
        sqlx::query("vacuum analyze orders").execute(&pool).await?;
    }
    // Earlier runs' exports and jobs go with TRUNCATE, not DELETE: a delete leaves dead rows
    // that autovacuum would clean up in the middle of this run's measurements.
    sqlx::raw_sql("truncate apalis.jobs, exports cascade").execute(&pool).await?;
    Ok(url)
}

/// Times `psql \copy (select) to 'target' with (options)` (TimeZone UTC), in seconds.
pub fn psql_copy_query(db_url: &str, select: &str, target: &Path, options: &str) -> anyhow::Result<f64> {
    let command = format!("\\copy ({select}) to '{}' with ({options})", target.display());
    let started = Instant::now();
    let status =
        Command::new("psql").arg(db_url).args(["-q", "-c", &command]).env("PGOPTIONS", "-c TimeZone=UTC").status()?;
    anyhow::ensure!(status.success(), "psql \\copy failed: {command}");
    Ok(started.elapsed().as_secs_f64())
}
