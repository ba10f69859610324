//! The HTTP API (poem-openapi): routes, the OpenAPI spec, Swagger UI, and error rendering.

pub mod auth;
pub mod body;
pub mod conformance;
pub mod cors;
pub mod datasets;
pub mod download;
pub mod error;
pub mod export;
pub mod health;
pub mod link;
pub mod request;
pub mod ui;
mod validate;

use std::sync::Arc;

use poem::{Endpoint, EndpointExt, IntoResponse, Route};
use poem_openapi::{LicenseObject, OpenApiService, ServerObject, Tags};
use sqlx::PgPool;

use crate::{model::Datasets, storage::SharedStorage};

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The database pool (every handler's statement has its own deadline).
    pub pool: PgPool,
    /// Where completed files are read from.
    pub storage: SharedStorage,
    /// Downloads answer 302 to a presigned URL valid this long, when the storage has them.
    pub download_redirect: Option<std::time::Duration>,
    /// Chunk size of exports that do not ask for one.
    pub default_chunk_size: u32,
    /// Key ranges an export may ask to read at once (`parallelism`), at most.
    pub max_parallelism: u32,
    /// How long completed files are kept (shown as `expiresAt`).
    pub retention: std::time::Duration,
    /// Free storage below which new exports are refused (507); 0 = no floor.
    pub min_free_disk: u64,
    /// What can be exported.
    pub datasets: Arc<Datasets>,
    /// Wakes queue workers for new jobs.
    pub waker: crate::export::queue::Waker,
    /// Prefix of the links we return ("" = relative links).
    pub public_url: String,
    /// Deadline of each database call of a request (twice it bounds the whole request, its body
    /// aside): a database that goes silent (a half-open connection, a stuck proxy) gives a 503,
    /// never a hung request.
    pub request_timeout: std::time::Duration,
    /// Downloads in progress, at most this many at once (each holds a permit while it streams).
    pub downloads: Arc<tokio::sync::Semaphore>,
    /// Test-only pause points (unarmed in production).
    pub faults: Arc<crate::export::fault::Faults>,
    /// Origins whose pages may call the API (CORS).
    pub cors: cors::Origins,
    /// Test-only: every response is checked against the spec (None in production).
    pub conformance: Option<Arc<conformance::Conformance>>,
    /// Signed download links: the secrets, how long a link works, and the absolute URL
    /// links start with.
    pub links: Links,
    /// Non-public addresses a `callbackUrl` may point at (`EXPORTD_WEBHOOK_ALLOW`).
    pub webhook_allow: crate::model::webhook::Allow,
}

/// How download links are signed.
#[derive(Debug, Clone)]
pub struct Links {
    /// The secrets (the first signs).
    pub keys: crate::model::link::LinkKeys,
    /// How long a new link works.
    pub ttl: std::time::Duration,
    /// `EXPORTD_PUBLIC_URL`, or this server's own address: links are absolute.
    pub base: String,
}

impl AppState {
    /// A link to `path` on this service.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.public_url)
    }
}

/// Operation groups in the spec.
#[derive(Tags)]
pub enum ApiTags {
    /// Create exports, follow them, list and cancel them, download their files.
    Exports,
    /// What can be exported.
    Datasets,
    /// Liveness of the service and its database.
    Health,
}

type Apis = (export::ExportApi, download::DownloadApi, link::LinkApi, datasets::DatasetsApi, health::HealthApi);

/// The OpenAPI service (also used to print the spec).
pub fn service(state: Arc<AppState>) -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            export::ExportApi { state: state.clone() },
            download::DownloadApi { state: state.clone() },
            link::LinkApi { state: state.clone() },
            datasets::DatasetsApi { state: state.clone() },
            health::HealthApi { state },
        ),
        "exportd",
        env!("CARGO_PKG_VERSION"),
    )
    .description("Exports large PostgreSQL tables to CSV files as durable, resumable background jobs.")
    .license(LicenseObject::new("MIT").url("https://opensource.org/license/mit"))
    // Relative: the API is where the spec was fetched from, whatever the host name.
    .server(ServerObject::new("/").description("this server"))
}

/// The whole HTTP application: API, `/openapi.json`, Swagger UI at `/docs`, JSON errors.
pub fn routes(state: Arc<AppState>) -> impl poem::Endpoint {
    // A backstop: every database call of a handler has `request_timeout` of its own and closes
    // a connection that misses it; this only bounds a request whose calls are each slow.
    let limit = state.request_timeout * 2;
    let api = service(state.clone());
    let raw = api.spec();
    let spec = finish_spec(&raw);
    // poem-openapi's Swagger UI page embeds the spec verbatim: it gets the finished one.
    let docs_html = api.swagger_ui_html().replacen(&raw, &spec, 1);
    let allowed = Arc::new(Allowed::from_spec(&spec));
    let conformance = state.conformance.clone();
    let origins = state.cors.clone();
    if let Some(c) = &conformance {
        c.set_spec(&spec);
    }
    let metrics_state = state.clone();
    let routes_of = allowed.clone();
    Route::new()
        .nest("/", api)
        .nest("/ui", ui::routes(state.clone()))
        .at(
            "/metrics",
            poem::endpoint::make(move |req| {
                let state = metrics_state.clone();
                async move {
                    auth::admin_of(&state, &req).await.map_err(error::ApiError::from)?;
                    let text = crate::telemetry::metrics::render(&state.pool, state.request_timeout).await;
                    Ok::<_, error::ApiError>(
                        poem::Response::builder().content_type(crate::telemetry::metrics::CONTENT_TYPE).body(text),
                    )
                }
            }),
        )
        .at(
            "/openapi.json",
            poem::endpoint::make_sync(move |_| {
                poem::Response::builder().content_type("application/json").body(spec.clone())
            }),
        )
        .at("/docs", poem::endpoint::make_sync(move |_| poem::web::Html(docs_html.clone())))
        .around(move |ep, req| async move {
            match tokio::time::timeout(limit, ep.call(req)).await {
                Ok(answered) => answered,
                Err(_) => {
                    let e = crate::error::Error::Unavailable(crate::db::timed_out(limit, "answering the request"));
                    tracing::warn!(error = %e, "request timed out");
                    Ok(error::ApiError::from(e).into_response())
                }
            }
        })
        .around(|ep, req| async move {
            if req.uri().path() == "/" {
                // A person (or a browser) at the root is sent to the docs, not a JSON 404 (the
                // API is nested at `/`, which leaves no route of its own for the root).
                return Ok(poem::web::Redirect::see_other("/docs").into_response());
            }
            ep.call(req).await
        })
        .catch_all_error(error::render_any_error)
        .around(move |ep, req| {
            let conformance = conformance.clone();
            async move {
                let Some(conformance) = conformance else { return ep.call(req).await };
                let (method, path) = (req.method().as_str().to_lowercase(), req.uri().path().to_owned());
                let resp = ep.call(req).await?.into_response();
                Ok(conformance.check(&method, &path, resp).await)
            }
        })
        .around(move |ep, req| {
            let allowed = allowed.clone();
            async move {
                let path = req.uri().path().to_owned();
                let mut resp = ep.call(req).await?.into_response();
                // RFC 9110: a 405 says which methods the resource has.
                if resp.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED
                    && let Some(methods) = allowed.methods(&path)
                    && let Ok(value) = poem::http::HeaderValue::from_str(methods)
                {
                    resp.headers_mut().insert(poem::http::header::ALLOW, value);
                }
                Ok(resp)
            }
        })
        .data(state)
        .around(with_request_id)
        .around(move |ep, req| cors::cors(ep, req, origins.clone()))
        .around(move |ep, req| {
            let routes = routes_of.clone();
            async move {
                let started = std::time::Instant::now();
                let method: &'static str = match *req.method() {
                    poem::http::Method::GET => "GET",
                    poem::http::Method::HEAD => "HEAD",
                    poem::http::Method::POST => "POST",
                    poem::http::Method::PUT => "PUT",
                    poem::http::Method::PATCH => "PATCH",
                    poem::http::Method::DELETE => "DELETE",
                    poem::http::Method::OPTIONS => "OPTIONS",
                    _ => "other",
                };
                let route = routes.route(req.uri().path());
                let resp = ep.call(req).await?.into_response();
                let status = resp.status().as_u16().to_string();
                use crate::telemetry::metrics::{HTTP_DURATION, HTTP_REQUESTS};
                metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status).increment(1);
                metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route)
                    .record(started.elapsed().as_secs_f64());
                Ok(resp)
            }
        })
}

/// The methods of each path of the spec, for the `Allow` header of a 405.
struct Allowed(Vec<(String, String)>);

impl Allowed {
    fn from_spec(spec: &str) -> Self {
        let spec: serde_json::Value = serde_json::from_str(spec).expect("the spec is JSON");
        let paths = spec["paths"].as_object().map(|p| p.iter()).into_iter().flatten();
        Self(
            paths
                .map(|(path, ops)| {
                    let methods = ops.as_object().map(|o| o.keys().map(|m| m.to_uppercase()).collect::<Vec<_>>());
                    (path.clone(), methods.unwrap_or_default().join(", "))
                })
                .collect(),
        )
    }

    /// The route a path is counted under in metrics: its spec path, one of the pages outside
    /// the spec, or `other` (so the label's values stay few whatever clients ask for).
    fn route(&self, path: &str) -> &'static str {
        if let Some((template, _)) = self.0.iter().find(|(template, _)| path_matches(template, path)) {
            // Leaked once per spec path (the set is fixed at start), so labels borrow them.
            return ROUTE_NAMES.with_name(template);
        }
        match path {
            "/metrics" | "/docs" | "/openapi.json" | "/" => ROUTE_NAMES.with_name(path),
            p if p == "/ui" || p.starts_with("/ui/") => "/ui",
            _ => "other",
        }
    }

    /// The methods of the spec's path that `path` matches.
    fn methods(&self, path: &str) -> Option<&str> {
        self.0.iter().find(|(template, _)| path_matches(template, path)).map(|(_, methods)| methods.as_str())
    }
}

/// Route names as `&'static str` (metric labels), each stored once.
static ROUTE_NAMES: RouteNames = RouteNames(std::sync::Mutex::new(Vec::new()));

struct RouteNames(std::sync::Mutex<Vec<&'static str>>);

impl RouteNames {
    fn with_name(&self, name: &str) -> &'static str {
        let mut names = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = names.iter().find(|n| **n == name) {
            return found;
        }
        let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
        names.push(leaked);
        leaked
    }
}

/// Whether a request path is an instance of a spec path (`{id}` matches any one segment).
pub(crate) fn path_matches(template: &str, path: &str) -> bool {
    let (mut template, mut path) = (template.split('/'), path.split('/'));
    loop {
        match (template.next(), path.next()) {
            (None, None) => return true,
            (Some(t), Some(p)) if t == p || (t.starts_with('{') && !p.is_empty()) => {}
            _ => return false,
        }
    }
}

/// Longest `X-Request-Id` taken from a client (a longer or odd one is replaced).
const MAX_REQUEST_ID: usize = 64;

/// Gives every request an id: the client's `X-Request-Id` when it is short and plain, else a
/// new one. The response carries it back (header, and `requestId` in error bodies), and every
/// log line written while answering names it, so a client's report finds the server's cause.
async fn with_request_id<E: Endpoint>(ep: std::sync::Arc<E>, req: poem::Request) -> poem::Result<poem::Response> {
    use tracing::Instrument as _;
    let id = req
        .header("x-request-id")
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = req.uri().path(),
        export_id = tracing::field::Empty
    );
    // The export a request is about (`/api/export/{id}/...`, `/download/{id}`), so its spans
    // and logs are found with the export's.
    if let Some(export_id) = req.uri().path().split('/').find_map(|s| uuid::Uuid::try_parse(s).ok()) {
        span.record("export_id", tracing::field::display(export_id));
    }
    let answered = error::REQUEST_ID.scope(id.clone(), ep.call(req).instrument(span)).await;
    let mut resp = match answered {
        Ok(resp) => resp.into_response(),
        Err(e) => e.into_response(),
    };
    if let Ok(value) = poem::http::HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", value);
    }
    Ok(resp)
}

/// The spec as served at `/openapi.json` and committed under `openapi/` (stable JSON).
pub fn spec_json(state: Arc<AppState>) -> String {
    finish_spec(&service(state).spec())
}

/// What poem-openapi cannot say, added to the spec it writes: that what does not ask for a
/// key is open on purpose (`"security": []` at the root; every `/api` operation names the
/// `apiKey` scheme itself, while `/healthz` is open; poem-openapi writes a root `security`
/// only from security schemes, and without one linters cannot tell "open" from "forgotten").
/// A textual insertion after the opening brace, so every other byte stays as poem-openapi
/// wrote it (parsing and writing it again would sort its keys).
fn finish_spec(raw: &str) -> String {
    let opening = "{\n";
    assert!(raw.starts_with(opening), "poem-openapi writes the spec as an indented JSON object");
    format!("{{\n  \"security\": [],\n{}", &raw[opening.len()..])
}
