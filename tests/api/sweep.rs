//! The sweeper: what ended exports leave behind is deleted in the end.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;
use crate::lifecycle::{app, delete, export_dir};

/// After exports complete and expire, one sweep (as the housekeeping loop runs it, called
/// directly with nothing kept) leaves the storage directory and the tables as they were
/// before them, and an idempotency key can be used again. What a crash would leave behind is
/// made by hand: a file back in an expired export's directory (a crash between the status
/// change and the file's deletion), a stray file beside a live export's file (a stale
/// runner's), and the directory of an export whose row is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_returns_storage_and_tables_to_their_size_before_the_exports() {
    use exportd::export::sweep::{Sweep, sweep};
    let app = app(2_000, AppOptions::default()).await;
    let pool = app.db.pool.clone();
    let tables = || {
        let pool = pool.clone();
        async move {
            let mut counts = Vec::new();
            for table in ["exports", "export_runs", "apalis.jobs"] {
                let sql = format!("select count(*) from {table}");
                counts.push(sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)).fetch_one(&pool).await.unwrap());
            }
            counts
        }
    };
    let files = |root: &std::path::Path| -> usize {
        std::fs::read_dir(root)
            .unwrap()
            .map(|d| 1 + std::fs::read_dir(d.unwrap().path()).map_or(0, |f| f.count()))
            .sum()
    };
    let root = app.storage.path().to_path_buf();
    let before = (tables().await, files(&root));

    let keyed = |key: &str| {
        app.client.post(app.url("/api/export")).header("Idempotency-Key", key).json(&json!({"chunkSize": 500}))
    };
    let mut ids = vec![
        keyed("monthly").send().await.unwrap().json::<Value>().await.unwrap()["jobId"]
            .as_str()
            .unwrap()
            .parse::<Uuid>()
            .unwrap(),
    ];
    for _ in 0..3 {
        ids.push(app.create_export(Some(json!({"chunkSize": 500}))).await);
    }
    for id in &ids {
        assert_eq!(app.wait_finished(*id, Duration::from_secs(30)).await["status"], "completed");
    }
    let live = ids[3];
    let live_file = export_row(&pool, live).await.file_name.unwrap();
    sqlx::query("update exports set expires_at = now() where id = any($1)")
        .bind(&ids[..3])
        .execute(&pool)
        .await
        .unwrap();
    exportd::app::expire(&pool, app.engine.storage().as_ref()).await;
    std::fs::create_dir_all(export_dir(&app, ids[0])).unwrap();
    std::fs::write(export_dir(&app, ids[0]).join("left-by-a-crash.csv"), b"id\n1\n").unwrap();
    std::fs::write(export_dir(&app, live).join("stale-runner.csv"), b"id\n").unwrap();
    std::fs::create_dir_all(root.join(Uuid::new_v4().to_string())).unwrap();

    let nothing_kept = Sweep {
        keep_ended_exports: Duration::ZERO,
        keep_finished_jobs: Duration::ZERO,
        stray_file_age: Duration::ZERO,
    };
    let swept = sweep(&pool, app.engine.storage().as_ref(), &nothing_kept).await.unwrap();
    assert_eq!((swept.exports, swept.export_dirs, swept.files), (3, 2, 1), "{swept:?}");
    assert_eq!(
        app.download(live).await.len() as i64,
        export_row(&pool, live).await.bytes_written,
        "the live file stays"
    );
    assert!(app.storage.path().join(&live_file).exists());
    // The live export expires too: everything is back to how it was.
    assert_eq!(delete(&app, live).await.status(), 200);
    // The queue marks a job done just after its export completes: wait for that, not a sleep.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sqlx::query_scalar::<_, i64>("select count(*) from apalis.jobs where status <> 'Done'")
        .fetch_one(&pool)
        .await
        .unwrap()
        > 0
    {
        assert!(tokio::time::Instant::now() < deadline, "queue jobs never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sweep(&pool, app.engine.storage().as_ref(), &nothing_kept).await.unwrap();
    assert_eq!((tables().await, files(&root)), before);
    // The key is free again: a new export, not the purged one.
    let again: Value = keyed("monthly").send().await.unwrap().json().await.unwrap();
    assert_ne!(again["jobId"].as_str().unwrap(), ids[0].to_string());
}
