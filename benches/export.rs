//! `make bench`: exportd against PostgreSQL's own `psql \copy`, side by side in one run.
//!
//! Seeds the demo dataset (ROWS, default 1,000,000) once, starts the real `exportd serve`, then
//! alternates for ROUNDS rounds (default 3): `psql \copy (SELECT ... ORDER BY id) TO file WITH
//! (FORMAT csv, HEADER)`, and an end-to-end export through the API (POST, poll until completed,
//! file synced on disk) with exportd's peak RSS during it, and the same export gzip-compressed
//! (checked to decode to the same bytes). Then the download rate of the
//! finished file, and API latency under 50 concurrent clients (wrk) while two exports run.
//! Prints a table and writes target/bench/results-<rows>.json.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use exportd::{config::DbArgs, datasets::default_config_columns, db};
use serde_json::json;

#[path = "../tests/support/mod.rs"]
mod support;

use support::{
    bench::{dataset, env_or, median, psql_copy_query},
    client::Api,
    process::{Exportd, exportd_env, peak_rss_kib, reset_peak_rss},
};

/// Waits for the export to complete (an error if it ends otherwise).
async fn wait_completed(api: &Api, id: uuid::Uuid) -> anyhow::Result<()> {
    let s = api.wait_finished(id, Duration::from_secs(3600)).await;
    anyhow::ensure!(s["status"] == "completed", "export {id} ended {s}");
    Ok(())
}

fn psql_copy(db_url: &str, target: &Path) -> anyhow::Result<f64> {
    let cols = default_config_columns("orders").expect("orders is in the built-in config");
    let select = format!("select {} from orders order by id", cols.join(", "));
    psql_copy_query(db_url, &select, target, "format csv, header")
}

/// Whether the gzip file `gz` decodes (all members) to exactly the file `plain`.
fn gunzip_equals(gz: &Path, plain: &Path) -> anyhow::Result<bool> {
    use std::io::Read;
    let mut decoded = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(std::fs::File::open(gz)?));
    let mut plain = std::io::BufReader::new(std::fs::File::open(plain)?);
    let (mut a, mut b) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = decoded.read(&mut a)?;
        if n == 0 {
            return Ok(plain.read(&mut b[..1])? == 0);
        }
        if plain.read_exact(&mut b[..n]).is_err() || a[..n] != b[..n] {
            return Ok(false);
        }
    }
}

fn same_files(a: &Path, b: &Path) -> bool {
    Command::new("cmp").args(["-s"]).arg(a).arg(b).status().map(|s| s.success()).unwrap_or(false)
}

/// Runs wrk with the API key `key` and returns (p99 ms, requests/s).
fn wrk(url: &str, key: &str, script: Option<&Path>, seconds: u32) -> anyhow::Result<(f64, f64)> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c50", &format!("-d{seconds}s"), "--timeout", "5s", "--latency"]);
    cmd.args(["-H", &format!("Authorization: Bearer {key}")]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd.arg(url).output().context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let p99 = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(parse_wrk_duration)
        .context(format!("no p99 in wrk output:\n{text}"))?;
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let errors = text.lines().find(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    if let Some(e) = errors {
        eprintln!("wrk reported: {}", e.trim());
    }
    Ok((p99, rps))
}

fn parse_wrk_duration(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin = std::env::var("DATABASE_URL").context("DATABASE_URL (make bench sets it)")?;
    let rows: i64 = env_or("ROWS", 1_000_000);
    let rounds: usize = env_or("ROUNDS", 3);
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let storage = out_dir.join("storage");
    let _ = std::fs::remove_dir_all(&storage);
    std::fs::create_dir_all(&storage)?;

    // The dataset, seeded once per row count and reused by later runs.
    let db_url = dataset(&admin, rows).await?;
    let mut args = DbArgs::parse_defaults();
    args.database_url = db_url.clone();
    let pool = db::connect(&args).await?;

    // One owner (the development key) makes every export here: its queued quota is lifted so
    // the POST load measures creation, not 429s.
    let env = [("RUST_LOG", "warn"), ("EXPORTD_MAX_QUEUED_PER_OWNER", "1000000")];
    let server = Exportd::serve(exportd_env(&db_url, &storage, &env)).await;
    let pid = server.pid();
    let api: Api = server.api();
    let client = api.client.clone();
    let psql_file = out_dir.join("psql.csv");
    let (mut psql_secs, mut export_secs, mut peaks) = (Vec::new(), Vec::new(), Vec::new());
    let (mut gzip_secs, mut gzip_bytes) = (Vec::new(), 0u64);
    let mut identical = true;
    let mut last_file = PathBuf::new();
    let mut last_id = uuid::Uuid::nil();
    println!("{rows} rows, {rounds} rounds, alternating psql \\copy and exportd");
    for round in 1..=rounds {
        let p = psql_copy(&db_url, &psql_file)?;
        reset_peak_rss(pid);
        let started = Instant::now();
        let id = api.create_export(Some(json!({}))).await;
        wait_completed(&api, id).await?;
        let e = started.elapsed().as_secs_f64();
        let peak = peak_rss_kib(pid);
        let row: (String,) =
            sqlx::query_as("select file_name from exports where id = $1").bind(id).fetch_one(&pool).await?;
        last_file = storage.join(row.0);
        identical &= same_files(&last_file, &psql_file);
        println!(
            "round {round}: psql \\copy {p:.2}s, exportd {e:.2}s ({:.3}x), peak RSS {:.1} MiB",
            e / p,
            peak as f64 / 1024.0
        );
        psql_secs.push(p);
        export_secs.push(e);
        peaks.push(peak);
        last_id = id;
        // The same export as .csv.gz (one gzip member per chunk, zlib-rs level 1).
        let started = Instant::now();
        let id = api.create_export(Some(json!({"compression": "gzip"}))).await;
        wait_completed(&api, id).await?;
        let g = started.elapsed().as_secs_f64();
        let row: (String,) =
            sqlx::query_as("select file_name from exports where id = $1").bind(id).fetch_one(&pool).await?;
        let gz = storage.join(row.0);
        gzip_bytes = std::fs::metadata(&gz)?.len();
        identical &= gunzip_equals(&gz, &psql_file)?;
        println!(
            "         exportd gzip {g:.2}s ({:.3}x psql), {:.0}% of the CSV size",
            g / p,
            gzip_bytes as f64 * 100.0 / std::fs::metadata(&psql_file)?.len() as f64
        );
        gzip_secs.push(g);
    }
    let (p, e, g) = (median(&psql_secs), median(&export_secs), median(&gzip_secs));
    let peak_mib = *peaks.iter().max().unwrap() as f64 / 1024.0;

    // Download of the finished file.
    reset_peak_rss(pid);
    let size = std::fs::metadata(&last_file)?.len();
    let started = Instant::now();
    let mut resp = client.get(format!("{}/api/export/{last_id}/download", api.base)).send().await?;
    let mut got = 0u64;
    while let Some(chunk) = resp.chunk().await? {
        got += chunk.len() as u64;
    }
    let dl_secs = started.elapsed().as_secs_f64();
    let dl_mb_s = got as f64 / dl_secs / 1e6;
    let dl_peak_mib = peak_rss_kib(pid) as f64 / 1024.0;
    if got != size {
        bail!("downloaded {got} bytes of {size}");
    }

    // API latency while two exports run, each at 50k rows/s whatever ROWS is (so both sizes
    // measure the same load; they outlast the 10 s of wrk as long as ROWS >= 500k).
    let throttle = 50_000;
    for _ in 0..2 {
        api.create_export(Some(json!({"maxRowsPerSecond": throttle}))).await;
    }
    // Both running (each worker slot first finishes recording its previous job), at most 5 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    let running = loop {
        let running: i64 =
            sqlx::query_scalar("select count(*) from exports where status = 'running'").fetch_one(&pool).await?;
        if running >= 2 || Instant::now() > deadline {
            break running;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (status_p99, status_rps) = wrk(&format!("{}/api/export/{last_id}/status", api.base), &api.key, None, 5)?;
    let script = out_dir.join("post.lua");
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\nwrk.body = '{\"maxRowsPerSecond\": 1}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
    )?;
    // Creation as services make it: 50 owners (keys), each connection's requests spread over
    // them. Then one owner alone: its creates pass one at a time through the per-owner lock
    // that keeps its quota exact (each waits for the one before to commit).
    let mut keys = Vec::new();
    for i in 0..50 {
        let owner = format!("bench-{i}");
        keys.push(format!("\"{}\"", exportd::db::keys::create(&pool, &owner, false, None).await?.1));
    }
    let owners_script = out_dir.join("post-owners.lua");
    std::fs::write(
        &owners_script,
        format!(
            "keys = {{{}}}\nn = 0\nrequest = function()\n  n = n + 1\n  return wrk.format(\"POST\", nil, \
             {{[\"Authorization\"] = \"Bearer \" .. keys[n % #keys + 1], [\"Content-Type\"] = \"application/json\"}}, \
             '{{\"maxRowsPerSecond\": 1}}')\nend\n",
            keys.join(", ")
        ),
    )?;
    let load_started = chrono::Utc::now();
    let (post_p99, post_rps) = wrk(&format!("{}/api/export", api.base), &api.key, Some(&owners_script), 5)?;
    let (post_one_p99, post_one_rps) = wrk(&format!("{}/api/export", api.base), &api.key, Some(&script), 5)?;
    // The exports the POST load created are not part of the benchmark: drop them.
    sqlx::query(
        "delete from apalis.jobs where id in (select queue_job_id from exports where created_at >= $1 and status = 'queued')",
    )
    .bind(load_started)
    .execute(&pool)
    .await?;
    sqlx::query("delete from exports where created_at >= $1 and status = 'queued'")
        .bind(load_started)
        .execute(&pool)
        .await?;
    sqlx::query("delete from api_keys where name like 'bench-%'").execute(&pool).await?;
    drop(server);

    // Each round's exportd time over the psql \copy run just before it (a paired comparison:
    // the machine's speed drifts between rounds), then the median of those ratios.
    let ratios: Vec<f64> = export_secs.iter().zip(&psql_secs).map(|(e, p)| e / p).collect();
    let gzip_ratios: Vec<f64> = gzip_secs.iter().zip(&psql_secs).map(|(g, p)| g / p).collect();
    let (ratio, gzip_ratio) = (median(&ratios), median(&gzip_ratios));
    let results = json!({
        "rows": rows,
        "rounds": rounds,
        "psql_copy_median_s": p,
        "exportd_median_s": e,
        "ratio": ratio,
        "exportd_rows_per_s": rows as f64 / e,
        "psql_rows_per_s": rows as f64 / p,
        "exportd_peak_rss_mib": peak_mib,
        "exportd_gzip_median_s": g,
        "gzip_ratio_to_psql": gzip_ratio,
        "round_ratios": ratios,
        "gzip_bytes": gzip_bytes,
        "identical_to_psql_copy": identical,
        "file_bytes": size,
        "download_mb_per_s": dl_mb_s,
        "download_peak_rss_mib": dl_peak_mib,
        "exports_running_during_load": running,
        "status_p99_ms": status_p99,
        "status_requests_per_s": status_rps,
        "post_p99_ms": post_p99,
        "post_requests_per_s": post_rps,
        "post_one_owner_p99_ms": post_one_p99,
        "post_one_owner_requests_per_s": post_one_rps,
        "psql_copy_s": psql_secs,
        "exportd_s": export_secs,
    });
    let mark = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!();
    println!("| measure ({rows} rows) | value | target |");
    println!("|---|---|---|");
    println!("| psql \\copy, median | {p:.2} s ({:.0} rows/s) | |", rows as f64 / p);
    println!("| exportd end-to-end, median | {e:.2} s ({:.0} rows/s) | |", rows as f64 / e);
    println!(
        "| exportd / psql \\copy, median of the rounds' ratios | {ratio:.3}x (rounds: {}) | <= 1.05x {} |",
        ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join(", "),
        mark(ratio <= 1.05)
    );
    println!(
        "| exportd gzip end-to-end, median | {g:.2} s ({gzip_ratio:.3}x psql, {:.1} MB) | |",
        gzip_bytes as f64 / 1e6
    );
    println!("| exportd peak RSS during export | {peak_mib:.1} MiB | < 40 MiB {} |", mark(peak_mib < 40.0));
    println!("| file identical to psql \\copy | {identical} | true {} |", mark(identical));
    println!(
        "| download | {dl_mb_s:.0} MB/s, peak RSS {dl_peak_mib:.1} MiB | >= 500 MB/s {} |",
        mark(dl_mb_s >= 500.0)
    );
    println!(
        "| GET status p99, 50 clients, {running} exports running | {status_p99:.1} ms ({status_rps:.0} req/s) | < 50 ms {} |",
        mark(status_p99 < 50.0)
    );
    println!(
        "| POST /api/export p99, 50 clients, 50 owners | {post_p99:.1} ms ({post_rps:.0} req/s) | < 50 ms {} |",
        mark(post_p99 < 50.0)
    );
    println!(
        "| POST /api/export p99, 50 clients, one owner (its quota lock serializes) | {post_one_p99:.1} ms ({post_one_rps:.0} req/s) | |"
    );
    let out = out_dir.join(format!("results-{rows}.json"));
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    println!("\nwritten to {}", out.display());
    Ok(())
}
