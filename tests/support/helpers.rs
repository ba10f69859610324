//! A database per test, the app in this process on a free port, fixtures and references.

use std::{path::PathBuf, sync::Arc, time::Duration};

use exportd::{
    app::App,
    config::ServeArgs,
    datasets, db,
    export::engine::Engine,
    model::{Dataset, ExportRecord},
    shutdown::Shutdown,
};
use futures::TryStreamExt;
use serde_json::Value;
use sqlx::{PgPool, postgres::PgPoolOptions};
use uuid::Uuid;

use super::client::Api;

/// The server that holds the test databases (`make test` sets it).
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL must point at a PostgreSQL server (make test sets it)")
}

/// `url` with its database replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let base = base.trim_end_matches('/');
    let prefix = match base.rfind('/') {
        Some(i) if base[..i].ends_with('/') => base.to_owned(), // "postgres://host" without a database
        Some(i) => base[..i].to_owned(),
        None => base.to_owned(),
    };
    format!("{prefix}/{name}{query}")
}

/// A fresh, empty, migrated database of its own.
pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
}

pub async fn test_db() -> TestDb {
    let admin = admin_url();
    let name = format!("exportd_t_{}", Uuid::new_v4().simple());
    let admin_pool = PgPoolOptions::new().max_connections(1).connect(&admin).await.expect("connect to DATABASE_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("create database \"{name}\"")))
        .execute(&admin_pool)
        .await
        .expect("create test database");
    admin_pool.close().await;
    let url = with_database(&admin, &name);
    let mut args = exportd::config::DbArgs::parse_defaults();
    args.database_url = url.clone();
    let pool = db::connect(&args).await.expect("pool");
    db::migrate(&pool).await.expect("migrate");
    TestDb { url, pool }
}

/// Knobs for [`spawn_app`].
#[derive(Clone)]
pub struct AppOptions {
    pub workers: u32,
    pub chunk_size: u32,
    pub retention: Duration,
    /// Datasets config file (None = the built-in one).
    pub datasets: Option<PathBuf>,
    /// Connect to the database here instead of the test database's own URL (e.g. a proxy to it).
    pub database_url: Option<String>,
    /// `EXPORTD_DB_IO_TIMEOUT` and `EXPORTD_STATEMENT_TIMEOUT` (None = the defaults).
    pub db_io_timeout: Option<Duration>,
    pub statement_timeout: Option<Duration>,
    /// Fault and pause points armed in the app's API and engine.
    pub faults: Option<exportd::export::engine::Faults>,
    /// HTTP limits (None = the defaults).
    pub http: Option<exportd::config::HttpSettings>,
    /// Slots of the throttled lane (None = the default).
    pub throttled_workers: Option<u32>,
    /// `EXPORTD_MIN_FREE_DISK` (None = the default).
    pub min_free_disk: Option<u64>,
    /// `EXPORTD_MAX_RUNNING_PER_OWNER` and `EXPORTD_MAX_QUEUED_PER_OWNER` (None = the defaults).
    pub max_running_per_owner: Option<u32>,
    pub max_queued_per_owner: Option<u32>,
    /// `EXPORTD_LINK_SECRETS` (empty = the secret kept in the database).
    pub link_secrets: Vec<String>,
    /// `EXPORTD_WEBHOOK_ALLOW` and `EXPORTD_WEBHOOK_RETRIES` (None = the default schedule).
    pub webhook_allow: Vec<String>,
    pub webhook_retries: Option<Vec<Duration>>,
    /// `EXPORTD_STORAGE` (e.g. `s3://exports/prefix`) with the object store's options and
    /// `EXPORTD_S3_PART_SIZE` (None: the test's storage directory).
    pub object_storage: Option<exportd::storage::S3Settings>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            workers: 2,
            chunk_size: 10_000,
            retention: Duration::from_secs(7 * 86400),
            datasets: None,
            database_url: None,
            db_io_timeout: None,
            statement_timeout: None,
            faults: None,
            http: None,
            min_free_disk: None,
            throttled_workers: None,
            max_running_per_owner: None,
            max_queued_per_owner: None,
            link_secrets: Vec::new(),
            webhook_allow: Vec::new(),
            webhook_retries: None,
            object_storage: None,
        }
    }
}

/// The app running in this process on a free port, with its own database and storage.
pub struct TestApp {
    pub api: Api,
    pub db: TestDb,
    pub storage: tempfile::TempDir,
    pub engine: Arc<Engine>,
    pub shutdown: Shutdown,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Every response the app sent conformed to the spec: checked when the app is dropped.
    pub conformance: Conformant,
}

/// Fails the test when a response of its app contradicted the spec (status, content type,
/// headers or JSON body): checked as the app is dropped, so every test of the suite checks
/// every response it caused.
pub struct Conformant(pub Arc<exportd::api::conformance::Conformance>);

impl Drop for Conformant {
    fn drop(&mut self) {
        let violations = self.0.violations();
        if !std::thread::panicking() && !violations.is_empty() {
            panic!("responses contradicted the spec:\n{}", violations.join("\n"));
        }
    }
}

pub async fn spawn_app(db: TestDb, opts: AppOptions) -> TestApp {
    spawn_app_on(db, tempfile::tempdir().expect("tempdir"), opts).await
}

/// [`spawn_app`] with a given storage directory (e.g. the one of an app stopped before).
pub async fn spawn_app_on(db: TestDb, storage: tempfile::TempDir, opts: AppOptions) -> TestApp {
    let mut args = ServeArgs::for_test(opts.database_url.as_deref().unwrap_or(&db.url), storage.path().to_path_buf());
    if let Some(t) = opts.db_io_timeout {
        args.db.db_io_timeout = t;
    }
    if let Some(t) = opts.statement_timeout {
        args.db.statement_timeout = t;
    }
    if let Some(http) = opts.http {
        args.http = http;
    }
    if let Some(floor) = opts.min_free_disk {
        args.worker.min_free_disk = floor;
    }
    if let Some(n) = opts.max_running_per_owner {
        args.worker.max_running_per_owner = n;
    }
    if let Some(n) = opts.max_queued_per_owner {
        args.worker.max_queued_per_owner = n;
    }
    args.link_secrets = opts.link_secrets;
    args.worker.webhook_allow = opts.webhook_allow;
    if let Some(r) = opts.webhook_retries {
        args.worker.webhook_retries = r;
    }
    if let Some(slots) = opts.throttled_workers {
        args.worker.throttled_concurrency = slots;
    }
    if let Some(s3) = opts.object_storage {
        (args.worker.storage, args.worker.storage_options, args.worker.s3_part_size) =
            (Some(s3.url), s3.options, s3.part_size);
    }
    args.worker.worker_concurrency = opts.workers;
    args.worker.chunk_size = opts.chunk_size;
    args.worker.retention = opts.retention;
    args.worker.datasets = opts.datasets;
    args.worker.heartbeat = Duration::from_secs(1);
    args.worker.retry_backoff = Duration::from_millis(100);
    let shutdown = Shutdown::new();
    let conformance = Arc::new(exportd::api::conformance::Conformance::default());
    let mut app = App::build(args, shutdown.clone()).await.expect("build app").with_conformance(conformance.clone());
    if let Some(faults) = opts.faults {
        app = app.with_faults(faults);
    }
    let base = format!("http://127.0.0.1:{}", app.port());
    let engine = app.engine().clone();
    let handle = tokio::spawn(app.run());
    // The suite calls as an admin (sees every export); tenancy tests make keys of their own.
    let key = new_key(&db.pool, "test-admin", true, None).await;
    TestApp { api: Api::new(base, &key), db, storage, engine, shutdown, handle, conformance: Conformant(conformance) }
}

/// A new API key's secret.
pub async fn new_key(pool: &PgPool, name: &str, admin: bool, datasets: Option<&[&str]>) -> String {
    let datasets: Option<Vec<String>> = datasets.map(|d| d.iter().map(|s| s.to_string()).collect());
    exportd::db::keys::create(pool, name, admin, datasets.as_deref()).await.expect("create a key").1
}

impl std::ops::Deref for TestApp {
    type Target = Api;

    /// The app's API over HTTP: `app.status(id)`, `app.download(id)`, ...
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TestApp {
    /// Stops the app the way SIGTERM would, waits for it, and hands back database and storage.
    pub async fn stop(self) -> (TestDb, tempfile::TempDir) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .expect("app stops in time")
            .expect("app task")
            .expect("app ran cleanly");
        (self.db, self.storage)
    }
}

/// Output of any `COPY ... TO STDOUT` statement, run in time zone `tz`: the reference of an
/// export with options (tests write the matching SQL themselves).
pub async fn copy_out(pool: &PgPool, tz: &str, copy: &str) -> Vec<u8> {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("select set_config('TimeZone', $1, false)").bind(tz).execute(&mut *conn).await.unwrap();
    let mut out = Vec::new();
    {
        let mut stream = conn.copy_out_raw(copy).await.unwrap();
        while let Some(chunk) = stream.try_next().await.unwrap() {
            out.extend_from_slice(&chunk);
        }
    }
    conn.close().await.unwrap();
    out
}

/// CSV with every record ending in CRLF instead of LF (line breaks inside quoted fields kept).
pub fn crlf_records(csv: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(csv.len() + csv.len() / 50);
    let mut quoted = false;
    for &b in csv {
        if b == b'"' {
            quoted = !quoted;
        }
        if b == b'\n' && !quoted {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// Asserts an error response: its status, a JSON body, and a message that mentions `mentions`.
pub async fn expect_error(resp: reqwest::Response, status: u16, mentions: &str) -> Value {
    assert_eq!(resp.status(), status);
    assert!(
        resp.headers()["content-type"].to_str().unwrap().starts_with("application/json"),
        "error responses are JSON"
    );
    let v: Value = resp.json().await.unwrap();
    let message = v["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains(mentions), "message {message:?} should mention {mentions:?}");
    assert!(v["error"].is_string());
    v
}

/// PostgreSQL's own `COPY (SELECT ... ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER true)`,
/// on a connection with `TimeZone = 'UTC'`: what every export must equal byte for byte.
pub async fn copy_reference(pool: &PgPool) -> Vec<u8> {
    let mut conn = pool.acquire().await.unwrap();
    let tz: String = sqlx::query_scalar("show timezone").fetch_one(&mut *conn).await.unwrap();
    assert_eq!(tz, "UTC");
    let query = exportd::db::dataset::copy_reference_query(&*orders(pool).await);
    let mut stream = conn.copy_out_raw(&query).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = stream.try_next().await.unwrap() {
        out.extend_from_slice(&chunk);
    }
    out
}

/// The `orders` dataset of the built-in config, checked against this database.
pub async fn orders(pool: &PgPool) -> Arc<Dataset> {
    let datasets = datasets::load(pool, None).await.expect("built-in datasets config is valid here");
    datasets.find("orders").expect("orders is configured").clone()
}

/// The demo dataset with `rows` rows, plus rows with every CSV hazard we know of.
pub async fn seed_nasty(pool: &PgPool, rows: i64) {
    db::seed::seed_orders(pool, rows, |_| {}).await.unwrap();
    sqlx::raw_sql(NASTY_ROWS).execute(pool).await.unwrap();
}

/// Hand-written hard cases, with ids after the seeded ones (and a gap).
pub const NASTY_ROWS: &str = r#"
insert into orders (id, created_at, updated_at, customer_name, customer_email, country, status, amount, currency, quantity, note, metadata) values
 (9000001, '2024-02-29 23:59:59.999999+00', null, '', null, 'DE', 'paid', 0, 'EUR', 0, '', '{}'),
 (9000002, '1999-12-31 23:00:00-05', '2000-01-01 00:00:00+14', null, '', null, null, -0.01, null, null, null, 'null'),
 (9000003, '2024-06-01 12:00:00+02', null, 'O''Brien, "Jr."', 'a,b@example.com', 'FR', 'shipped', 1234567890.12, 'USD', -5, '"', '{"a": "he said \"hi\"", "b": [1, 2.50, null], "c": "line\nbreak", "é": "東京"}'),
 (9000004, '2024-06-01 12:00:00.5+00', null, ' x ', E'tab\there', 'JP', 'x', 1, 'JPY', 1, E'\r', '"just a string"'),
 (9000005, '2024-06-01 12:00:00.000001+00', null, E'cr\rlf\n', 'q"q', 'BR', 'delivered', 99.90, 'BRL', 2147483647, E'\\.', '[1, "two", {"three": 3}]'),
 (9000006, '2024-06-01 12:00:00+00', null, '😀 emoji', 'ünïcödé@例え.jp', 'IN', 'cancelled', 5, 'GBP', 1, ',', '{"nested": {"deep": ["\"", "\\", "/"]}}'),
 (9000008, '2024-06-01 12:00:00+00', null, 'after a gap', 'gap@example.com', 'US', 'paid', 10, 'USD', 1, repeat('long, "field" ', 2000), '{"big": true}'),
 (9000009, '2024-06-01 12:00:00+00', null, E'\\N', 'NULL', 'US', 'null', 10, 'USD', 1, E'a\\nb', null);
select setval(pg_get_serial_sequence('orders', 'id'), 9000009);
analyze orders;
"#;

/// The export row, read directly.
pub async fn export_row(pool: &PgPool, id: Uuid) -> ExportRecord {
    db::exports::find_export(pool, id).await.unwrap().expect("export exists")
}

/// The export's `rows_written` and the sum of its key ranges', read in one statement (one
/// snapshot). After a simulated crash the other ranges' last checkpoint statements, sent before
/// it, may still commit while a test reads, as they may after a kill -9.
pub async fn progress_and_ranges(pool: &PgPool, id: Uuid) -> (i64, i64) {
    sqlx::query_as(
        "select rows_written, (select sum(rows_written)::int8 from export_ranges where export_id = $1) \
         from exports where id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Bytes of a stored file.
pub fn stored_file(app_storage: &std::path::Path, name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(app_storage).join(name)).unwrap()
}

/// Asserts two byte strings are equal, reporting the first difference instead of dumping both.
#[track_caller]
pub fn assert_same_bytes(actual: &[u8], expected: &[u8]) {
    if actual == expected {
        return;
    }
    let at = actual.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(actual.len().min(expected.len()));
    let show = |b: &[u8]| String::from_utf8_lossy(&b[at.saturating_sub(80)..(at + 80).min(b.len())]).into_owned();
    panic!(
        "files differ at byte {at} (lengths {} vs {} expected)\nactual:   {:?}\nexpected: {:?}",
        actual.len(),
        expected.len(),
        show(actual),
        show(expected)
    );
}
