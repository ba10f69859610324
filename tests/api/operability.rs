//! What an operator and a person at a terminal see: `/metrics` (scraped from a real process,
//! so its counters are that process's alone), the event stream, JSON logs and OTLP traces,
//! and the command-line client (plain lines, a resumed download, bars and Ctrl-C in tmux).

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    helpers::*,
    support::process::{Exportd, exportd_env, free_port},
};

/// The value of a sample (`name` with its labels exactly as rendered, e.g.
/// `exportd_exports{status="running",dataset="orders"}`), None when absent.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A sample of this test process's own metrics (the apps the tests run in it), 0 when absent.
pub fn in_process(sample: &str) -> f64 {
    metric(&exportd::telemetry::metrics::handle().render(), sample).unwrap_or(0.0)
}

#[track_caller]
fn value(text: &str, sample: &str) -> f64 {
    metric(text, sample).unwrap_or_else(|| panic!("{sample} missing from:\n{text}"))
}

async fn scrape(api: &crate::support::client::Api) -> String {
    let resp = api.client.get(api.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    resp.text().await.unwrap()
}

/// Every sample of the exposition is `name{labels} number` with names after Prometheus'
/// conventions and no export id among the labels.
fn check_exposition(text: &str, ids: &[Uuid]) {
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (sample, number) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
        assert!(number.parse::<f64>().is_ok(), "not a number: {line}");
        assert!(sample.starts_with("exportd_"), "not exportd_-prefixed: {line}");
        for id in ids {
            assert!(!line.contains(&id.to_string()), "an export id as a label: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_an_export_through_a_kill_and_a_takeover() {
    let db = test_db().await;
    seed_nasty(&db.pool, 20_000).await;
    let reference = copy_reference(&db.pool).await;
    let storage = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let env = exportd_env(
        &db.url,
        storage.path(),
        &[("EXPORTD_WORKER_CONCURRENCY", "1"), ("RUST_LOG", "warn"), ("EXPORTD_METRICS_LISTEN", &metrics_addr)],
    );
    let mut p = Exportd::serve(env).await;
    let api = p.api();

    // On the API's address /metrics takes an admin key; the metrics address takes none.
    let anonymous = reqwest::get(api.url("/metrics")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    let user = new_key(&db.pool, "team-a", false, None).await;
    expect_error(api.as_key(&user).client.get(api.url("/metrics")).send().await.unwrap(), 403, "admin").await;
    let open = reqwest::get(format!("http://{metrics_addr}/metrics")).await.unwrap();
    assert_eq!(open.status(), 200);
    let before = open.text().await.unwrap();
    assert_eq!(value(&before, "exportd_worker_running_exports"), 0.0);
    assert_eq!(value(&before, "exportd_database_up"), 1.0);
    assert_eq!(value(&before, "exportd_takeovers_total"), 0.0);
    assert_eq!(value(&before, r#"exportd_queue_depth{queue="exportd.export"}"#), 0.0);

    // Throttled to 4000 rows/s in chunks of 1000: about 5 s.
    let id = api.create_export(Some(json!({"chunkSize": 1000, "maxRowsPerSecond": 4000}))).await;
    api.wait_rows(id, 3_000, Duration::from_secs(30)).await;
    let during = scrape(&api).await;
    check_exposition(&during, &[id]);
    assert_eq!(value(&during, "exportd_worker_running_exports"), 1.0);
    assert_eq!(value(&during, r#"exportd_exports{status="running",dataset="orders"}"#), 1.0);
    assert_eq!(value(&during, r#"exportd_exports_created_total{dataset="orders"}"#), 1.0);
    let rows = value(&during, r#"exportd_rows_written_total{dataset="orders"}"#);
    assert!((3_000.0..20_008.0).contains(&rows), "rows while running: {rows}");
    assert_eq!(value(&during, r#"exportd_http_requests_total{method="POST",route="/api/export",status="202"}"#), 1.0);
    assert!(
        value(&during, r#"exportd_http_requests_total{method="GET",route="/api/export/{id}/status",status="200"}"#)
            >= 1.0
    );
    assert!(value(&during, r#"exportd_http_request_duration_seconds_count{method="POST",route="/api/export"}"#) == 1.0);
    assert!(value(&during, "exportd_chunk_read_seconds_count") >= 3.0);
    assert!(value(&during, "exportd_db_pool_max_connections") > 0.0);
    assert!(metric(&during, r#"exportd_db_pool_connections{state="in_use"}"#).is_some());

    // kill -9 mid-export; the restarted process takes the run over from its checkpoint.
    p.kill9();
    let at_kill = export_row(&db.pool, id).await;
    p.start().await;
    let end = api.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(end["status"], "completed");
    let file = api.download(id).await;
    assert_same_bytes(&file, &reference);
    let after = reqwest::get(format!("http://{metrics_addr}/metrics")).await.unwrap().text().await.unwrap();
    check_exposition(&after, &[id]);
    assert_eq!(value(&after, "exportd_takeovers_total"), 1.0, "the killed run was still open");
    // The new process wrote exactly what was not checkpointed before the kill: nothing twice.
    assert_eq!(
        value(&after, r#"exportd_rows_written_total{dataset="orders"}"#),
        (SEEDED_ROWS - at_kill.rows_written) as f64
    );
    assert_eq!(
        value(&after, r#"exportd_bytes_written_total{dataset="orders"}"#),
        (file.len() as i64 - at_kill.bytes_written) as f64
    );
    let chunks_left = ((SEEDED_ROWS - at_kill.rows_written) as u64).div_ceil(1000);
    assert_eq!(value(&after, "exportd_checkpoint_seconds_count"), chunks_left as f64);
    assert_eq!(value(&after, r#"exportd_export_deliveries_total{outcome="completed"}"#), 1.0);
    assert_eq!(value(&after, "exportd_worker_running_exports"), 0.0);
    assert_eq!(value(&after, r#"exportd_exports{status="completed",dataset="orders"}"#), 1.0);
    assert_eq!(value(&after, r#"exportd_fenced_writes_refused_total{write="checkpoint"}"#), 0.0);
    assert!(after.contains("# TYPE exportd_chunk_read_seconds histogram"));
    assert!(after.contains(r#"exportd_checkpoint_seconds_bucket{le="+Inf"}"#));
    p.terminate();
}

/// Rows of the demo data `metrics_follow_...` exports: 20 000 seeded and 8 hand-written.
const SEEDED_ROWS: i64 = 20_008;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_progress_then_the_end() {
    let db = test_db().await;
    seed_nasty(&db.pool, 5_000).await;
    let app = spawn_app(db, AppOptions::default()).await;
    let other = new_key(&app.db.pool, "team-b", false, None).await;
    // At least 2.5 s (the throttle), so the server's looks, twice a second, see it mid-way.
    let id = app.create_export(Some(json!({"chunkSize": 500, "maxRowsPerSecond": 2000}))).await;
    let url = app.url(&format!("/api/export/{id}/events"));
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 401);
    expect_error(app.as_key(&other).client.get(&url).send().await.unwrap(), 404, &id.to_string()).await;

    let resp = app.client.get(&url).timeout(Duration::from_secs(60)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    // The stream closes by itself after the end event.
    let body = resp.text().await.unwrap();
    let events: Vec<(String, Value)> = body
        .split("\n\n")
        .filter(|e| e.contains("data:"))
        .map(|e| {
            let kind = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("message").to_owned();
            let data: String = e.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            (kind, serde_json::from_str(&data).unwrap())
        })
        .collect();
    assert!(events.len() >= 3, "progress events while it ran: {body}");
    let (last_kind, last) = events.last().unwrap();
    assert_eq!(last_kind, "end");
    assert_eq!(last["status"], "completed");
    assert_eq!(last["rowsWritten"], 5_008);
    assert_eq!(last["jobId"], id.to_string());
    let progress = &events[..events.len() - 1];
    assert!(progress.iter().all(|(kind, _)| kind == "progress"));
    let rows: Vec<i64> = progress.iter().map(|(_, s)| s["rowsWritten"].as_i64().unwrap()).collect();
    assert!(rows.windows(2).all(|w| w[0] <= w[1]), "rows never go back: {rows:?}");
    assert!(rows.iter().any(|r| *r > 0 && *r < 5_008), "progress mid-way: {rows:?}");
    // Each event is sent because something changed: no two alike in a row.
    let states: Vec<(String, i64)> = events
        .iter()
        .map(|(_, s)| (s["status"].as_str().unwrap().to_owned(), s["rowsWritten"].as_i64().unwrap()))
        .collect();
    assert!(states.windows(2).all(|w| w[0] != w[1]), "{states:?}");

    // An ended export: one end event, at once.
    let again = app.client.get(&url).send().await.unwrap().text().await.unwrap();
    assert_eq!(again.matches("event: end").count(), 1, "{again}");
    assert!(!again.contains("event: progress"), "{again}");
}

/// A minimal OTLP/HTTP (JSON) collector: keeps every body posted to `/v1/traces`.
async fn otlp_collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    let route = poem::Route::new().at(
        "/v1/traces",
        poem::post(poem::endpoint::make(move |req: poem::Request| {
            let kept = kept.clone();
            async move {
                let bytes = req.into_body().into_vec().await.unwrap_or_default();
                if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                    kept.lock().unwrap().push(v);
                }
                poem::Response::builder().content_type("application/json").body("{}")
            }
        })),
    );
    let port = free_port();
    let listener = poem::listener::TcpListener::bind(format!("127.0.0.1:{port}"));
    tokio::spawn(poem::Server::new(listener).run(route));
    (format!("http://127.0.0.1:{port}"), bodies)
}

/// Every span the collector got: (name, attributes as key → string value).
fn spans(bodies: &[Value]) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    for body in bodies {
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    let attrs = span["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| {
                            let v = &a["value"];
                            let text = v["stringValue"].as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
                            (a["key"].as_str().unwrap_or_default().to_owned(), text)
                        })
                        .collect();
                    out.push((span["name"].as_str().unwrap_or_default().to_owned(), attrs));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_otlp_traces_name_the_export() {
    let db = test_db().await;
    seed_nasty(&db.pool, 2_000).await;
    let storage = tempfile::tempdir().unwrap();
    let (collector, bodies) = otlp_collector().await;
    let env = exportd_env(
        &db.url,
        storage.path(),
        &[
            ("EXPORTD_WORKER_CONCURRENCY", "1"),
            ("RUST_LOG", "info"),
            ("EXPORTD_LOG_FORMAT", "json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", "exportd-test"),
        ],
    );
    let log = storage.path().join("exportd.log");
    let mut p = Exportd::serve_logged(env, &log).await;
    let api = p.api();
    let id = api.create_export(Some(json!({"chunkSize": 500}))).await;
    assert_eq!(api.wait_finished(id, Duration::from_secs(60)).await["status"], "completed");
    // SIGTERM: the process sends the spans it still holds before it exits.
    let (_, clean) = p.terminate();
    assert!(clean);

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    assert!(lines.iter().all(|l| l["timestamp"].is_string() && l["level"].is_string()), "{text}");
    let completed = lines
        .iter()
        .find(|l| l["fields"]["message"] == "export completed")
        .unwrap_or_else(|| panic!("no 'export completed' line:\n{text}"));
    assert_eq!(completed["span"]["name"], "export");
    assert_eq!(completed["span"]["export_id"], id.to_string());

    let spans = spans(&bodies.lock().unwrap());
    let with_id = |name: &str| {
        spans
            .iter()
            .filter(|(n, attrs)| n == name && attrs.iter().any(|(k, v)| k == "export_id" && *v == id.to_string()))
            .count()
    };
    assert_eq!(with_id("export"), 1, "one span for the export's delivery: {spans:?}");
    assert!(with_id("request") >= 1, "requests about the export name it (the status polls): {spans:?}");
    assert!(with_id("chunk") >= 5, "a span per chunk (2008 rows in chunks of 500): {spans:?}");
    assert!(
        spans.iter().any(|(n, attrs)| n == "request" && attrs.iter().any(|(k, v)| k == "path" && v == "/api/export")),
        "a span per request: {spans:?}"
    );
}

/// `exportd export` / `exportd exports` as a person runs them.
pub(crate) fn cli(base: &str, key: &str) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_exportd"));
    c.env("EXPORTD_SERVER", base).env("EXPORTD_KEY", key).env_remove("RUST_BACKTRACE");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exports_to_a_file_with_plain_lines_without_a_terminal() {
    let db = test_db().await;
    seed_nasty(&db.pool, 3_000).await;
    let app = spawn_app(db, AppOptions::default()).await;
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("orders.csv");
    let (base, key, path) = (app.base.clone(), app.key.clone(), file.clone());
    let run = tokio::task::spawn_blocking(move || {
        cli(&base, &key)
            .args(["export", "--dataset", "orders", "--columns", "id,status,note", "--filter", "id>=100"])
            .args(["--filter", "id<2500", "--filter", "status=paid|shipped", "--chunk-size", "100"])
            // The throttle makes it run at least 4.5 s (960 rows), so the event stream (looked up
            // twice a second) surely shows it running.
            .args(["--max-rows-per-second", "200", "-o"])
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let expected = copy_out(
        &app.db.pool,
        "UTC",
        "COPY (SELECT id, status, note FROM orders WHERE id >= 100 AND id < 2500 AND status IN ('paid', 'shipped') \
         ORDER BY id) TO STDOUT (FORMAT csv, HEADER)",
    )
    .await;
    assert_same_bytes(&std::fs::read(&file).unwrap(), &expected);
    assert!(!out.path().join("orders.csv.part").exists());
    // Plain lines: progress while it ran, the end, the file; no bar, no escape codes.
    assert!(stderr.contains(": running "), "{stderr}");
    assert!(stderr.contains(": completed "), "{stderr}");
    assert!(stderr.contains("saved ") && stderr.contains("ETag"), "{stderr}");
    assert!(!stderr.contains('\r') && !stderr.contains('\x1b'), "{stderr:?}");

    // The other commands.
    let list = cli(&app.base, &app.key).args(["exports", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success() && listed.contains("completed"), "{listed}");
    let id = listed.lines().nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    let status = cli(&app.base, &app.key).args(["exports", "status", &id]).output().unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["status"], "completed");
    let watched = cli(&app.base, &app.key).args(["exports", "watch", &id]).output().unwrap();
    assert!(watched.status.success());
    assert!(String::from_utf8_lossy(&watched.stderr).contains(&format!("export {id} completed")));
    let slow = app.create_export(Some(json!({"chunkSize": 100, "maxRowsPerSecond": 100}))).await;
    let cancelled = cli(&app.base, &app.key).args(["exports", "cancel", &slow.to_string()]).output().unwrap();
    assert!(cancelled.status.success());
    assert_eq!(String::from_utf8_lossy(&cancelled.stdout).trim(), format!("export {slow} cancelled"));
    assert_eq!(app.status(slow).await["status"], "cancelled");
    // Mistakes name the flag.
    let bad = cli(&app.base, &app.key).args(["export", "--filter", "id", "-o"]).arg(&file).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--filter \"id\""));
    let keyless = cli(&app.base, "").args(["exports", "list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&keyless.stderr).contains("--key (or EXPORTD_KEY) is required"));
    let refused = cli(&app.base, &app.key).args(["export", "--columns", "nope", "-o"]).arg(&file).output().unwrap();
    let refused = String::from_utf8_lossy(&refused.stderr);
    assert!(refused.contains("400") || refused.contains("422"), "{refused}");
    assert!(refused.contains("columns"), "{refused}");
}

/// A TCP proxy that cuts the first download's connection after `cut_after` bytes of its
/// answer, and keeps what clients sent (to see the resumed request).
async fn cutting_proxy(upstream: String, cut_after: usize) -> (String, Arc<Mutex<String>>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(Mutex::new(String::new()));
    let cut_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let kept = sent.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else { return };
            let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            // Armed once this connection carried a download request.
            let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (kept, armed_up, cut_done) = (kept.clone(), armed.clone(), cut_done.clone());
            let up = tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if text.contains("/download") {
                        armed_up.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    kept.lock().unwrap().push_str(&text);
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut forwarded_armed = 0usize;
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut n = n;
                    if armed.load(std::sync::atomic::Ordering::SeqCst)
                        && !cut_done.load(std::sync::atomic::Ordering::SeqCst)
                    {
                        if forwarded_armed + n >= cut_after {
                            n = cut_after - forwarded_armed;
                            let _ = cw.write_all(&buf[..n]).await;
                            cut_done.store(true, std::sync::atomic::Ordering::SeqCst);
                            break; // drops both halves: the client sees the connection end mid-body
                        }
                        forwarded_armed += n;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    (format!("http://{addr}"), sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_resumes_a_download_cut_off_mid_way() {
    let db = test_db().await;
    seed_nasty(&db.pool, 5_000).await;
    let app = spawn_app(db, AppOptions::default()).await;
    let reference = copy_reference(&app.db.pool).await;
    assert!(reference.len() > 400_000, "large enough to cut: {}", reference.len());
    let (proxy, sent) = cutting_proxy(app.base.trim_start_matches("http://").to_owned(), 200_000).await;
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("all.csv");
    let (key, path) = (app.key.clone(), file.clone());
    let run =
        tokio::task::spawn_blocking(move || cli(&proxy, &key).args(["export", "-o"]).arg(&path).output().unwrap())
            .await
            .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert_same_bytes(&std::fs::read(&file).unwrap(), &reference);
    // The second request asked for the rest, of the same version of the file.
    let sent = sent.lock().unwrap().to_ascii_lowercase();
    assert_eq!(sent.matches("/download").count(), 2, "{sent}");
    let resumed = &sent[sent.rfind("/download").unwrap()..];
    let resumed = &resumed[..resumed.find("\r\n\r\n").unwrap()];
    assert!(resumed.contains("range: bytes="), "{resumed}");
    assert!(resumed.contains("if-range: \""), "{resumed}");
    let from: u64 = resumed.split("range: bytes=").nth(1).unwrap().split('-').next().unwrap().parse().unwrap();
    assert!(from > 0 && from <= 200_000, "resumed at byte {from}");
}

/// tmux on a socket of this test's own, so nothing else's sessions are touched.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Self {
        Self { socket: format!("exportd-test-{}", Uuid::new_v4().simple()) }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "cli"])
    }

    /// Waits (polling the screen) until it shows `text`.
    async fn wait_for(&self, text: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(Instant::now() < deadline, "{text:?} never showed:\n{screen}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_in_a_terminal_draws_bars_and_asks_on_ctrl_c() {
    let db = test_db().await;
    seed_nasty(&db.pool, 50_000).await;
    let app = spawn_app(db, AppOptions::default()).await;
    let out = tempfile::tempdir().unwrap();
    let exit_file = out.path().join("exit");
    let tmux = Tmux::new();
    // Throttled (about 25 s) so it is still running when Ctrl-C comes.
    let command = format!(
        "env EXPORTD_SERVER={} EXPORTD_KEY={} {} export --max-rows-per-second 2000 --chunk-size 500 -o {}; \
         echo $? > {}; sleep 60",
        app.base,
        app.key,
        env!("CARGO_BIN_EXE_exportd"),
        out.path().join("o.csv").display(),
        exit_file.display()
    );
    tmux.run(&["new-session", "-d", "-s", "cli", "-x", "150", "-y", "20", &command]);
    let screen = tmux.wait_for("running   [", Duration::from_secs(30)).await;
    assert!(screen.contains("rows/s") && screen.contains("/50,008 rows") && screen.contains("ETA"), "a bar:\n{screen}");
    let id = wait_for_id(&app).await;

    tmux.run(&["send-keys", "-t", "cli", "C-c"]);
    tmux.wait_for(&format!("Cancel export {id} on the server? [y/N]"), Duration::from_secs(10)).await;
    tmux.run(&["send-keys", "-t", "cli", "y", "Enter"]);
    wait_for_file(&exit_file, Duration::from_secs(20)).await;
    assert_eq!(std::fs::read_to_string(&exit_file).unwrap().trim(), "130");
    assert!(tmux.screen().contains(&format!("export {id} cancelled")));
    assert_eq!(app.status(id).await["status"], "cancelled");
    assert!(!out.path().join("o.csv").exists());

    // Answered "no": the export keeps running.
    std::fs::remove_file(&exit_file).unwrap();
    tmux.run(&["kill-session", "-t", "cli"]);
    tmux.run(&["new-session", "-d", "-s", "cli", "-x", "150", "-y", "20", &command]);
    tmux.wait_for("running   [", Duration::from_secs(30)).await;
    let second = wait_for_id(&app).await;
    tmux.run(&["send-keys", "-t", "cli", "C-c"]);
    tmux.wait_for("[y/N]", Duration::from_secs(10)).await;
    tmux.run(&["send-keys", "-t", "cli", "n", "Enter"]);
    wait_for_file(&exit_file, Duration::from_secs(20)).await;
    assert!(tmux.screen().contains("left running"), "{}", tmux.screen());
    assert_eq!(app.status(second).await["status"], "running");
    app.client.delete(app.url(&format!("/api/export/{second}"))).send().await.unwrap();
}

/// The newest running export.
async fn wait_for_id(app: &TestApp) -> Uuid {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running: Option<Uuid> =
            sqlx::query_scalar("select id from exports where status = 'running' order by created_at desc limit 1")
                .fetch_optional(&app.db.pool)
                .await
                .unwrap();
        if let Some(id) = running {
            return id;
        }
        assert!(Instant::now() < deadline, "no export running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_file(path: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !path.exists() || std::fs::read_to_string(path).unwrap_or_default().trim().is_empty() {
        assert!(Instant::now() < deadline, "{} never written", path.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
