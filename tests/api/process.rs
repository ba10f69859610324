//! The real `exportd` binary, killed and stopped with real signals.

use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use crate::{
    helpers::*,
    support::process::{Exportd, exportd_env, peak_rss_kib},
};

/// `exportd serve` with one worker slot on `db`, writing to `storage`.
async fn serve(db: &TestDb, storage: &std::path::Path) -> Exportd {
    let env = exportd_env(&db.url, storage, &[("EXPORTD_WORKER_CONCURRENCY", "1"), ("RUST_LOG", "warn")]);
    Exportd::serve(env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_export_then_restart_resumes_within_15s_identically() {
    let db = test_db().await;
    seed_nasty(&db.pool, 20_000).await;
    let reference = copy_reference(&db.pool).await;
    let storage = tempfile::tempdir().unwrap();
    let mut p = serve(&db, storage.path()).await;
    let api = p.api();
    let id = api.create_export(Some(json!({"chunkSize": 1000, "maxRowsPerSecond": 5000}))).await;
    api.wait_rows(id, 3_000, Duration::from_secs(30)).await;
    p.kill9();
    let killed_at = status_db(&db, id).await;
    assert_eq!(killed_at.0, "running");

    let restarted = Instant::now();
    p.start().await;
    // It continues from the checkpoint (not from zero) within about 15 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = api.status(id).await;
        if s["attempts"].as_i64().unwrap() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not resumed: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed_after = restarted.elapsed();
    assert!(resumed_after < Duration::from_secs(15), "resumed after {resumed_after:?}");
    let s = api.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(s["attempts"], 2);
    assert_same_bytes(&api.download(id).await, &reference);
    let runs = exportd::db::exports::list_runs(&db.pool, id).await.unwrap();
    assert!(
        runs[1].start_key.as_ref().and_then(exportd::model::Key::as_int).unwrap() >= killed_at.1,
        "resumed from the checkpoint"
    );
    p.terminate();
}

async fn status_db(db: &TestDb, id: Uuid) -> (String, i64) {
    sqlx::query_as("select status, coalesce(last_processed_key[1]::bigint, 0) from exports where id = $1")
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
    let mut p = serve(&db, storage.path()).await;
    let api = p.api();
    let id = api.create_export(Some(json!({"chunkSize": 1000, "maxRowsPerSecond": 5000}))).await;
    api.wait_rows(id, 2_000, Duration::from_secs(30)).await;
    let (took, clean) = p.terminate();
    assert!(clean, "clean exit");
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    let row = export_row(&db.pool, id).await;
    assert_eq!(row.owner, None, "released");
    assert_eq!(row.attempts, 0, "a release gives its attempt back");

    let restarted = Instant::now();
    p.start().await;
    let s = api.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(s["attempts"], 1);
    let runs = exportd::db::exports::list_runs(&db.pool, id).await.unwrap();
    assert_eq!(runs[0].outcome.as_deref(), Some("released"));
    assert!(restarted.elapsed() < Duration::from_secs(30));
    assert_same_bytes(&api.download(id).await, &reference);
    p.terminate();
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

    let mut p = serve(&db, storage.path()).await;
    let api = p.api();
    let before = peak_rss_kib(p.pid());
    let resp = api.client.get(api.url(&format!("/api/export/{id}/download"))).send().await.unwrap();
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
    let peak = peak_rss_kib(p.pid());
    // Buffering even a tenth of the file would show; streaming stays within a few MiB.
    assert!(peak < 100 * 1024, "peak RSS {peak} KiB while serving a {SIZE}-byte file (before: {before} KiB)");
    assert!(peak - before < 32 * 1024, "RSS grew by {} KiB while serving", peak - before);
    p.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exportd_api_serves_only_http_and_exportd_worker_only_runs_exports() {
    let db = test_db().await;
    seed_nasty(&db.pool, 5_000).await;
    let reference = copy_reference(&db.pool).await;
    let storage = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let env = exportd_env(&db.url, storage.path(), &[("RUST_LOG", "info")]);
    let api_process = Exportd::api_only(env.clone(), &logs.path().join("api.log")).await;
    let api = api_process.api();
    let id = api.create_export(None).await;
    // The API process registered no queue worker: nothing can take the export but a worker.
    let workers: i64 = sqlx::query_scalar("select count(*) from apalis.workers").fetch_one(&db.pool).await.unwrap();
    assert_eq!(workers, 0);
    let metrics = api.client.get(api.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("exportd_worker_running_exports 0"), "{metrics}");
    assert!(!metrics.contains("exportd_worker_slots"), "no slots in an API process: {metrics}");
    assert_eq!(api.status(id).await["status"], "queued");

    let worker = Exportd::worker_logged(env, &logs.path().join("worker.log")).await;
    assert_eq!(api.wait_finished(id, Duration::from_secs(60)).await["status"], "completed");
    assert_same_bytes(&api.download(id).await, &reference);
    drop(worker);
    drop(api_process);
    // Each says at start what it is and what it connects to (no password in the URL).
    let api_log = std::fs::read_to_string(logs.path().join("api.log")).unwrap();
    assert!(
        api_log.contains("exportd api: HTTP API only (no workers)") && api_log.contains("role=\"api\""),
        "{api_log}"
    );
    assert!(api_log.contains("database=postgres://") && api_log.contains("listen=http://127.0.0.1:"), "{api_log}");
    let worker_log = std::fs::read_to_string(logs.path().join("worker.log")).unwrap();
    assert!(worker_log.contains("exportd worker: export workers only (no HTTP API)"), "{worker_log}");
    assert!(worker_log.contains("role=\"worker\"") && worker_log.contains("worker_slots=5"), "{worker_log}");
}
