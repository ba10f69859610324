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
