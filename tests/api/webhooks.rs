//! Signed webhooks (issue 12): an export created with a `callbackUrl` is announced there when
//! it ends, signed per Standard Webhooks 1.0 (verified here with the `standardwebhooks` crate,
//! not exportd's code), retried with backoff as durable queue jobs, every attempt recorded in
//! the status; no request to non-public addresses (at create, and again at delivery), no
//! redirects followed.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

/// What a receiver was sent: path, headers, body.
type Received = (String, poem::http::HeaderMap, Vec<u8>);

/// An HTTP receiver on 127.0.0.1 that answers with `answers` in turn (then 200) and keeps
/// every request. A 307 sends the client to `/elsewhere`.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

async fn receiver(answers: Vec<u16>) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/exportd", listener.local_addr().unwrap());
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
    let (seen, script) = (got.clone(), answers.clone());
    let app = poem::endpoint::make(move |req: poem::Request| {
        let (seen, script) = (seen.clone(), script.clone());
        async move {
            let path = req.uri().path().to_owned();
            let headers = req.headers().clone();
            let body = req.into_body().into_vec().await.unwrap();
            seen.lock().unwrap().push((path, headers, body));
            let code = script.lock().unwrap().pop_front().unwrap_or(200);
            let mut resp = poem::Response::builder().status(poem::http::StatusCode::from_u16(code).unwrap());
            if code == 307 {
                resp = resp.header("location", "/elsewhere");
            }
            resp.finish()
        }
    });
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    Receiver { url, got }
}

impl Receiver {
    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

/// Polls the export's status until its first delivery is delivered or given up.
async fn settled(api: &crate::support::client::Api, id: Uuid) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = api.status(id).await;
        let d = &s["webhook"]["deliveries"][0];
        if !d["deliveredAt"].is_null() || !d["gaveUpAt"].is_null() {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "the delivery did not settle: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn owner_secret(app: &TestApp, owner: &str) -> String {
    let mut conn = app.db.pool.acquire().await.unwrap();
    exportd::db::webhooks::owner_secret(&mut conn, owner).await.unwrap()
}

fn allow_loopback(retries: &[u64]) -> AppOptions {
    AppOptions {
        webhook_allow: vec!["127.0.0.1".into()],
        webhook_retries: Some(retries.iter().map(|ms| Duration::from_millis(*ms)).collect()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_export_is_announced_signed_retried_and_every_attempt_recorded() {
    let db = test_db().await;
    seed_nasty(&db.pool, 1_000).await;
    let app = spawn_app(db, allow_loopback(&[50, 50, 50])).await;
    let billing = app.as_key(&new_key(&app.db.pool, "billing-svc", false, None).await);
    let hook = receiver(vec![500, 503]).await; // two failures, then 200
    let id = billing.create_export(Some(json!({"columns": ["id", "amount"], "callbackUrl": hook.url}))).await;
    let status = settled(&billing, id).await;
    assert_eq!(status["status"], "completed");

    let delivery = &status["webhook"]["deliveries"][0];
    assert_eq!(status["webhook"]["url"], hook.url.as_str());
    assert_eq!(delivery["event"], "export.completed");
    assert!(!delivery["deliveredAt"].is_null() && delivery["nextAttemptAt"].is_null(), "{delivery}");
    let attempts = delivery["attempts"].as_array().unwrap();
    let codes: Vec<i64> = attempts.iter().map(|a| a["statusCode"].as_i64().unwrap()).collect();
    assert_eq!(codes, [500, 503, 200]);
    assert!(attempts[0]["error"].as_str().unwrap().contains("500"), "{attempts:?}");
    assert!(attempts[2]["error"].is_null());

    // Three requests, one message: the same webhook-id and body, each signed afresh and each
    // verified by the standardwebhooks crate with billing-svc's secret.
    let secret = owner_secret(&app, "billing-svc").await;
    let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
    let got = hook.received();
    assert_eq!(got.len(), 3);
    for (path, headers, body) in &got {
        assert_eq!(path, "/hooks/exportd");
        verifier.verify(body, headers).expect("a valid Standard Webhooks signature");
        assert_eq!(headers["webhook-id"], delivery["webhookId"].as_str().unwrap());
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body, &got[0].2);
    }
    let other = standardwebhooks::Webhook::new(&exportd::model::webhook::new_secret()).unwrap();
    assert!(other.verify(&got[0].2, &got[0].1).is_err(), "another owner's secret does not verify it");
    let message: Value = serde_json::from_slice(&got[0].2).unwrap();
    assert_eq!(message["type"], "export.completed");
    assert_eq!(message["data"]["jobId"], id.to_string());
    assert_eq!(message["data"]["owner"], "billing-svc");
    assert_eq!(message["data"]["rowsWritten"], status["rowsWritten"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_is_announced_and_a_lost_receiver_is_given_up_after_the_schedule() {
    let db = test_db().await;
    seed_nasty(&db.pool, 20_000).await;
    let app = spawn_app(db, allow_loopback(&[20, 20])).await;
    let hook = receiver(vec![500, 500, 500]).await; // never takes it
    let id = app.create_export(Some(json!({"maxRowsPerSecond": 100, "chunkSize": 100, "callbackUrl": hook.url}))).await;
    assert_eq!(app.client.delete(app.url(&format!("/api/export/{id}"))).send().await.unwrap().status(), 200);
    let status = settled(&app, id).await;
    let delivery = &status["webhook"]["deliveries"][0];
    assert_eq!(delivery["event"], "export.cancelled");
    assert!(!delivery["gaveUpAt"].is_null() && delivery["deliveredAt"].is_null(), "{delivery}");
    assert_eq!(delivery["attempts"].as_array().unwrap().len(), 3, "the first and two retries");
    assert_eq!(hook.received().len(), 3);
    let message: Value = serde_json::from_slice(&hook.received()[0].2).unwrap();
    assert_eq!(message["data"]["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_to_a_non_public_address_is_refused_at_create() {
    let db = test_db().await;
    seed_nasty(&db.pool, 100).await;
    let app = spawn_app(db, AppOptions { workers: 0, ..Default::default() }).await;
    for (url, says) in [
        ("http://127.0.0.1:9/x", "callbackUrl: 127.0.0.1 is a loopback address"),
        ("http://localhost/x", "is a loopback address"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is a link-local address"),
        ("http://10.0.0.1/", "10.0.0.1 is a private address"),
        ("http://[::1]:8080/", "::1 is a loopback address"),
        ("http://[::ffff:192.168.0.1]/", "is a private address"),
        ("ftp://1.1.1.1/", "callbackUrl: http or https"),
        ("not a url", "callbackUrl: not a URL"),
        ("http://user:pw@1.1.1.1/", "callbackUrl: no credentials"),
    ] {
        let resp = app.client.post(app.url("/api/export")).json(&json!({"callbackUrl": url})).send().await.unwrap();
        let err = expect_error(resp, 422, says).await;
        assert_eq!(err["error"], "unprocessable", "{url}");
    }
    let count: i64 = sqlx::query_scalar("select count(*) from exports").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(count, 0, "nothing created");
}

/// The address is checked again when sending: forced by pointing a queued export's callback
/// at loopback in the database (as a name that resolved elsewhere at create would), on a
/// server that does not allow it. The receiver is never contacted. And a redirect is an
/// answer, not a hop: a 307 fails the attempt and its target is never asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_checks_the_address_again_and_follows_no_redirect() {
    let db = test_db().await;
    seed_nasty(&db.pool, 100).await;
    let strict = AppOptions { workers: 1, webhook_retries: Some(vec![]), ..Default::default() };
    let app = spawn_app(db, strict).await;
    let hook = receiver(vec![]).await;
    let id = app.create_export(Some(json!({"maxRowsPerSecond": 10, "chunkSize": 100}))).await;
    sqlx::query("update exports set callback_url = $2 where id = $1")
        .bind(id)
        .bind(&hook.url)
        .execute(&app.db.pool)
        .await
        .unwrap();
    app.client.delete(app.url(&format!("/api/export/{id}"))).send().await.unwrap();
    let status = settled(&app, id).await;
    let attempt = &status["webhook"]["deliveries"][0]["attempts"][0];
    assert!(attempt["error"].as_str().unwrap().contains("127.0.0.1 is a loopback address"), "{attempt}");
    assert!(attempt["statusCode"].is_null());
    assert!(hook.received().is_empty(), "no request reached the refused address");
    let (db, storage) = app.stop().await;

    let app = spawn_app_on(db, storage, allow_loopback(&[])).await;
    let hook = receiver(vec![307]).await;
    let id = app.create_export(Some(json!({"columns": ["id"], "callbackUrl": hook.url}))).await;
    let status = settled(&app, id).await;
    let attempt = &status["webhook"]["deliveries"][0]["attempts"][0];
    assert_eq!(attempt["statusCode"], 307);
    assert!(attempt["error"].as_str().unwrap().contains("redirects are not followed"), "{attempt}");
    let paths: Vec<String> = hook.received().into_iter().map(|(p, ..)| p).collect();
    assert_eq!(paths, ["/hooks/exportd"], "/elsewhere was never asked");
}

/// A failed attempt's retry is a queue job: the app stops before it is due (10 s later) and
/// the retry is made by the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_due_after_a_restart_is_made_by_the_next_start() {
    let db = test_db().await;
    seed_nasty(&db.pool, 100).await;
    let app = spawn_app(db, allow_loopback(&[10_000])).await;
    let hook = receiver(vec![500]).await;
    let id = app.create_export(Some(json!({"columns": ["id"], "callbackUrl": hook.url}))).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while hook.received().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no first attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let key = app.key.clone();
    let (db, storage) = app.stop().await;
    let attempts: i64 = sqlx::query_scalar("select count(*) from webhook_attempts").fetch_one(&db.pool).await.unwrap();
    assert_eq!(attempts, 1, "stopped before the retry was due");

    let app = spawn_app_on(db, storage, allow_loopback(&[10_000])).await;
    let status = settled(&app.as_key(&key), id).await;
    let codes: Vec<i64> = status["webhook"]["deliveries"][0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["statusCode"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [500, 200]);
    assert_eq!(hook.received().len(), 2);
}

/// A failure is announced like the other ends: forced by renaming a column the export reads
/// after it is created, and running it directly (no workers) until it fails; then a server
/// with workers delivers the announcement the failure made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_export_is_announced_too() {
    let db = test_db().await;
    seed_nasty(&db.pool, 100).await;
    let app =
        spawn_app(db, AppOptions { workers: 0, webhook_allow: vec!["127.0.0.1".into()], ..Default::default() }).await;
    let hook = receiver(vec![]).await;
    let id = app.create_export(Some(json!({"callbackUrl": hook.url}))).await;
    sqlx::query("alter table orders rename column note to remark").execute(&app.db.pool).await.unwrap();
    assert_eq!(app.engine.execute(id, "w1").await, exportd::export::engine::Outcome::Failed);
    let key = app.key.clone();
    let (db, storage) = app.stop().await;
    // Back as the datasets config says, or the next start refuses to serve.
    sqlx::query("alter table orders rename column remark to note").execute(&db.pool).await.unwrap();
    let app = spawn_app_on(db, storage, allow_loopback(&[])).await;
    let status = settled(&app.as_key(&key), id).await;
    assert_eq!(status["webhook"]["deliveries"][0]["event"], "export.failed");
    let message: Value = serde_json::from_slice(&hook.received()[0].2).unwrap();
    assert_eq!(message["data"]["status"], "failed");
    assert!(message["data"]["error"].as_str().unwrap().contains("SQLSTATE 42703"), "{message}");
}
