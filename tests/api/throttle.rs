//! `maxRowsPerSecond` keeps the export at the asked rate (within 10%).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_holds_the_asked_rate() {
    let db = test_db().await;
    exportd::db::seed::seed_orders(&db.pool, 6_000, |_| {}).await.unwrap();
    let reference = copy_reference(&db.pool).await;
    let app = spawn_app(db, AppOptions::default()).await;
    let id = app.create_export(Some(json!({"chunkSize": 1000, "maxRowsPerSecond": 2000}))).await;
    let s = app.wait_finished(id, Duration::from_secs(30)).await;
    assert_eq!(s["status"], "completed");
    let at = |f: &str| s[f].as_str().unwrap().parse::<DateTime<Utc>>().unwrap();
    let secs = (at("finishedAt") - at("startedAt")).as_seconds_f64();
    let rate = 6_000.0 / secs;
    assert!((1800.0..=2200.0).contains(&rate), "asked 2000 rows/s, got {rate:.0} rows/s over {secs:.2}s");
    assert_same_bytes(&app.download(id).await, &reference);
}

/// Two exports at 1 row/s (each would hold a worker slot for over half an hour) do not delay a
/// third: throttled exports run in a lane of their own. Forced by state, not time: both are
/// running with rows written before the third is created, and are still running when it has
/// completed. Before the lanes, the third waited in the queue behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_exports_at_one_row_a_second_do_not_delay_a_third() {
    let db = test_db().await;
    exportd::db::seed::seed_orders(&db.pool, 2_000, |_| {}).await.unwrap();
    let reference = copy_reference(&db.pool).await;
    let app = spawn_app(db, AppOptions::default()).await;
    let mut slow = Vec::new();
    for _ in 0..2 {
        slow.push(app.create_export(Some(json!({"maxRowsPerSecond": 1, "chunkSize": 100}))).await);
    }
    for id in &slow {
        app.wait_rows(*id, 1, Duration::from_secs(30)).await;
    }
    let fast = app.create_export(None).await;
    assert_eq!(app.wait_finished(fast, Duration::from_secs(30)).await["status"], "completed");
    assert_same_bytes(&app.download(fast).await, &reference);
    for id in slow {
        let s = app.status(id).await;
        assert_eq!(s["status"], "running", "{s}");
        assert!(s["rowsWritten"].as_i64().unwrap() < 2_000, "{s}");
        let resp = app.client.delete(app.url(&format!("/api/export/{id}"))).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
}
