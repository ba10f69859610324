//! An export's life after creation: cancel, delete, expiry, listing, idempotent creation,
//! progress, and the datasets the service offers (downloads and the sweeper have files of
//! their own).

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

pub async fn app(rows: i64, opts: AppOptions) -> TestApp {
    let db = test_db().await;
    seed_nasty(&db.pool, rows).await;
    spawn_app(db, opts).await
}

pub async fn delete(app: &TestApp, id: Uuid) -> reqwest::Response {
    app.client.delete(app.url(&format!("/api/export/{id}"))).send().await.unwrap()
}

pub fn export_dir(app: &TestApp, id: Uuid) -> std::path::PathBuf {
    app.storage.path().join(id.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_export_within_a_chunk_and_removes_its_file() {
    let app = app(20_000, AppOptions { workers: 1, ..Default::default() }).await;
    // Throttled to 2000 rows/s in chunks of 500: it runs for about 10 s.
    let id = app.create_export(Some(json!({"chunkSize": 500, "maxRowsPerSecond": 2000}))).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app.status(id).await["rowsWritten"].as_i64().unwrap() < 1000 {
        assert!(tokio::time::Instant::now() < deadline, "export did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(export_dir(&app, id).exists());
    let resp = delete(&app, id).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "cancelled");
    // The runner notices at its next chunk boundary (a quarter of a second of rows here).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let open: i64 =
            sqlx::query_scalar("select count(*) from export_runs where export_id = $1 and ended_at is null")
                .bind(id)
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
        if open == 0 && !export_dir(&app, id).exists() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the run did not stop within a chunk");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = app.status(id).await["rowsWritten"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = app.status(id).await;
    assert_eq!(s["status"], "cancelled", "never comes back to life: {s}");
    assert_eq!(s["rowsWritten"].as_i64().unwrap(), rows, "no checkpoint after the cancel");
    assert!(!export_dir(&app, id).exists(), "partial file removed");
    let resp = app.client.get(app.url(&format!("/api/export/{id}/download"))).send().await.unwrap();
    expect_error(resp, 410, "cancelled").await;
    // The worker is free again: the next export completes.
    let next = app.create_export(Some(json!({"chunkSize": 5000}))).await;
    assert_eq!(app.wait_finished(next, Duration::from_secs(30)).await["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queued_delete_completed_and_repeat() {
    let app = app(1_000, AppOptions::default()).await;
    let done = app.create_export(None).await;
    app.wait_finished(done, Duration::from_secs(30)).await;
    let file = app.storage.path().join(export_row(&app.db.pool, done).await.file_name.unwrap());
    assert!(file.exists());
    // Deleting a completed export deletes its file: status `expired`, download 410.
    assert_eq!(app.status(done).await["progress"], 1.0);
    let v: Value = delete(&app, done).await.json().await.unwrap();
    assert_eq!(v["status"], "expired");
    // It did complete: progress stays 1 (it dropped to 0.99 before).
    assert_eq!(v["progress"], 1.0);
    assert_eq!(app.status(done).await["progress"], 1.0);
    assert!(!file.exists());
    expect_error(
        app.client.get(app.url(&format!("/api/export/{done}/download"))).send().await.unwrap(),
        410,
        "expired",
    )
    .await;
    // Repeating is harmless; unknown ids are 404.
    let again = delete(&app, done).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["status"], "expired");
    let unknown = Uuid::new_v4();
    expect_error(delete(&app, unknown).await, 404, &unknown.to_string()).await;

    // A queued export (no worker to take it) is cancelled before it runs, and stays so.
    let (db, storage) = app.stop().await;
    let app = spawn_app_on(db, storage, AppOptions { workers: 0, ..Default::default() }).await;
    let queued = app.create_export(None).await;
    let v: Value = delete(&app, queued).await.json().await.unwrap();
    assert_eq!(v["status"], "cancelled");
    let (db, storage) = app.stop().await;
    let app = spawn_app_on(db, storage, AppOptions::default()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.status(queued).await["status"], "cancelled");
    assert!(!export_dir(&app, queued).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_files_expire_after_the_retention() {
    let app = app(500, AppOptions { retention: Duration::from_secs(1), ..Default::default() }).await;
    let id = app.create_export(None).await;
    let s = app.wait_finished(id, Duration::from_secs(30)).await;
    let finished: chrono::DateTime<chrono::Utc> = s["finishedAt"].as_str().unwrap().parse().unwrap();
    let expires: chrono::DateTime<chrono::Utc> = s["expiresAt"].as_str().unwrap().parse().unwrap();
    assert_eq!((expires - finished).num_seconds(), 1, "{s}");
    // Not yet due: nothing happens.
    exportd::app::expire(&app.db.pool, app.engine.storage().as_ref()).await;
    assert!(!app.download(id).await.is_empty(), "not expired yet");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The scheduled job (housekeeping runs it every 10 s; here called directly).
    exportd::app::expire(&app.db.pool, app.engine.storage().as_ref()).await;
    assert_eq!(app.status(id).await["status"], "expired");
    assert!(!export_dir(&app, id).exists());
    let resp = app.client.get(app.url(&format!("/api/export/{id}/download"))).send().await.unwrap();
    expect_error(resp, 410, "expired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_newest_first_with_a_cursor_and_filters_by_status() {
    let app = app(10, AppOptions { workers: 0, ..Default::default() }).await;
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(app.create_export(None).await);
    }
    delete(&app, ids[2]).await;
    let get = |q: String| {
        let app = &app;
        async move { app.client.get(app.url(&format!("/api/exports{q}"))).send().await.unwrap() }
    };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        let q = match &cursor {
            Some(c) => format!("?limit=3&cursor={c}"),
            None => "?limit=3".into(),
        };
        let v: Value = get(q).await.json().await.unwrap();
        let items = v["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|i| i["jobId"].as_str().unwrap().parse::<Uuid>().unwrap()));
        match v["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => {
                assert_eq!(page, 2, "7 exports in pages of 3");
                break;
            }
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    let v: Value = get("?status=cancelled".into()).await.json().await.unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["jobId"], ids[2].to_string());
    assert!(v["nextCursor"].is_null());
    let v: Value = get("?status=queued&limit=100".into()).await.json().await.unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 6);

    expect_error(get("?cursor=garbage".into()).await, 400, "cursor").await;
    expect_error(get("?limit=0".into()).await, 400, "limit").await;
    expect_error(get("?limit=101".into()).await, 400, "limit").await;
    expect_error(get("?status=done".into()).await, 400, "status").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_same_export_and_refuses_another_body() {
    let app = app(100, AppOptions { workers: 0, ..Default::default() }).await;
    let post = |key: &'static str, body: Value| {
        app.client.post(app.url("/api/export")).header("Idempotency-Key", key).json(&body).send()
    };
    let first: Value = post("k-1", json!({"chunkSize": 500})).await.unwrap().json().await.unwrap();
    let again = post("k-1", json!({"chunkSize": 500})).await.unwrap();
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["jobId"], first["jobId"]);
    let resp = post("k-1", json!({"chunkSize": 600})).await.unwrap();
    let v = expect_error(resp, 422, "Idempotency-Key").await;
    assert!(v["message"].as_str().unwrap().contains(first["jobId"].as_str().unwrap()));
    // Ten at once with a new key: one export.
    let racing = (0..10).map(|_| post("k-2", json!({})));
    let answers = futures::future::join_all(racing).await;
    let mut ids = Vec::new();
    for a in answers {
        let a = a.unwrap();
        assert_eq!(a.status(), 202);
        ids.push(a.json::<Value>().await.unwrap()["jobId"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let n: i64 = sqlx::query_scalar("select count(*) from exports").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(n, 2);
    let resp = app.client.post(app.url("/api/export")).header("Idempotency-Key", "x".repeat(201)).send().await.unwrap();
    expect_error(resp, 400, "Idempotency-Key").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_has_a_rate_an_eta_and_an_estimate_without_counting() {
    let app = app(20_000, AppOptions { workers: 1, ..Default::default() }).await;
    let id = app.create_export(Some(json!({"chunkSize": 1000, "maxRowsPerSecond": 10000}))).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let running = loop {
        let s = app.status(id).await;
        if s["status"] == "running" && s["rowsWritten"].as_i64().unwrap() >= 3000 {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rate = running["rowsPerSecond"].as_f64().unwrap();
    // Throttled to 10000 rows/s (less on a loaded machine). Pacing waits after each chunk, so
    // early on the first chunk counts without its wait: n chunks in n-1 waits.
    assert!((500.0..=10_000.0 * 3.0 / 2.0).contains(&rate), "{running}");
    let eta = running["etaSeconds"].as_i64().unwrap();
    let left = (running["totalRows"].as_i64().unwrap() - running["rowsWritten"].as_i64().unwrap()) as f64;
    assert!((eta as f64 - left / rate).abs() <= 1.0, "rows left over the rate: {running}");
    // The estimate comes from the planner: 20008 rows in the table.
    let total = running["totalRows"].as_i64().unwrap();
    assert!((19_000..=21_000).contains(&total), "{running}");
    let done = app.wait_finished(id, Duration::from_secs(30)).await;
    assert_eq!(done["etaSeconds"], 0);
    assert!(done["rowsPerSecond"].as_f64().unwrap() > 0.0);
    assert_eq!(done["options"]["maxRowsPerSecond"], 10000);

    // With filters, the estimate is the planner's for the filtered query (no count either).
    let id = app.create_export(Some(json!({"filters": {"status": {"eq": "paid"}}}))).await;
    let s = app.status(id).await;
    let total = s["totalRows"].as_i64().unwrap();
    assert!((2_000..=8_000).contains(&total), "a fifth of 20008 rows: {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_are_listed_with_columns_types_and_filterability() {
    let app = app(10, AppOptions { workers: 0, ..Default::default() }).await;
    let v: Value = app.client.get(app.url("/api/datasets")).send().await.unwrap().json().await.unwrap();
    let orders = &v[0];
    assert_eq!(orders["name"], "orders");
    assert_eq!(orders["key"], "id");
    assert_eq!(orders["default"], true);
    let col = |name: &str| orders["columns"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone();
    assert_eq!(col("amount")["type"], "numeric(12,2)");
    assert_eq!(col("amount")["filterable"], false);
    assert_eq!(col("created_at")["type"], "timestamp with time zone");
    assert_eq!(col("created_at")["filterable"], true);
    assert_eq!(col("country")["type"], "character(2)");
    assert_eq!(orders["columns"].as_array().unwrap().len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_get_a_400_that_names_the_field_and_create_nothing() {
    let app = app(10, AppOptions { workers: 0, ..Default::default() }).await;
    let cases = [
        (json!({"columns": ["id", "password"]}), "columns: unknown column \"password\""),
        (json!({"columns": []}), "columns"),
        (json!({"columns": ["id", "id"]}), "listed twice"),
        (json!({"headers": {"note": "x"}, "columns": ["id"]}), "headers.note"),
        (json!({"headers": {"id": "status"}}), "header \"status\" is used twice"),
        (json!({"headers": {"id": "x".repeat(64)}}), "headers.id"),
        (json!({"headers": {"note": "a\r\nb"}}), "headers.note: must not contain control characters"),
        (json!({"headers": {"note": "=HYPERLINK(\"x\")\n"}}), "headers.note: must not contain control"),
        (json!({"filters": {"note": {"eq": "x"}}}), "filters.note: column \"note\" cannot be filtered on"),
        (json!({"filters": {"nope": {"eq": "x"}}}), "filters.nope: unknown column \"nope\""),
        (json!({"filters": {"x".repeat(100_000): {"eq": "x"}}}), "filters: unknown column \"xxxx"),
        (json!({"filters": {"created_at": {"gte": "last tuesday"}}}), "filters.created_at.gte"),
        (json!({"filters": {"created_at": {"lt": "now"}}}), "filters.created_at.lt"),
        (json!({"filters": {"id": {"gt": "ten"}}}), "filters.id.gt"),
        (json!({"filters": {"id": {"gt": 1.5}}}), "filters.id.gt"),
        (
            json!({"filters": {"id": {"eq": "99999999999999999999"}}}),
            "filters.id.eq: value \"99999999999999999999\" is out of range",
        ),
        (
            json!({"filters": {"created_at": {"gt": "2024-02-30"}}}),
            "filters.created_at.gt: date/time field value out of range",
        ),
        (json!({"filters": {"status": {"eq": null}}}), "filters.status.eq: null is not allowed"),
        (json!({"filters": {"status": {}}}), "filters.status: give at least one of"),
        (json!({"dataset": null}), "dataset: null is not allowed"),
        (json!({"format": {"header": null}}), "format.header: null is not allowed"),
        (json!({"filters": {"status": {"eq": "x".repeat(1025)}}}), "filters.status.eq: a value of 1025 bytes"),
        (
            json!({"filters": {"id": {"in": (1..=1000).collect::<Vec<i64>>()},
                               "customer_email": {"in": (0..1000).map(|i| format!("c{i}")).collect::<Vec<_>>()},
                               "status": {"eq": "paid"}}}),
            "filters: 2001 values in all",
        ),
        (
            json!({"filters": {"customer_email": {"in": (0..70).map(|i| format!("{i:01000}")).collect::<Vec<_>>()}}}),
            "filters: the export's options take",
        ),
        // With the formula guard, header names are as inert as the cells; without, any text.
        (
            json!({"format": {"formulaGuard": true}, "headers": {"note": "=HYPERLINK(\"x\")"}}),
            "headers.note: \"=HYPERLINK(\\\"x\\\")\" starts with \"=\"",
        ),
        (json!({"format": {"formulaGuard": true}, "headers": {"note": "@x"}}), "headers.note"),
        (json!({"format": {"timeZone": "x".repeat(65)}}), "format.timeZone"),
        (json!({"filters": {"status": {"in": []}}}), "filters.status.in"),
        (json!({"filters": {"status": {}}}), "filters.status"),
        (json!({"filters": {"status": {"like": "p%"}}}), "like"),
        (json!({"format": {"delimiter": "::"}}), "format.delimiter"),
        (json!({"format": {"delimiter": "x"}}), "format.delimiter"),
        (json!({"format": {"null": "it's"}}), "format.null"),
        (json!({"format": {"null": "a,b"}}), "format.null"),
        (json!({"format": {"timeZone": "Mars/Olympus"}}), "format.timeZone"),
        // Abbreviations: `AT TIME ZONE` takes them, the `TimeZone` setting a run makes does not.
        (json!({"format": {"timeZone": "CEST"}}), "format.timeZone: invalid value for parameter \"TimeZone\""),
        (json!({"format": {"timeZone": "PDT"}}), "format.timeZone"),
        (json!({"format": {"lineEnding": "cr"}}), "lineEnding"),
        (json!({"format": {"colour": "red"}}), "colour"),
        (json!({"compression": "zip"}), "compression"),
        (json!({"dataset": "users"}), "dataset: unknown dataset \"users\""),
    ];
    for (body, mentions) in cases {
        let resp = app.client.post(app.url("/api/export")).json(&body).send().await.unwrap();
        println!("{} -> {}", &body.to_string()[..body.to_string().len().min(200)], resp.status());
        let error = expect_error(resp, 400, mentions).await;
        let message = error["message"].as_str().unwrap();
        assert!(message.len() < 500, "an error message repeats a bounded part of the request: {message}");
    }
    let n: i64 = sqlx::query_scalar("select count(*) from exports").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_when_to_ask_again_while_the_export_is_not_finished() {
    let db = test_db().await;
    exportd::db::seed::seed_orders(&db.pool, 3_000, |_| {}).await.unwrap();
    let app = spawn_app(db, AppOptions::default()).await;
    let retry_after = |resp: &reqwest::Response| {
        resp.headers().get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().expect("whole seconds"))
    };
    // Throttled to 100 rows/s: running for half a minute.
    let slow = app.create_export(Some(json!({"maxRowsPerSecond": 100, "chunkSize": 100}))).await;
    app.wait_rows(slow, 100, Duration::from_secs(20)).await;
    let resp = app.client.get(app.url(&format!("/api/export/{slow}/status"))).send().await.unwrap();
    assert!(retry_after(&resp).is_some_and(|s| (1..=10).contains(&s)), "{:?}", resp.headers());
    // Ended (cancelled, completed): nothing to wait for.
    let resp = app.client.delete(app.url(&format!("/api/export/{slow}"))).send().await.unwrap();
    assert_eq!(retry_after(&resp), None);
    let fast = app.create_export(None).await;
    app.wait_finished(fast, Duration::from_secs(30)).await;
    let resp = app.client.get(app.url(&format!("/api/export/{fast}/status"))).send().await.unwrap();
    assert_eq!(retry_after(&resp), None);
    // Queued (no worker takes it here): ask again in a second.
    let db = test_db().await;
    exportd::db::seed::seed_orders(&db.pool, 10, |_| {}).await.unwrap();
    let idle = spawn_app(db, AppOptions { workers: 0, ..Default::default() }).await;
    let queued = idle.create_export(None).await;
    let resp = idle.client.get(idle.url(&format!("/api/export/{queued}/status"))).send().await.unwrap();
    assert_eq!(retry_after(&resp), Some(1));
}
