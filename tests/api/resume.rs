//! Resume after a run dies at the worst instants: the file is still byte-identical.
//!
//! These tests drive the engine directly (the app runs with no queue workers) with fault
//! points that stop a run exactly as a killed process would: no release, bytes on disk past
//! the checkpoint.

use std::{io::Write, time::Duration};

use exportd::export::engine::{Faults, Outcome};
use serde_json::json;

use crate::helpers::*;

async fn api_only_app(rows: i64) -> (TestApp, Vec<u8>) {
    let db = test_db().await;
    seed_nasty(&db.pool, rows).await;
    let reference = copy_reference(&db.pool).await;
    (spawn_app(db, AppOptions { workers: 0, ..Default::default() }).await, reference)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_write_before_checkpoint_resumes_identically() {
    let (app, reference) = api_only_app(10_000).await;
    let id = app.create_export(Some(json!({"chunkSize": 1000}))).await;
    let crashing = (*app.engine).clone().with_faults(Faults { crash_before_checkpoint: Some(3), ..Default::default() });
    assert_eq!(crashing.execute(id, "test-worker-1").await, Outcome::Crashed);

    let row = export_row(&app.db.pool, id).await;
    assert_eq!(row.rows_written, 2_000, "two chunks checkpointed");
    assert_eq!(row.last_processed_key, Some(exportd::model::Key::int(2_000)));
    assert!(row.owner.is_some(), "a crashed run does not release");
    let on_disk = stored_file(app.storage.path(), row.file_name.as_deref().unwrap());
    assert!(on_disk.len() as i64 > row.bytes_written, "the third chunk is on disk past the checkpoint");

    assert_eq!(app.engine.execute(id, "test-worker-2").await, Outcome::Completed);
    let s = app.status(id).await;
    assert_eq!(s["status"], "completed");
    assert_eq!(s["attempts"], 2);
    assert_same_bytes(&app.download(id).await, &reference);
    let runs = exportd::db::exports::list_runs(&app.db.pool, id).await.unwrap();
    let outcomes: Vec<_> = runs.iter().map(|r| r.outcome.clone().unwrap_or_default()).collect();
    assert_eq!(outcomes, ["superseded", "completed"]);
    assert_eq!(runs[1].start_key, Some(exportd::model::Key::int(2_000)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_right_after_checkpoint_resumes_identically() {
    let (app, reference) = api_only_app(10_000).await;
    let id = app.create_export(Some(json!({"chunkSize": 1000}))).await;
    let crashing = (*app.engine).clone().with_faults(Faults { crash_after_checkpoint: Some(4), ..Default::default() });
    assert_eq!(crashing.execute(id, "test-worker-1").await, Outcome::Crashed);
    let row = export_row(&app.db.pool, id).await;
    assert_eq!(row.rows_written, 4_000);
    assert_eq!(app.engine.execute(id, "test-worker-2").await, Outcome::Completed);
    assert_same_bytes(&app.download(id).await, &reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_the_last_chunk_and_repeated_crashes_resume_identically() {
    let (app, reference) = api_only_app(5_000).await;
    let id = app.create_export(Some(json!({"chunkSize": 1000}))).await;
    // Five crashes in a row, each after one more chunk is checkpointed (the last one after
    // the final chunk, before completion): the export still ends exact.
    for n in 1..=5 {
        let crashing =
            (*app.engine).clone().with_faults(Faults { crash_after_checkpoint: Some(1), ..Default::default() });
        assert_eq!(crashing.execute(id, &format!("w{n}")).await, Outcome::Crashed);
        assert_eq!(export_row(&app.db.pool, id).await.rows_written, (n * 1000).min(5_008));
    }
    assert_eq!(app.engine.execute(id, "w-last").await, Outcome::Completed);
    let s = app.status(id).await;
    assert_eq!(s["attempts"], 6);
    assert_same_bytes(&app.download(id).await, &reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_cut_off_on_resume() {
    let (app, reference) = api_only_app(3_000).await;
    let id = app.create_export(Some(json!({"chunkSize": 1000}))).await;
    let crashing = (*app.engine).clone().with_faults(Faults { crash_after_checkpoint: Some(1), ..Default::default() });
    assert_eq!(crashing.execute(id, "w1").await, Outcome::Crashed);
    // Half a row after the checkpoint, as a write cut short by a crash leaves it.
    let row = export_row(&app.db.pool, id).await;
    let path = app.storage.path().join(row.file_name.unwrap());
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"1001,2023-01-01 08:37:11+00,\"torn")
        .unwrap();
    assert_eq!(app.engine.execute(id, "w2").await, Outcome::Completed);
    assert_same_bytes(&app.download(id).await, &reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_checkpoint_file_restarts_the_export_from_scratch() {
    let (app, reference) = api_only_app(3_000).await;
    let id = app.create_export(Some(json!({"chunkSize": 1000}))).await;
    let crashing = (*app.engine).clone().with_faults(Faults { crash_after_checkpoint: Some(2), ..Default::default() });
    assert_eq!(crashing.execute(id, "w1").await, Outcome::Crashed);
    let row = export_row(&app.db.pool, id).await;
    std::fs::remove_file(app.storage.path().join(row.file_name.unwrap())).unwrap();
    assert_eq!(app.engine.execute(id, "w2").await, Outcome::Completed);
    assert_same_bytes(&app.download(id).await, &reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_export_fails_after_bounded_attempts_with_what_the_database_error_means() {
    let (app, _) = api_only_app(100).await;
    let id = app.create_export(None).await;
    sqlx::query("alter table orders rename column note to remark").execute(&app.db.pool).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(app.engine.execute(id, "w1").await, Outcome::Failed);
    assert!(started.elapsed() < Duration::from_secs(30));
    let s = app.status(id).await;
    assert_eq!(s["status"], "failed");
    assert_eq!(s["attempts"], 5, "{s}");
    let error = s["error"].as_str().unwrap();
    // What it means and where to look, not PostgreSQL's own text (which names internals).
    assert!(error.contains("no longer matches its definition") && error.contains("SQLSTATE 42703"), "{error}");
    assert!(error.contains("5 attempts") && error.contains("the server log has the details under run"), "{error}");
    assert!(!error.contains("t.note"), "{error}");
    let resp = app.client.get(app.url(&format!("/api/export/{id}/download"))).send().await.unwrap();
    assert_eq!(resp.status(), 410, "a failed export will never have a file");
    // Crashes count too: an export whose runs keep dying fails after the same bound.
    sqlx::query("alter table orders rename column remark to note").execute(&app.db.pool).await.unwrap();
    let id = app.create_export(Some(json!({"chunkSize": 100}))).await;
    let dying = (*app.engine).clone().with_faults(Faults { crash_before_checkpoint: Some(1), ..Default::default() });
    for _ in 0..5 {
        assert_eq!(dying.execute(id, "w").await, Outcome::Crashed);
    }
    assert_eq!(app.engine.execute(id, "w").await, Outcome::Failed);
    let s = app.status(id).await;
    assert!(s["error"].as_str().unwrap().contains("without progress"), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_releases_and_the_next_process_continues_the_same_file() {
    let db = test_db().await;
    seed_nasty(&db.pool, 20_000).await;
    let reference = copy_reference(&db.pool).await;
    let app = spawn_app(db, AppOptions { workers: 1, ..Default::default() }).await;
    let id = app.create_export(Some(json!({"chunkSize": 1000, "maxRowsPerSecond": 5000}))).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while export_row(&app.db.pool, id).await.rows_written < 3_000 {
        assert!(tokio::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = std::time::Instant::now();
    let (db, storage) = app.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(5), "stopped after {:?}", stopping.elapsed());
    let released = export_row(&db.pool, id).await;
    assert_eq!((released.owner, released.attempts), (None, 0), "released, attempt given back");
    assert_eq!(released.rows_written % 1000, 0, "released at a chunk boundary");

    let app = spawn_app_on(db, storage, AppOptions { workers: 1, ..Default::default() }).await;
    let s = app.wait_finished(id, Duration::from_secs(30)).await;
    assert_eq!((s["status"].as_str(), s["attempts"].as_i64()), (Some("completed"), Some(1)));
    let done = export_row(&app.db.pool, id).await;
    assert_eq!(done.file_name, released.file_name, "a cleanly released file is continued in place");
    assert_same_bytes(&app.download(id).await, &reference);
    let runs = exportd::db::exports::list_runs(&app.db.pool, id).await.unwrap();
    let outcomes: Vec<_> = runs.iter().map(|r| r.outcome.clone().unwrap_or_default()).collect();
    assert_eq!(outcomes, ["released", "completed"]);
}

/// Poison rows: one this version cannot read (options written by a newer version) and one
/// whose dataset left the config. Forced by editing the rows while no worker runs, then
/// starting one worker slot: both fail after the bounded attempts with a reason that names
/// the problem, and the slot goes on with the export queued after them. Before, the
/// unreadable row was retried for ever ("cannot claim export; retrying") and held the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_rows_fail_after_bounded_attempts_and_the_worker_goes_on() {
    let (app, reference) = api_only_app(100).await;
    let future = app.create_export(None).await;
    let retired = app.create_export(None).await;
    let good = app.create_export(None).await;
    sqlx::query("update exports set spec = jsonb_set(spec, '{compression}', '\"zstd\"') where id = $1")
        .bind(future)
        .execute(&app.db.pool)
        .await
        .unwrap();
    sqlx::query("update exports set dataset = 'retired' where id = $1")
        .bind(retired)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let (db, storage) = app.stop().await;
    let app = spawn_app_on(db, storage, AppOptions { workers: 1, ..Default::default() }).await;
    assert_eq!(app.wait_finished(good, Duration::from_secs(60)).await["status"], "completed");
    assert_same_bytes(&app.download(good).await, &reference);
    for (id, mentions) in [(future, "cannot be read by this version"), (retired, "\"retired\"")] {
        let (status, error, attempts): (String, Option<String>, i32) =
            sqlx::query_as("select status, error, attempts from exports where id = $1")
                .bind(id)
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
        let error = error.unwrap_or_default();
        assert_eq!((status.as_str(), attempts), ("failed", 5), "{error}");
        assert!(error.contains(mentions) && error.contains("gave up after 5 attempts"), "{error}");
        // The API shows it, reason included, and lists it with the rest.
        let shown = app.status(id).await;
        assert_eq!(shown["status"], "failed");
        assert!(shown["error"].as_str().unwrap().contains(mentions), "{shown}");
    }
    // Options this version cannot read are left out (the typed `options` cannot hold them).
    let shown = app.status(future).await;
    assert!(shown.get("options").is_none() && shown["status"] == "failed", "{shown}");
    let listed = app.client.get(app.url("/api/exports")).send().await.unwrap();
    assert_eq!(listed.status(), 200);
    let listed: serde_json::Value = listed.json().await.unwrap();
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(3), "{listed}");
}

/// Shutdown while a run copies a large checkpointed prefix stops it within a copy slice, and
/// the next run resumes from the checkpoint. Forced with fault and pause points: A crashes
/// after its third checkpoint (about 15 MB, owner kept, so B must copy rather than adopt); B
/// is held after copying its first 8 MiB slice, its stop signal comes, and it is let go.
/// Before, the copy was one blocking call that ran to the end whatever the signal said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_prefix_copy_stops_within_a_slice_and_the_next_run_resumes() {
    use exportd::{
        export::engine::{Pause, PauseAt},
        shutdown::Shutdown,
    };
    let (app, reference) = api_only_app(60_000).await;
    let id = app.create_export(Some(json!({"chunkSize": 20000}))).await;
    let crashing = (*app.engine).clone().with_faults(Faults { crash_after_checkpoint: Some(3), ..Default::default() });
    assert_eq!(crashing.execute(id, "A").await, Outcome::Crashed);
    let crashed = export_row(&app.db.pool, id).await;
    assert!(crashed.bytes_written > 8 << 20, "a prefix of more than one slice: {}", crashed.bytes_written);

    let (pause, stop) = (Pause::new(), Shutdown::new());
    let b = (*app.engine)
        .clone()
        .with_shutdown(stop.clone())
        .with_faults(Faults { pause: Some((PauseAt::PrefixCopySlice(1), pause.clone())), ..Default::default() });
    let run_b = tokio::spawn(async move { b.execute(id, "B").await });
    pause.reached().await;
    stop.trigger();
    pause.resume();
    assert_eq!(run_b.await.unwrap(), Outcome::Released);
    let released = export_row(&app.db.pool, id).await;
    assert_eq!(
        (released.owner, released.file_name.as_deref(), released.bytes_written),
        (None, crashed.file_name.as_deref(), crashed.bytes_written),
        "released at the same checkpoint"
    );
    let dir = app.storage.path().join(id.to_string());
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files.len(), 1, "the partial copy is gone, A's file stays: {files:?}");

    assert_eq!(app.engine.execute(id, "C").await, Outcome::Completed);
    assert_same_bytes(&app.download(id).await, &reference);
}
