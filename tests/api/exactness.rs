//! Exports equal PostgreSQL's own COPY output byte for byte, whatever the data and chunking.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nasty_data_equals_copy_for_several_chunk_sizes() {
    let db = test_db().await;
    seed_nasty(&db.pool, 20_007).await;
    let reference = copy_reference(&db.pool).await;
    let app = spawn_app(db, AppOptions::default()).await;
    for chunk in [100, 1_000, 7_919, 100_000] {
        let id = app.create_export(Some(json!({"chunkSize": chunk}))).await;
        let s = app.wait_finished(id, Duration::from_secs(60)).await;
        assert_eq!(s["status"], "completed", "{s}");
        assert_eq!(s["rowsWritten"], 20_007 + 8);
        assert_same_bytes(&app.download(id).await, &reference);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_settings_export_of_200k_rows_equals_copy() {
    let db = test_db().await;
    seed_nasty(&db.pool, 200_000).await;
    let reference = copy_reference(&db.pool).await;
    let app = spawn_app(db, AppOptions::default()).await;
    let id = app.create_export(None).await;
    let s = app.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["bytesWritten"], reference.len() as u64);
    assert_same_bytes(&app.download(id).await, &reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_table_gives_the_header_only() {
    let db = test_db().await;
    exportd::db::seed::seed_orders(&db.pool, 0, |_| {}).await.unwrap();
    let reference = copy_reference(&db.pool).await;
    assert!(reference.starts_with(b"id,created_at,"));
    let app = spawn_app(db, AppOptions::default()).await;
    let id = app.create_export(None).await;
    let s = app.wait_finished(id, Duration::from_secs(30)).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["rowsWritten"], 0);
    assert_same_bytes(&app.download(id).await, &reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_inserted_during_an_export_stop_at_the_high_water_mark() {
    let db = test_db().await;
    seed_nasty(&db.pool, 5_000).await;
    let reference = copy_reference(&db.pool).await;
    let app = spawn_app(db, AppOptions::default()).await;
    let id = app.create_export(Some(json!({"chunkSize": 500, "maxRowsPerSecond": 10000}))).await;
    // Rows added after the export was created lie above its upper bound.
    sqlx::query("insert into orders (created_at, note) select now(), 'late' from generate_series(1, 3000)")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let s = app.wait_finished(id, Duration::from_secs(30)).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["upperBoundId"], 9_000_009);
    assert_same_bytes(&app.download(id).await, &reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_reader_is_woken_once_per_128_kib_not_per_server_write_and_gets_every_byte() {
    use crate::support::process::{Exportd, scrape_metrics};
    // The real binary, so its /metrics count only this test's reads. PostgreSQL writes a
    // COPY 8 KiB at a time; a reader faster than the server waited once per write before the
    // socket's low-water mark. Each chunk's last bytes (fewer than the mark) and the last,
    // short chunk still arrive: the mark is lowered as a chunk ends and after a moment's silence.
    let db = test_db().await;
    seed_nasty(&db.pool, 30_001).await;
    let reference = copy_reference(&db.pool).await;
    let storage = tempfile::tempdir().unwrap();
    let (mut p, metrics_addr) = Exportd::serve_measured(&db.url, storage.path()).await;
    let api = p.api();
    let id = api.create_export(Some(json!({"chunkSize": 7_000}))).await;
    let s = api.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_same_bytes(&api.download(id).await, &reference);

    let metrics = scrape_metrics(&metrics_addr).await;
    let waits = crate::operability::metric(&metrics, "exportd_copy_socket_waits_total").unwrap();
    let per_wait = reference.len() as f64 / waits;
    println!("{waits} waits for {} bytes", reference.len());
    assert!(per_wait > 32.0 * 1024.0, "{waits} waits for {} bytes: {per_wait:.0} bytes per wait", reference.len());
    p.terminate();
}
