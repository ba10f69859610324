//! Start-up and wiring: `App::build` then `run()` for `serve`, `run_worker` for `worker`.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::{
    api::{self, AppState},
    config::{DbArgs, ServeArgs, WorkerSettings},
    datasets, db,
    export::{
        engine::{Engine, EngineSettings},
        queue,
        sweep::Sweep,
    },
    http::HttpLimits,
    model::Datasets,
    shutdown::Shutdown,
    storage::{LocalDir, ObjectStorage, S3Settings, SharedStorage, Storage},
};

/// How often unfinished exports without a live queue job are looked for.
const REQUEUE_EVERY: Duration = Duration::from_secs(10);
/// An unfinished export counts as orphaned only once untouched this long (a new export's job
/// may not be visible to every reader yet; a running one checkpoints far more often).
const ORPHAN_MIN_AGE: Duration = Duration::from_secs(30);
/// Finished queue jobs are kept this long (for inspection), then deleted.
const KEEP_FINISHED_JOBS: Duration = Duration::from_secs(24 * 3600);
/// A file of a live export that nothing refers to is deleted once unwritten this long.
const STRAY_FILE_AGE: Duration = Duration::from_secs(3600);
/// Worker rows silent this long (and referenced by no job) are deleted.
const FORGET_DEAD_WORKERS: Duration = Duration::from_secs(3600);

/// A built `serve` process: listening, migrated, not yet running.
pub struct App {
    listener: TcpListener,
    limits: HttpLimits,
    port: u16,
    state: Arc<AppState>,
    workers: Workers,
    shutdown: Shutdown,
}

impl App {
    /// Connects, migrates, binds the listener (port 0 picks a free one).
    pub async fn build(mut args: ServeArgs, shutdown: Shutdown) -> anyhow::Result<Self> {
        let pool_size = db::pool_size(args.db.db_pool_size, args.worker.slots(), args.worker.max_parallelism)?;
        args.db.db_pool_size = Some(pool_size);
        let (main, reads) = pool_args(&args.db, &args.worker);
        let pool = connect_and_migrate(&main).await?;
        crate::telemetry::metrics::start(args.worker.metrics_listen, &pool, args.db.db_io_timeout, &shutdown).await?;
        let datasets = load_datasets(&pool, &args.worker).await?;
        let workers = Workers::new((&pool, &reads), datasets.clone(), &args.db, &args.worker, shutdown.clone()).await?;
        let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        let port = listener.local_addr().context("listener has no address")?.port();
        // Descriptors kept for the rest of the service: the pool, files written and read, logs.
        let limits = HttpLimits::new(&args.http, pool_size as usize + args.http.max_downloads + 64);
        let ip =
            if args.listen.ip().is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { args.listen.ip() };
        let url = format!("http://{}", std::net::SocketAddr::new(ip, port));
        let public_url = args.public_url.clone().unwrap_or_default().trim_end_matches('/').to_owned();
        if let Some(path) = &args.dev_key_file {
            let key = crate::keys::dev_key(&pool, path).await?;
            if crate::telemetry::json_logs() {
                tracing::info!(file = %path.display(), "development API key (admin) in use; its secret is in the file");
            } else {
                // For the person who ran `make run`: the key and a line to paste (stderr, with the logs).
                eprintln!(
                    "\ndevelopment API key (admin, kept in {}):\n  {key}\ntry:\n  curl -H 'Authorization: Bearer {key}' \
                 {url}/api/datasets\nor open {url}/docs and paste it under Authorize.\n",
                    path.display()
                );
            }
        }
        let links = api::Links {
            keys: link_keys(&pool, &args.link_secrets).await?,
            ttl: args.link_ttl,
            base: if public_url.is_empty() { url.clone() } else { public_url.clone() },
        };
        let waker = queue::Waker::start(pool.clone());
        let state = Arc::new(AppState {
            pool,
            storage: workers.engine.storage().clone(),
            download_redirect: args.worker.download_redirect.then_some(args.worker.download_redirect_ttl),
            default_chunk_size: args.worker.chunk_size,
            max_parallelism: args.worker.max_parallelism,
            retention: args.worker.retention,
            min_free_disk: args.worker.min_free_disk,
            datasets,
            waker,
            public_url,
            request_timeout: args.db.db_io_timeout,
            downloads: Arc::new(tokio::sync::Semaphore::new(args.http.max_downloads.max(1))),
            faults: Default::default(),
            cors: api::cors::Origins::new(args.http.cors_origins.clone()),
            conformance: None,
            links,
            webhook_allow: webhook_allow(&args.worker)?,
        });
        // The listener is bound: what this process is and what it connects to.
        let role = if args.worker.worker_concurrency == 0 { "api" } else { "serve" };
        tracing::info!(
            role,
            listen = %url,
            database = %db::describe_url(&args.db.database_url),
            chunk_reads = %describe_reads(&args.worker),
            storage = %describe_storage(&args.worker),
            worker_slots = args.worker.slots(),
            "exportd {role}: HTTP API{} on {url}: Swagger UI at {url}/docs, API at {url}/api",
            if role == "serve" { " and export workers" } else { " only (no workers)" },
        );
        Ok(Self { listener, limits, port, state, workers, shutdown })
    }

    /// The same app with test fault and pause points armed, in the API and the engine.
    pub fn with_faults(mut self, faults: crate::export::fault::Faults) -> Self {
        let faults = Arc::new(faults);
        Arc::get_mut(&mut self.state).expect("state not shared before run").faults = faults.clone();
        let engine = Arc::get_mut(&mut self.workers.engine).expect("engine not shared before run");
        *engine = engine.clone().with_faults((*faults).clone());
        self
    }

    /// The same app checking every response against the spec (tests: `check` keeps what broke it).
    pub fn with_conformance(mut self, check: Arc<api::conformance::Conformance>) -> Self {
        Arc::get_mut(&mut self.state).expect("state not shared before run").conformance = Some(check);
        self
    }

    /// The port the API listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The shared state (pool, storage), for tests.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The export engine, for tests that drive runs directly.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.workers.engine
    }

    /// Serves HTTP and runs the workers until the shutdown signal, then stops both gracefully.
    pub async fn run(self) -> anyhow::Result<()> {
        let http =
            crate::http::serve(self.listener, api::routes(self.state.clone()), self.limits, self.shutdown.clone());
        let (http, workers) = tokio::join!(http, self.workers.run());
        http.context("HTTP server")?;
        workers
    }
}

/// `exportd worker`: workers only, until the shutdown signal.
pub async fn run_worker(db_args: &DbArgs, settings: &WorkerSettings, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut db_args = db_args.clone();
    db_args.db_pool_size = Some(db::pool_size(db_args.db_pool_size, settings.slots(), settings.max_parallelism)?);
    let db_args = &db_args;
    let (main, reads) = pool_args(db_args, settings);
    let pool = connect_and_migrate(&main).await?;
    crate::telemetry::metrics::start(settings.metrics_listen, &pool, db_args.db_io_timeout, &shutdown).await?;
    let datasets = load_datasets(&pool, settings).await?;
    tracing::info!(
        role = "worker",
        database = %db::describe_url(&db_args.database_url),
        chunk_reads = %describe_reads(settings),
        storage = %describe_storage(settings),
        worker_slots = settings.slots(),
        "exportd worker: export workers only (no HTTP API)"
    );
    Workers::new((&pool, &reads), datasets, db_args, settings, shutdown).await?.run().await
}

/// Reads the datasets config and checks it against the catalog (start-up fails if it is wrong).
async fn load_datasets(pool: &PgPool, settings: &WorkerSettings) -> anyhow::Result<Arc<Datasets>> {
    let datasets = datasets::load(pool, settings.datasets.as_deref()).await?;
    let names: Vec<&str> = datasets.all().iter().map(|d| d.name.as_str()).collect();
    tracing::info!(datasets = ?names, default = datasets.default_name(), "datasets checked against the catalog");
    // What exportd.enqueue_export checks requests against, for services that enqueue in SQL.
    db::dataset::publish(pool, &datasets, settings).await.context("publishing the datasets")?;
    Ok(Arc::new(datasets))
}

/// The storage the settings name: the object store of `EXPORTD_STORAGE`, else the directory.
fn open_storage(settings: &WorkerSettings) -> anyhow::Result<SharedStorage> {
    if let Some(url) = settings.object_storage_url() {
        let s3 = S3Settings {
            url: url.to_owned(),
            part_size: settings.s3_part_size,
            options: settings.storage_options.clone(),
        };
        return Ok(Arc::new(ObjectStorage::new(&s3)?));
    }
    let dir = &settings.storage_dir;
    let storage = LocalDir::new(dir).with_context(|| format!("creating storage directory {}", dir.display()))?;
    Ok(Arc::new(storage))
}

/// Where chunks are read, for the start-up line.
fn describe_reads(settings: &WorkerSettings) -> String {
    match settings.read_replica_url() {
        Some(url) => format!("read replica {}", db::describe_url(url)),
        None => "the database".to_owned(),
    }
}

/// Where files go, for the start-up line.
fn describe_storage(settings: &WorkerSettings) -> String {
    match settings.object_storage_url() {
        Some(url) => format!("{url} (parts of {} MiB)", settings.s3_part_size >> 20),
        None => settings.storage_dir.display().to_string(),
    }
}

/// `EXPORTD_WEBHOOK_ALLOW`, parsed (start-up fails on a bad entry).
fn webhook_allow(settings: &WorkerSettings) -> anyhow::Result<crate::model::webhook::Allow> {
    crate::model::webhook::Allow::parse(&settings.webhook_allow)
        .map_err(|e| anyhow::anyhow!("EXPORTD_WEBHOOK_ALLOW: {e}"))
}

/// The secrets of download links: the configured ones, else the one kept in the database.
async fn link_keys(pool: &PgPool, configured: &[String]) -> anyhow::Result<crate::model::link::LinkKeys> {
    if configured.is_empty() {
        let secret = db::links::stored_secret(pool).await.context("reading the link secret")?;
        return Ok(crate::model::link::LinkKeys::single(db::links::STORED_KID, secret));
    }
    crate::model::link::LinkKeys::parse(configured).map_err(|e| anyhow::anyhow!("EXPORTD_LINK_SECRETS: {e}"))
}

/// The two pools' settings, `db`'s `db_pool_size` (the process's total) shared between them
/// (see [`db::split_pool`]): the main pool's, and the chunk readers' (on the read replica when
/// there is one, else the primary).
fn pool_args(db: &DbArgs, settings: &WorkerSettings) -> (DbArgs, DbArgs) {
    let total = db.db_pool_size.expect("the pool size is settled before connecting");
    let (main, readers) = db::split_pool(total, settings.slots(), settings.max_parallelism);
    let url = settings.read_replica_url().unwrap_or(&db.database_url).to_owned();
    (
        DbArgs { db_pool_size: Some(main), ..db.clone() },
        DbArgs { database_url: url, db_pool_size: Some(readers), ..db.clone() },
    )
}

/// Connects (waiting up to 30 s for the database) and applies migrations.
pub async fn connect_and_migrate(args: &DbArgs) -> anyhow::Result<PgPool> {
    let pool = db::connect(args).await?;
    db::wait_until_ready(&pool, Duration::from_secs(30)).await?;
    db::migrate(&pool).await?;
    Ok(pool)
}

/// The export workers of one process and their housekeeping.
struct Workers {
    pool: PgPool,
    engine: Arc<Engine>,
    webhooks: Arc<crate::export::webhook::Webhooks>,
    settings: WorkerSettings,
    shutdown: Shutdown,
}

impl Workers {
    /// `pool` the main pool; `reads` the chunk readers' pool's settings (see [`pool_args`]).
    async fn new(
        (pool, reads): (&PgPool, &DbArgs),
        datasets: Arc<Datasets>,
        db: &DbArgs,
        settings: &WorkerSettings,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let replica = settings.read_replica_url().is_some();
        let reads =
            db::connect(reads).await.context(if replica { "EXPORTD_READ_DATABASE_URL" } else { "DATABASE_URL" })?;
        let mut engine = Engine::new(
            (pool.clone(), reads),
            open_storage(settings)?,
            datasets,
            EngineSettings {
                max_stalled_attempts: settings.max_stalled_attempts,
                retry_backoff: settings.retry_backoff,
                retention: settings.retention,
                min_free_disk: settings.min_free_disk,
                db_io_timeout: db.db_io_timeout,
                db_statement_wait: db.statement_timeout + db.db_io_timeout,
                max_parallelism: settings.max_parallelism,
                threads: settings.engine_threads(),
            },
            shutdown.clone(),
        )
        .context("starting the engine's threads")?;
        if replica {
            engine = engine.on_read_replica();
        }
        let webhooks = crate::export::webhook::Webhooks::new(
            pool.clone(),
            webhook_allow(settings)?,
            settings.webhook_retries.clone(),
        );
        Ok(Self {
            pool: pool.clone(),
            engine: Arc::new(engine),
            webhooks: Arc::new(webhooks),
            settings: settings.clone(),
            shutdown,
        })
    }

    async fn run(self) -> anyhow::Result<()> {
        if self.settings.worker_concurrency == 0 {
            self.shutdown.wait().await;
            return Ok(());
        }
        use crate::telemetry::metrics::SLOTS;
        metrics::gauge!(SLOTS, "lane" => "full_speed").set(self.settings.worker_concurrency);
        metrics::gauge!(SLOTS, "lane" => "throttled").set(self.settings.throttled_concurrency);
        // The full-speed lane, then the throttled one (slots numbered on from the first).
        let lanes = (0..self.settings.worker_concurrency)
            .map(|_| queue::QUEUE)
            .chain((0..self.settings.throttled_concurrency).map(|_| queue::THROTTLED_QUEUE))
            .chain([queue::WEBHOOK_QUEUE]);
        let slots = lanes.enumerate().map(|(index, lane)| {
            tokio::spawn(queue::run_worker_slot(
                self.pool.clone(),
                self.engine.clone(),
                self.webhooks.clone(),
                lane,
                index as u32,
                self.settings.heartbeat,
                self.settings.shutdown_timeout,
                self.shutdown.clone(),
            ))
        });
        let slots = futures::future::join_all(slots.collect::<Vec<_>>());
        let sweep = Sweep {
            keep_ended_exports: self.settings.purge_after,
            keep_finished_jobs: KEEP_FINISHED_JOBS,
            stray_file_age: STRAY_FILE_AGE,
        };
        let housekeeping = housekeeping(self.pool.clone(), self.engine.storage().clone(), sweep, self.shutdown.clone());
        let (slots, ()) = tokio::join!(slots, housekeeping);
        for slot in slots {
            slot.context("queue worker slot panicked")?;
        }
        Ok(())
    }
}

/// Periodic repair and hygiene: unfinished exports whose queue job is gone get a new one;
/// completed exports past their retention expire and their files are deleted; every minute the
/// sweeper deletes stray files, ended exports' rows and finished jobs, and dead workers are
/// forgotten, so storage and tables do not grow without bound.
async fn housekeeping(pool: PgPool, storage: SharedStorage, sweep: Sweep, shutdown: Shutdown) {
    let mut orphan_scan = db::housekeeping::ScanCursor::default();
    for round in 0u64.. {
        tokio::select! {
            _ = tokio::time::sleep(REQUEUE_EVERY) => {}
            _ = shutdown.wait() => return,
        }
        if let Err(e) = queue::requeue_orphans(&pool, ORPHAN_MIN_AGE, &mut orphan_scan).await {
            tracing::warn!(error = %e, "re-enqueueing orphaned exports failed; will retry");
        }
        expire(&pool, storage.as_ref()).await;
        if round % 6 == 0 {
            match crate::export::sweep::sweep(&pool, storage.as_ref(), &sweep).await {
                Ok(swept) if swept == Default::default() => {}
                Ok(swept) => tracing::info!(?swept, "swept what ended exports left behind"),
                Err(e) => tracing::warn!(error = %e, "sweep failed; will retry"),
            }
            for lane in queue::ALL_QUEUES {
                match db::queue::purge_dead_workers(&pool, lane, FORGET_DEAD_WORKERS).await {
                    Ok(0) => {}
                    Ok(workers) => tracing::info!(workers, queue = lane, "forgot dead queue workers"),
                    Err(e) => tracing::warn!(error = %e, "queue hygiene failed; will retry"),
                }
            }
        }
    }
}

/// Expires completed exports past their retention and deletes their files. The status
/// changes first: a file is only deleted once no download can start on it.
pub async fn expire(pool: &PgPool, storage: &dyn Storage) {
    match db::exports::expire_due(pool, 100).await {
        Ok(ids) => {
            for id in &ids {
                storage.remove_export(*id).await;
            }
            if !ids.is_empty() {
                tracing::info!(count = ids.len(), "expired exports past their retention; files deleted");
            }
        }
        Err(e) => tracing::warn!(error = %e, "expiring exports failed; will retry"),
    }
}
