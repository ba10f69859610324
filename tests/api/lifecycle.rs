//! An export's life after creation: cancel, delete, expiry, listing, resumable downloads,
//! idempotent creation, progress, and the datasets the service offers.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

async fn app(rows: i64, opts: AppOptions) -> TestApp {
    let db = test_db().await;
    seed_nasty(&db.pool, rows).await;
    spawn_app(db, opts).await
}

async fn delete(app: &TestApp, id: Uuid) -> reqwest::Response {
    app.client.delete(app.url(&format!("/api/export/{id}"))).send().await.unwrap()
}

fn export_dir(app: &TestApp, id: Uuid) -> std::path::PathBuf {
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
async fn downloads_support_range_etag_if_range_and_head() {
    let app = app(3_000, AppOptions::default()).await;
    let id = app.create_export(None).await;
    app.wait_finished(id, Duration::from_secs(30)).await;
    let full = app.download(id).await;
    let len = full.len();
    let url = app.url(&format!("/api/export/{id}/download"));
    let get = |headers: Vec<(&'static str, String)>| {
        let mut req = app.client.get(&url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    let resp = get(vec![]).await.unwrap();
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(resp.headers()["accept-ranges"], "bytes");
    assert!(etag.starts_with('"') && etag.ends_with('"'), "strong ETag: {etag}");

    for (range, start, end) in
        [("bytes=0-99", 0, 99), ("bytes=1000-", 1000, len - 1), ("bytes=-500", len - 500, len - 1)]
    {
        let resp = get(vec![("range", range.into())]).await.unwrap();
        assert_eq!(resp.status(), 206, "{range}");
        assert_eq!(resp.headers()["content-range"].to_str().unwrap(), format!("bytes {start}-{end}/{len}"));
        assert_eq!(resp.headers()["content-length"].to_str().unwrap(), (end - start + 1).to_string());
        assert_eq!(resp.bytes().await.unwrap().as_ref(), &full[start..=end], "{range}");
    }
    // Resuming a broken download: the first part plus the rest is the file.
    let head = get(vec![("range", "bytes=0-12344".into())]).await.unwrap().bytes().await.unwrap();
    let tail = get(vec![("range", "bytes=12345-".into()), ("if-range", etag.clone())]).await.unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!([head.as_ref(), tail.bytes().await.unwrap().as_ref()].concat(), full);
    // If-Range with another version: the whole file instead.
    let resp = get(vec![("range", "bytes=0-9".into()), ("if-range", "\"other\"".into())]).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().len(), len);
    // Unsatisfiable: 416 with the length.
    let resp = get(vec![("range", format!("bytes={len}-"))]).await.unwrap();
    assert_eq!(resp.headers()["content-range"].to_str().unwrap(), format!("bytes */{len}"));
    expect_error(resp, 416, "Range").await;
    // Several ranges or a malformed one: the whole file (allowed by RFC 9110).
    for range in ["bytes=0-1,5-6", "lines=1-2"] {
        let resp = get(vec![("range", range.into())]).await.unwrap();
        assert_eq!(resp.status(), 200, "{range}");
        assert_eq!(resp.bytes().await.unwrap().len(), len);
    }
    // Conditional GET.
    let resp = get(vec![("if-none-match", etag.clone())]).await.unwrap();
    assert_eq!(resp.status(), 304);
    assert_eq!(resp.headers()["etag"].to_str().unwrap(), etag);
    assert!(resp.bytes().await.unwrap().is_empty());
    assert_eq!(get(vec![("if-none-match", "\"other\"".into())]).await.unwrap().status(), 200);
    // HEAD: the headers of GET, no body.
    let resp = app.client.head(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"].to_str().unwrap(), len.to_string());
    assert_eq!(resp.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    assert!(resp.bytes().await.unwrap().is_empty());
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
        (json!({"filters": {"note": {"eq": "x"}}}), "filters.note: column \"note\" cannot be filtered on"),
        (json!({"filters": {"nope": {"eq": "x"}}}), "filters.nope"),
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
        (json!({"filters": {"status": {"eq": null}}}), "filters.status: give at least one of"),
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
        println!("{body} -> {}", resp.status());
        expect_error(resp, 400, mentions).await;
    }
    let n: i64 = sqlx::query_scalar("select count(*) from exports").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(n, 0);
}

/// A download whose export expires, or is deleted, between the handler reading its row and
/// opening its file. Forced with a pause point in the download handler: the request reads the
/// row (`completed`) and is held; the test deletes the export (file gone, status `expired`) or
/// removes its row and file (as the purge of expired exports does); then the request goes on.
/// Before, the failed open answered 500.
async fn download_racing(remove: &str) -> reqwest::Response {
    use exportd::export::engine::{Faults, Pause, PauseAt};
    let pause = Pause::new();
    let faults = Faults { pause: Some((PauseAt::DownloadLookedUp, pause.clone())), ..Default::default() };
    let app = app(500, AppOptions { faults: Some(faults), ..Default::default() }).await;
    let id = app.create_export(None).await;
    app.wait_finished(id, Duration::from_secs(30)).await;
    let request = tokio::spawn(app.client.get(app.url(&format!("/api/export/{id}/download"))).send());
    pause.reached().await;
    match remove {
        "expire" => assert_eq!(delete(&app, id).await.status(), 200),
        _ => {
            sqlx::query("delete from exports where id = $1").bind(id).execute(&app.db.pool).await.unwrap();
            std::fs::remove_dir_all(export_dir(&app, id)).unwrap();
        }
    }
    pause.resume();
    request.await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_racing_expiry_answers_410() {
    expect_error(download_racing("expire").await, 410, "expired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_racing_the_purge_of_its_export_answers_404() {
    expect_error(download_racing("purge").await, 404, "no export").await;
}

/// A download under way when its export is deleted reads the file to its end: the file was
/// opened before the headers went out, and its bytes stay until it is closed. The test reads
/// the first piece of the body, deletes the export (file unlinked), then reads the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_under_way_when_its_file_is_deleted_completes() {
    let app = app(20_000, AppOptions::default()).await;
    let reference = copy_reference(&app.db.pool).await;
    let id = app.create_export(None).await;
    app.wait_finished(id, Duration::from_secs(30)).await;
    let mut resp = app.client.get(app.url(&format!("/api/export/{id}/download"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.chunk().await.unwrap().unwrap().to_vec();
    assert!(body.len() < reference.len());
    assert_eq!(delete(&app, id).await.status(), 200);
    assert!(!export_dir(&app, id).exists(), "the file is deleted");
    while let Some(piece) = resp.chunk().await.unwrap() {
        body.extend_from_slice(&piece);
    }
    assert_same_bytes(&body, &reference);
}

/// After exports complete and expire, one sweep (as the housekeeping loop runs it, called
/// directly with nothing kept) leaves the storage directory and the tables as they were
/// before them, and an idempotency key can be used again. What a crash would leave behind is
/// made by hand: a file back in an expired export's directory (a crash between the status
/// change and the file's deletion), a stray file beside a live export's file (a stale
/// runner's), and the directory of an export whose row is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_returns_storage_and_tables_to_their_size_before_the_exports() {
    use exportd::export::sweep::{Sweep, sweep};
    let app = app(2_000, AppOptions::default()).await;
    let pool = app.db.pool.clone();
    let tables = || {
        let pool = pool.clone();
        async move {
            let mut counts = Vec::new();
            for table in ["exports", "export_runs", "apalis.jobs"] {
                let sql = format!("select count(*) from {table}");
                counts.push(sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)).fetch_one(&pool).await.unwrap());
            }
            counts
        }
    };
    let files = |root: &std::path::Path| -> usize {
        std::fs::read_dir(root)
            .unwrap()
            .map(|d| 1 + std::fs::read_dir(d.unwrap().path()).map_or(0, |f| f.count()))
            .sum()
    };
    let root = app.storage.path().to_path_buf();
    let before = (tables().await, files(&root));

    let keyed = |key: &str| {
        app.client.post(app.url("/api/export")).header("Idempotency-Key", key).json(&json!({"chunkSize": 500}))
    };
    let mut ids = vec![
        keyed("monthly").send().await.unwrap().json::<Value>().await.unwrap()["jobId"]
            .as_str()
            .unwrap()
            .parse::<Uuid>()
            .unwrap(),
    ];
    for _ in 0..3 {
        ids.push(app.create_export(Some(json!({"chunkSize": 500}))).await);
    }
    for id in &ids {
        assert_eq!(app.wait_finished(*id, Duration::from_secs(30)).await["status"], "completed");
    }
    let live = ids[3];
    let live_file = export_row(&pool, live).await.file_name.unwrap();
    sqlx::query("update exports set expires_at = now() where id = any($1)")
        .bind(&ids[..3])
        .execute(&pool)
        .await
        .unwrap();
    exportd::app::expire(&pool, app.engine.storage().as_ref()).await;
    std::fs::create_dir_all(export_dir(&app, ids[0])).unwrap();
    std::fs::write(export_dir(&app, ids[0]).join("left-by-a-crash.csv"), b"id\n1\n").unwrap();
    std::fs::write(export_dir(&app, live).join("stale-runner.csv"), b"id\n").unwrap();
    std::fs::create_dir_all(root.join(Uuid::new_v4().to_string())).unwrap();

    let nothing_kept = Sweep {
        keep_ended_exports: Duration::ZERO,
        keep_finished_jobs: Duration::ZERO,
        stray_file_age: Duration::ZERO,
    };
    let swept = sweep(&pool, app.engine.storage().as_ref(), &nothing_kept).await.unwrap();
    assert_eq!((swept.exports, swept.export_dirs, swept.files), (3, 2, 1), "{swept:?}");
    assert_eq!(
        app.download(live).await.len() as i64,
        export_row(&pool, live).await.bytes_written,
        "the live file stays"
    );
    assert!(app.storage.path().join(&live_file).exists());
    // The live export expires too: everything is back to how it was.
    assert_eq!(delete(&app, live).await.status(), 200);
    // The queue marks a job done just after its export completes: wait for that, not a sleep.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sqlx::query_scalar::<_, i64>("select count(*) from apalis.jobs where status <> 'Done'")
        .fetch_one(&pool)
        .await
        .unwrap()
        > 0
    {
        assert!(tokio::time::Instant::now() < deadline, "queue jobs never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sweep(&pool, app.engine.storage().as_ref(), &nothing_kept).await.unwrap();
    assert_eq!((tables().await, files(&root)), before);
    // The key is free again: a new export, not the purged one.
    let again: Value = keyed("monthly").send().await.unwrap().json().await.unwrap();
    assert_ne!(again["jobId"].as_str().unwrap(), ids[0].to_string());
}
