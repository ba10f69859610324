//! Two runners on one export (at-least-once delivery): the one that lost ownership can move
//! neither the checkpoint nor a byte of the served file.

use std::time::Duration;

use exportd::export::engine::Outcome;
use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_runner_changes_nothing() {
    let db = test_db().await;
    seed_nasty(&db.pool, 6_000).await;
    let reference = copy_reference(&db.pool).await;
    let app = spawn_app(db, AppOptions { workers: 0, ..Default::default() }).await;
    // Slow enough that both runners overlap: 200-row chunks at 2000 rows/s.
    let id = app.create_export(Some(json!({"chunkSize": 200, "maxRowsPerSecond": 2000}))).await;

    let first = tokio::spawn({
        let engine = app.engine.clone();
        async move { engine.execute(id, "runner-A").await }
    });
    // Wait until A has checkpointed a few chunks, then let B take over as a redelivery would.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while export_row(&app.db.pool, id).await.rows_written < 600 {
        assert!(tokio::time::Instant::now() < deadline, "runner A made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a_file = export_row(&app.db.pool, id).await.file_name.unwrap();
    // This process's metrics (shared by the tests running beside this one: they only grow).
    let refused = r#"exportd_fenced_writes_refused_total{write="checkpoint"}"#;
    let (refused_before, takeovers_before) =
        (crate::operability::in_process(refused), crate::operability::in_process("exportd_takeovers_total"));
    let second = tokio::spawn({
        let engine = app.engine.clone();
        async move { engine.execute(id, "runner-B").await }
    });

    assert_eq!(first.await.unwrap(), Outcome::Lost, "A notices at its next checkpoint and stops");
    assert_eq!(second.await.unwrap(), Outcome::Completed);
    assert!(crate::operability::in_process(refused) > refused_before, "A's refused checkpoint is counted");
    assert!(crate::operability::in_process("exportd_takeovers_total") > takeovers_before, "B's takeover is counted");

    let row = export_row(&app.db.pool, id).await;
    assert_ne!(row.file_name.as_deref(), Some(a_file.as_str()), "B never wrote into A's file");
    assert_same_bytes(&app.download(id).await, &reference);

    let runs = exportd::db::exports::list_runs(&app.db.pool, id).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!((runs[0].worker.as_str(), runs[0].outcome.as_deref()), ("runner-A", Some("superseded")));
    assert_eq!((runs[1].worker.as_str(), runs[1].outcome.as_deref()), ("runner-B", Some("completed")));
    // A's run was ended when B claimed the export: ownership never overlapped.
    assert!(runs[0].ended_at.unwrap() <= runs[1].started_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_checkpoint_rejects_a_stale_token() {
    let db = test_db().await;
    seed_nasty(&db.pool, 10).await;
    let app = spawn_app(db, AppOptions { workers: 0, ..Default::default() }).await;
    let id = app.create_export(None).await;
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    use exportd::{
        db::runs::{Fence, claim_export, complete_export, save_checkpoint},
        model::Checkpoint,
    };
    let mut conn = app.db.pool.acquire().await.unwrap();
    let c = &mut *conn;
    claim_export(c, Fence { export_id: id, token: a }, "A", 5).await.unwrap();
    let cp = |last: i64| Checkpoint {
        last: Some(exportd::model::Key::int(last)),
        rows: last,
        bytes: last * 10,
        file_name: "x".into(),
        file_state: None,
    };
    assert!(save_checkpoint(c, Fence { export_id: id, token: a }, &cp(5), 0, &[]).await.unwrap());
    claim_export(c, Fence { export_id: id, token: b }, "B", 5).await.unwrap();
    assert!(
        !save_checkpoint(c, Fence { export_id: id, token: a }, &cp(9), 0, &[]).await.unwrap(),
        "stale token cannot checkpoint"
    );
    assert!(
        !complete_export(c, Fence { export_id: id, token: a }, &cp(9), std::time::Duration::from_secs(60))
            .await
            .unwrap(),
        "stale token cannot complete"
    );
    let row = export_row(&app.db.pool, id).await;
    assert_eq!((row.last_processed_key, row.owner), (Some(exportd::model::Key::int(5)), Some(b)));
}

/// A completed export must never serve bytes of a runner that lost it. The schedule, forced
/// with pause points (no sleeps): A checkpoints two chunks and is held with chunk 3 read but
/// not written (a SIGSTOPped or partitioned runner); the rows of chunk 3 change; B takes over
/// (A may be alive, so B copies the prefix into its own file), is held before reading a chunk,
/// is told to stop (SIGTERM) and releases before its first checkpoint, so `file_name` still
/// names A's file and nobody owns the export; C claims and completes; A wakes and writes its
/// stale chunk 3. Before the fix C adopted A's file in place ("owner is null") and A's late
/// write landed in the served file: stale values and torn rows in a `completed` export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_runner_cannot_write_into_a_file_a_later_run_adopts() {
    use exportd::{
        export::engine::{Faults, Pause, PauseAt},
        shutdown::Shutdown,
    };
    let db = test_db().await;
    seed_nasty(&db.pool, 4_000).await;
    let app = spawn_app(db, AppOptions { workers: 0, ..Default::default() }).await;
    let id = app.create_export(Some(json!({"chunkSize": 1000}))).await;

    let pause_a = Pause::new();
    let a = (*app.engine)
        .clone()
        .with_faults(Faults { pause: Some((PauseAt::BeforeChunkWrite(3), pause_a.clone())), ..Default::default() });
    let runner_a = tokio::spawn(async move { a.execute(id, "runner-A").await });
    pause_a.reached().await;
    let held = export_row(&app.db.pool, id).await;
    assert_eq!(held.rows_written, 2_000, "A is held after two checkpoints");
    let a_file = held.file_name.unwrap();
    // The rows A has read but not written change (and grow, so stale bytes also tear rows).
    sqlx::query("update orders set note = 'changed while A was paused, row ' || id where id > 2000 and id <= 3000")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let reference = copy_reference(&app.db.pool).await;

    let (pause_b, stop_b) = (Pause::new(), Shutdown::new());
    let b = (*app.engine)
        .clone()
        .with_shutdown(stop_b.clone())
        .with_faults(Faults { pause: Some((PauseAt::FilePrepared, pause_b.clone())), ..Default::default() });
    let runner_b = tokio::spawn(async move { b.execute(id, "runner-B").await });
    pause_b.reached().await;
    stop_b.trigger();
    pause_b.resume();
    assert_eq!(runner_b.await.unwrap(), Outcome::Released);
    let released = export_row(&app.db.pool, id).await;
    assert_eq!((released.owner, released.file_name.as_deref()), (None, Some(a_file.as_str())), "B never checkpointed");

    assert_eq!(app.engine.execute(id, "runner-C").await, Outcome::Completed);
    pause_a.resume();
    assert_eq!(runner_a.await.unwrap(), Outcome::Lost, "A's checkpoint is refused");
    assert_same_bytes(&app.download(id).await, &reference);
    assert_ne!(export_row(&app.db.pool, id).await.file_name.as_deref(), Some(a_file.as_str()), "C copied, not adopted");
}
