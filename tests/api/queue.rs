//! Queue hygiene: finished jobs and dead worker rows are purged, live ones kept.

use std::time::Duration;

use exportd::{
    db::{housekeeping::ScanCursor, queue},
    export::queue::{self as export_queue, QUEUE},
};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_whose_queue_job_is_gone_get_a_new_one_and_finish() {
    let db = test_db().await;
    seed_nasty(&db.pool, 300).await;
    // No workers yet: the exports stay queued while their jobs are taken away.
    let app = spawn_app(db, AppOptions { workers: 0, ..Default::default() }).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.create_export(None).await);
    }
    let pool = app.db.pool.clone();
    // Two lose their job row, one has a job the queue gave up on; two keep a live job.
    sqlx::query("delete from apalis.jobs where id in (select queue_job_id from exports where id = any($1))")
        .bind(&ids[..2])
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("update apalis.jobs set status = 'Killed' where id = (select queue_job_id from exports where id = $1)")
        .bind(ids[2])
        .execute(&pool)
        .await
        .unwrap();
    let job_of = |id| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("select queue_job_id from exports where id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let live_job = job_of(ids[3]).await;

    // Too young to count as orphans.
    let mut cursor = ScanCursor::default();
    assert_eq!(export_queue::requeue_orphans(&pool, Duration::from_secs(3600), &mut cursor).await.unwrap(), 0);
    // A scan looks at a bounded slice of the queued exports per round and goes on from its
    // cursor: every orphan is found within the rounds the backlog needs.
    let mut found = 0;
    let mut cursor = ScanCursor::default();
    for _ in 0..3 {
        found += exportd::db::housekeeping::exports_without_live_job(&pool, &[QUEUE], 0.0, cursor, 2)
            .await
            .map(|(orphans, next)| {
                cursor = next;
                orphans.len()
            })
            .unwrap();
    }
    assert_eq!(found, 3, "3 orphans among 5 queued exports, 2 per round");
    assert_eq!(cursor, ScanCursor::default(), "the third round reaches the end and starts over");

    let mut cursor = ScanCursor::default();
    assert_eq!(export_queue::requeue_orphans(&pool, Duration::ZERO, &mut cursor).await.unwrap(), 3);
    assert_eq!(export_queue::requeue_orphans(&pool, Duration::ZERO, &mut cursor).await.unwrap(), 0, "nothing left");
    assert_eq!(job_of(ids[3]).await, live_job, "an export with a live job keeps it");

    // Workers now run all five, the re-enqueued ones included.
    let (db, storage) = app.stop().await;
    let app = spawn_app_on(db, storage, AppOptions { workers: 2, ..Default::default() }).await;
    let reference = copy_reference(&app.db.pool).await;
    for id in ids {
        assert_eq!(app.wait_finished(id, Duration::from_secs(30)).await["status"], "completed");
        assert_same_bytes(&app.download(id).await, &reference);
    }
}

/// Eight worker slots, eight exports at once: with the pool sized for the slots (3 each plus
/// room for the API), every export finishes in its first run and the API answers meanwhile.
/// (The exports are throttled to overlap, so the eight slots are the throttled lane's.)
/// Before, a fixed pool of 16 held by 8 queue listeners and 8 chunk readers left nothing for
/// checkpoints: runs failed on "pool timed out" and were retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_worker_slots_run_eight_exports_at_once_without_starving_the_pool() {
    let db = test_db().await;
    seed_nasty(&db.pool, 10_000).await;
    let reference = copy_reference(&db.pool).await;
    // One owner's eight: its quota of running exports is raised to match.
    let opts =
        AppOptions { workers: 1, throttled_workers: Some(8), max_running_per_owner: Some(8), ..Default::default() };
    let app = spawn_app(db, opts).await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        // About 3 s each, so all eight overlap.
        ids.push(app.create_export(Some(serde_json::json!({"chunkSize": 500, "maxRowsPerSecond": 3500}))).await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let running: i64 = sqlx::query_scalar("select count(*) from exports where owner is not null")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        if running == 8 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "eight exports never ran at once ({running})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The API answers while all eight run (a pool timeout would be a 503 here).
    for id in &ids {
        assert_eq!(app.status(*id).await["status"], "running");
    }
    for id in &ids {
        let s = app.wait_finished(*id, Duration::from_secs(60)).await;
        assert_eq!((s["status"].as_str(), s["attempts"].as_i64()), (Some("completed"), Some(1)), "{s}");
        let runs = exportd::db::exports::list_runs(&app.db.pool, *id).await.unwrap();
        assert_eq!(runs.len(), 1, "one run, no retry: {runs:?}");
        assert_same_bytes(&app.download(*id).await, &reference);
    }
}

/// Two processes rescue the same orphan at once. The schedule is forced by order, not by
/// timing: both scans (each on a pool of its own, as two processes have) see the orphan before
/// either rescues it, then both rescue it at once. The database lets one give it a new job;
/// before, the second rescue overwrote the first's job id and the export had two live jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_rescuing_the_same_orphan_enqueue_one_job() {
    let db = test_db().await;
    seed_nasty(&db.pool, 100).await;
    let app = spawn_app(db, AppOptions { workers: 0, ..Default::default() }).await;
    let id = app.create_export(None).await;
    let pool_a = app.db.pool.clone();
    sqlx::query("delete from apalis.jobs where job_type = $1").bind(QUEUE).execute(&pool_a).await.unwrap();
    let mut args = exportd::config::DbArgs::parse_defaults();
    args.database_url = app.db.url.clone();
    let pool_b = exportd::db::connect(&args).await.unwrap();
    let scan = |pool: sqlx::PgPool| async move {
        let (orphans, _) =
            exportd::db::housekeeping::exports_without_live_job(&pool, &[QUEUE], 0.0, ScanCursor::default(), 100)
                .await
                .unwrap();
        assert_eq!(orphans.iter().map(|o| o.id).collect::<Vec<_>>(), [id]);
        orphans.into_iter().next().unwrap()
    };
    let (seen_a, seen_b) = (scan(pool_a.clone()).await, scan(pool_b.clone()).await);
    let (a, b) =
        tokio::join!(export_queue::rescue_orphan(&pool_a, &seen_a), export_queue::rescue_orphan(&pool_b, &seen_b));
    let new_jobs: Vec<String> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(new_jobs.len(), 1, "exactly one rescue wins: {new_jobs:?}");
    let jobs: Vec<String> = sqlx::query_scalar("select id from apalis.jobs where job_type = $1")
        .bind(QUEUE)
        .fetch_all(&pool_a)
        .await
        .unwrap();
    assert_eq!(jobs, new_jobs, "one live job for the export");
    assert_eq!(export_row(&pool_a, id).await.queue_job_id.as_deref(), Some(new_jobs[0].as_str()));
}

/// The scan goes through running exports by key too: with 2 per round, 5 running exports
/// whose jobs are gone are all found within three rounds. Before, every round read the same
/// first slice of running exports, so past it some were never looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orphan_scan_reaches_every_running_export() {
    let db = test_db().await;
    seed_nasty(&db.pool, 100).await;
    let app = spawn_app(db, AppOptions { workers: 0, ..Default::default() }).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.create_export(None).await);
    }
    let pool = app.db.pool.clone();
    // Running, owned by a process that died along with the queue's record of the job.
    sqlx::query("update exports set status = 'running' where id = any($1)").bind(&ids).execute(&pool).await.unwrap();
    sqlx::query("delete from apalis.jobs where job_type = $1").bind(QUEUE).execute(&pool).await.unwrap();
    let mut found = std::collections::BTreeSet::new();
    let mut cursor = ScanCursor::default();
    for _ in 0..3 {
        let (orphans, next) =
            exportd::db::housekeeping::exports_without_live_job(&pool, &[QUEUE], 0.0, cursor, 2).await.unwrap();
        found.extend(orphans.into_iter().map(|o| o.id));
        cursor = next;
    }
    assert_eq!(found, ids.iter().copied().collect(), "every running orphan found");
    assert_eq!(cursor, ScanCursor::default(), "the third round reaches the end and starts over");
}
