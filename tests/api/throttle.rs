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
