//! Prometheus metrics: what this process counts as it goes (the `metrics` facade: a call is
//! an atomic add), and at scrape time what the database says of every process (exports by
//! status, queue depth and age), rendered together as Prometheus text for `GET /metrics`.
//!
//! Names follow Prometheus conventions: `exportd_` prefix, base units (`_seconds`, `_bytes`),
//! `_total` for counters, and only bounded labels (dataset, status, route, outcome; never an
//! export id).

use std::{fmt::Write as _, sync::OnceLock, time::Duration};

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;

/// Rows written to export files (checkpointed), by dataset.
pub const ROWS_WRITTEN: &str = "exportd_rows_written_total";
/// Bytes written to export files (checkpointed), by dataset.
pub const BYTES_WRITTEN: &str = "exportd_bytes_written_total";
/// Time to read one chunk from PostgreSQL (its COPY, first byte to last).
pub const CHUNK_READ: &str = "exportd_chunk_read_seconds";
/// Times a chunk reader waited on its connection's socket for more of a COPY (about once per
/// 512 KiB with the socket's low-water mark, a few times over each chunk's tail; once per 8 KiB
/// the server writes without it).
pub const COPY_WAITS: &str = "exportd_copy_socket_waits_total";
/// Time to save one checkpoint (the fenced update).
pub const CHECKPOINT: &str = "exportd_checkpoint_seconds";
/// Exports created through the API, by dataset.
pub const EXPORTS_CREATED: &str = "exportd_exports_created_total";
/// Queue deliveries of exports ended in this process, by outcome.
pub const DELIVERIES: &str = "exportd_export_deliveries_total";
/// Runs that failed with an error and are retried after a backoff.
pub const RETRIES: &str = "exportd_run_retries_total";
/// Claims that took an export over from a run still marked open (its worker died or stalled).
pub const TAKEOVERS: &str = "exportd_takeovers_total";
/// Fenced writes refused because another run owns the export, by write.
pub const FENCED_REFUSED: &str = "exportd_fenced_writes_refused_total";
/// Exports running in this process now.
pub const RUNNING: &str = "exportd_worker_running_exports";
/// Export slots of this process (full-speed and throttled lanes).
pub const SLOTS: &str = "exportd_worker_slots";
/// Webhook delivery attempts, by result.
pub const WEBHOOK_ATTEMPTS: &str = "exportd_webhook_attempts_total";
/// Connections of this process's database pool, by state (idle, in_use).
pub const POOL_CONNECTIONS: &str = "exportd_db_pool_connections";
/// Most connections this process's pool opens.
pub const POOL_MAX: &str = "exportd_db_pool_max_connections";
/// Tasks of this process waiting for a pooled connection now.
pub const POOL_WAITING: &str = "exportd_db_pool_waiting";
/// Time to get a pooled connection.
pub const POOL_ACQUIRE: &str = "exportd_db_pool_acquire_seconds";
/// HTTP requests answered, by method, route (the spec's path template) and status.
pub const HTTP_REQUESTS: &str = "exportd_http_requests_total";
/// Time to answer an HTTP request (until the response head; a download's body streams after).
pub const HTTP_DURATION: &str = "exportd_http_request_duration_seconds";

/// Bytes of downloads sent, by path: `sendfile` (zero-copy, from the page cache to the
/// socket) or `read` (read into this process and written, as from object storage).
pub const DOWNLOAD_BYTES: &str = "exportd_download_bytes_total";

/// Counts `bytes` of a download sent by `path` (`sendfile` or `read`).
pub fn download_bytes(path: &'static str, bytes: usize) {
    counter!(DOWNLOAD_BYTES, "path" => path).increment(bytes as u64);
}

/// Buckets of the latency histograms: 1 ms to 60 s.
const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use (one per process: tests running several
/// apps in one process share it).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder installed first (a test harness) keeps its place; ours then renders
        // nothing recorded, which the scrape test would notice.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was installed already; /metrics shows only database gauges");
        }
        describe();
        handle.clone()
    })
}

/// Starts the process's metrics: the recorder, its upkeep, and the `/metrics` listener on
/// `listen` when set (`EXPORTD_METRICS_LISTEN`). Call before anything is recorded.
pub async fn start(
    listen: Option<std::net::SocketAddr>,
    pool: &PgPool,
    limit: Duration,
    shutdown: &crate::shutdown::Shutdown,
) -> anyhow::Result<()> {
    spawn_upkeep(shutdown.clone());
    if let Some(addr) = listen {
        self::listen(addr, pool.clone(), limit, shutdown.clone()).await?;
    }
    Ok(())
}

/// Drains histogram samples into their buckets every few seconds, so memory stays flat when
/// nobody scrapes. Runs until the process ends.
fn spawn_upkeep(shutdown: crate::shutdown::Shutdown) {
    let handle = handle();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => handle.run_upkeep(),
                _ = shutdown.wait() => return,
            }
        }
    });
}

fn describe() {
    describe_counter!(ROWS_WRITTEN, "Rows written to export files (checkpointed), by dataset.");
    describe_counter!(BYTES_WRITTEN, Unit::Bytes, "Bytes written to export files (checkpointed), by dataset.");
    describe_counter!(COPY_WAITS, "Times a chunk reader waited on its connection's socket for more of a COPY.");
    describe_counter!(
        DOWNLOAD_BYTES,
        Unit::Bytes,
        "Bytes of downloads sent, by path: sendfile (zero-copy) or read (through this process)."
    );
    describe_histogram!(CHUNK_READ, Unit::Seconds, "Time to read one chunk of rows from PostgreSQL.");
    describe_histogram!(CHECKPOINT, Unit::Seconds, "Time to save one fenced checkpoint.");
    describe_counter!(EXPORTS_CREATED, "Exports created through the API, by dataset.");
    describe_counter!(DELIVERIES, "Queue deliveries of exports ended in this process, by outcome.");
    describe_counter!(RETRIES, "Export runs that failed with an error and are retried after a backoff.");
    describe_counter!(TAKEOVERS, "Exports taken over from a run still marked open (dead or stalled worker).");
    describe_counter!(FENCED_REFUSED, "Fenced writes refused because another run owns the export, by write.");
    describe_gauge!(RUNNING, "Exports running in this process.");
    describe_gauge!(SLOTS, "Export slots of this process, by lane.");
    describe_counter!(WEBHOOK_ATTEMPTS, "Webhook delivery attempts, by result.");
    describe_gauge!(POOL_CONNECTIONS, "Connections of this process's database pool, by state.");
    describe_gauge!(POOL_MAX, "Most connections this process's database pool opens.");
    describe_gauge!(POOL_WAITING, "Tasks of this process waiting for a pooled database connection.");
    describe_histogram!(POOL_ACQUIRE, Unit::Seconds, "Time to get a pooled database connection.");
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by method, route and status.");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "Time to answer an HTTP request (to the response head).");
    // Counters of rare events start at 0, so a rate over them exists before the first one.
    counter!(RETRIES).absolute(0);
    counter!(TAKEOVERS).absolute(0);
    for write in ["checkpoint", "progress", "complete", "release", "fail"] {
        counter!(FENCED_REFUSED, "write" => write).absolute(0);
    }
    gauge!(RUNNING).set(0.0);
}

/// A running export, counted in [`RUNNING`] while it lives.
pub struct RunningGuard(());

impl RunningGuard {
    /// Counts one more running export until dropped.
    pub fn start() -> Self {
        gauge!(RUNNING).increment(1.0);
        Self(())
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        gauge!(RUNNING).decrement(1.0);
    }
}

/// A task waiting for a pooled connection, counted in [`POOL_WAITING`] while it waits.
pub struct WaitingGuard(std::time::Instant);

impl WaitingGuard {
    /// Counts one more waiting task until dropped (then records the wait).
    pub fn start() -> Self {
        gauge!(POOL_WAITING).increment(1.0);
        Self(std::time::Instant::now())
    }
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        gauge!(POOL_WAITING).decrement(1.0);
        histogram!(POOL_ACQUIRE).record(self.0.elapsed().as_secs_f64());
    }
}

/// One checkpointed chunk of `dataset`: its rows and bytes.
pub fn chunk_written(dataset: &str, rows: u64, bytes: u64) {
    counter!(ROWS_WRITTEN, "dataset" => dataset.to_owned()).increment(rows);
    counter!(BYTES_WRITTEN, "dataset" => dataset.to_owned()).increment(bytes);
}

/// A fenced write of kind `write` (checkpoint, complete, release, fail) refused.
pub fn fenced_refused(write: &'static str) {
    counter!(FENCED_REFUSED, "write" => write).increment(1);
}

/// Serves `GET /metrics` (no key) on `addr` until `shutdown`, for scrapers on a private
/// network and for worker-only processes. Binding fails start-up.
async fn listen(
    addr: std::net::SocketAddr,
    pool: PgPool,
    limit: Duration,
    shutdown: crate::shutdown::Shutdown,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr} for /metrics"))?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics (no key)");
    let route = poem::Route::new().at(
        "/metrics",
        poem::get(poem::endpoint::make(move |_| {
            let pool = pool.clone();
            async move { poem::Response::builder().content_type(CONTENT_TYPE).body(render(&pool, limit).await) }
        })),
    );
    let limits = crate::http::HttpLimits {
        max_connections: 16,
        max_connections_per_client: 0,
        header_timeout: Duration::from_secs(10),
        send_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(1),
    };
    Ok(tokio::spawn(async move {
        if let Err(e) = crate::http::serve(listener, route, limits, shutdown).await {
            tracing::error!(error = %e, "the /metrics listener stopped");
        }
    }))
}

/// The exposition's content type (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The whole exposition: this process's metrics, its pool, and the database's gauges (left
/// out, with `exportd_database_up 0`, when the database does not answer within `limit`).
pub async fn render(pool: &PgPool, limit: Duration) -> String {
    let size = pool.size();
    let idle = pool.num_idle() as u32;
    gauge!(POOL_CONNECTIONS, "state" => "idle").set(idle);
    gauge!(POOL_CONNECTIONS, "state" => "in_use").set(size.saturating_sub(idle));
    gauge!(POOL_MAX).set(pool.options().get_max_connections());
    let mut text = handle().render();
    let stats = crate::with_conn!(pool, limit, "reading the metrics' gauges", |c| crate::db::stats::read(c)).await;
    match stats {
        Ok(stats) => {
            text.push_str("# HELP exportd_database_up Whether the database answered this scrape.\n");
            text.push_str("# TYPE exportd_database_up gauge\nexportd_database_up 1\n");
            write_stats(&mut text, &stats);
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics: the database's gauges could not be read");
            text.push_str("# HELP exportd_database_up Whether the database answered this scrape.\n");
            text.push_str("# TYPE exportd_database_up gauge\nexportd_database_up 0\n");
        }
    }
    text
}

/// The database's gauges, written as Prometheus text. They describe every process on the
/// database (each scrape of each process gives the same values: aggregate with `max`).
fn write_stats(text: &mut String, stats: &crate::db::stats::Stats) {
    text.push_str("# HELP exportd_exports Exports in the database, by status and dataset.\n");
    text.push_str("# TYPE exportd_exports gauge\n");
    for (status, dataset, count) in &stats.exports {
        let _ =
            writeln!(text, "exportd_exports{{status=\"{}\",dataset=\"{}\"}} {count}", escape(status), escape(dataset));
    }
    text.push_str("# HELP exportd_queue_depth Jobs waiting in a queue lane (due now or later).\n");
    text.push_str("# TYPE exportd_queue_depth gauge\n");
    for (queue, depth, _) in &stats.queues {
        let _ = writeln!(text, "exportd_queue_depth{{queue=\"{}\"}} {depth}", escape(queue));
    }
    text.push_str("# HELP exportd_queue_oldest_age_seconds Age of the oldest job waiting in a queue lane.\n");
    text.push_str("# TYPE exportd_queue_oldest_age_seconds gauge\n");
    for (queue, _, age) in &stats.queues {
        let _ = writeln!(text, "exportd_queue_oldest_age_seconds{{queue=\"{}\"}} {age}", escape(queue));
    }
    text.push_str("# HELP exportd_oldest_queued_export_age_seconds Age of the oldest export waiting to start.\n");
    text.push_str("# TYPE exportd_oldest_queued_export_age_seconds gauge\n");
    let _ = writeln!(text, "exportd_oldest_queued_export_age_seconds {}", stats.oldest_queued_export);
}

/// A label value as Prometheus text wants it (backslash, quote and newline escaped).
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }
}
