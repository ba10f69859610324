//! Downloads: Range, ETag, If-Range and HEAD, and downloads racing expiry, purge and deletion.

use std::time::Duration;

use crate::helpers::*;
use crate::lifecycle::{app, delete, export_dir};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_sent_with_sendfile_and_are_the_files_bytes() {
    use crate::support::process::{Exportd, scrape_metrics};
    // The real binary, so its /metrics count only this test's downloads.
    let db = test_db().await;
    seed_nasty(&db.pool, 20_000).await;
    let reference = copy_reference(&db.pool).await;
    let storage = tempfile::tempdir().unwrap();
    let (mut p, metrics_addr) = Exportd::serve_measured(&db.url, storage.path()).await;
    let api = p.api();
    // Two ranges: the file is two pieces, sent one after the other.
    let id = api.create_export(Some(serde_json::json!({"chunkSize": 1000, "parallelism": 2}))).await;
    api.wait_finished(id, Duration::from_secs(60)).await;

    // One client: its connection is kept alive across the downloads and the requests after them.
    let url = api.url(&format!("/api/export/{id}/download"));
    let full = api.client.get(&url).send().await.unwrap().bytes().await.unwrap();
    assert_same_bytes(&full, &reference);
    let len = reference.len();
    // A range from inside the first piece to the end of the second.
    let tail = api.client.get(&url).header("range", "bytes=1000-").send().await.unwrap();
    assert_eq!(tail.status(), 206);
    assert_same_bytes(&tail.bytes().await.unwrap(), &reference[1000..]);
    let middle = api.client.get(&url).header("range", format!("bytes=17-{}", len / 2)).send().await.unwrap();
    assert_same_bytes(&middle.bytes().await.unwrap(), &reference[17..=len / 2]);
    // A request after the downloads on the same connection is answered as usual.
    assert_eq!(api.status(id).await["status"], "completed");
    let head = api.client.head(&url).send().await.unwrap();
    assert_eq!(head.headers()["content-length"].to_str().unwrap(), len.to_string());

    let metrics = scrape_metrics(&metrics_addr).await;
    let sample = |name| crate::operability::metric(&metrics, name);
    let sent = (len + (len - 1000) + (len / 2 - 16)) as f64;
    assert_eq!(sample("exportd_download_bytes_total{path=\"sendfile\"}"), Some(sent), "{metrics}");
    assert_eq!(sample("exportd_download_bytes_total{path=\"read\"}"), None, "nothing read through user space");
    p.terminate();
}
