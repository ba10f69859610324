//! The HTTP contract: status codes, fields, headers, and JSON errors that name the problem.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

async fn app_with_rows(rows: i64) -> TestApp {
    let db = test_db().await;
    db::seed(&db, rows).await;
    spawn_app(db, AppOptions::default()).await
}

mod db {
    pub async fn seed(db: &crate::helpers::TestDb, rows: i64) {
        exportd::db::seed::seed_orders(&db.pool, rows, |_| {}).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_answers_202_with_links_and_location() {
    let app = app_with_rows(2_000).await;
    for body in [None, Some(json!({})), Some(json!({"chunkSize": 500, "maxRowsPerSecond": 100000}))] {
        let mut req = app.client.post(app.url("/api/export"));
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 202, "body {body:?}");
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        let v: Value = resp.json().await.unwrap();
        let id: Uuid = v["jobId"].as_str().unwrap().parse().unwrap();
        assert_eq!(v["status"], "queued");
        assert_eq!(v["statusUrl"], format!("/api/export/{id}/status"));
        assert_eq!(v["downloadUrl"], format!("/api/export/{id}/download"));
        assert_eq!(location, format!("/api/export/{id}/status"));
        // The export row and its queue job exist together.
        let job: i64 = sqlx::query_scalar(
            "select count(*) from apalis.jobs j join exports e on e.queue_job_id = j.id where e.id = $1",
        )
        .bind(id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        assert_eq!(job, 1);
    }
    // A bare POST with no Content-Type at all works too.
    let resp = app.client.post(app.url("/api/export")).body("").send().await.unwrap();
    assert_eq!(resp.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_every_field_through_to_completion() {
    let app = app_with_rows(25_000).await;
    let id = app.create_export(Some(json!({"chunkSize": 1000}))).await;
    let s = app.status(id).await;
    for field in [
        "jobId",
        "status",
        "rowsWritten",
        "bytesWritten",
        "lastProcessedId",
        "totalRows",
        "progress",
        "attempts",
        "error",
        "createdAt",
        "startedAt",
        "finishedAt",
        "upperBoundId",
    ] {
        assert!(s.get(field).is_some(), "status lacks {field}: {s}");
    }
    let done = app.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["rowsWritten"], 25_000);
    assert_eq!(done["lastProcessedId"], 25_000);
    assert_eq!(done["upperBoundId"], 25_000);
    assert_eq!(done["totalRows"], 25_000);
    assert_eq!(done["progress"], 1.0);
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["error"], Value::Null);
    assert!(done["startedAt"].is_string() && done["finishedAt"].is_string());
    let file = app.download(id).await;
    assert_eq!(done["bytesWritten"], file.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_headers_and_conflict_before_completion() {
    let app = app_with_rows(3_000).await;
    // A slow export: still running when we ask for its file.
    let id = app.create_export(Some(json!({"chunkSize": 100, "maxRowsPerSecond": 1000}))).await;
    let resp = app.client.get(app.url(&format!("/api/export/{id}/download"))).send().await.unwrap();
    assert_eq!(resp.status(), 409);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "conflict");
    assert!(["queued", "running"].contains(&v["status"].as_str().unwrap()), "{v}");
    assert!(v["message"].as_str().unwrap().contains("not completed"), "{v}");

    app.wait_finished(id, Duration::from_secs(30)).await;
    let resp = app.client.get(app.url(&format!("/api/export/{id}/download"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "text/csv; charset=utf-8");
    assert_eq!(h["content-disposition"], format!("attachment; filename=\"orders-{id}.csv\""));
    let len: usize = h["content-length"].to_str().unwrap().parse().unwrap();
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), len);
    assert_same_bytes(&body, &copy_reference(&app.db.pool).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_that_names_the_problem() {
    let app = app_with_rows(10).await;
    let post = |body: &'static str| {
        app.client.post(app.url("/api/export")).header("content-type", "application/json").body(body).send()
    };
    expect_error(post("{not json").await.unwrap(), 400, "not valid JSON").await;
    expect_error(post(r#"{"chunkSize": 5}"#).await.unwrap(), 400, "chunkSize").await;
    expect_error(post(r#"{"chunkSize": 100001}"#).await.unwrap(), 400, "chunkSize").await;
    expect_error(post(r#"{"chunkSize": "big"}"#).await.unwrap(), 400, "chunkSize").await;
    expect_error(post(r#"{"maxRowsPerSecond": 0}"#).await.unwrap(), 400, "maxRowsPerSecond").await;
    expect_error(post(r#"{"chunksize": 500}"#).await.unwrap(), 400, "chunksize").await;
    expect_error(post(r#"{"dataset": "users"}"#).await.unwrap(), 400, "users").await;
    expect_error(post("[1, 2]").await.unwrap(), 400, "").await;
    let resp =
        app.client.post(app.url("/api/export")).header("content-type", "text/plain").body("hi").send().await.unwrap();
    expect_error(resp, 415, "Content-Type").await;

    let get = |path: String| app.client.get(app.url(&path)).send();
    expect_error(get("/api/export/not-a-uuid/status".into()).await.unwrap(), 400, "path parameter `id`").await;
    expect_error(get("/api/export/not-a-uuid/download".into()).await.unwrap(), 400, "path parameter `id`").await;
    let unknown = Uuid::new_v4();
    expect_error(get(format!("/api/export/{unknown}/status")).await.unwrap(), 404, &unknown.to_string()).await;
    expect_error(get(format!("/api/export/{unknown}/download")).await.unwrap(), 404, &unknown.to_string()).await;
    expect_error(get("/api/nothing-here".into()).await.unwrap(), 404, "").await;
    let resp = app.client.delete(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    // Nothing was created by any of the bad requests.
    let n: i64 = sqlx::query_scalar("select count(*) from exports").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_spec_and_docs_are_served() {
    let app = app_with_rows(1).await;
    let resp = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "ok");

    let spec: Value = app.client.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(spec["paths"]["/api/export"]["post"].is_object());
    assert!(spec["paths"]["/api/export/{id}/status"]["get"].is_object());
    assert!(spec["paths"]["/api/export/{id}/download"]["get"].is_object());
    let docs = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
    // The root points a browser (or a person with curl) at the docs.
    let root = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let resp = root.get(app.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/docs");
    assert_eq!(app.client.get(app.url("/")).send().await.unwrap().status(), 200, "followed to the docs");

    // The committed spec is the one the service serves (regenerate with `make openapi`).
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/exportd.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(committed, spec, "openapi/exportd.json is stale: run `make openapi`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_when_the_database_is_unreachable() {
    // A pool pointing at a port where nothing listens: the check fails fast, no hang, no 500.
    let db = test_db().await;
    db::seed(&db, 10).await;
    let app = spawn_app(db, AppOptions { workers: 0, ..Default::default() }).await;
    let datasets = exportd::datasets::load(&app.db.pool, None).await.unwrap();
    let mut args = exportd::config::DbArgs::parse_defaults();
    args.database_url = "postgres://postgres@127.0.0.1:1/none".into();
    let dead = exportd::db::connect(&args).await.unwrap();
    let state = std::sync::Arc::new(exportd::api::AppState {
        waker: exportd::export::queue::Waker::start(dead.clone()),
        pool: dead,
        storage: std::sync::Arc::new(exportd::storage::LocalDir::at(app.storage.path())),
        download_redirect: None,
        default_chunk_size: 10_000,
        max_parallelism: 4,
        retention: Duration::from_secs(3600),
        min_free_disk: 0,
        datasets: std::sync::Arc::new(datasets),
        public_url: String::new(),
        request_timeout: std::time::Duration::from_secs(30),
        downloads: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        faults: Default::default(),
        cors: Default::default(),
        conformance: None,
        links: exportd::api::Links {
            keys: exportd::model::link::LinkKeys::single("t", vec![0; 32]),
            ttl: Duration::from_secs(3600),
            base: String::new(),
        },
        webhook_allow: Default::default(),
    });
    let resp = poem::test::TestClient::new(exportd::api::routes(state.clone())).get("/healthz").send().await;
    resp.assert_status(poem::http::StatusCode::SERVICE_UNAVAILABLE);
    // What failed is logged under the request's id, not sent (the driver's text names hosts
    // and ports).
    let id = resp.0.headers().get("x-request-id").expect("a request id").to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    resp.assert_json(serde_json::json!({
        "error": "unavailable", "message": "the database does not answer within 2 s", "requestId": id
    }))
    .await;
    // A well-formed key: checking it needs the database, which does not answer (503, not 401).
    let key = format!("Bearer exk_{}_{}", uuid::Uuid::new_v4().simple(), "0".repeat(64));
    let resp = poem::test::TestClient::new(exportd::api::routes(state))
        .post("/api/export")
        .header("authorization", key)
        .send()
        .await;
    resp.assert_status(poem::http::StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await.value().deserialize();
    assert_eq!(body["error"], "unavailable");
    assert_eq!(body["message"], "the database is unavailable; retry later");
    assert_eq!(body["requestId"].as_str().map(str::len), Some(32), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id_and_errors_repeat_it() {
    let app = app_with_rows(1).await;
    // A client's own id is kept...
    let resp = app
        .client
        .get(app.url("/api/export/nope/status"))
        .header("x-request-id", "client-42.a:b_c")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "client-42.a:b_c");
    let body = expect_error(resp, 400, "id").await;
    assert_eq!(body["requestId"], "client-42.a:b_c");
    // ... an odd or long one is replaced, and every answer has one, successes included.
    for odd in ["has space", &"x".repeat(65), ""] {
        let resp = app.client.get(app.url("/healthz")).header("x-request-id", odd).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let id = resp.headers()["x-request-id"].to_str().unwrap();
        assert!(id != odd && id.len() == 32, "{odd:?} -> {id:?}");
    }
    let a = app.client.get(app.url("/no/such/route")).send().await.unwrap();
    let id = a.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = expect_error(a, 404, "not found").await;
    assert_eq!(body["requestId"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413_whether_its_length_is_declared_or_not() {
    let app = app_with_rows(1).await;
    let limit = exportd::api::body::MAX_BODY_BYTES as usize;
    // Valid JSON (whitespace around `{}`) just over the limit, with a Content-Length.
    let padded = format!("{{}}{}", " ".repeat(limit));
    let resp = app.client.post(app.url("/api/export")).header("content-type", "application/json").body(padded);
    expect_error(resp.send().await.unwrap(), 413, "larger than").await;
    // The same without a Content-Length (chunked): refused once the limit is passed. Written
    // on a raw connection: the server answers and closes before the client has sent it all, so
    // a client that stops at its first failed write (reqwest: broken pipe) might never read the
    // answer that is already waiting.
    let answer = {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let conn = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://")).await.unwrap();
        let (mut rx, mut tx) = conn.into_split();
        // Read while writing, so the answer is taken as it arrives (before the server's close).
        let reader = tokio::spawn(async move {
            let mut answer = Vec::new();
            let _ = rx.read_to_end(&mut answer).await;
            answer
        });
        let head = format!(
            "POST /api/export HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\n\
             transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
            app.key
        );
        tx.write_all(head.as_bytes()).await.unwrap();
        let chunk = [format!("{:x}\r\n", 65536).into_bytes(), vec![b' '; 65536], b"\r\n".to_vec()].concat();
        for _ in 0..=limit / 65536 {
            if tx.write_all(&chunk).await.is_err() {
                break; // closed by the server
            }
        }
        let _ = tx.write_all(b"0\r\n\r\n").await;
        let answer = reader.await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    };
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("larger than"), "{answer}");
    // Just under it, the same padding is fine; and nothing was created by the refused ones.
    let fits = format!("{{}}{}", " ".repeat(limit - 2));
    let resp = app.client.post(app.url("/api/export")).header("content-type", "application/json").body(fits);
    assert_eq!(resp.send().await.unwrap().status(), 202);
    let count: i64 = sqlx::query_scalar("select count(*) from exports").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn a_value_of_another_type_than_the_spec_says_is_refused_with_its_field_named() {
    // poem-openapi alone reads a number where a string is declared (as its text): the spec
    // calls such a request invalid, so it is refused (schemathesis found `"timeZone": 0` accepted).
    let app = app_with_rows(10).await;
    for (body, field) in [
        (json!({"format": {"timeZone": 0}}), "format.timeZone: expected a string, got a number"),
        (json!({"columns": ["id", 7]}), "columns.1: expected a string, got a number"),
        (json!({"format": {"header": "yes"}}), "format.header: expected a boolean, got a string"),
        (json!({"chunkSize": 1000.5}), "chunkSize: expected an integer, got a number"),
    ] {
        let resp = app.client.post(app.url("/api/export")).json(&body).send().await.unwrap();
        expect_error(resp, 400, field).await;
    }
    let count: i64 = sqlx::query_scalar("select count(*) from exports").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(count, 0, "nothing was created");
}

#[tokio::test]
async fn a_method_a_path_does_not_have_is_405_with_the_methods_it_has() {
    let app = app_with_rows(1).await;
    let id = Uuid::new_v4();
    for (method, path, allow) in [
        ("TRACE", format!("/api/export/{id}/download"), "GET, HEAD"),
        ("PUT", format!("/api/export/{id}"), "DELETE"),
        ("DELETE", "/api/exports".to_owned(), "GET"),
        ("POST", "/healthz".to_owned(), "GET"),
    ] {
        let resp = app.client.request(method.parse().unwrap(), app.url(&path)).send().await.unwrap();
        assert_eq!(resp.headers().get("allow").map(|v| v.to_str().unwrap()), Some(allow), "{method} {path}");
        expect_error(resp, 405, "method not allowed").await;
    }
}
