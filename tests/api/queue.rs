//! Queue hygiene: finished jobs and dead worker rows are purged, live ones kept.

use std::time::Duration;

use exportd::{db::queue, export::queue::QUEUE};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_and_dead_workers_are_purged() {
    let db = test_db().await;
    seed_nasty(&db.pool, 100).await;
    let app = spawn_app(db, AppOptions { workers: 1, ..Default::default() }).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.create_export(None).await);
    }
    for id in &ids {
        assert_eq!(app.wait_finished(*id, Duration::from_secs(30)).await["status"], "completed");
    }
    let pool = &app.db.pool;
    let count = |sql: &'static str| async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap() };
    // The job's result is written just after the export completes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count("select count(*) from apalis.jobs where status = 'Done'").await < 3 {
        assert!(tokio::time::Instant::now() < deadline, "jobs not marked done");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(queue::purge_finished_jobs(pool, QUEUE, Duration::from_secs(3600)).await.unwrap(), 0, "recent kept");
    assert_eq!(queue::purge_finished_jobs(pool, QUEUE, Duration::ZERO).await.unwrap(), 3);
    assert_eq!(count("select count(*) from apalis.jobs").await, 0);

    sqlx::query(
        "insert into apalis.workers (id, worker_type, storage_name, layers, last_seen) \
         values ('dead-worker', $1, 'PostgresStorage', '', now() - interval '2 hours')",
    )
    .bind(QUEUE)
    .execute(pool)
    .await
    .unwrap();
    let live = count("select count(*) from apalis.workers where last_seen > now() - interval '1 minute'").await;
    assert!(live >= 1);
    assert_eq!(queue::purge_dead_workers(pool, QUEUE, Duration::from_secs(3600)).await.unwrap(), 1);
    assert_eq!(count("select count(*) from apalis.workers where id = 'dead-worker'").await, 0);
    assert_eq!(count("select count(*) from apalis.workers").await, live, "live workers are kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_concurrency_bounds_the_exports_running_at_once() {
    let db = test_db().await;
    seed_nasty(&db.pool, 2_000).await;
    let app = spawn_app(db, AppOptions { workers: 2, ..Default::default() }).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.create_export(Some(serde_json::json!({"chunkSize": 500, "maxRowsPerSecond": 4000}))).await);
    }
    let mut most = 0;
    loop {
        let running: i64 = sqlx::query_scalar("select count(*) from exports where owner is not null")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        most = most.max(running);
        let done: i64 = sqlx::query_scalar("select count(*) from exports where status = 'completed'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        if done == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(most, 2, "EXPORTD_WORKER_CONCURRENCY=2 runs at most two exports at once");
}
