//! A run's lifecycle: claim the export (fencing token), prepare the run's file from the
//! checkpoint, run the reader and the writer, then complete, release or retry; one [`Outcome`].
//!
//! A run is two halves joined by a small bounded channel: the [reader](super::reader) reads
//! keyset chunks as PostgreSQL's own CSV in pieces; the [writer](super::writer) appends them,
//! and at each chunk's end syncs the file and saves the checkpoint (when the storage says every
//! byte is durable: every chunk on disk, once per part in an object store). The next chunk is read
//! while the previous one is synced, and memory is bounded by the channel whatever the size.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::sync::mpsc;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::{
    db::{
        self,
        runs::{Claim, Fence},
    },
    export::{
        buffers::BufferPool,
        reader::{Pace, ReadSpan},
        threads::EngineThreads,
        writer::{Slot, Written},
    },
    model::{Checkpoint, Dataset, Datasets, ExportRecord, ExportStatus},
    shutdown::Shutdown,
    storage::{PrepareError, Prepared, Resume, RunFile, RunId, SharedStorage},
    telemetry::metrics,
};

/// Pieces in flight between producer and writer (the backpressure bound).
pub(super) const PIECES_IN_FLIGHT: usize = 4;
/// Longest wait between two runs of a failing export.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Runs in a row without progress before an export fails.
    pub max_stalled_attempts: u32,
    /// First wait before retrying a failed run; doubles per stalled run.
    pub retry_backoff: Duration,
    /// How long a completed export's file is kept.
    pub retention: Duration,
    /// Free storage a run must leave: below it, the export fails at its next chunk (0 = none).
    pub min_free_disk: u64,
    /// Longest wait for the next message of a streaming result (a chunk's rows) once it has begun.
    pub db_io_timeout: Duration,
    /// Longest wait for a statement's first answer: the statement timeout plus `db_io_timeout`
    /// (the server cancels a statement itself at its timeout; silence after that means the
    /// connection is dead).
    pub db_statement_wait: Duration,
    /// Key ranges an export reads at once at most (1: serial only).
    pub max_parallelism: u32,
    /// Threads runs execute on (see [`super::threads`]).
    pub threads: usize,
}

#[cfg(feature = "faults")]
pub use super::fault::Pause;
pub use super::fault::{Faults, PauseAt};

/// How a run, and so a queue delivery of an export, ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The file is complete and the export `completed`.
    Completed,
    /// The export is finished already (or unknown): nothing was done.
    AlreadyFinished,
    /// Too many runs without progress: the export is now `failed`.
    Failed,
    /// Stopped at a chunk boundary because the process is stopping; it resumes elsewhere.
    Released,
    /// Another run took the export over (or it was cancelled); this one stopped without
    /// changing anything.
    Lost,
    /// A simulated crash (test fault): left exactly as a killed process would leave it.
    Crashed,
}

impl Outcome {
    /// The outcome as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::AlreadyFinished => "already_finished",
            Self::Failed => "failed",
            Self::Released => "released",
            Self::Lost => "lost",
            Self::Crashed => "crashed",
        }
    }
}

/// What a run may continue in place rather than copy: a file (the export's, or a key range's
/// piece) whose writer is the run that released the export cleanly just before this run's
/// claim. Not just "nobody owns it": a run that released before its first checkpoint never
/// wrote the checkpointed file, whose writer may still be alive.
#[derive(Debug, Clone, Copy, Default)]
pub struct Adopt {
    /// The run that released the export cleanly just before the claim, if one did.
    pub released_by: Option<Uuid>,
}

impl Adopt {
    /// Whether a file written by `writer` may be continued in place.
    pub fn may_continue(self, writer: Option<Uuid>) -> bool {
        self.released_by.is_some() && writer == self.released_by
    }
}

/// Runs exports. One per process, shared by its workers.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(super) pool: PgPool,
    pub(super) storage: SharedStorage,
    pub(super) settings: EngineSettings,
    pub(super) shutdown: Shutdown,
    pub(super) faults: Arc<Faults>,
    pub(super) buffers: BufferPool,
    pub(super) datasets: Arc<Datasets>,
    /// Where chunks are read: a pool of the readers' own, on the primary or a read replica
    /// (`replica`: wait for it to replay up to the export's creation first).
    pub(super) reads: PgPool,
    pub(super) replica: bool,
    threads: EngineThreads,
}

impl Engine {
    /// An engine over `pool`, reading chunks from `reads` (a pool of the readers' own, on the
    /// primary or a read replica, that keeps no idle connections: see [`super::threads`]),
    /// writing to `storage`, stopping when `shutdown` fires; starts its threads.
    pub fn new(
        (pool, reads): (PgPool, PgPool),
        storage: SharedStorage,
        datasets: Arc<Datasets>,
        settings: EngineSettings,
        shutdown: Shutdown,
    ) -> std::io::Result<Self> {
        Ok(Self {
            threads: EngineThreads::start(settings.threads)?,
            reads,
            replica: false,
            pool,
            storage,
            settings,
            shutdown,
            faults: Arc::default(),
            buffers: BufferPool::default(),
            datasets,
        })
    }

    /// The same engine, its readers' pool being a read replica's (each run waits for it to
    /// replay up to the export's creation first).
    pub fn on_read_replica(mut self) -> Self {
        self.replica = true;
        self
    }

    /// The same engine with fault points armed (tests).
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = Arc::new(faults);
        self
    }

    /// The same engine listening to another stop signal (tests: stop one runner of several).
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Where files go.
    pub fn storage(&self) -> &SharedStorage {
        &self.storage
    }

    /// One queue delivery: claims the export and runs it to the end, retrying failed runs with
    /// exponential backoff until it completes, is taken over, or has stalled too often. It runs
    /// on one of the engine's threads; dropping the future stops it there.
    pub async fn execute(&self, export_id: Uuid, worker: &str) -> Outcome {
        let _running = metrics::RunningGuard::start();
        let span = tracing::info_span!("export", %export_id, %worker);
        let (engine, worker) = (self.clone(), worker.to_owned());
        let delivery = async move { engine.deliver(export_id, &worker).await };
        let outcome = self.threads.run(delivery.instrument(span)).await;
        ::metrics::counter!(metrics::DELIVERIES, "outcome" => outcome.label()).increment(1);
        outcome
    }

    async fn deliver(&self, export_id: Uuid, worker: &str) -> Outcome {
        let mut db_errors = 0u32;
        loop {
            if self.shutdown.is_triggered() {
                return Outcome::Released;
            }
            let token = Uuid::new_v4();
            let claim = engine_db!(self, "claiming the export", |c| {
                db::runs::claim_export(c, Fence { export_id, token }, worker, self.settings.max_stalled_attempts)
            })
            .await;
            let (export, adopt) = match claim {
                Ok(Claim::Owned { export, took_over, released_by }) => {
                    if took_over {
                        ::metrics::counter!(metrics::TAKEOVERS).increment(1);
                    }
                    (export, Adopt { released_by })
                }
                Ok(Claim::Finished) => return Outcome::AlreadyFinished,
                Ok(Claim::Unreadable { reason, stalled }) => {
                    tracing::warn!(%export_id, %reason, attempt = stalled, "export cannot be read; will retry, then fail");
                    if !self.pause(self.backoff(stalled.max(1) as u32)).await {
                        return Outcome::Released;
                    }
                    continue;
                }
                Ok(Claim::GaveUp) => {
                    tracing::warn!(%export_id, "export failed: too many attempts without progress");
                    self.storage.remove_export(export_id).await;
                    return Outcome::Failed;
                }
                Err(e) => {
                    // Cannot even claim (database down): wait, without counting an attempt.
                    db_errors += 1;
                    tracing::warn!(%export_id, error = %e, "cannot claim export; retrying");
                    if !self.pause(self.backoff(db_errors)).await {
                        return Outcome::Released;
                    }
                    continue;
                }
            };
            db_errors = 0;
            tracing::info!(%export_id, %token, attempt = export.attempts, from = ?export.last_processed_key, "export run started");
            match self.run(&export, token, adopt).await {
                Ok(Outcome::Completed) => {
                    tracing::info!(%export_id, "export completed");
                    return Outcome::Completed;
                }
                Ok(Outcome::Failed) => {
                    // The run failed the export for good (the storage fell below its floor).
                    self.storage.remove_export(export_id).await;
                    return Outcome::Failed;
                }
                Ok(end @ (Outcome::Crashed | Outcome::AlreadyFinished)) => return end,
                Ok(Outcome::Lost) => return self.lost(&export, token).await,
                Ok(Outcome::Released) => {
                    match engine_db!(self, "releasing the export", |c| {
                        db::runs::release_export(c, Fence { export_id, token }, None, true)
                    })
                    .await
                    {
                        Ok(true) => {
                            tracing::info!(%export_id, "export released at a chunk boundary for shutdown")
                        }
                        Ok(false) => metrics::fenced_refused("release"),
                        Err(e) => {
                            tracing::warn!(%export_id, error = %e, "could not release export; it will be resumed after the heartbeat timeout")
                        }
                    }
                    return Outcome::Released;
                }
                Err(e) => {
                    ::metrics::counter!(metrics::RETRIES).increment(1);
                    let message = describe(&e, token);
                    tracing::warn!(%export_id, %token, error = format!("{e:#}"), "export run failed");
                    let released = engine_db!(self, "releasing the export", |c| {
                        db::runs::release_export(c, Fence { export_id, token }, Some(&message), false)
                    })
                    .await;
                    if let Ok(false) = released {
                        // Another run owns it now (its takeover may be what failed this one: an
                        // object store upload sealed under it): stop, never claim it back.
                        metrics::fenced_refused("release");
                        return self.lost(&export, token).await;
                    }
                    let wait = self.backoff(export.stalled_attempts.max(1) as u32);
                    if !self.pause(wait).await {
                        return Outcome::Released;
                    }
                }
            }
        }
    }

    /// A run that found another run (or a cancel) owns the export: recorded as lost, and what it
    /// wrote removed: all the export's files if it was cancelled, else this run's own file
    /// unless the checkpoint now refers to it (the new owner may still be copying from it). A
    /// stale run can create its file after the export completed and its other files were
    /// removed (it claimed, then was cut off before creating it): nothing else would remove it
    /// before the sweeper.
    async fn lost(&self, export: &ExportRecord, token: Uuid) -> Outcome {
        let export_id = export.id;
        let _ = engine_db!(self, "recording a lost run", |c| { db::runs::mark_run_lost(c, token) }).await;
        let now = engine_db!(self, "reading the export", |c| { db::exports::find_export(c, export_id) }).await;
        match now {
            Ok(Some(e)) if matches!(e.status, ExportStatus::Cancelled | ExportStatus::Expired) => {
                tracing::info!(%export_id, %token, "export cancelled; this run stopped and its files are removed");
                self.storage.remove_export(export_id).await;
            }
            Ok(now) => {
                tracing::warn!(%export_id, %token, "export lost: another run took it over (or it was deleted); this run stopped");
                // This run's files (its file, or its pieces), unless a checkpoint refers to one.
                let ranges =
                    engine_db!(self, "reading the export's ranges", |c| db::ranges::ranges(c, export_id)).await;
                let mut used: Vec<String> = now.and_then(|e| e.file_name).into_iter().collect();
                used.extend(ranges.unwrap_or_default().into_iter().filter_map(|r| r.file_name));
                let token = token.to_string();
                for (name, _) in self.storage.run_files(export_id).await.unwrap_or_default() {
                    if name.contains(&token) && !used.contains(&name) {
                        self.storage.remove_file(&name).await;
                    }
                }
            }
            Err(_) => {}
        }
        Outcome::Lost
    }

    fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
        (self.settings.retry_backoff * factor).min(MAX_BACKOFF)
    }

    /// Sleeps, unless the process is stopping (then returns false at once).
    async fn pause(&self, wait: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = self.shutdown.wait() => false,
        }
    }

    /// One run of an export this run owns (`token`), from its checkpoint to the end: its key
    /// ranges in parallel when it has (or, new, gets) several, else one reader and writer.
    pub async fn run(&self, export: &ExportRecord, token: Uuid, adopt: Adopt) -> anyhow::Result<Outcome> {
        let ds = self.dataset(export)?;
        let spec = export.spec.get()?;
        let extension = spec.extension();
        match self.key_ranges(&ds, export, token).await? {
            None => return Ok(Outcome::Lost),
            Some(ranges) if !ranges.is_empty() => return self.run_ranges(ds, export, token, ranges, adopt).await,
            Some(_) => {}
        }
        let adopt = adopt.may_continue(export.file_writer);
        let mut cp = Checkpoint {
            last: export.last_processed_key.clone(),
            rows: export.rows_written,
            bytes: export.bytes_written,
            file_name: export.file_name.clone().unwrap_or_default(),
            file_state: export.file_state.as_ref().map(|s| s.0.clone()),
        };
        let prepared = self.open_run_file(export, token, cp.bytes as u64, adopt, extension).await;
        let run_file = match prepared {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(Outcome::Released),
            Err(PrepareError::CheckpointLost { name, bytes }) => {
                tracing::error!(export_id = %export.id, %name, bytes, "checkpointed bytes are gone; starting the export over");
                if !engine_db!(self, "resetting the checkpoint", |c| {
                    db::runs::reset_checkpoint(c, Fence { export_id: export.id, token })
                })
                .await?
                {
                    return Ok(Outcome::Lost);
                }
                cp = Checkpoint { last: None, rows: 0, bytes: 0, file_name: String::new(), file_state: None };
                self.storage.create_run(RunId { export_id: export.id, token, extension, piece: None }).await?
            }
            Err(PrepareError::Io(e)) => return Err(e.into()),
        };
        (cp.file_name, cp.file_state) = (run_file.name, run_file.state);
        self.faults.pause_at(PauseAt::FilePrepared).await;

        let (tx, rx) = mpsc::channel(PIECES_IN_FLIGHT);
        // The producer runs as its own task, so reading from PostgreSQL never waits for the
        // writer's turn on this one; it is aborted (closing its connection) if the writer stops.
        let producer = tokio::spawn({
            let span = ReadSpan { after: cp.last.clone(), upper: export.upper_bound_key.clone(), head: cp.bytes == 0 };
            let (engine, export, pace) = (self.clone(), export.clone(), Pace::new(spec.max_rows_per_second, 1));
            async move { engine.produce(&ds, &export, span, pace, tx).await }
        });
        let written = self.write(run_file.out, rx, cp, export, token, Slot::Export).await;
        let cp = match written {
            Ok(Written { last, end: None, .. }) => last,
            Ok(Written { end: Some(end), .. }) => {
                producer.abort();
                return Ok(end);
            }
            Err(e) => {
                producer.abort();
                return Err(e);
            }
        };
        match producer.await?? {
            Some(end) => Ok(end),
            None => {
                if !engine_db!(self, "completing the export", |c| {
                    db::runs::complete_export(c, Fence { export_id: export.id, token }, &cp, self.settings.retention)
                })
                .await?
                {
                    metrics::fenced_refused("complete");
                    return Ok(Outcome::Lost);
                }
                self.storage.remove_other_runs(export.id, &[&cp.file_name]).await;
                Ok(Outcome::Completed)
            }
        }
    }

    /// The run's file, holding exactly the checkpointed bytes: the previous file continued, or
    /// its prefix copied slice by slice, stopping (None, partial copy deleted) when the process
    /// is told to stop, so shutdown never waits for a long copy.
    async fn open_run_file(
        &self,
        export: &ExportRecord,
        token: Uuid,
        bytes: u64,
        adopt: bool,
        extension: &str,
    ) -> Result<Option<RunFile>, PrepareError> {
        let resume =
            Resume { file: export.file_name.as_deref(), bytes, state: export.file_state.as_ref().map(|s| &s.0), adopt };
        self.prepare_file(RunId { export_id: export.id, token, extension, piece: None }, resume).await
    }

    /// A file for `run` holding exactly the checkpointed bytes of `resume` (see
    /// [`Self::open_run_file`]); None when told to stop while copying.
    pub(super) async fn prepare_file(
        &self,
        run: RunId<'_>,
        resume: Resume<'_>,
    ) -> Result<Option<RunFile>, PrepareError> {
        let export_id = run.export_id;
        let mut copy = match self.storage.prepare_run(run, resume).await? {
            Prepared::Ready(f) => return Ok(Some(f)),
            Prepared::Copy(copy) => copy,
        };
        for slice in 1u64.. {
            if self.shutdown.is_triggered() {
                tracing::info!(%export_id, "stopping: prefix copy abandoned");
                copy.abandon().await;
                return Ok(None);
            }
            if copy.step().await? {
                break;
            }
            self.faults.pause_at(PauseAt::PrefixCopySlice(slice)).await;
        }
        copy.finish().await.map(Some)
    }

    /// The export's dataset.
    pub(super) fn dataset(&self, export: &ExportRecord) -> anyhow::Result<Arc<Dataset>> {
        self.datasets
            .find(&export.dataset)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("dataset {:?} is not in this process's datasets config", export.dataset))
    }
}

/// The error as users read it in `error`: what went wrong and what it means, never the
/// database's own text (it names internals: aliases, statements, server paths). Whatever the
/// message leaves out is in the log under the run's token, which the message gives. A full
/// disk is named as such (the one storage error users can act on), wherever in the run it
/// struck; errors of our own making (an unknown dataset, options this version cannot read)
/// are shown as they are.
fn describe(e: &anyhow::Error, token: Uuid) -> String {
    let log = format!("the server log has the details under run {token}");
    let full = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
            || c.downcast_ref::<PrepareError>()
                .is_some_and(|p| matches!(p, PrepareError::Io(io) if io.kind() == std::io::ErrorKind::StorageFull))
    });
    if full {
        return format!("disk full: no space left on the storage device ({log})");
    }
    if let Some(db) = e.chain().find_map(|c| c.downcast_ref::<sqlx::Error>()) {
        return match db {
            sqlx::Error::Database(d) => {
                let code = d.code().unwrap_or_default().into_owned();
                format!("the database refused the export's query: {} (SQLSTATE {code}; {log})", sqlstate_meaning(&code))
            }
            e if crate::error::is_connection_error(e) => format!("the database did not answer: {e} ({log})"),
            _ => format!("the database connection failed ({log})"),
        };
    }
    if let Some(io) = e.chain().find_map(|c| c.downcast_ref::<std::io::Error>()) {
        // The operating system's words ("Too many open files (os error 24)"), no path.
        return format!("storage error: {io} ({log})");
    }
    format!("{e:#}")
}

/// What a class of SQLSTATE codes means for an export, in a user's words.
fn sqlstate_meaning(code: &str) -> &'static str {
    match code.get(..2).unwrap_or_default() {
        "42" => "the dataset's table no longer matches its definition (a column or table renamed, dropped or retyped)",
        "22" => "a value could not be read as its column's type",
        "53" => "the database ran out of resources (memory, disk or connections)",
        "54" => "the query exceeds a limit of the database",
        "57" => "the statement was cancelled or timed out, or the server is shutting down",
        "40" => "the transaction was rolled back (deadlock or serialization failure)",
        "XX" => "the database reported an internal error",
        _ => "the database reported an error",
    }
}
