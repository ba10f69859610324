//! The job queue (apalis-postgres): enqueueing an export with its row, and the workers that run them.
//!
//! Settings follow what was verified on apalis-postgres 1.0 (see README, "Queue"): a unique
//! worker name per process start (a reused name leaves a crashed worker's job stuck),
//! `batch_size(1)` (larger batches stop heartbeats during a long job and let other workers
//! take it), a 2 s heartbeat with 3 misses (a killed worker's export resumes in ~6-8 s), and
//! LISTEN/NOTIFY plus a 1 s poll for pickup. Delivery is at least once; exactly-once output
//! comes from the fenced checkpoints in [`crate::db::exports`].

use std::{sync::Arc, time::Duration};

use apalis::prelude::*;
use apalis_postgres::{Config, PgTask, PostgresStorage, Pubsub};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    db,
    export::{
        engine::{Engine, Outcome},
        webhook::Webhooks,
    },
    shutdown::Shutdown,
};

/// Queue (apalis job type) carrying exports at full speed.
pub const QUEUE: &str = "exportd.export";
/// Queue carrying throttled exports (`maxRowsPerSecond`): a lane of worker slots of their own,
/// so exports that spend most of their time waiting never hold the slots others need.
pub const THROTTLED_QUEUE: &str = "exportd.export.throttled";
/// The export queues (lanes), for housekeeping.
pub const QUEUES: [&str; 2] = [QUEUE, THROTTLED_QUEUE];
/// Queue carrying webhook delivery attempts (migration 0010 and [`super::webhook`]).
pub const WEBHOOK_QUEUE: &str = "exportd.webhook";
/// Every queue, for the hygiene of finished jobs and dead workers.
pub const ALL_QUEUES: [&str; 3] = [QUEUE, THROTTLED_QUEUE, WEBHOOK_QUEUE];

/// The queue (lane) an export runs in.
pub fn lane(spec: &crate::model::ExportSpec) -> &'static str {
    if spec.max_rows_per_second.is_some() { THROTTLED_QUEUE } else { QUEUE }
}

/// The job payload: which export to run. Everything else is on the export's row.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportJob {
    /// The export the job carries.
    pub export_id: Uuid,
}

/// What a queue job carries: an export to run, or a webhook delivery to attempt (the
/// payloads differ by their one field, `exportId` or `deliveryId`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Job {
    /// An export (lanes `exportd.export` and `exportd.export.throttled`).
    Export(ExportJob),
    /// A webhook delivery (lane `exportd.webhook`).
    Webhook {
        /// The delivery to attempt.
        #[serde(rename = "deliveryId")]
        delivery_id: String,
    },
}

/// Queue retries: our own attempt accounting decides when an export fails (see
/// `max_stalled_attempts`); this only has to be larger.
pub const QUEUE_MAX_ATTEMPTS: i32 = 1000;

/// The job's arguments, as apalis stores them.
pub fn job_payload(export_id: Uuid) -> Vec<u8> {
    serde_json::to_vec(&ExportJob { export_id }).expect("serializable")
}

/// Inserts job `job_id` for an export into `queue` on `conn`, the transaction that inserts or
/// updates the export row; call [`wake_workers`] once it has committed.
pub async fn enqueue(
    conn: &mut PgConnection,
    queue: &str,
    job_id: &str,
    export_id: Uuid,
) -> Result<(), apalis_postgres::Error> {
    let ulid: ulid::Ulid = job_id.parse().expect("job ids are ULIDs");
    let task: PgTask = TaskBuilder::new(job_payload(export_id))
        .task_id(TaskId::from_ulid(ulid))
        .max_attempts(QUEUE_MAX_ATTEMPTS as usize)
        .build();
    apalis_postgres::queries::push_tasks(conn, queue, vec![task]).await
}

/// Wakes listening workers for jobs just committed, each `(queue, job id)` (best effort: they
/// also poll every second).
pub async fn wake_workers(pool: &PgPool, jobs: &[(&'static str, String)]) {
    let (queues, job_ids): (Vec<&str>, Vec<&str>) = jobs.iter().map(|(q, id)| (*q, id.as_str())).unzip();
    if let Err(e) = db::queue::notify_workers(pool, &queues, &job_ids).await {
        tracing::debug!(error = %e, jobs = job_ids.len(), "could not notify workers; they will find the jobs by polling");
    }
}

/// Jobs waiting for their wake-up notification, at most (beyond, workers find them by polling).
const PENDING_WAKES: usize = 10_000;

/// Wakes workers for new jobs off the request path, in batches: a request hands its job id
/// over and answers at once, and one statement notifies every job committed meanwhile. (Each
/// notifying transaction takes PostgreSQL's global notify lock at commit, so one per request
/// made concurrent requests wait on each other.)
#[derive(Debug, Clone)]
pub struct Waker(tokio::sync::mpsc::Sender<(&'static str, String)>);

impl Waker {
    /// Starts the notifying task; it ends when the last `Waker` is dropped.
    pub fn start(pool: PgPool) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(&'static str, String)>(PENDING_WAKES);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, 1000).await > 0 {
                wake_workers(&pool, &batch).await;
                batch.clear();
            }
        });
        Self(tx)
    }

    /// Asks for workers of `queue` to be woken for a committed job (never waits).
    pub fn wake(&self, queue: &'static str, job_id: String) {
        let _ = self.0.try_send((queue, job_id));
    }
}

/// A fresh job id.
pub fn new_job_id() -> String {
    ulid::Ulid::generate().to_string()
}

/// Worker names must be unique per process start.
pub fn worker_name(index: u32) -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "host".into());
    let nonce = &Uuid::new_v4().simple().to_string()[..8];
    format!("exportd-{host}-{}-{nonce}-{index}", std::process::id())
}

/// How long a worker slot waits before starting a new worker after its worker died.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// One worker slot, running one export at a time (`concurrency(1)`: without it an apalis
/// worker starts every job it fetches at once), supervised: apalis ends a worker for good when its
/// backend fails (e.g. the database restarts), so the slot starts a new worker, with a new
/// name, a second later, until the process stops. A new name matters: a worker that reuses
/// the dead one's name would keep its jobs looking alive; under a new name they are
/// re-enqueued after the heartbeat timeout and resumed from their checkpoints.
#[allow(clippy::too_many_arguments)]
pub async fn run_worker_slot(
    pool: PgPool,
    engine: Arc<Engine>,
    webhooks: Arc<Webhooks>,
    queue: &'static str,
    index: u32,
    heartbeat: Duration,
    shutdown_timeout: Duration,
    shutdown: Shutdown,
) {
    loop {
        let name = worker_name(index);
        let factory = {
            let (pool, engine, webhooks, name) = (pool.clone(), engine.clone(), webhooks.clone(), name.clone());
            move |_restarts| {
                let config =
                    Config::default().queue(queue).batch_size(1).heartbeat_interval(heartbeat).missed_heartbeats(3);
                let strategy = Strategy::new()
                    .stream(Pubsub::new(pool.clone(), queue.to_owned()))
                    .interval(Duration::from_secs(1));
                let backend = PostgresStorage::<Job>::new(&pool).with_config(config).poll_with_strategy(strategy);
                WorkerBuilder::new(name.clone())
                    .backend(backend)
                    .concurrency(1)
                    .data(engine.clone())
                    .data(webhooks.clone())
                    .build(run_job)
            }
        };
        let signal = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.wait().await;
                Ok(())
            }
        };
        let ended = Monitor::new().shutdown_timeout(shutdown_timeout).register(factory).run_with_signal(signal).await;
        if shutdown.is_triggered() {
            return;
        }
        tracing::warn!(worker = %name, result = ?ended, "queue worker stopped; starting a new one");
        tokio::select! {
            _ = tokio::time::sleep(RESTART_DELAY) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// The job handler: runs the export, or attempts the delivery. A release at shutdown goes back
/// to the queue at once without counting as a failure; a delivery's failure is recorded and
/// retried by a job of its own (a failing job here means the database failed: the queue
/// hands it out again).
async fn run_job(
    job: Job,
    engine: Data<Arc<Engine>>,
    webhooks: Data<Arc<Webhooks>>,
    worker: WorkerContext,
) -> Result<(), BoxDynError> {
    let job = match job {
        Job::Export(job) => job,
        Job::Webhook { delivery_id } => return Ok(webhooks.deliver(&delivery_id).await?),
    };
    match engine.execute(job.export_id, worker.name()).await {
        Outcome::Released => Err(DeferredError::new(std::io::Error::other("released at shutdown")).into()),
        Outcome::Crashed => Err("simulated crash".into()),
        Outcome::Completed | Outcome::AlreadyFinished | Outcome::Failed | Outcome::Lost => Ok(()),
    }
}

/// Running and queued exports the orphan scan looks at per round (each, by key).
const ORPHAN_SCAN_BATCH: i64 = 1000;

/// Gives unfinished exports whose queue job is gone or finished a new job, so no export is
/// left behind whatever happened to the queue. Each call looks at the next slice of running
/// and of queued exports (`cursor` remembers where; a backlog is covered over several rounds
/// at a bounded cost each); only exports untouched for `min_age` count. Returns how many were
/// re-enqueued.
pub async fn requeue_orphans(
    pool: &PgPool,
    min_age: Duration,
    cursor: &mut db::housekeeping::ScanCursor,
) -> crate::error::Result<usize> {
    let (orphans, next) =
        db::housekeeping::exports_without_live_job(pool, &QUEUES, min_age.as_secs_f64(), *cursor, ORPHAN_SCAN_BATCH)
            .await?;
    *cursor = next;
    let mut n = 0;
    for orphan in orphans {
        if rescue_orphan(pool, &orphan).await?.is_some() {
            n += 1;
        }
    }
    Ok(n)
}

/// Gives one orphan a new job, unless another process did since the scan saw it (then
/// nothing is inserted). Returns the new job's id.
pub async fn rescue_orphan(pool: &PgPool, orphan: &db::housekeeping::Orphan) -> crate::error::Result<Option<String>> {
    let mut tx = pool.begin().await?;
    let job_id = new_job_id();
    if !db::housekeeping::set_job(&mut tx, orphan.id, orphan.queue_job_id.as_deref(), &job_id).await? {
        return Ok(None);
    }
    let queue = if orphan.throttled { THROTTLED_QUEUE } else { QUEUE };
    enqueue(&mut tx, queue, &job_id, orphan.id).await.map_err(|e| anyhow::anyhow!(e))?;
    tx.commit().await?;
    wake_workers(pool, &[(queue, job_id.clone())]).await;
    tracing::warn!(export_id = %orphan.id, %job_id, "unfinished export had no live queue job; re-enqueued");
    Ok(Some(job_id))
}
