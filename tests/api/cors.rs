//! CORS: none by default; with `EXPORTD_CORS_ORIGINS`, preflights from a listed origin are
//! answered and its responses (errors too) carry the headers a page needs; other origins and
//! same-origin requests (Swagger UI on the server itself) pass through untouched.

use exportd::config::ServeArgs;
use reqwest::{Method, header};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

const PAGE: &str = "https://app.example.com";

async fn app(origins: &[&str]) -> TestApp {
    let db = test_db().await;
    exportd::db::seed::seed_orders(&db.pool, 500, |_| {}).await.unwrap();
    let mut http = ServeArgs::parse_defaults().http;
    http.cors_origins = origins.iter().map(|o| exportd::api::cors::parse_origin(o).unwrap()).collect();
    spawn_app(db, AppOptions { http: Some(http), ..Default::default() }).await
}

fn preflight(app: &TestApp, origin: &str) -> reqwest::RequestBuilder {
    app.client
        .request(Method::OPTIONS, app.url("/api/export"))
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type, idempotency-key")
}

fn header(resp: &reqwest::Response, name: header::HeaderName) -> Option<&str> {
    resp.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn without_configured_origins_no_page_elsewhere_is_let_in() {
    let app = app(&[]).await;
    let resp = preflight(&app, PAGE).send().await.unwrap();
    assert_ne!(resp.status(), 204);
    assert_eq!(header(&resp, header::ACCESS_CONTROL_ALLOW_ORIGIN), None);
    let resp = app.client.get(app.url("/api/datasets")).header(header::ORIGIN, PAGE).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, header::ACCESS_CONTROL_ALLOW_ORIGIN), None);
}

#[tokio::test]
async fn a_configured_origin_gets_preflights_and_reads_headers_and_errors() {
    let app = app(&[PAGE, "http://localhost:3000"]).await;
    let resp = preflight(&app, PAGE).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(header(&resp, header::ACCESS_CONTROL_ALLOW_ORIGIN), Some(PAGE));
    assert!(header(&resp, header::ACCESS_CONTROL_ALLOW_METHODS).unwrap().contains("POST"));
    assert!(header(&resp, header::ACCESS_CONTROL_ALLOW_HEADERS).unwrap().contains("Idempotency-Key"));
    assert!(header(&resp, header::VARY).unwrap().contains("Origin"));

    // The export and its download, as a page there makes them.
    let resp =
        app.client.post(app.url("/api/export")).header(header::ORIGIN, PAGE).json(&json!({})).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(header(&resp, header::ACCESS_CONTROL_ALLOW_ORIGIN), Some(PAGE));
    let id: Uuid = resp.json::<serde_json::Value>().await.unwrap()["jobId"].as_str().unwrap().parse().unwrap();
    app.wait_finished(id, std::time::Duration::from_secs(30)).await;
    let url = app.url(&format!("/api/export/{id}/download"));
    let resp = app.client.get(&url).header(header::ORIGIN, PAGE).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, header::ACCESS_CONTROL_ALLOW_ORIGIN), Some(PAGE));
    let exposed = header(&resp, header::ACCESS_CONTROL_EXPOSE_HEADERS).unwrap();
    for name in ["ETag", "Content-Disposition", "Content-Range", "X-Request-Id"] {
        assert!(exposed.contains(name), "{name} is exposed: {exposed}");
    }
    // An error reaches the page too (else it sees only "network error").
    let missing = app.url(&format!("/api/export/{}/status", Uuid::new_v4()));
    let resp = app.client.get(missing).header(header::ORIGIN, PAGE).send().await.unwrap();
    assert_eq!(header(&resp, header::ACCESS_CONTROL_ALLOW_ORIGIN), Some(PAGE));
    expect_error(resp, 404, "no export").await;

    // Another origin is not let in; the server's own pages (same origin) work as before.
    let resp = preflight(&app, "https://evil.example").send().await.unwrap();
    assert_eq!(header(&resp, header::ACCESS_CONTROL_ALLOW_ORIGIN), None);
    let resp = app
        .client
        .post(app.url("/api/export"))
        .header(header::ORIGIN, &app.base)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "Swagger UI on the server itself still creates exports");
    assert_eq!(header(&resp, header::ACCESS_CONTROL_ALLOW_ORIGIN), None);
}

#[test]
fn a_malformed_origin_is_refused_at_start_with_its_value_named() {
    let err = exportd::api::cors::parse_origin("app.example.com/").unwrap_err();
    assert!(err.contains("app.example.com/") && err.contains("https://"), "{err}");
}
