//! The real `exportd` binary, killed and stopped with real signals.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

/// An `exportd serve` process on a free port.
struct Proc {
    child: Child,
    base: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start(db_url: &str, storage: &std::path::Path, port: u16) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_exportd"))
        .arg("serve")
        .env("DATABASE_URL", db_url)
        .env("EXPORTD_LISTEN", format!("127.0.0.1:{port}"))
        .env("EXPORTD_STORAGE_DIR", storage)
        .env("EXPORTD_WORKER_CONCURRENCY", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start exportd");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{base}/healthz")).await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(Instant::now() < deadline, "exportd did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Proc { child, base }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig}");
}

async fn status(base: &str, id: Uuid) -> Value {
    reqwest::get(format!("{base}/api/export/{id}/status")).await.unwrap().json().await.unwrap()
}

async fn create(base: &str, body: Value) -> Uuid {
    let v: Value = reqwest::Client::new()
        .post(format!("{base}/api/export"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["jobId"].as_str().unwrap().parse().unwrap()
}

async fn wait_rows(base: &str, id: Uuid, rows: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(base, id).await["rowsWritten"].as_i64().unwrap() < rows {
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_completed(base: &str, id: Uuid, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let s = status(base, id).await;
        if s["status"] == "completed" {
            return s;
        }
        assert!(Instant::now() < deadline, "not completed in {limit:?}: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn download(base: &str, id: Uuid) -> Vec<u8> {
    reqwest::get(format!("{base}/api/export/{id}/download")).await.unwrap().bytes().await.unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_export_then_restart_resumes_within_15s_identically() {
    let db = test_db().await;
    seed_nasty(&db.pool, 20_000).await;
    let reference = copy_reference(&db.pool).await;
    let storage = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut p = start(&db.url, storage.path(), port).await;
    let id = create(&p.base, json!({"chunkSize": 1000, "maxRowsPerSecond": 5000})).await;
    wait_rows(&p.base, id, 3_000).await;
    signal(&p.child, "-9");
    p.child.wait().unwrap();
    let killed_at = status_db(&db, id).await;
    assert_eq!(killed_at.0, "running");

    let restarted = Instant::now();
    let mut p = start(&db.url, storage.path(), port).await;
    // It continues from the checkpoint (not from zero) within about 15 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(&p.base, id).await;
        if s["attempts"].as_i64().unwrap() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not resumed: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed_after = restarted.elapsed();
    assert!(resumed_after < Duration::from_secs(15), "resumed after {resumed_after:?}");
    let s = wait_completed(&p.base, id, Duration::from_secs(60)).await;
    assert_eq!(s["attempts"], 2);
    assert_same_bytes(&download(&p.base, id).await, &reference);
    let runs = exportd::db::exports::list_runs(&db.pool, id).await.unwrap();
    assert!(runs[1].start_id.unwrap() >= killed_at.1, "resumed from the checkpoint");
    signal(&p.child, "-TERM");
    p.child.wait().unwrap();
}

async fn status_db(db: &TestDb, id: Uuid) -> (String, i64) {
    sqlx::query_as("select status, coalesce(last_processed_id, 0) from exports where id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_at_a_chunk_boundary_and_exits_quickly() {
    let db = test_db().await;
    seed_nasty(&db.pool, 20_000).await;
    let reference = copy_reference(&db.pool).await;
    let storage = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut p = start(&db.url, storage.path(), port).await;
    let id = create(&p.base, json!({"chunkSize": 1000, "maxRowsPerSecond": 5000})).await;
    wait_rows(&p.base, id, 2_000).await;
    let stopping = Instant::now();
    signal(&p.child, "-TERM");
    let exit = p.child.wait().unwrap();
    let took = stopping.elapsed();
    assert!(exit.success(), "clean exit: {exit:?}");
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    let row = export_row(&db.pool, id).await;
    assert_eq!(row.owner, None, "released");
    assert_eq!(row.attempts, 0, "a release gives its attempt back");

    let restarted = Instant::now();
    let mut p = start(&db.url, storage.path(), port).await;
    let s = wait_completed(&p.base, id, Duration::from_secs(60)).await;
    assert_eq!(s["attempts"], 1);
    let runs = exportd::db::exports::list_runs(&db.pool, id).await.unwrap();
    assert_eq!(runs[0].outcome.as_deref(), Some("released"));
    assert!(restarted.elapsed() < Duration::from_secs(30));
    assert_same_bytes(&download(&p.base, id).await, &reference);
    signal(&p.child, "-TERM");
    p.child.wait().unwrap();
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_streams_a_file_far_larger_than_memory() {
    use futures::StreamExt;
    let db = test_db().await;
    exportd::db::seed::seed_orders(&db.pool, 10, |_| {}).await.unwrap();
    let storage = tempfile::tempdir().unwrap();
    // A completed export whose file is 1 GiB (sparse: instant to make, real to read).
    const SIZE: u64 = 1 << 30;
    let id = Uuid::new_v4();
    std::fs::create_dir_all(storage.path().join(id.to_string())).unwrap();
    let name = format!("{id}/big.csv");
    std::fs::File::create(storage.path().join(&name)).unwrap().set_len(SIZE).unwrap();
    sqlx::query(
        "insert into exports (id, status, file_name, bytes_written, rows_written, finished_at, started_at) \
         values ($1, 'completed', $2, $3, 0, now(), now())",
    )
    .bind(id)
    .bind(&name)
    .bind(SIZE as i64)
    .execute(&db.pool)
    .await
    .unwrap();

    let port = free_port();
    let mut p = start(&db.url, storage.path(), port).await;
    let before = peak_rss_kib(p.child.id());
    let resp = reqwest::get(format!("{}/api/export/{id}/download", p.base)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], SIZE.to_string().as_str());
    let mut stream = resp.bytes_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.iter().all(|b| *b == 0));
        total += chunk.len() as u64;
    }
    assert_eq!(total, SIZE);
    let peak = peak_rss_kib(p.child.id());
    // Buffering even a tenth of the file would show; streaming stays within a few MiB.
    assert!(peak < 100 * 1024, "peak RSS {peak} KiB while serving a {SIZE}-byte file (before: {before} KiB)");
    assert!(peak - before < 32 * 1024, "RSS grew by {} KiB while serving", peak - before);
    signal(&p.child, "-TERM");
    p.child.wait().unwrap();
}
