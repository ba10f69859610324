//! `make bench-scale` (also the second half of `make bench`): how exportd scales, in one run.
//!
//! 1. One export of SCALE_ROWS (default 20,000,000) demo rows against BASE_ROWS (default
//!    1,000,000): time per row of each (the large one should cost within 10% of the small one's
//!    per row) and the process's peak RSS during each (flat: it must not grow with the size).
//! 2. The same BASE_ROWS export to the local directory and to S3-compatible object storage
//!    (a Garage node on this machine), alternating, ROUNDS rounds: the ratio.
//! 3. 20 concurrent BASE_ROWS exports through one API process and 1, 2 or 3 worker processes
//!    (one export slot each): wall time from the first POST to the last completion, rows/s.
//!
//! Datasets are seeded once per size (databases `exportd_bench_<rows>`, shared with `make
//! bench`) and reused. Prints a table and writes target/bench/scale.json.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::json;

#[path = "../tests/support/mod.rs"]
mod support;

use support::{
    bench::{dataset, env_or, median},
    client::Api,
    process::{Exportd, exportd_env, peak_rss_kib, reset_peak_rss},
    s3::Garage,
};

/// One export, POST to completed: seconds and the server's peak RSS (MiB) meanwhile.
async fn timed_export(api: &Api, pid: u32) -> anyhow::Result<(f64, f64)> {
    reset_peak_rss(pid);
    let started = Instant::now();
    let id = api.create_export(Some(json!({}))).await;
    let s = api.wait_finished(id, Duration::from_secs(7200)).await;
    anyhow::ensure!(s["status"] == "completed", "export {id} ended {s}");
    let secs = started.elapsed().as_secs_f64();
    // The file is not needed any more: deleting it keeps the disk from filling up.
    api.client.delete(api.url(&format!("/api/export/{id}"))).send().await?;
    Ok((secs, peak_rss_kib(pid) as f64 / 1024.0))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin = std::env::var("DATABASE_URL").context("DATABASE_URL (make bench-scale sets it)")?;
    let (base, scale): (i64, i64) = (env_or("BASE_ROWS", 1_000_000), env_or("SCALE_ROWS", 20_000_000));
    let rounds: usize = env_or("ROUNDS", 3);
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let storage = out_dir.join("scale-storage");
    let _ = std::fs::remove_dir_all(&storage);
    std::fs::create_dir_all(&storage)?;
    let base_url = dataset(&admin, base).await?;
    let scale_url = dataset(&admin, scale).await?;
    let quiet = [("RUST_LOG", "warn"), ("EXPORTD_WORKER_CONCURRENCY", "1")];

    // 1. Size: one large export against the small one, each on its own server.
    let mut per_row = Vec::new();
    for (url, rows) in [(&base_url, base), (&scale_url, scale)] {
        let server = Exportd::serve(exportd_env(url, &storage, &quiet)).await;
        let (secs, peak) = timed_export(&server.api(), server.pid()).await?;
        println!(
            "{rows:>10} rows: {secs:7.2}s, {:.1} ns/row, {:.0} rows/s, peak RSS {peak:.1} MiB",
            secs * 1e9 / rows as f64,
            rows as f64 / secs
        );
        per_row.push((rows, secs, peak));
    }
    let cost_ratio = (per_row[1].1 / per_row[1].0 as f64) / (per_row[0].1 / per_row[0].0 as f64);
    println!(
        "per-row cost {scale} vs {base}: {cost_ratio:.3}x; peak RSS {:.1} vs {:.1} MiB",
        per_row[1].2, per_row[0].2
    );

    // 2. Object storage against the local directory, alternating.
    let garage = Garage::start();
    let local = Exportd::serve(exportd_env(&base_url, &storage, &quiet)).await;
    let mut s3_env = exportd_env(&base_url, &storage, &quiet);
    s3_env.extend(garage.env.iter().cloned());
    let s3 = Exportd::serve(s3_env).await;
    let (mut local_secs, mut s3_secs, mut s3_peak) = (Vec::new(), Vec::new(), 0f64);
    for round in 1..=rounds {
        let (l, _) = timed_export(&local.api(), local.pid()).await?;
        let (o, peak) = timed_export(&s3.api(), s3.pid()).await?;
        println!("round {round}: local {l:.2}s, S3 {o:.2}s ({:.3}x), S3 peak RSS {peak:.1} MiB", o / l);
        local_secs.push(l);
        s3_secs.push(o);
        s3_peak = s3_peak.max(peak);
    }
    let s3_ratio = median(&s3_secs) / median(&local_secs);
    println!("S3 vs local directory, {base} rows: {s3_ratio:.3}x (medians of {rounds})");
    drop((local, s3, garage));

    // 3. 20 concurrent exports, 1, 2 and 3 worker processes of one slot each.
    let mut concurrency = Vec::new();
    for workers in 1..=3 {
        let api_env = [("RUST_LOG", "warn"), ("EXPORTD_WORKER_CONCURRENCY", "0")];
        let server = Exportd::serve(exportd_env(&base_url, &storage, &api_env)).await;
        let mut procs = Vec::new();
        for _ in 0..workers {
            procs.push(Exportd::worker(exportd_env(&base_url, &storage, &quiet)).await);
        }
        let api = server.api();
        let started = Instant::now();
        let mut ids = Vec::new();
        for _ in 0..20 {
            ids.push(api.create_export(Some(json!({}))).await);
        }
        for id in &ids {
            let s = api.wait_finished(*id, Duration::from_secs(7200)).await;
            anyhow::ensure!(s["status"] == "completed", "export {id} ended {s}");
        }
        let secs = started.elapsed().as_secs_f64();
        for id in &ids {
            api.client.delete(api.url(&format!("/api/export/{id}"))).send().await?;
        }
        let rate = 20.0 * base as f64 / secs;
        println!("20 exports of {base} rows, {workers} worker(s): {secs:.1}s, {rate:.0} rows/s");
        concurrency.push(json!({"workers": workers, "seconds": secs, "rows_per_second": rate}));
    }

    let results = json!({
        "base_rows": base, "scale_rows": scale,
        "size": per_row.iter().map(|(rows, secs, peak)| json!({"rows": rows, "seconds": secs, "peak_rss_mib": peak})).collect::<Vec<_>>(),
        "per_row_cost_ratio": cost_ratio,
        "s3_vs_local": {"ratio": s3_ratio, "local_seconds": local_secs, "s3_seconds": s3_secs, "s3_peak_rss_mib": s3_peak},
        "concurrent_20": concurrency,
    });
    std::fs::write(out_dir.join("scale.json"), serde_json::to_string_pretty(&results)?)?;
    println!("wrote target/bench/scale.json");
    Ok(())
}
