//! `make bench-peers`: exportd against the tools people export a PostgreSQL table with, side by
//! side in one run, on the demo dataset (ROWS, default 1,000,000), ROUNDS rounds (default 3):
//!
//! - `psql \copy` of the whole ordered query, single stream (the reference, 1.00);
//! - N parallel `psql \copy` of key ranges (split at the keys' quantiles, computed before the
//!   clock starts), concatenated into one file (header from the first);
//! - DuckDB's postgres scanner, `COPY ... TO` CSV, ordered by the key and unordered;
//! - ConnectorX with `partition_on` the key into N connections, written to CSV by pyarrow;
//! - exportd with `parallelism` 1, 2 and 4, end to end (POST to completed, file synced),
//!   polled in-process over HTTP.
//!
//! For each: median wall time, ratio to `\copy`, peak memory of the client (exportd's server
//! process; psql's, DuckDB's and ConnectorX's own), and whether its file equals COPY's
//! (byte-identical, or how it differs). For exportd also its own CPU time per export (user +
//! system, from /proc/<pid>/stat; the download is not part of it). Prints a table and writes
//! target/bench/peers-<rows>.json.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, bail};
use exportd::{config::DbArgs, datasets::default_config_columns, db};
use serde_json::json;

#[path = "../tests/support/mod.rs"]
mod support;

use support::{
    bench::{dataset, env_or, median},
    client::Api,
    process::{Exportd, exportd_env, peak_rss_kib, reset_peak_rss},
};

/// Runs benches/peers/peers.py with `args` in the peers' virtualenv: (seconds, peak RSS KiB).
/// The peak comes from /usr/bin/time (the process's own `ru_maxrss` would start from this
/// bench's, inherited through fork and exec).
fn python_peer(args: &[&str]) -> anyhow::Result<(f64, u64)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let rss = std::env::temp_dir().join(format!("exportd-peer-{}.rss", std::process::id()));
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(&rss)
        .arg(root.join("tests/formats/readers.sh"))
        .env("REQUIREMENTS", root.join("benches/peers/requirements.txt"))
        .arg("python")
        .arg(root.join("benches/peers/peers.py"))
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("peers.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let seconds = text.split_whitespace().next().context("seconds")?.parse()?;
    Ok((seconds, rss_of(&rss)))
}

/// `psql \copy (select) to 'target' with (options)` as a child (TimeZone UTC), under
/// /usr/bin/time for its peak memory.
fn psql(db_url: &str, select: &str, target: &Path, options: &str) -> std::process::Child {
    let command = format!("\\copy ({select}) to '{}' with ({options})", target.display());
    Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(target.with_extension("rss"))
        .arg("psql")
        .arg(db_url)
        .args(["-q", "-c", &command])
        .env("PGOPTIONS", "-c TimeZone=UTC")
        .spawn()
        .expect("psql")
}

/// `n` `psql \copy` of key ranges at once, concatenated into `target`: (seconds, peak RSS of one).
fn psql_parallel(db_url: &str, cols: &str, splits: &[i64], target: &Path) -> anyhow::Result<(f64, u64)> {
    let started = Instant::now();
    let mut bounds = vec![None];
    bounds.extend(splits.iter().map(|s| Some(*s)));
    bounds.push(None);
    let parts: Vec<PathBuf> = (0..bounds.len() - 1).map(|i| target.with_extension(format!("part{i}"))).collect();
    let children: Vec<_> = bounds
        .windows(2)
        .zip(&parts)
        .enumerate()
        .map(|(i, (w, part))| {
            let mut conds = Vec::new();
            if let Some(lo) = w[0] {
                conds.push(format!("id > {lo}"));
            }
            if let Some(hi) = w[1] {
                conds.push(format!("id <= {hi}"));
            }
            let select = format!("select {cols} from orders where {} order by id", conds.join(" and "));
            psql(db_url, &select, part, &format!("format csv, header {}", i == 0))
        })
        .collect();
    for mut c in children {
        anyhow::ensure!(c.wait()?.success(), "a parallel psql \\copy failed");
    }
    let mut out = std::fs::File::create(target)?;
    for part in &parts {
        std::io::copy(&mut std::fs::File::open(part)?, &mut out)?;
    }
    out.sync_all()?;
    let secs = started.elapsed().as_secs_f64();
    let rss = parts.iter().map(|p| rss_of(p)).max().unwrap_or(0);
    for part in &parts {
        std::fs::remove_file(part)?;
    }
    Ok((secs, rss))
}

/// The peak RSS /usr/bin/time wrote beside `target` (KiB).
fn rss_of(target: &Path) -> u64 {
    std::fs::read_to_string(target.with_extension("rss"))
        .ok()
        .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0)
}

/// Writes back the dirty pages earlier steps left (each wrote a 256 MB file per million rows),
/// so their writeback does not land in the next step's time.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// CPU time (user + system, seconds) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf only reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz // utime and stime: fields 14 and 15 of the line
}

/// One export through the API: seconds end to end, peak RSS (KiB), CPU seconds of the server
/// and the export's id.
async fn exportd(api: &Api, pid: u32, parallelism: u32) -> anyhow::Result<(f64, u64, f64, uuid::Uuid)> {
    reset_peak_rss(pid);
    let cpu = cpu_seconds(pid);
    let started = Instant::now();
    let id = api.create_export(Some(json!({"parallelism": parallelism}))).await;
    let s = api.wait_finished(id, std::time::Duration::from_secs(3600)).await;
    anyhow::ensure!(s["status"] == "completed", "export {id} ended {s}");
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu;
    Ok((secs, peak_rss_kib(pid), cpu, id))
}

/// How a file compares with COPY's (`reference`).
fn compare(file: &Path, reference: &[u8]) -> anyhow::Result<String> {
    let bytes = std::fs::read(file)?;
    if bytes == reference {
        return Ok("byte-identical".into());
    }
    let lines = |b: &[u8]| b.split(|c| *c == b'\n').count();
    let (mut a, mut b): (Vec<&[u8]>, Vec<&[u8]>) =
        (bytes.split(|c| *c == b'\n').collect(), reference.split(|c| *c == b'\n').collect());
    a.sort_unstable();
    b.sort_unstable();
    if a == b {
        return Ok("same lines, other order".into());
    }
    // The first line that differs, for the table.
    let first = bytes.split(|c| *c == b'\n').zip(reference.split(|c| *c == b'\n')).find(|(x, y)| x != y);
    let shown = |l: &[u8]| String::from_utf8_lossy(&l[..l.len().min(60)]).into_owned();
    Ok(match first {
        Some((x, y)) => format!(
            "different text ({} vs {} lines): `{}` vs COPY's `{}`",
            lines(&bytes),
            lines(reference),
            shown(x),
            shown(y)
        ),
        None => format!("different ({} vs {} lines)", lines(&bytes), lines(reference)),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin = std::env::var("DATABASE_URL").context("DATABASE_URL (make bench-peers sets it)")?;
    let rows: i64 = env_or("ROWS", 1_000_000);
    let rounds: usize = env_or("ROUNDS", 3);
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/peers");
    let storage = out_dir.join("storage");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&storage)?;

    let db_url = dataset(&admin, rows).await?;
    let mut args = DbArgs::parse_defaults();
    args.database_url = db_url.clone();
    let pool = db::connect(&args).await?;
    let server = Exportd::serve(exportd_env(&db_url, &storage, &[("RUST_LOG", "warn")])).await;
    let (pid, api) = (server.pid(), server.api());
    let cols = default_config_columns("orders").expect("orders is in the built-in config").join(", ");
    let select = format!("select {cols} from orders order by id");
    // Where N parallel \copy split the keys: exact quantiles, before any clock starts.
    let mut splits: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    for n in [2u32, 4] {
        let fractions: Vec<f64> = (1..n).map(|i| f64::from(i) / f64::from(n)).collect();
        let points: Vec<i64> =
            sqlx::query_scalar("select (percentile_disc($1::float8[]) within group (order by id))::int8[] from orders")
                .bind(fractions)
                .fetch_one(&pool)
                .await?;
        splits.insert(n, points);
    }
    python_peer(&["duckdb", &db_url, "/dev/null", "unordered"]).ok(); // the venv, before any clock
    let reference_file = out_dir.join("psql.csv");

    // (name, parallelism) -> seconds per round; peak RSS (max over rounds); how the file compares.
    let mut time: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut rss: BTreeMap<String, u64> = BTreeMap::new();
    let mut cpu: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut output: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<(String, u32)> = Vec::new();
    // Each step's time over the same round's single \copy: ratios measured side by side.
    let mut ratio: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut single = 0.0;
    let mut record = |name: &str, p: u32, secs: f64, kib: u64| {
        let key = format!("{name} (p{p})");
        if name == "psql \\copy" {
            single = secs;
        }
        ratio.entry(key.clone()).or_default().push(secs / single);
        if !time.contains_key(&key) {
            order.push((name.to_owned(), p));
        }
        time.entry(key.clone()).or_default().push(secs);
        let e = rss.entry(key).or_default();
        *e = (*e).max(kib);
    };
    println!("{rows} rows, {rounds} rounds, side by side");
    let mut reference = Vec::new();
    for round in 1..=rounds {
        settle();
        let started = Instant::now();
        let mut c = psql(&db_url, &select, &reference_file, "format csv, header");
        anyhow::ensure!(c.wait()?.success(), "psql \\copy failed");
        let single = started.elapsed().as_secs_f64();
        record("psql \\copy", 1, single, rss_of(&reference_file));
        if round == 1 {
            reference = std::fs::read(&reference_file)?;
            output.insert("psql \\copy (p1)".into(), "byte-identical (it is COPY)".into());
        }
        let mut line = format!("round {round}: psql {single:.2}s");
        for n in [2u32, 4] {
            let file = out_dir.join(format!("psql-p{n}.csv"));
            settle();
            let (s, kib) = psql_parallel(&db_url, &cols, &splits[&n], &file)?;
            record("psql \\copy of key ranges, concatenated", n, s, kib);
            line += &format!(" | psql p{n} {s:.2}s ({:.2}x)", s / single);
            if round == 1 {
                output.insert(format!("psql \\copy of key ranges, concatenated (p{n})"), compare(&file, &reference)?);
            }
            std::fs::remove_file(&file)?;
        }
        for (mode, name) in
            [("ordered", "DuckDB postgres scanner, ORDER BY id"), ("unordered", "DuckDB postgres scanner, unordered")]
        {
            let file = out_dir.join(format!("duckdb-{mode}.csv"));
            settle();
            let (s, kib) = python_peer(&["duckdb", &db_url, file.to_str().unwrap(), mode])?;
            record(name, 0, s, kib);
            line += &format!(" | duckdb {mode} {s:.2}s ({:.2}x)", s / single);
            if round == 1 {
                output.insert(format!("{name} (p0)"), compare(&file, &reference)?);
            }
            std::fs::remove_file(&file)?;
        }
        for n in [2u32, 4] {
            let file = out_dir.join(format!("connectorx-p{n}.csv"));
            settle();
            let (s, kib) = python_peer(&["connectorx", &db_url, file.to_str().unwrap(), &n.to_string()])?;
            record("ConnectorX partition_on id, pyarrow CSV", n, s, kib);
            line += &format!(" | connectorx p{n} {s:.2}s ({:.2}x)", s / single);
            if round == 1 {
                output.insert(format!("ConnectorX partition_on id, pyarrow CSV (p{n})"), compare(&file, &reference)?);
            }
            std::fs::remove_file(&file)?;
        }
        for p in [1u32, 2, 4] {
            settle();
            let (s, kib, used, id) = exportd(&api, pid, p).await?;
            record("exportd", p, s, kib);
            cpu.entry(format!("exportd (p{p})")).or_default().push(used);
            line += &format!(" | exportd p{p} {s:.2}s ({:.2}x) {used:.2} CPU-s", s / single);
            if round == 1 {
                // Downloaded (not part of the time): a parallel export's file is its pieces.
                let file = out_dir.join("exportd.csv");
                std::fs::write(&file, api.download(id).await)?;
                output.insert(format!("exportd (p{p})"), compare(&file, &reference)?);
                std::fs::remove_file(&file)?;
            }
            api.client.delete(api.url(&format!("/api/export/{id}"))).send().await?;
        }
        println!("{line}");
    }
    drop(server);
    println!();
    println!(
        "| {rows} rows, medians of {rounds} rounds | parallelism | time | / psql \\copy (same round) | peak memory | exportd CPU per 1M rows | output vs COPY |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    for (name, p) in &order {
        let key = format!("{name} (p{p})");
        let t = median(&time[&key]);
        let per_million = cpu.get(&key).map(|c| median(c) * 1e6 / rows as f64);
        println!(
            "| {name} | {} | {t:.2} s | {:.2}x | {:.1} MiB | {} | {} |",
            if *p == 0 { "all cores".to_owned() } else { p.to_string() },
            median(&ratio[&key]),
            rss[&key] as f64 / 1024.0,
            per_million.map(|c| format!("{c:.2} CPU-s")).unwrap_or_default(),
            output.get(&key).map(String::as_str).unwrap_or("")
        );
        results.push(json!({"name": name, "parallelism": p, "seconds": time[&key], "ratios": ratio[&key],
            "peak_rss_kib": rss[&key], "cpu_seconds": cpu.get(&key), "output": output.get(&key)}));
    }
    std::fs::write(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/bench/peers-{rows}.json")),
        serde_json::to_vec_pretty(&json!({"rows": rows, "rounds": rounds, "results": results}))?,
    )?;
    Ok(())
}
