//! The API as the command-line client calls it: create, status, list, cancel, the event
//! stream, and a download that resumes with `Range` + `If-Range` after a dropped connection.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use crate::config::ServerArgs;

/// Attempts at a download before giving up (each resumes where the last one stopped).
const DOWNLOAD_ATTEMPTS: u32 = 10;

/// A client of one server with one key.
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    /// A client for `--server` with `--key` (required).
    pub fn new(args: &ServerArgs) -> anyhow::Result<Self> {
        let key = args.key.clone().filter(|k| !k.trim().is_empty()).ok_or_else(|| {
            anyhow::anyhow!(
                "--key (or EXPORTD_KEY) is required: an API key made with `exportd keys create --name <owner>` \
                 (`make run` prints a development key)"
            )
        })?;
        let base = args.server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--server: expected an http:// or https:// URL, got {:?}", args.server);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("exportd-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Self { http, base, key: key.trim().to_owned() })
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(&self.key)
    }

    /// Creates an export (with an idempotency key, so a retried request makes one export).
    pub async fn create(&self, body: &Value) -> anyhow::Result<Value> {
        let idempotency = uuid::Uuid::new_v4().to_string();
        let send = || {
            self.http
                .post(self.url("/api/export"))
                .bearer_auth(&self.key)
                .header("Idempotency-Key", &idempotency)
                .json(body)
                .timeout(Duration::from_secs(60))
                .send()
        };
        let resp = match send().await {
            Ok(resp) => resp,
            // The same key again: the server answers with the export the first request made.
            Err(e) if e.is_connect() || e.is_timeout() || e.is_request() => {
                send().await.map_err(|e| self.unreachable(e))?
            }
            Err(e) => return Err(self.unreachable(e)),
        };
        json_or_error(resp, "creating the export").await
    }

    /// An export's status.
    pub async fn status(&self, id: &str) -> anyhow::Result<Value> {
        let resp = self.get(&format!("/api/export/{id}/status")).timeout(Duration::from_secs(30)).send().await;
        json_or_error(resp.map_err(|e| self.unreachable(e))?, "reading the status").await
    }

    /// Cancels an export; its status after.
    pub async fn cancel(&self, id: &str) -> anyhow::Result<Value> {
        let resp = self
            .http
            .delete(self.url(&format!("/api/export/{id}")))
            .bearer_auth(&self.key)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        json_or_error(resp.map_err(|e| self.unreachable(e))?, "cancelling the export").await
    }

    /// A page of the caller's exports.
    pub async fn list(&self, status: Option<&str>, limit: u32) -> anyhow::Result<Value> {
        let mut req = self.get("/api/exports").query(&[("limit", limit.to_string())]);
        if let Some(s) = status {
            req = req.query(&[("status", s)]);
        }
        let resp = req.timeout(Duration::from_secs(30)).send().await.map_err(|e| self.unreachable(e))?;
        json_or_error(resp, "listing exports").await
    }

    /// Follows an export's events, calling `each` with every status it sends, until the
    /// final one (returned). A dropped stream is opened again; when the server has no event
    /// stream (an older version), the status is polled instead.
    pub async fn follow(&self, id: &str, mut each: impl FnMut(&Value)) -> anyhow::Result<Value> {
        let mut failures = 0u32;
        loop {
            match self.follow_once(id, &mut each).await {
                Ok(Some(end)) => return Ok(end),
                Ok(None) => failures = 0,
                Err(e) if failures >= 5 => return Err(e),
                Err(_) => failures += 1,
            }
            // The stream ended early (a dropped connection): the status says where it is.
            tokio::time::sleep(Duration::from_millis(500 * u64::from(failures.max(1)))).await;
            if let Ok(s) = self.status(id).await {
                each(&s);
                if is_final(&s) {
                    return Ok(s);
                }
            }
        }
    }

    async fn follow_once(&self, id: &str, each: &mut impl FnMut(&Value)) -> anyhow::Result<Option<Value>> {
        let resp = self
            .get(&format!("/api/export/{id}/events"))
            .header("Accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            return Err(api_error(resp, "following the export").await);
        }
        let mut body = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = body.next().await {
            buf.extend_from_slice(&chunk.context("reading the event stream")?);
            // Events end with a blank line; each `data:` line holds a status.
            while let Some(end) = find_blank_line(&buf) {
                let event: Vec<u8> = buf.drain(..end).collect();
                let text = String::from_utf8_lossy(&event);
                let data: String = text.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim_start).collect();
                if data.is_empty() {
                    continue;
                }
                let status: Value = serde_json::from_str(&data).context("reading an event")?;
                each(&status);
                if is_final(&status) {
                    return Ok(Some(status));
                }
            }
        }
        Ok(None)
    }

    /// Downloads export `id` to `path` (through `path.part`, renamed once complete), resuming
    /// with `Range` after a dropped connection while the `ETag` stays the same (`If-Range`:
    /// a changed file starts over). Checks the length against `Content-Length` and
    /// `expected_bytes`; `progress` gets the bytes so far and the total.
    pub async fn download(
        &self,
        id: &str,
        path: &Path,
        expected_bytes: Option<u64>,
        mut progress: impl FnMut(u64, Option<u64>),
    ) -> anyhow::Result<(u64, String)> {
        let part = part_path(path);
        let mut file = tokio::fs::File::create(&part).await.with_context(|| format!("creating {}", part.display()))?;
        let (mut have, mut etag, mut total): (u64, Option<String>, Option<u64>) = (0, None, expected_bytes);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut req = self.get(&format!("/api/export/{id}/download")).header("Accept", "application/octet-stream");
            if have > 0
                && let Some(tag) = &etag
            {
                req = req.header("Range", format!("bytes={have}-")).header("If-Range", tag);
            }
            let result = async {
                let resp = req.send().await.map_err(|e| self.unreachable(e))?;
                match resp.status().as_u16() {
                    206 => {}
                    200 if have > 0 => {
                        // The file changed (another ETag): start over.
                        file = tokio::fs::File::create(&part).await?;
                        have = 0;
                    }
                    200 => {}
                    _ => return Err(api_error(resp, "downloading the file").await),
                }
                let tag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
                if resp.status().as_u16() == 200 {
                    total = resp.content_length().or(total);
                }
                if let (Some(old), Some(new)) = (&etag, &tag)
                    && old != new
                    && resp.status().as_u16() == 206
                {
                    bail!("the server resumed a different version of the file (ETag {old} became {new})");
                }
                etag = tag.or(etag.take());
                let mut body = resp.bytes_stream();
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.context("the download was cut off")?;
                    file.write_all(&chunk).await.with_context(|| format!("writing {}", part.display()))?;
                    have += chunk.len() as u64;
                    progress(have, total);
                }
                anyhow::Ok(())
            }
            .await;
            match result {
                Ok(()) if total.is_none_or(|t| have >= t) => break,
                Ok(()) => {}
                Err(e) if attempt >= DOWNLOAD_ATTEMPTS || !retryable(&e) => {
                    return Err(e.context(format!("download stopped after {have} bytes ({attempt} attempts)")));
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
        }
        file.sync_all().await.with_context(|| format!("syncing {}", part.display()))?;
        drop(file);
        if let Some(t) = total.filter(|t| *t != have) {
            bail!("the download has {have} bytes, the server said {t}");
        }
        let etag = etag.unwrap_or_default();
        // Our ETag is "<id>-<length>": the length the server meant is the length we have.
        if let Some(len) = etag.trim_matches('"').rsplit('-').next().and_then(|l| l.parse::<u64>().ok())
            && len != have
        {
            bail!("the download has {have} bytes, its ETag {etag} says {len}");
        }
        tokio::fs::rename(&part, path)
            .await
            .with_context(|| format!("renaming {} to {}", part.display(), path.display()))?;
        Ok((have, etag))
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow::Error::new(e).context(format!("cannot reach exportd at {}", self.base))
    }
}

/// Whether a status is one an export never leaves.
pub fn is_final(status: &Value) -> bool {
    matches!(status["status"].as_str(), Some("completed" | "failed" | "cancelled" | "expired"))
}

/// A download error worth another attempt: the connection, not an answer of the server.
fn retryable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<reqwest::Error>().is_some() || c.downcast_ref::<std::io::Error>().is_some())
        && !e.chain().any(|c| c.to_string().starts_with("writing "))
}

/// `orders.csv` → `orders.csv.part`.
fn part_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

/// The end of the first event in `buf` (after its blank line).
fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

/// The body of a successful answer, or the API's error as a message.
async fn json_or_error(resp: reqwest::Response, doing: &str) -> anyhow::Result<Value> {
    if !resp.status().is_success() {
        return Err(api_error(resp, doing).await);
    }
    resp.json().await.with_context(|| format!("{doing}: reading the answer"))
}

/// An API error answer as one line: `404 not_found: no export ...`.
async fn api_error(resp: reqwest::Response, doing: &str) -> anyhow::Error {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_str(&body).ok();
    let message = parsed
        .as_ref()
        .and_then(|b| Some(format!("{}: {}", b["error"].as_str()?, b["message"].as_str()?)))
        .unwrap_or(body);
    anyhow::anyhow!("{doing}: the server answered {}: {message}", status.as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_at_blank_lines() {
        assert_eq!(find_blank_line(b"event: progress\ndata: {}\n\nevent"), Some(26));
        assert_eq!(find_blank_line(b"data: {}\n"), None);
    }

    #[test]
    fn part_file_sits_beside_the_output() {
        assert_eq!(part_path(Path::new("/tmp/o.csv")), Path::new("/tmp/o.csv.part"));
    }
}
