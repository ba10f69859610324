//! The API over HTTP as tests and the bench call it: create, status, wait, download.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

/// How often a wait asks for the status again.
const POLL: Duration = Duration::from_millis(10);

/// An exportd API at `base` (`http://127.0.0.1:port`), called with an API key: `client` sends
/// `Authorization: Bearer <key>` on every request.
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    /// The key `client` sends.
    pub key: String,
}

impl Api {
    pub fn new(base: String, key: &str) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        let bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).expect("a key is ASCII");
        headers.insert(reqwest::header::AUTHORIZATION, bearer);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .default_headers(headers)
            .build()
            .expect("HTTP client");
        Self { base, client, key: key.to_owned() }
    }

    /// The same API called with another key.
    pub fn as_key(&self, key: &str) -> Self {
        Self::new(self.base.clone(), key)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs an export request (`None` = no body at all) and returns the new id.
    pub async fn create_export(&self, body: Option<Value>) -> Uuid {
        let mut req = self.client.post(self.url("/api/export"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
        let v: Value = resp.json().await.unwrap();
        v["jobId"].as_str().unwrap().parse().unwrap()
    }

    pub async fn status(&self, id: Uuid) -> Value {
        let resp = self.client.get(self.url(&format!("/api/export/{id}/status"))).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// Polls until the export reaches a terminal status (panics after `limit`).
    pub async fn wait_finished(&self, id: Uuid, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.status(id).await;
            if ["completed", "failed", "cancelled"].contains(&s["status"].as_str().unwrap()) {
                return s;
            }
            assert!(Instant::now() < deadline, "export {id} not finished in {limit:?}: {s}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls until the export has written at least `rows` rows (panics after `limit`).
    pub async fn wait_rows(&self, id: Uuid, rows: i64, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.status(id).await["rowsWritten"].as_i64().unwrap() < rows {
            assert!(Instant::now() < deadline, "export {id}: fewer than {rows} rows after {limit:?}");
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn download(&self, id: Uuid) -> Vec<u8> {
        let resp = self.client.get(self.url(&format!("/api/export/{id}/download"))).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap().to_vec()
    }
}
