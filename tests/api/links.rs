//! Signed download links (issue 12): a completed export's `downloadUrl` works without a key
//! until it expires, with Range and ETag; altered → 403, expired → 410, export gone → 404;
//! secrets rotate without breaking links still valid.

use std::time::Duration;

use exportd::model::link::LinkKeys;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::*;

async fn completed(app: &TestApp) -> (Uuid, Value) {
    let id = app.create_export(None).await;
    app.wait_finished(id, Duration::from_secs(30)).await;
    (id, app.status(id).await)
}

/// The same link with one query parameter replaced.
fn with_param(link: &str, name: &str, value: &str) -> String {
    let (base, query) = link.split_once('?').unwrap();
    let params: Vec<String> = query
        .split('&')
        .map(|p| if p.starts_with(&format!("{name}=")) { format!("{name}={value}") } else { p.to_owned() })
        .collect();
    format!("{base}?{}", params.join("&"))
}

fn param<'a>(link: &'a str, name: &str) -> &'a str {
    link.split(['?', '&']).find_map(|p| p.strip_prefix(&format!("{name}="))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_exports_link_downloads_without_a_key_with_range_and_etag() {
    use exportd::export::engine::{Faults, Pause, PauseAt};
    let db = test_db().await;
    seed_nasty(&db.pool, 3_000).await;
    // The first run is held before its first chunk, so its export is not completed when asked
    // (a 3,000-row export otherwise completes before the status request: seen once).
    let pause = Pause::new();
    let faults = Faults { pause: Some((PauseAt::FilePrepared, pause.clone())), ..Default::default() };
    let opts = AppOptions { retention: Duration::from_secs(600), faults: Some(faults), ..Default::default() };
    let app = spawn_app(db, opts).await;
    let running = app.create_export(None).await;
    pause.reached().await;
    let early = app.status(running).await;
    assert!(early["downloadUrl"].as_str().unwrap().starts_with("/api/export/"), "no link before completion");
    assert!(early["downloadUrlExpiresAt"].is_null());
    pause.resume();
    app.wait_finished(running, Duration::from_secs(30)).await;
    let (id, status) = completed(&app).await;
    let link = status["downloadUrl"].as_str().unwrap();
    assert!(link.starts_with(&format!("{}/download/{id}?expires=", app.base)), "absolute: {link}");
    // The export is kept 10 minutes: the link (1 hour by default) ends with it.
    let until: chrono::DateTime<chrono::Utc> = status["downloadUrlExpiresAt"].as_str().unwrap().parse().unwrap();
    let export_expiry: chrono::DateTime<chrono::Utc> = status["expiresAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(until.timestamp(), export_expiry.timestamp());
    assert_eq!(param(link, "expires"), until.timestamp().to_string());

    let anonymous = reqwest::Client::new();
    let resp = anonymous.get(link).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    let body = resp.bytes().await.unwrap();
    assert_same_bytes(&body, &copy_reference(&app.db.pool).await);
    let with_key = app.client.get(app.url(&format!("/api/export/{id}/download"))).send().await.unwrap();
    assert_eq!(with_key.headers()["etag"].to_str().unwrap(), etag, "the same ETag as with a key");

    let range = anonymous.get(link).header("range", "bytes=10-19").send().await.unwrap();
    assert_eq!(range.status(), 206);
    assert_eq!(range.headers()["content-range"], format!("bytes 10-19/{}", body.len()).as_str());
    assert_eq!(range.bytes().await.unwrap(), body.slice(10..20));
    let cached = anonymous.get(link).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(cached.status(), 304);
    let head = anonymous.head(link).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], body.len().to_string().as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_link_is_403_an_expired_one_410_and_a_deleted_exports_404() {
    let db = test_db().await;
    seed_nasty(&db.pool, 500).await;
    let app = spawn_app(db, AppOptions::default()).await;
    let (id, status) = completed(&app).await;
    let (other, _) = completed(&app).await;
    let link = status["downloadUrl"].as_str().unwrap().to_owned();
    let anonymous = reqwest::Client::new();
    let get = |url: String| {
        let c = anonymous.clone();
        async move { c.get(url).send().await.unwrap() }
    };

    let sig = param(&link, "sig");
    let flipped = format!("{}{}", if sig.starts_with('0') { "1" } else { "0" }, &sig[1..]);
    let later = (param(&link, "expires").parse::<i64>().unwrap() + 86_400).to_string();
    for (what, altered) in [
        ("signature", with_param(&link, "sig", &flipped)),
        ("expiry", with_param(&link, "expires", &later)),
        ("export", link.replace(&id.to_string(), &other.to_string())),
        ("secret id", with_param(&link, "kid", "other")),
        ("short signature", with_param(&link, "sig", "abc")),
    ] {
        let err = expect_error(get(altered).await, 403, "sig: this link's signature does not match").await;
        assert_eq!(err["error"], "forbidden", "{what}");
    }
    // Missing parameters: 400 naming them.
    expect_error(get(link.split('?').next().unwrap().to_owned()).await, 400, "expires").await;

    // Signed right but expired (signed here with the database's secret, a minute ago).
    let secret = exportd::db::links::stored_secret(&app.db.pool).await.unwrap();
    let keys = LinkKeys::single(exportd::db::links::STORED_KID, secret);
    let past = chrono::Utc::now().timestamp() - 60;
    let s = keys.sign(id, past);
    let expired = format!("{}/download/{id}?expires={past}&kid={}&sig={}", app.base, s.kid, s.sig);
    let err = expect_error(get(expired).await, 410, "expires: this link expired at").await;
    assert_eq!(err["error"], "link_expired");
    assert_eq!(get(link.clone()).await.status(), 200, "the unaltered link works");

    // Deleted with a key: the link answers 404, like an export that never existed.
    assert_eq!(app.client.delete(app.url(&format!("/api/export/{id}"))).send().await.unwrap().status(), 200);
    let err = expect_error(get(link).await, 404, &format!("no export with id {id}")).await;
    assert_eq!(err["error"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_link_secrets_keeps_valid_links_working_until_their_secret_is_dropped() {
    let db = test_db().await;
    seed_nasty(&db.pool, 500).await;
    let (old, new) = (format!("k1={}", "a".repeat(40)), format!("k2={}", "b".repeat(40)));
    let app = spawn_app(db, AppOptions { link_secrets: vec![old.clone()], ..Default::default() }).await;
    let (id, status) = completed(&app).await;
    let link = status["downloadUrl"].as_str().unwrap().to_owned();
    assert_eq!(param(&link, "kid"), "k1");
    let (db, storage) = app.stop().await;

    // The new secret signs; the old one still verifies.
    let opts = AppOptions { link_secrets: vec![new.clone(), old], ..Default::default() };
    let app = spawn_app_on(db, storage, opts).await;
    let moved = |link: &str| format!("{}/download/{}", app.base, link.split_once("/download/").unwrap().1);
    assert_eq!(reqwest::get(moved(&link)).await.unwrap().status(), 200, "an old link after rotation");
    let fresh = app.status(id).await["downloadUrl"].as_str().unwrap().to_owned();
    assert_eq!(param(&fresh, "kid"), "k2");
    let (db, storage) = app.stop().await;

    // Once the old secret is dropped, its links stop working; the new ones go on.
    let app = spawn_app_on(db, storage, AppOptions { link_secrets: vec![new], ..Default::default() }).await;
    let moved = |link: &str| format!("{}/download/{}", app.base, link.split_once("/download/").unwrap().1);
    assert_eq!(reqwest::get(moved(&link)).await.unwrap().status(), 403);
    assert_eq!(reqwest::get(moved(&fresh)).await.unwrap().status(), 200);
}
