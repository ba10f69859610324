//! `make bench-formats`: JSON Lines and Parquet exports against `psql \copy` CSV and DuckDB's
//! `COPY ... TO 'x.parquet'` from its postgres scanner, side by side in one run.
//!
//! On the demo dataset (ROWS, default 1,000,000), for ROUNDS rounds (default 3), alternating:
//! `psql \copy` CSV (the reference time), exportd JSON Lines and exportd Parquet (one range, and
//! two key ranges) end to end (POST to completed, file synced) with exportd's peak RSS during
//! each, and DuckDB (postgres
//! extension, ordered by the key, zstd) with its own peak RSS. Also where JSON Lines' time goes:
//! `psql \copy` of the same rows as `row_to_json` text (what exportd asks PostgreSQL for) and
//! as binary COPY (what an encoder in Rust would have to read instead). Checks each Parquet file
//! reads back (DuckDB) with every row. Prints a table, writes target/bench/formats-<rows>.json.

use std::{path::PathBuf, process::Command, time::Instant};

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

/// Runs tests/formats/duckdb_bench.py with `args` in the readers' virtualenv; its stdout.
fn duckdb(args: &[&str]) -> anyhow::Result<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/formats");
    let out =
        Command::new(root.join("readers.sh")).arg("python").arg(root.join("duckdb_bench.py")).args(args).output()?;
    if !out.status.success() {
        bail!("duckdb_bench.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// One export through the API: seconds end to end, peak RSS (KiB) and the file.
async fn export(
    api: &Api,
    pool: &sqlx::PgPool,
    pid: u32,
    storage: &std::path::Path,
    body: serde_json::Value,
) -> anyhow::Result<(f64, u64, PathBuf)> {
    reset_peak_rss(pid);
    let started = Instant::now();
    let id = api.create_export(Some(body)).await;
    let s = api.wait_finished(id, std::time::Duration::from_secs(3600)).await;
    anyhow::ensure!(s["status"] == "completed", "export {id} ended {s}");
    let secs = started.elapsed().as_secs_f64();
    let (name, pieces): (String, bool) =
        sqlx::query_as("select file_name, coalesce(file_state ? 'pieces', false) from exports where id = $1")
            .bind(id)
            .fetch_one(pool)
            .await?;
    if !pieces {
        return Ok((secs, peak_rss_kib(pid), storage.join(name)));
    }
    // A parallel export's pieces, as one file for the readers (downloaded after the timing).
    let joined = storage.join(format!("{id}.downloaded"));
    std::fs::write(&joined, api.download(id).await)?;
    Ok((secs, peak_rss_kib(pid), joined))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin = std::env::var("DATABASE_URL").context("DATABASE_URL (make bench-formats sets it)")?;
    let rows: i64 = env_or("ROWS", 1_000_000);
    let rounds: usize = env_or("ROUNDS", 3);
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let storage = out_dir.join("storage-formats");
    let _ = std::fs::remove_dir_all(&storage);
    std::fs::create_dir_all(&storage)?;
    duckdb(&["rows", "/dev/null"]).ok(); // installs the virtualenv before anything is timed

    let db_url = dataset(&admin, rows).await?;
    let mut args = DbArgs::parse_defaults();
    args.database_url = db_url.clone();
    let pool = db::connect(&args).await?;
    let server = Exportd::serve(exportd_env(&db_url, &storage, &[("RUST_LOG", "warn")])).await;
    let (pid, api) = (server.pid(), server.api());

    let cols = default_config_columns("orders").expect("orders is in the built-in config").join(", ");
    let select = format!("select {cols} from orders order by id");
    let json_select = format!(
        "select row_to_json(r) from orders as t cross join lateral (select {}) as r order by t.id",
        default_config_columns("orders")
            .unwrap()
            .iter()
            .map(|c| if c == "amount" { format!("t.{c}::text as {c}") } else { format!("t.{c}") })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (csv_file, duck_file) = (out_dir.join("psql.csv"), out_dir.join("duckdb.parquet"));
    let mut t: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    let (mut jsonl_peak, mut parquet_peak, mut parquet2_peak, mut duck_peak) = (0u64, 0u64, 0u64, 0u64);
    let (mut parquet_bytes, mut parquet2_bytes, mut duck_bytes, mut jsonl_bytes) = (0, 0, 0, 0);
    println!("{rows} rows, {rounds} rounds: psql \\copy CSV, exportd JSON Lines and Parquet, DuckDB Parquet");
    for round in 1..=rounds {
        let p = psql_copy_query(&db_url, &select, &csv_file, "format csv, header")?;
        let (j, jp, jf) = export(&api, &pool, pid, &storage, json!({"format": {"type": "jsonl"}})).await?;
        let (q, qp, qf) =
            export(&api, &pool, pid, &storage, json!({"format": {"type": "parquet"}, "parallelism": 1})).await?;
        let (q2, q2p, q2f) =
            export(&api, &pool, pid, &storage, json!({"format": {"type": "parquet"}, "parallelism": 2})).await?;
        let started = Instant::now();
        let duck = duckdb(&["export", &db_url, duck_file.to_str().unwrap()])?;
        let d = started.elapsed().as_secs_f64();
        let dp: u64 = duck.split_whitespace().nth(1).context("duckdb's peak RSS")?.parse()?;
        let pj = psql_copy_query(
            &db_url,
            &json_select,
            &out_dir.join("psql.jsonl"),
            "format csv, delimiter E'\\x02', quote E'\\x01'",
        )?;
        let pb = psql_copy_query(&db_url, &select, &out_dir.join("psql.bin"), "format binary")?;
        for (file, what) in
            [(&qf, "exportd Parquet"), (&q2f, "exportd Parquet, 2 ranges"), (&duck_file, "DuckDB Parquet")]
        {
            let n: i64 = duckdb(&["rows", file.to_str().unwrap()])?.parse()?;
            anyhow::ensure!(n == rows, "{what} reads back {n} rows of {rows}");
        }
        println!(
            "round {round}: psql CSV {p:.2}s | exportd JSONL {j:.2}s ({:.2}x) {:.1} MiB | exportd Parquet {q:.2}s ({:.2}x) {:.1} MiB | 2 ranges {q2:.2}s ({:.2}x) {:.1} MiB | DuckDB Parquet {d:.2}s ({:.2}x) {:.1} MiB | psql row_to_json {pj:.2}s, binary {pb:.2}s",
            j / p,
            jp as f64 / 1024.0,
            q / p,
            qp as f64 / 1024.0,
            q2 / p,
            q2p as f64 / 1024.0,
            d / p,
            dp as f64 / 1024.0
        );
        for (k, v) in [
            ("psql_csv", p),
            ("jsonl", j),
            ("parquet", q),
            ("parquet2", q2),
            ("duckdb", d),
            ("psql_json", pj),
            ("psql_binary", pb),
        ] {
            t.entry(k).or_default().push(v);
        }
        for (k, v) in [
            ("jsonl_ratio", j / p),
            ("parquet_ratio", q / p),
            ("parquet2_ratio", q2 / p),
            ("duckdb_ratio", d / p),
            ("parquet_to_duckdb", q / d),
            ("parquet2_to_duckdb", q2 / d),
        ] {
            t.entry(k).or_default().push(v);
        }
        (jsonl_peak, parquet_peak, duck_peak) = (jsonl_peak.max(jp), parquet_peak.max(qp), duck_peak.max(dp));
        parquet2_peak = parquet2_peak.max(q2p);
        (jsonl_bytes, parquet_bytes, duck_bytes) =
            (std::fs::metadata(&jf)?.len(), std::fs::metadata(&qf)?.len(), std::fs::metadata(&duck_file)?.len());
        parquet2_bytes = std::fs::metadata(&q2f)?.len();
    }
    drop(server);
    let m = |k: &str| median(&t[k]);
    let csv_bytes = std::fs::metadata(&csv_file)?.len();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mark = |ok: bool| if ok { "✓" } else { "✗" };
    println!();
    println!("| {rows} rows, medians of {rounds} rounds | time | / psql \\copy CSV | peak RSS | file |");
    println!("|---|---|---|---|---|");
    println!("| psql \\copy CSV | {:.2} s | 1 | | {:.0} MB |", m("psql_csv"), csv_bytes as f64 / 1e6);
    println!(
        "| exportd JSON Lines | {:.2} s | {:.3}x | {:.1} MiB | {:.0} MB |",
        m("jsonl"),
        m("jsonl_ratio"),
        mib(jsonl_peak),
        jsonl_bytes as f64 / 1e6
    );
    println!(
        "| exportd Parquet (zstd) | {:.2} s | {:.3}x ({:.3}x DuckDB) | {:.1} MiB (< 64 {}) | {:.0} MB |",
        m("parquet"),
        m("parquet_ratio"),
        m("parquet_to_duckdb"),
        mib(parquet_peak),
        mark(parquet_peak < 64 * 1024),
        parquet_bytes as f64 / 1e6
    );
    println!(
        "| exportd Parquet (zstd), 2 key ranges | {:.2} s | {:.3}x ({:.3}x DuckDB) | {:.1} MiB (< 64 {}) | {:.0} MB |",
        m("parquet2"),
        m("parquet2_ratio"),
        m("parquet2_to_duckdb"),
        mib(parquet2_peak),
        mark(parquet2_peak < 64 * 1024),
        parquet2_bytes as f64 / 1e6
    );
    println!(
        "| DuckDB Parquet (postgres scanner, ordered, zstd) | {:.2} s | {:.3}x | {:.1} MiB | {:.0} MB |",
        m("duckdb"),
        m("duckdb_ratio"),
        mib(duck_peak),
        duck_bytes as f64 / 1e6
    );
    println!(
        "| psql \\copy row_to_json (JSON made by PostgreSQL) / binary COPY (input of a Rust encoder) | {:.2} s / {:.2} s | {:.3}x / {:.3}x | | |",
        m("psql_json"),
        m("psql_binary"),
        m("psql_json") / m("psql_csv"),
        m("psql_binary") / m("psql_csv")
    );
    let results = json!({
        "rows": rows, "rounds": rounds, "seconds": t,
        "peak_rss_kib": {"jsonl": jsonl_peak, "parquet": parquet_peak, "parquet_2_ranges": parquet2_peak, "duckdb": duck_peak},
        "bytes": {"csv": csv_bytes, "jsonl": jsonl_bytes, "parquet": parquet_bytes, "parquet_2_ranges": parquet2_bytes, "duckdb": duck_bytes},
    });
    std::fs::write(out_dir.join(format!("formats-{rows}.json")), serde_json::to_vec_pretty(&results)?)?;
    Ok(())
}
