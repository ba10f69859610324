//! Delivering webhooks: each queue job of the `exportd.webhook` lane makes one attempt at one
//! delivery (Standard Webhooks 1.0: `webhook-id`, `webhook-timestamp`, `webhook-signature`
//! over `id.timestamp.body` with the owner's secret) and records it; a failure schedules the
//! next attempt as a new job, later, in the same transaction (backoff from
//! `EXPORTD_WEBHOOK_RETRIES`, 31.7 h in all by default), so deliveries are at least once and
//! survive restarts. The address is checked after resolving the name, and the connection goes
//! to that very address (no second lookup that could answer otherwise); redirects are not
//! followed.

use std::{net::SocketAddr, time::Duration};

use chrono::Utc;
use sqlx::PgPool;

use crate::{
    db,
    error::{Error, Result},
    model::webhook::Allow,
};

/// Longest wait for a receiver's answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What deliveries need: the database, the addresses allowed beyond public ones, the delays
/// between attempts.
#[derive(Debug, Clone)]
pub struct Webhooks {
    pool: PgPool,
    allow: Allow,
    retries: Vec<Duration>,
}

/// The job payload of a delivery attempt.
pub fn job_payload(delivery_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "deliveryId": delivery_id })).expect("serializable")
}

impl Webhooks {
    /// Deliveries on `pool`; `retries` are the waits before the second, third, ... attempt.
    pub fn new(pool: PgPool, allow: Allow, retries: Vec<Duration>) -> Self {
        Self { pool, allow, retries }
    }

    /// Makes the next attempt of delivery `id` (nothing if it is done or gone).
    pub async fn deliver(&self, id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // Locked for the attempt: a second job for the same delivery (the queue delivers at
        // least once) waits, then finds it done or makes the next attempt.
        let Some(d) = db::webhooks::lock(&mut tx, id).await? else { return Ok(()) };
        if d.done {
            return Ok(());
        }
        let body = match d.body {
            Some(body) => body,
            None => {
                let body = message(&mut tx, &d).await?;
                db::webhooks::keep_body(&mut *tx, &d.id, &body).await?;
                body
            }
        };
        let secret = db::webhooks::owner_secret(&mut tx, &d.owned_by).await?;
        let attempt = self.attempt(&d.url, &d.id, &body, &secret).await;
        let n = d.attempts + 1;
        let job_id = super::queue::new_job_id();
        let payload = job_payload(&d.id);
        let retry = self
            .retries
            .get(d.attempts as usize)
            .map(|wait| (Utc::now() + *wait, super::queue::WEBHOOK_QUEUE, job_id.as_str(), payload.as_slice()));
        let result = if attempt.error.is_none() { "delivered" } else { "failed" };
        metrics::counter!(crate::telemetry::metrics::WEBHOOK_ATTEMPTS, "result" => result).increment(1);
        match &attempt.error {
            None => tracing::info!(delivery = %d.id, export_id = %d.export_id, attempt = n, "webhook delivered"),
            Some(e) => tracing::warn!(delivery = %d.id, export_id = %d.export_id, attempt = n, error = %e,
                                      retry_at = ?retry.as_ref().map(|r| r.0), "webhook attempt failed"),
        }
        db::webhooks::record(&mut tx, &d.id, n, &attempt, retry).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn attempt(&self, url: &str, id: &str, body: &str, secret: &str) -> db::webhooks::Attempt {
        let started_at = Utc::now();
        let clock = std::time::Instant::now();
        let (status_code, error) = match self.send(url, id, body, secret).await {
            Ok(code) => (Some(i32::from(code)), None),
            Err((code, e)) => (code.map(i32::from), Some(e)),
        };
        let duration_ms = clock.elapsed().as_millis().min(i32::MAX as u128) as i32;
        db::webhooks::Attempt { started_at, duration_ms, status_code, error }
    }

    async fn send(&self, url: &str, id: &str, body: &str, secret: &str) -> Result<u16, (Option<u16>, String)> {
        let parsed = reqwest::Url::parse(url).map_err(|e| (None, format!("callbackUrl: {e}")))?;
        let addr = resolve_checked(&self.allow, &parsed).await.map_err(|e| (None, e))?;
        let mut client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(SEND_TIMEOUT);
        if let Some(host) = parsed.domain() {
            client = client.resolve(host, addr); // connect to the address just checked
        }
        let client = client.build().map_err(|e| (None, e.to_string()))?;
        let timestamp = Utc::now().timestamp();
        let resp = client
            .post(parsed)
            .header("content-type", "application/json")
            .header("user-agent", concat!("exportd/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", crate::model::webhook::signature(secret, id, timestamp, body))
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| (None, format!("no answer from {addr}: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            let hint = if status.is_redirection() { " (redirects are not followed)" } else { "" };
            Err((Some(status.as_u16()), format!("{addr} answered {status}{hint}")))
        }
    }
}

/// The message of a delivery: the event, when it happened, and the export as it ended.
async fn message(db: &mut sqlx::PgConnection, d: &db::webhooks::Delivery) -> Result<String> {
    let r = db::exports::find_export(&mut *db, d.export_id)
        .await?
        .ok_or_else(|| Error::Other(anyhow::anyhow!("export {} of delivery {} is gone", d.export_id, d.id)))?;
    let message = serde_json::json!({
        "type": d.event,
        "timestamp": d.created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "data": {
            "jobId": r.id,
            "status": r.status.as_str(),
            "dataset": r.dataset,
            "owner": r.owned_by,
            "rowsWritten": r.rows_written,
            "bytesWritten": r.bytes_written,
            "error": r.error,
            "finishedAt": r.finished_at,
            "statusUrl": format!("/api/export/{}/status", r.id),
        }
    });
    Ok(message.to_string())
}

/// The address to send to for `url`: its host resolved, every address it resolves to allowed
/// (public, or in `EXPORTD_WEBHOOK_ALLOW`), else an error naming the address and its kind.
pub async fn resolve_checked(allow: &Allow, url: &reqwest::Url) -> Result<SocketAddr, String> {
    let port = url.port_or_known_default().ok_or("callbackUrl: no port")?;
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(ip.into(), port)],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(ip.into(), port)],
        Some(url::Host::Domain(name)) => {
            let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)))
                .await
                .map_err(|_| format!("callbackUrl: {name} did not resolve within {RESOLVE_TIMEOUT:?}"))?
                .map_err(|e| format!("callbackUrl: {name} does not resolve: {e}"))?;
            found.collect()
        }
        None => return Err("callbackUrl: no host".into()),
    };
    for a in &addrs {
        if let Some(kind) = allow.refuses(a.ip()) {
            return Err(format!(
                "callbackUrl: {} is {kind}; webhooks go to public addresses only (EXPORTD_WEBHOOK_ALLOW lists exceptions)",
                a.ip()
            ));
        }
    }
    addrs.first().copied().ok_or_else(|| "callbackUrl: the host resolves to no address".into())
}

/// Checks a `callbackUrl` at create (its length is the request schema's bound): http(s), a
/// host, no credentials, an allowed address now.
pub async fn check_callback(allow: &Allow, url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("callbackUrl: not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("callbackUrl: http or https, not {}", parsed.scheme()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("callbackUrl: no credentials in the URL (the signature authenticates exportd)".into());
    }
    resolve_checked(allow, &parsed).await.map(|_| ())
}
