//! Generated clients, each alone, through the whole flow: from the live `/openapi.json`, a
//! real generator at a pinned version and its default settings writes a client
//! (openapi-python-client; openapi-typescript for openapi-fetch; progenitor), and a small
//! program in that language (`tests/clients/<language>/`) lists datasets, creates an export
//! with columns, renamed headers, filters, a CSV dialect and gzip, polls it to completion,
//! downloads it, cancels another, lists both, and gets a 400 and a 404 as the declared
//! `ErrorBody`. Here the file it downloaded must equal PostgreSQL's own `COPY` of the same
//! rows, byte for byte. `run.sh` installs the generators (cached) on first use.

#[path = "../support/mod.rs"]
mod support;

use std::{io::Read as _, path::Path, process::Stdio};

use serde_json::{Value, json};
use support::helpers::*;
use uuid::Uuid;

/// The export every client makes: each option family at a value that is not its default.
fn request() -> Value {
    json!({
        "dataset": "orders",
        "columns": ["id", "created_at", "customer_email", "amount", "status"],
        "headers": {"customer_email": "email"},
        "filters": {
            "status": {"in": ["paid", "shipped"]},
            "created_at": {"gte": "2023-01-02", "lt": "2023-01-05"}
        },
        "format": {"delimiter": ";", "header": true, "null": "NULL", "lineEnding": "crlf", "timeZone": "Europe/Berlin"},
        "compression": "gzip",
        "chunkSize": 1000
    })
}

/// The same rows as PostgreSQL writes them (the filter's dates are read in the export's time zone, as here).
const REFERENCE: &str = "copy (select id, created_at, customer_email as email, amount, status from orders \
     where status in ('paid', 'shipped') and created_at >= '2023-01-02' and created_at < '2023-01-05' \
     order by id) to stdout with (format csv, header, delimiter ';', null 'NULL')";

async fn round_trip(language: &str) {
    let db = test_db().await;
    exportd::db::seed::seed_orders(&db.pool, 20_000, |_| {}).await.unwrap();
    let app = spawn_app(db, AppOptions::default()).await;
    let spec = app.client.get(app.url("/openapi.json")).send().await.unwrap().text().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let spec_path = work.path().join("openapi.json");
    std::fs::write(&spec_path, &spec).unwrap();
    let file = work.path().join("export.csv.gz");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/run.sh");
    let out = tokio::process::Command::new(script)
        .arg(language)
        .arg(&spec_path)
        .arg(work.path().join(language))
        .arg(&app.base)
        .arg(&file)
        .arg(request().to_string())
        .env("EXPORTD_KEY", &app.key)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run tests/clients/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the {language} round trip failed ({}):\n{stdout}\n{stderr}", out.status);
    let ids: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the last line of its output is its result ({e}):\n{stdout}"));

    // What the client downloaded is PostgreSQL's COPY of the same rows, gzip-compressed.
    let mut csv = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(&file).unwrap()).read_to_end(&mut csv).unwrap();
    let reference = crlf_records(&copy_out(&app.db.pool, "Europe/Berlin", REFERENCE).await);
    assert!(reference.len() > 1000, "the filter keeps rows: {} bytes", reference.len());
    assert_same_bytes(&csv, &reference);

    // The Python client also made a Parquet and a JSON Lines export of those columns, through
    // the generated enums: every value reads back as PostgreSQL wrote it.
    if language == "python" {
        let columns = ["id", "created_at", "customer_email", "amount", "status"];
        let types = support::formats::sql_types(&app.db.pool, "orders", &columns).await;
        let reference = support::formats::reference(&app.db.pool, "orders", &columns).await;
        for (kind, decimals) in [("parquet", "string"), ("jsonl", "number")] {
            let typed = std::fs::read(format!("{}.{kind}", file.display())).unwrap();
            support::formats::check(kind, &typed, kind, &reference, &types, decimals);
        }
    }

    // And the server agrees with what the client saw.
    let id = |k: &str| ids[k].as_str().and_then(|s| s.parse::<Uuid>().ok()).expect("an id");
    assert_eq!(export_row(&app.db.pool, id("completed")).await.status.as_str(), "completed");
    assert_eq!(export_row(&app.db.pool, id("cancelled")).await.status.as_str(), "cancelled");
    app.stop().await;
}

#[tokio::test]
async fn a_client_generated_by_openapi_python_client_does_the_whole_flow() {
    round_trip("python").await;
}

#[tokio::test]
async fn a_client_generated_by_openapi_typescript_for_openapi_fetch_does_the_whole_flow() {
    round_trip("typescript").await;
}

#[tokio::test]
async fn a_client_generated_by_progenitor_does_the_whole_flow() {
    round_trip("rust").await;
}

/// Swagger UI in headless Chromium: "Try it out" on create (with the spec's example body), on
/// status until completed, and on download; the file the page saves is the export's file, and
/// not empty (the example's filters match seeded rows). A page on another origin, allowed by
/// `EXPORTD_CORS_ORIGINS`, downloads it with `fetch` and reads its `ETag`. Screenshots are kept
/// in `target/test-output/swagger/`.
#[tokio::test]
async fn swagger_ui_in_a_real_browser_creates_follows_and_downloads_an_export() {
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_url = format!("http://{}", other.local_addr().unwrap());
    tokio::spawn(async move {
        // The page on the other origin: any document will do, its origin is what counts.
        loop {
            let Ok((mut conn, _)) = other.accept().await else { return };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let page = "<!doctype html><title>another origin</title>";
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    page.len()
                );
                let _ = conn.write_all(format!("{head}{page}").as_bytes()).await;
            });
        }
    });

    let db = test_db().await;
    exportd::db::seed::seed_orders(&db.pool, 20_000, |_| {}).await.unwrap();
    let mut http = exportd::config::ServeArgs::parse_defaults().http;
    http.cors_origins = vec![other_url.clone()];
    let app = spawn_app(db, AppOptions { http: Some(http), ..Default::default() }).await;

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-output/swagger");
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/run.sh");
    let out = tokio::process::Command::new(script)
        .args(["browser", &app.base, shots.to_str().unwrap(), &other_url])
        .env("EXPORTD_KEY", &app.key)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run tests/clients/run.sh browser");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "Swagger UI in Chromium failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("its result");
    println!("screenshots in {}: {seen}", shots.display());

    let id: Uuid = seen["id"].as_str().unwrap().parse().unwrap();
    assert!(seen["rows"].as_i64().unwrap() > 0, "the example's filters match seeded rows: {seen}");
    let file = app.download(id).await;
    assert_eq!(std::fs::read(seen["file"].as_str().unwrap()).unwrap(), file, "the browser saved the export's file");
    let cross = &seen["crossOrigin"];
    assert_eq!(cross["status"], 200, "{seen}");
    assert_eq!(cross["bytes"].as_u64(), Some(file.len() as u64));
    assert!(cross["etag"].as_str().is_some_and(|e| e.contains(&id.simple().to_string())), "ETag readable: {seen}");
    assert_eq!(seen["withoutKey"], "unauthorized", "{seen}");
    for shot in
        ["swagger-authorize.png", "swagger-create.png", "swagger-status.png", "swagger-download.png", "swagger-ui.png"]
    {
        assert!(shots.join(shot).metadata().is_ok_and(|m| m.len() > 1000), "{shot} was taken");
    }
    app.stop().await;
}

/// The exports page (`/ui`) in headless Chromium: sign-in (a wrong key refused), only the
/// owner's exports, a running export's bar advancing without a reload, the download of a
/// completed export (the same bytes), cancel; and the list with JavaScript off. Screenshots
/// are kept in `target/test-output/ui/`.
#[tokio::test]
async fn the_exports_page_in_a_real_browser_follows_downloads_and_cancels() {
    let db = test_db().await;
    exportd::db::seed::seed_orders(&db.pool, 50_000, |_| {}).await.unwrap();
    let app = spawn_app(db, AppOptions::default()).await;
    let team = exportd::db::keys::create(&app.db.pool, "team-ui", false, None).await.unwrap().1;
    let api = app.as_key(&team);
    let completed = api.create_export(Some(json!({"columns": ["id", "status"]}))).await;
    assert_eq!(api.wait_finished(completed, std::time::Duration::from_secs(60)).await["status"], "completed");
    // About 50 s at 1000 rows/s: it runs through the whole page visit.
    let running = api.create_export(Some(json!({"chunkSize": 500, "maxRowsPerSecond": 1000}))).await;
    api.wait_rows(running, 500, std::time::Duration::from_secs(30)).await;
    let other = app.create_export(Some(json!({"columns": ["id"]}))).await;

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-output/ui");
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/run.sh");
    let out = tokio::process::Command::new(script)
        .args(["ui", &app.base, shots.to_str().unwrap()])
        .args([running.to_string(), completed.to_string(), other.to_string()])
        .env("EXPORTD_KEY", &team)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run tests/clients/run.sh ui");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "/ui in Chromium failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("its result");
    println!("screenshots in {}: {seen}", shots.display());

    assert!(seen["badKey"].as_str().unwrap().contains("not a valid key"), "{seen}");
    assert_eq!(seen["noJsRows"], 2, "the owner's two exports, listed without JavaScript: {seen}");
    assert_eq!(seen["noJsSeesRunning"], 1);
    assert_eq!(seen["otherOwnersVisible"], 0, "another owner's export is not shown: {seen}");
    assert_eq!(seen["completedVisible"], 1);
    assert!(seen["progressAfter"].as_f64() > seen["progressBefore"].as_f64(), "{seen}");
    assert_eq!(seen["reloadsWhileWatching"], 0, "refreshed in place: {seen}");
    assert!(seen["rate"].as_str().unwrap().ends_with("rows/s"), "{seen}");
    assert_eq!(seen["cancelled"], "cancelled");
    assert_eq!(api.status(running).await["status"], "cancelled");
    assert_eq!(std::fs::read(seen["file"].as_str().unwrap()).unwrap(), api.download(completed).await);
    for shot in ["ui.png", "ui-no-javascript.png", "ui-cancelled.png"] {
        assert!(shots.join(shot).metadata().is_ok_and(|m| m.len() > 1000), "{shot} was taken");
    }
    app.stop().await;
}
