//! A database that goes silent without an error (half-open connection, stuck proxy or pooler,
//! frozen server): exports resume on fresh connections, requests answer 503, nothing hangs.
//! The schedule is forced with a proxy that stops forwarding (no RST) and pause points.

use std::time::Duration;

use exportd::export::engine::{Faults, Outcome, Pause, PauseAt};
use serde_json::json;

use crate::{helpers::*, proxy::Proxy};

/// Deadlines of these tests' apps (the defaults are 30 s and 60 s).
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);

async fn proxied_app(rows: i64, workers: u32) -> (TestApp, Proxy, Vec<u8>) {
    let db = test_db().await;
    seed_nasty(&db.pool, rows).await;
    let reference = copy_reference(&db.pool).await;
    let proxy = Proxy::start(&db.url).await;
    let opts = AppOptions {
        workers,
        database_url: Some(proxy.url.clone()),
        db_io_timeout: Some(IO_TIMEOUT),
        statement_timeout: Some(STATEMENT_TIMEOUT),
        ..Default::default()
    };
    (spawn_app(db, opts).await, proxy, reference)
}

/// The connections go silent in the middle of a chunk's COPY: the writer is held (pause
/// point) on the chunk's first piece while the producer fills the channel and stops
/// mid-stream; then every open connection through the proxy stops forwarding, and the writer
/// is let go. Before the fix the run waited on its COPY for ever, without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_mid_chunk_is_dropped_and_the_export_resumes_from_its_checkpoint() {
    let (app, proxy, reference) = proxied_app(40_000, 0).await;
    // Chunks of about 4 MB: several pieces each, so the producer is mid-chunk when held.
    let id = app.create_export(Some(json!({"chunkSize": 20000}))).await;
    let pause = Pause::new();
    let engine = (*app.engine)
        .clone()
        .with_faults(Faults { pause: Some((PauseAt::BeforeChunkWrite(2), pause.clone())), ..Default::default() });
    let run = tokio::spawn(async move { engine.execute(id, "w1").await });
    pause.reached().await;
    assert_eq!(export_row(&app.db.pool, id).await.rows_written, 20_000, "chunk 1 checkpointed");
    proxy.freeze_open_connections();
    pause.resume();
    // Without deadlines this never ends; the bound here only turns a hang into a failure.
    let outcome =
        tokio::time::timeout(Duration::from_secs(60), run).await.expect("the run noticed the silence").unwrap();
    assert_eq!(outcome, Outcome::Completed);
    assert_same_bytes(&app.download(id).await, &reference);
    let runs = exportd::db::exports::list_runs(&app.db.pool, id).await.unwrap();
    let outcomes: Vec<_> = runs.iter().map(|r| r.outcome.clone().unwrap_or_default()).collect();
    // The first run gives the export back with the reason (or, if its release also met a
    // silent pooled connection, is superseded by the next claim); the next one resumes.
    assert_eq!(outcomes.len(), 2, "{runs:?}");
    assert!(outcomes[0] == "failed" || outcomes[0] == "superseded", "{runs:?}");
    if outcomes[0] == "failed" {
        assert!(runs[0].error.as_deref().unwrap_or_default().contains("no answer from the database"), "{runs:?}");
    }
    assert_eq!(
        (outcomes[1].as_str(), runs[1].start_key.clone()),
        ("completed", Some(exportd::model::Key::int(20_000))),
        "resumed from the checkpoint"
    );
}

/// API requests while the database is silent: every open connection stops forwarding and new
/// ones are accepted but never answered (a frozen server). A request answers 503 within the
/// deadline instead of hanging, and once the database answers again requests succeed: the
/// silent connections were dropped, not handed out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_answer_503_while_the_database_is_silent_then_recover() {
    let (app, proxy, _) = proxied_app(100, 0).await;
    let id = app.create_export(None).await;
    assert_eq!(app.status(id).await["status"], "queued");
    let status = app.url(&format!("/api/export/{id}/status"));
    // Open many connections (requests at once), then silence them all while they are fresh
    // (a connection idle under 500 ms is handed out without a check).
    let warm = (0..40).map(|_| app.client.get(&status).send());
    for resp in futures::future::join_all(warm).await {
        assert_eq!(resp.unwrap().status(), 200);
    }
    proxy.freeze_open_connections();
    proxy.freeze_new_connections();
    // More requests at once than the pool has connections (10 with no workers): had a timed-out
    // request's connection gone back to the pool (sqlx pings a returned connection with no
    // deadline), each would hold a slot for good and the pool would never recover.
    let requests = (0..12).map(|_| tokio::time::timeout(Duration::from_secs(30), app.client.get(&status).send()));
    for answered in futures::future::join_all(requests).await {
        let resp = answered.expect("the request is answered, not hung").unwrap();
        expect_error(resp, 503, "retry later").await;
    }
    proxy.thaw_new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let resp = app.client.get(&status).send().await.unwrap();
        if resp.status() == 200 {
            break;
        }
        assert_eq!(resp.status(), 503);
        assert!(tokio::time::Instant::now() < deadline, "requests never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A query cancelled by the statement timeout (57014) is the server's state, not a bad
/// request: 503 "retry later", not 500. Forced by holding an ACCESS EXCLUSIVE lock on
/// `exports` from the test while the status request's query waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_answers_503() {
    let db = test_db().await;
    seed_nasty(&db.pool, 10).await;
    let opts = AppOptions { workers: 0, statement_timeout: Some(Duration::from_millis(500)), ..Default::default() };
    let app = spawn_app(db, opts).await;
    let id = app.create_export(None).await;
    let mut lock = app.db.pool.begin().await.unwrap();
    sqlx::query("lock table exports in access exclusive mode").execute(&mut *lock).await.unwrap();
    let resp = app.client.get(app.url(&format!("/api/export/{id}/status"))).send().await.unwrap();
    expect_error(resp, 503, "retry later").await;
    lock.rollback().await.unwrap();
    assert_eq!(app.status(id).await["status"], "queued");
}
