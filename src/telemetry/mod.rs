//! Telemetry: logs (human-readable, or JSON with `EXPORTD_LOG_FORMAT=json`), traces sent over
//! OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (a span per request, per export run and per
//! chunk, each naming its export), and the Prometheus [`metrics`].

pub mod metrics;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use tracing_subscriber::{Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// What logs leave out unless `RUST_LOG` says otherwise.
const DEFAULT_FILTER: &str = "info,sqlx=error,apalis=warn,apalis_core=warn,apalis_postgres=warn";

/// Set once logs are JSON: output meant for a person (the development key's banner) is
/// then logged as an event instead, so every line of stderr stays JSON.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether logs are JSON lines (`EXPORTD_LOG_FORMAT=json`).
pub fn json_logs() -> bool {
    JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Keeps the trace exporter alive; dropping it sends the spans still buffered.
#[must_use = "dropping the guard stops sending traces"]
pub struct Guard(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("exportd: sending the last traces failed: {e}");
        }
    }
}

/// Installs logging (to stderr) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the OTLP trace
/// exporter (HTTP; `OTEL_EXPORTER_OTLP_PROTOCOL` `http/protobuf`, the default, or `http/json`;
/// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` as usual). Call before the runtime
/// starts: the exporter sends from a thread of its own.
pub fn init() -> anyhow::Result<Guard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_FILTER.into());
    let json = match std::env::var("EXPORTD_LOG_FORMAT").unwrap_or_default().to_ascii_lowercase().as_str() {
        "" | "text" => false,
        "json" => true,
        other => anyhow::bail!("EXPORTD_LOG_FORMAT: expected text or json, got {other:?}"),
    };
    JSON_LOGS.store(json, std::sync::atomic::Ordering::Relaxed);
    let logs = if json {
        // One JSON object per line, with the fields of the spans it happened in (export_id,
        // request_id), for a log collector.
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        // Colours for a terminal only: a log file or a collector gets plain text.
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed()
    };
    let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.trim().is_empty() => Some(tracer_provider()?),
        _ => None,
    };
    let traces = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("exportd")));
    tracing_subscriber::registry().with(filter).with(logs).with(traces).init();
    if provider.is_some() {
        tracing::info!(
            endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default(),
            "sending traces over OTLP"
        );
    }
    Ok(Guard(provider))
}

/// The OTLP/HTTP exporter behind a batching processor.
fn tracer_provider() -> anyhow::Result<opentelemetry_sdk::trace::SdkTracerProvider> {
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_default().as_str() {
        "" | "http/protobuf" => Protocol::HttpBinary,
        "http/json" => Protocol::HttpJson,
        other => anyhow::bail!("OTEL_EXPORTER_OTLP_PROTOCOL: expected http/protobuf or http/json, got {other:?}"),
    };
    // The endpoint, headers and timeout come from the OTEL_EXPORTER_OTLP_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .map_err(|e| anyhow::anyhow!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the trace exporter: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name()).build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// `OTEL_SERVICE_NAME`, else `exportd`.
fn service_name() -> String {
    std::env::var("OTEL_SERVICE_NAME").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "exportd".into())
}
