//! The HTTP server's bounds, each tried as a careless or hostile client would, over raw TCP:
//! a request head sent too slowly and an idle connection are closed after the header timeout;
//! one address cannot take every connection; over the global cap connections wait instead of
//! being dropped; a download the client stops reading is cut after the send timeout and gives
//! its download slot back; below the storage's free-space floor new exports get 507 and a
//! running one fails cleanly instead of filling the disk.
//!
//! Schedules are forced by what the server shows, not by sleeps: a connection is known held
//! while the next one is refused, a download is known in progress while a second one is
//! answered `busy`. Each wait has a bound that only a broken limit reaches.

use std::time::Duration;

use exportd::config::{HttpSettings, ServeArgs};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    time::{Instant, timeout},
};

use crate::{
    helpers::*,
    support::process::{Tmpfs, is_root},
};

/// How long a wait may take before the limit it waits for counts as missing.
const BOUND: Duration = Duration::from_secs(20);

const HEALTH: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: exportd\r\nConnection: close\r\n\r\n";

async fn app_with(rows: i64, workers: u32, http: impl FnOnce(&mut HttpSettings)) -> TestApp {
    let db = test_db().await;
    exportd::db::seed::seed_orders(&db.pool, rows, |_| {}).await.unwrap();
    let mut settings = ServeArgs::parse_defaults().http;
    http(&mut settings);
    spawn_app(db, AppOptions { workers, http: Some(settings), ..Default::default() }).await
}

fn port(app: &TestApp) -> u16 {
    app.base.rsplit(':').next().unwrap().parse().unwrap()
}

/// A connection to the app from `source` (a loopback address: each is its own client).
async fn connect(app: &TestApp, source: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(format!("127.0.0.1:{}", port(app)).parse().unwrap()).await.unwrap()
}

/// Everything the server sends until it closes the connection (a reset counts as closed).
async fn read_until_closed(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let read = timeout(BOUND, async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await.unwrap_or_else(|_| panic!("{what}: the server kept the connection open for {BOUND:?}"));
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_and_an_idle_connection_are_closed_after_the_header_timeout() {
    let app = app_with(10, 0, |h| h.http_header_timeout = Duration::from_secs(1)).await;
    // Slowloris: a head that never ends.
    let mut slow = connect(&app, "127.0.0.1").await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: exportd\r\n").await.unwrap();
    read_until_closed(&mut slow, "an unfinished request head").await;
    // Keep-alive: answered, then closed once idle.
    let mut idle = connect(&app, "127.0.0.1").await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: exportd\r\n\r\n").await.unwrap();
    let answer =
        String::from_utf8_lossy(&read_until_closed(&mut idle, "an idle keep-alive connection").await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A connection that never sends a byte.
    let mut silent = connect(&app, "127.0.0.1").await;
    read_until_closed(&mut silent, "a connection that sends nothing").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection_and_the_cap_queues_rather_than_drops() {
    let app = app_with(10, 0, |h| {
        h.http_max_connections = 4;
        h.http_max_connections_per_client = 3;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&app, "127.0.0.1").await);
    }
    // The fourth from the same address is told so and closed (it may be accepted before the
    // three are counted: then it is one of them, and the next one is refused).
    let mut tries = 0;
    let refused = loop {
        tries += 1;
        assert!(tries <= 3, "a fourth connection from one address was served: no per-client cap");
        let mut extra = connect(&app, "127.0.0.1").await;
        extra.write_all(HEALTH).await.unwrap();
        let answer =
            String::from_utf8_lossy(&read_until_closed(&mut extra, "a connection over the cap").await).into_owned();
        if answer.starts_with("HTTP/1.1 503") {
            break answer;
        }
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    };
    assert!(refused.contains("too_many_connections"), "{refused}");
    // Another client is served meanwhile.
    let mut other = connect(&app, "127.0.0.2").await;
    other.write_all(HEALTH).await.unwrap();
    let answer = String::from_utf8_lossy(&read_until_closed(&mut other, "another client").await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "another client is served: {answer}");

    // Four open in all (three here, one from another address): a fifth waits in the backlog,
    // unanswered, and is served as soon as one closes.
    held.push(connect(&app, "127.0.0.3").await);
    let mut waiting = connect(&app, "127.0.0.4").await;
    waiting.write_all(HEALTH).await.unwrap();
    let mut first = [0u8; 1];
    assert!(
        timeout(Duration::from_millis(300), waiting.read(&mut first)).await.is_err(),
        "over the global cap a connection waits (it is neither answered nor dropped)"
    );
    drop(held.remove(0));
    let answer = read_until_closed(&mut waiting, "a connection waiting for a slot").await;
    assert_eq!(first[0], 0);
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_the_client_stops_reading_is_cut_after_the_send_timeout_and_frees_its_slot() {
    let app = app_with(200_000, 2, |h| {
        h.http_send_timeout = Duration::from_secs(1);
        h.max_downloads = 1;
    })
    .await;
    let id = app.create_export(None).await;
    assert_eq!(app.wait_finished(id, Duration::from_secs(60)).await["status"], "completed");
    let size = app.status(id).await["bytesWritten"].as_u64().unwrap();

    // A client that asks for the file and reads nothing (small buffers: they fill at once).
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(format!("127.0.0.1:{}", port(&app)).parse().unwrap()).await.unwrap();
    let request = format!(
        "GET /api/export/{id}/download HTTP/1.1\r\nHost: exportd\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        app.key
    );
    stalled.write_all(request.as_bytes()).await.unwrap();

    // Its answer has begun (peeked, not read): it holds the only download slot, and another
    // download is answered `busy`...
    let mut head = [0u8; 16];
    timeout(BOUND, stalled.peek(&mut head)).await.expect("the download starts").unwrap();
    assert!(head.starts_with(b"HTTP/1.1 200"));
    let url = app.url(&format!("/api/export/{id}/download"));
    let started = Instant::now();
    let resp = app.client.get(&url).send().await.unwrap();
    let busy = expect_error(resp, 503, "downloads are in progress").await;
    assert_eq!(busy["error"], "busy");
    // ... until the send timeout cuts it: then the slot is free again.
    loop {
        let resp = app.client.get(&url).send().await.unwrap();
        if resp.status() == 200 {
            assert_eq!(resp.bytes().await.unwrap().len() as u64, size);
            break;
        }
        assert_eq!(resp.status(), 503);
        assert!(started.elapsed() < BOUND, "a download nobody reads held its slot for {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = read_until_closed(&mut stalled, "the stalled download").await;
    assert!((got.len() as u64) < size, "the stalled download was cut ({} of {size} bytes)", got.len());
}

/// The storage is a 48 MiB tmpfs with a 32 MiB floor; a 200,000-row export (~28 MiB) crosses
/// the floor halfway. Forced by the file system's size, not by timing: shrinking the tmpfs
/// puts it below the floor for the 507, growing it back frees the space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_floor_new_exports_get_507_and_a_running_one_fails_cleanly() {
    if !is_root() {
        eprintln!("SKIPPED: mounting a size-limited tmpfs needs root");
        return;
    }
    let db = test_db().await;
    exportd::db::seed::seed_orders(&db.pool, 200_000, |_| {}).await.unwrap();
    let storage = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(storage.path(), "48m");
    let opts = AppOptions { min_free_disk: Some(32 << 20), chunk_size: 5_000, ..Default::default() };
    let app = spawn_app_on(db, storage, opts).await;

    let id = app.create_export(None).await;
    let done = app.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(error.starts_with("disk space low") && error.contains("floor of 32 MiB"), "{error}");
    assert!(done["bytesWritten"].as_i64().unwrap() < 28 << 20, "it stopped before the end: {done}");
    // The status turns `failed` first (no download can start on it), then the run removes the
    // file: a status poll can see the first before the second (it did once, on a loaded
    // machine), so the removal is awaited, within a bound.
    let partial = app.storage.path().join(id.to_string());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while partial.exists() {
        assert!(tokio::time::Instant::now() < deadline, "its partial file is deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = app.client.get(app.url(&format!("/api/export/{id}/download"))).send().await.unwrap();
    assert_eq!(resp.status(), 410);

    // Below the floor before it starts: refused, nothing created.
    disk.resize("24m");
    let resp = app.client.post(app.url("/api/export")).send().await.unwrap();
    let refused = expect_error(resp, 507, "below its floor of 32 MiB").await;
    assert_eq!(refused["error"], "insufficient_storage");
    let count: i64 = sqlx::query_scalar("select count(*) from exports").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(count, 1);

    // Space freed: exports run again.
    disk.resize("64m");
    let small = app.create_export(Some(serde_json::json!({"filters": {"id": {"lte": 1000}}}))).await;
    assert_eq!(app.wait_finished(small, Duration::from_secs(60)).await["status"], "completed");
    drop(app);
}
