//! The export run: claim, resume from the checkpoint, keyset chunks streamed to the file with
//! backpressure, and after each chunk fsync then a fenced checkpoint.
//!
//! Two halves joined by a small bounded channel: the *producer* reads chunks (`WHERE key >
//! last ORDER BY key LIMIT n`) as PostgreSQL's own CSV (`COPY (...) TO STDOUT`) in pieces; the *writer* appends the pieces,
//! and at each chunk's end syncs the file and saves the checkpoint. The next chunk is read
//! while the previous one is synced, and memory is bounded by the channel whatever the size.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::{io::AsyncWriteExt, sync::mpsc, time::Instant};
use uuid::Uuid;

use crate::{
    db::{self, runs::Claim},
    export::csv::{self, RowShaper},
    model::{
        Checkpoint, Dataset, Datasets, ExportRecord, ExportStatus,
        spec::{Compression, LineEnding},
    },
    shutdown::Shutdown,
    storage::{PrepareError, Prepared, RunFile, Storage},
};

/// Encoded CSV is handed to the writer in pieces of about this size.
const PIECE_BYTES: usize = 1024 * 1024;
/// Pieces in flight between producer and writer (the backpressure bound).
const PIECES_IN_FLIGHT: usize = 4;
/// Write buffers kept for reuse by all runs of the process (beyond these, freed).
const POOLED_BUFFERS: usize = 16;
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
    /// Longest wait for the next message of a streaming result (a chunk's rows) once it has begun.
    pub db_io_timeout: Duration,
    /// Longest wait for a statement's first answer: the statement timeout plus `db_io_timeout`
    /// (the server cancels a statement itself at its timeout; silence after that means the
    /// connection is dead).
    pub db_statement_wait: Duration,
}

pub use super::fault::{Faults, Pause, PauseAt};

/// How a queue delivery of an export ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The file is complete and the export `completed`.
    Completed,
    /// The export is finished already (or unknown): nothing was done.
    AlreadyFinished,
    /// Too many runs without progress: the export is now `failed`.
    Failed,
    /// Released at a chunk boundary because the process is stopping; it resumes elsewhere.
    Released,
    /// Another run took the export over; this one stopped without changing anything.
    Lost,
    /// A simulated crash (test fault): left exactly as a killed process would leave it.
    Crashed,
}

/// How one run ended (when it did not fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Completed,
    Stopped,
    Lost,
    Crashed,
}

/// Runs exports. One per process, shared by its workers.
#[derive(Debug, Clone)]
pub struct Engine {
    pool: PgPool,
    storage: Storage,
    settings: EngineSettings,
    shutdown: Shutdown,
    faults: Arc<Faults>,
    buffers: BufferPool,
    datasets: Arc<Datasets>,
}

/// Write buffers shared by every run of the process: a piece goes from the producer to the
/// writer and back here, so the same few buffers serve every export and memory stays flat
/// (a fresh 1 MiB buffer per piece cost an mmap, page faults and an munmap each time, and
/// freed buffers lingered in per-thread malloc arenas from one export to the next).
#[derive(Debug, Clone, Default)]
struct BufferPool(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl BufferPool {
    fn take(&self) -> Vec<u8> {
        let pooled = self.0.lock().expect("buffer pool lock").pop();
        pooled.unwrap_or_else(|| Vec::with_capacity(PIECE_BYTES + 64 * 1024))
    }

    fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut pool = self.0.lock().expect("buffer pool lock");
        if pool.len() < POOLED_BUFFERS {
            pool.push(buf);
        }
    }
}

enum Piece {
    Data(Vec<u8>),
    ChunkEnd { last_id: i64, rows: u64 },
}

enum Produced {
    Finished,
    Stopped,
    WriterGone,
}

impl Engine {
    pub fn new(
        pool: PgPool,
        storage: Storage,
        datasets: Arc<Datasets>,
        settings: EngineSettings,
        shutdown: Shutdown,
    ) -> Self {
        Self { pool, storage, settings, shutdown, faults: Arc::default(), buffers: BufferPool::default(), datasets }
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
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// One queue delivery: claims the export and runs it to the end, retrying failed runs with
    /// exponential backoff until it completes, is taken over, or has stalled too often.
    pub async fn execute(&self, export_id: Uuid, worker: &str) -> Outcome {
        let mut db_errors = 0u32;
        loop {
            if self.shutdown.is_triggered() {
                return Outcome::Released;
            }
            let token = Uuid::new_v4();
            let claim = crate::with_conn!(self.pool, self.settings.db_statement_wait, "claiming the export", |c| {
                db::runs::claim_export(c, export_id, token, worker, self.settings.max_stalled_attempts)
            })
            .await;
            let (export, adopt) = match claim {
                Ok(Claim::Owned { export, adopt_file }) => (export, adopt_file),
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
            tracing::info!(%export_id, %token, attempt = export.attempts, from = ?export.last_processed_id, "export run started");
            match self.run(&export, token, adopt).await {
                Ok(RunEnd::Completed) => {
                    tracing::info!(%export_id, "export completed");
                    return Outcome::Completed;
                }
                Ok(RunEnd::Crashed) => return Outcome::Crashed,
                Ok(RunEnd::Lost) => {
                    let _ =
                        crate::with_conn!(self.pool, self.settings.db_statement_wait, "recording a lost run", |c| {
                            db::runs::mark_run_lost(c, token)
                        })
                        .await;
                    let now =
                        crate::with_conn!(self.pool, self.settings.db_statement_wait, "reading the export", |c| {
                            db::exports::find_export(c, export_id)
                        })
                        .await;
                    if let Ok(Some(e)) = &now
                        && matches!(e.status, ExportStatus::Cancelled | ExportStatus::Expired)
                    {
                        tracing::info!(%export_id, %token, "export cancelled; this run stopped and its files are removed");
                        self.storage.remove_export(export_id).await;
                    } else {
                        tracing::warn!(%export_id, %token, "export lost: another run took it over (or it was deleted); this run stopped");
                    }
                    return Outcome::Lost;
                }
                Ok(RunEnd::Stopped) => {
                    match crate::with_conn!(self.pool, self.settings.db_statement_wait, "releasing the export", |c| {
                        db::runs::release_export(c, export_id, token, None, true)
                    })
                    .await
                    {
                        Ok(true) => {
                            tracing::info!(%export_id, "export released at a chunk boundary for shutdown")
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(%export_id, error = %e, "could not release export; it will be resumed after the heartbeat timeout")
                        }
                    }
                    return Outcome::Released;
                }
                Err(e) => {
                    let message = describe(&e);
                    tracing::warn!(%export_id, %token, error = %message, "export run failed");
                    let _ =
                        crate::with_conn!(self.pool, self.settings.db_statement_wait, "releasing the export", |c| {
                            db::runs::release_export(c, export_id, token, Some(&message), false)
                        })
                        .await;
                    let wait = self.backoff(export.stalled_attempts.max(1) as u32);
                    if !self.pause(wait).await {
                        return Outcome::Released;
                    }
                }
            }
        }
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

    /// One run of an export this run owns (`token`), from its checkpoint to the end.
    pub async fn run(&self, export: &ExportRecord, token: Uuid, adopt: bool) -> anyhow::Result<RunEnd> {
        let ds = self.dataset(export)?;
        let extension = export.spec.get()?.compression.extension();
        let mut cp = Checkpoint {
            last_id: export.last_processed_id,
            rows: export.rows_written,
            bytes: export.bytes_written,
            file_name: export.file_name.clone().unwrap_or_default(),
        };
        let prepared = self.open_run_file(export, token, cp.bytes as u64, adopt, extension).await;
        let run_file = match prepared {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(RunEnd::Stopped),
            Err(PrepareError::CheckpointLost { name, bytes }) => {
                tracing::error!(export_id = %export.id, %name, bytes, "checkpointed bytes are gone; starting the export over");
                if !crate::with_conn!(self.pool, self.settings.db_statement_wait, "resetting the checkpoint", |c| {
                    db::runs::reset_checkpoint(c, export.id, token)
                })
                .await?
                {
                    return Ok(RunEnd::Lost);
                }
                cp = Checkpoint { last_id: None, rows: 0, bytes: 0, file_name: String::new() };
                self.storage.create_run(export.id, token, extension).await?
            }
            Err(PrepareError::Io(e)) => return Err(e.into()),
        };
        cp.file_name = run_file.name;
        self.faults.pause_at(PauseAt::FilePrepared).await;

        let (tx, rx) = mpsc::channel(PIECES_IN_FLIGHT);
        // The producer runs as its own task, so reading from PostgreSQL never waits for the
        // writer's turn on this one; it is aborted (closing its connection) if the writer stops.
        let producer = tokio::spawn({
            let (engine, export, last, fresh) = (self.clone(), export.clone(), cp.last_id, cp.bytes == 0);
            async move { engine.produce(&ds, &export, last, fresh, tx).await }
        });
        let written = self.write(run_file.file, rx, cp, export, token).await;
        let cp = match written {
            Ok((cp, None)) => cp,
            Ok((_, Some(end))) => {
                producer.abort();
                return Ok(end);
            }
            Err(e) => {
                producer.abort();
                return Err(e);
            }
        };
        match producer.await?? {
            Produced::Stopped => Ok(RunEnd::Stopped),
            Produced::WriterGone => Err(anyhow::anyhow!("the file writer stopped unexpectedly")),
            Produced::Finished => {
                if !crate::with_conn!(self.pool, self.settings.db_statement_wait, "completing the export", |c| {
                    db::runs::complete_export(c, export.id, token, &cp, self.settings.retention)
                })
                .await?
                {
                    return Ok(RunEnd::Lost);
                }
                self.storage.remove_other_runs(export.id, &cp.file_name).await;
                Ok(RunEnd::Completed)
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
        let previous = export.file_name.as_deref();
        let mut copy = match self.storage.prepare_run(export.id, token, previous, bytes, adopt, extension).await? {
            Prepared::Ready(f) => return Ok(Some(f)),
            Prepared::Copy(copy) => copy,
        };
        for slice in 1u64.. {
            if self.shutdown.is_triggered() {
                tracing::info!(export_id = %export.id, "stopping: prefix copy abandoned");
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
    fn dataset(&self, export: &ExportRecord) -> anyhow::Result<Arc<Dataset>> {
        self.datasets
            .find(&export.dataset)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("dataset {:?} is not in this process's datasets config", export.dataset))
    }

    /// Reads chunks from the checkpoint up to the export's upper bound, as PostgreSQL's own
    /// CSV (`COPY (chunk query) TO STDOUT`), shapes the rows (CRLF, formula guard) and hands
    /// them to the writer in pieces. `fresh`: the file is empty (BOM and header go first).
    async fn produce(
        &self,
        ds: &Dataset,
        export: &ExportRecord,
        mut last: Option<i64>,
        fresh: bool,
        tx: mpsc::Sender<Piece>,
    ) -> anyhow::Result<Produced> {
        let spec = export.spec.get()?;
        let format = &spec.format;
        let columns = spec.output_columns(ds);
        let (key_index, key_appended) = db::dataset::key_position(ds, &columns);
        let delimiter = format.delimiter as u8;
        let guard = format
            .formula_guard
            .then(|| columns.iter().map(|c| ds.column(&c.name).is_none_or(|d| d.textual)).collect());
        let shaper =
            RowShaper::new(delimiter, key_appended, format.line_ending == LineEnding::Crlf, guard, &format.null);
        let mut header = fresh && format.header;
        // No upper bound: the table was empty when the export was created (header only).
        let upper = export.upper_bound_id;
        let rate = spec.max_rows_per_second.filter(|r| *r > 0);
        // With a throttle, a chunk is at most one second of rows, so pacing stays smooth.
        let limit = i64::from(match rate {
            Some(r) => spec.chunk_size.min(r),
            None => spec.chunk_size,
        });
        // One connection for the whole run; closed (not pooled) afterwards, so a COPY left
        // unread by an early return never reaches another user of the pool.
        let mut conn = self.pool.acquire().await?;
        conn.close_on_drop();
        // The time zone and the filter values, bound once for the whole run.
        let mut setup = sqlx::query(sqlx::AssertSqlSafe(db::dataset::session_setup(spec))).bind(&format.time_zone);
        for value in db::dataset::filter_values(spec) {
            setup = setup.bind(value);
        }
        let (first_wait, next_wait) = (self.settings.db_statement_wait, self.settings.db_io_timeout);
        db::within(first_wait, "setting up the run's session", async { Ok(setup.execute(&mut *conn).await?) }).await?;
        let mut buf = self.buffers.take();
        if fresh && format.bom {
            buf.extend_from_slice(b"\xEF\xBB\xBF");
        }
        let started = Instant::now();
        let mut rows_this_run = 0u64;
        let (mut t_start, mut t_stream, mut t_send) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        loop {
            if self.shutdown.is_triggered() {
                return Ok(Produced::Stopped);
            }
            let Some(upper) = upper.filter(|u| last.is_none_or(|l| l < *u)) else { break };
            let sql = db::dataset::chunk_copy(ds, spec, last, upper, limit, header);
            let t = Instant::now();
            let mut stream =
                db::within(first_wait, "starting a chunk", async { Ok(conn.copy_out_raw(&sql).await?) }).await?;
            t_start += t.elapsed();
            let streaming = Instant::now();
            let mut count = 0u64;
            let mut last_row = None;
            // Every message of the chunk has a deadline: the first one the statement's, the next
            // ones `db_io_timeout` each. A connection that goes silent (half-open, a stuck proxy,
            // a frozen server) fails the run, and the run's connection is closed, never pooled.
            let mut silence = Silence::new(first_wait, next_wait);
            while let Some(message) = silence.next(&mut stream).await? {
                // Rows usually come out of sqlx's buffer without touching the socket, so this
                // loop would keep its thread for a whole chunk: let other tasks (HTTP requests)
                // in whenever the task's cooperative budget runs out.
                tokio::task::consume_budget().await;
                // PostgreSQL sends one CopyData message per row (the first one is the header
                // line when asked for).
                let is_header = std::mem::take(&mut header);
                if !is_header {
                    count += 1;
                }
                if shaper.is_identity() {
                    buf.extend_from_slice(&message);
                } else {
                    shaper.shape(&message, is_header, &mut buf);
                }
                last_row = Some(message);
                if buf.len() >= PIECE_BYTES {
                    let piece = std::mem::replace(&mut buf, self.buffers.take());
                    let t = Instant::now();
                    if tx.send(Piece::Data(piece)).await.is_err() {
                        return Ok(Produced::WriterGone);
                    }
                    t_send += t.elapsed();
                }
            }
            drop(stream);
            t_stream += streaming.elapsed();
            if count == 0 {
                break;
            }
            let row = last_row.expect("a row was read");
            let last_id = csv::key(&row, key_index, delimiter).ok_or_else(|| {
                anyhow::anyhow!("cannot read the key of the chunk's last row: {:?}", String::from_utf8_lossy(&row))
            })?;
            if !buf.is_empty() {
                let piece = std::mem::replace(&mut buf, self.buffers.take());
                if tx.send(Piece::Data(piece)).await.is_err() {
                    return Ok(Produced::WriterGone);
                }
            }
            if tx.send(Piece::ChunkEnd { last_id, rows: count }).await.is_err() {
                return Ok(Produced::WriterGone);
            }
            last = Some(last_id);
            rows_this_run += count;
            if let Some(rate) = rate {
                // Pace after each chunk (the last one too), so the whole export keeps the rate.
                let due = started + Duration::from_secs_f64(rows_this_run as f64 / f64::from(rate));
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = self.shutdown.wait() => return Ok(Produced::Stopped),
                }
            }
            if (count as i64) < limit {
                break; // a short chunk: nothing is left up to the upper bound
            }
        }
        tracing::debug!(export_id = %export.id, total = ?started.elapsed(), start = ?t_start, stream = ?t_stream, blocked_on_writer = ?t_send, "producer timings");
        if header {
            // Nothing at all to export and no header yet: ask COPY for the header alone.
            let sql = db::dataset::chunk_copy(ds, spec, None, 0, 0, true);
            let mut stream =
                db::within(first_wait, "starting a chunk", async { Ok(conn.copy_out_raw(&sql).await?) }).await?;
            let mut silence = Silence::new(first_wait, first_wait);
            while let Some(message) = silence.next(&mut stream).await? {
                shaper.shape(&message, true, &mut buf);
            }
        }
        if buf.is_empty() {
            self.buffers.give(buf);
        } else if tx.send(Piece::Data(buf)).await.is_err() {
            return Ok(Produced::WriterGone);
        }
        Ok(Produced::Finished)
    }

    /// Appends pieces (gzip-compressed, one member per chunk, when asked); at each chunk end
    /// syncs the file, then saves the checkpoint (fenced). Returns the last checkpoint (with
    /// every byte written and synced) and, when the run must end here, why.
    async fn write(
        &self,
        file: tokio::fs::File,
        mut rx: mpsc::Receiver<Piece>,
        mut cp: Checkpoint,
        export: &ExportRecord,
        token: Uuid,
    ) -> anyhow::Result<(Checkpoint, Option<RunEnd>)> {
        let export_id = export.id;
        let compression = export.spec.get()?.compression;
        // The gzip output buffer comes from the pool, allocated here rather than in the
        // blocking threads that compress (each of which would grow a malloc arena of its own).
        let spare = if compression == Compression::Gzip { self.buffers.take() } else { Vec::new() };
        let mut out = Output::new(file, compression, cp.bytes, spare);
        let mut chunks = 0u64;
        let mut chunk_started = false;
        let (mut t_write, mut t_sync, mut t_checkpoint, mut t_idle) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let started = Instant::now();
        loop {
            let t = Instant::now();
            let Some(piece) = rx.recv().await else { break };
            t_idle += t.elapsed();
            match piece {
                Piece::Data(bytes) => {
                    if !std::mem::replace(&mut chunk_started, true) {
                        self.faults.pause_at(PauseAt::BeforeChunkWrite(chunks + 1)).await;
                    }
                    let t = Instant::now();
                    let bytes = out.write(bytes).await?;
                    t_write += t.elapsed();
                    self.buffers.give(bytes);
                }
                Piece::ChunkEnd { last_id, rows } => {
                    chunk_started = false;
                    let t = Instant::now();
                    out.end_member().await?;
                    out.sync().await?;
                    t_sync += t.elapsed();
                    chunks += 1;
                    if self.faults.crash_before_checkpoint == Some(chunks) {
                        return Ok((cp, Some(RunEnd::Crashed)));
                    }
                    let next = Checkpoint {
                        last_id: Some(last_id),
                        rows: cp.rows + rows as i64,
                        bytes: out.written,
                        file_name: cp.file_name.clone(),
                    };
                    let t = Instant::now();
                    if !crate::with_conn!(self.pool, self.settings.db_statement_wait, "saving a checkpoint", |c| {
                        db::runs::save_checkpoint(c, export_id, token, &next)
                    })
                    .await?
                    {
                        return Ok((cp, Some(RunEnd::Lost)));
                    }
                    t_checkpoint += t.elapsed();
                    cp = next;
                    if self.faults.crash_after_checkpoint == Some(chunks) {
                        return Ok((cp, Some(RunEnd::Crashed)));
                    }
                }
            }
        }
        // Producer done: whatever follows the last checkpoint (only ever the header of an
        // export without rows) is synced and becomes part of the final checkpoint.
        out.finish().await?;
        out.sync().await?;
        cp.bytes = out.written;
        if let Some(buf) = out.take_buffer() {
            self.buffers.give(buf);
        }
        tracing::debug!(%export_id, chunks, total = ?started.elapsed(), idle = ?t_idle, write = ?t_write, sync = ?t_sync, checkpoint = ?t_checkpoint, "writer timings");
        Ok((cp, None))
    }
}

/// The run's file, written plain or as gzip members (one per chunk, so every checkpoint falls
/// on a member boundary and a resumed run appends a new member after it: decoders read
/// concatenated members as one stream).
struct Output {
    file: tokio::fs::File,
    /// gzip: one raw deflate stream reset for each member, so its state is allocated once per run.
    gzip: Option<Gzip>,
    /// Bytes in the file.
    written: i64,
}

/// The gzip framing (RFC 1952) around a reused deflate stream.
struct Gzip {
    deflate: flate2::Compress,
    crc: flate2::Crc,
    /// Compressed bytes not yet written to the file (a pooled buffer).
    pending: Vec<u8>,
    in_member: bool,
}

/// A gzip member header: magic, deflate, no flags, no mtime, no extra flags, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// Compressed bytes are written to the file once this many are pending.
const GZIP_FLUSH_BYTES: usize = 256 * 1024;

impl Gzip {
    /// Compresses `input` into `pending` (CPU work: call off the async threads).
    fn compress(&mut self, input: &[u8], flush: flate2::FlushCompress) -> std::io::Result<()> {
        if !self.in_member {
            self.in_member = true;
            self.deflate.reset();
            self.crc.reset();
            self.pending.extend_from_slice(&GZIP_HEADER);
        }
        self.crc.update(input);
        let mut rest = input;
        loop {
            self.pending.reserve(64 * 1024);
            let before = self.deflate.total_in();
            let status = self.deflate.compress_vec(rest, &mut self.pending, flush).map_err(std::io::Error::other)?;
            rest = &rest[(self.deflate.total_in() - before) as usize..];
            let done = match flush {
                flate2::FlushCompress::Finish => status == flate2::Status::StreamEnd,
                _ => rest.is_empty() && self.pending.len() < self.pending.capacity(),
            };
            if done {
                break;
            }
        }
        if flush == flate2::FlushCompress::Finish {
            self.pending.extend_from_slice(&self.crc.sum().to_le_bytes());
            self.pending.extend_from_slice(&self.crc.amount().to_le_bytes());
            self.in_member = false;
        }
        Ok(())
    }
}

impl Output {
    fn new(file: tokio::fs::File, compression: Compression, written: i64, pending: Vec<u8>) -> Self {
        let gzip = (compression == Compression::Gzip).then(|| Gzip {
            deflate: flate2::Compress::new(flate2::Compression::fast(), false),
            crc: flate2::Crc::new(),
            pending,
            in_member: false,
        });
        Self { file, gzip, written }
    }

    /// Appends `bytes` (compressing them when gzip) and hands the buffer back.
    async fn write(&mut self, bytes: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        let Some(gzip) = self.gzip.take() else {
            self.file.write_all(&bytes).await.map_err(storage_error)?;
            self.written += bytes.len() as i64;
            return Ok(bytes);
        };
        // Compression is CPU work: off the async threads, so the API never waits behind it.
        let (gzip, bytes) = tokio::task::spawn_blocking(move || {
            let mut gzip = gzip;
            gzip.compress(&bytes, flate2::FlushCompress::None).map(|()| (gzip, bytes))
        })
        .await??;
        self.gzip = Some(gzip);
        self.flush_pending(GZIP_FLUSH_BYTES).await?;
        Ok(bytes)
    }

    /// Writes the pending compressed bytes once there are at least `min` of them.
    async fn flush_pending(&mut self, min: usize) -> anyhow::Result<()> {
        let Some(gzip) = self.gzip.as_mut() else { return Ok(()) };
        if gzip.pending.len() >= min.max(1) {
            self.file.write_all(&gzip.pending).await.map_err(storage_error)?;
            self.written += gzip.pending.len() as i64;
            gzip.pending.clear();
        }
        Ok(())
    }

    /// Ends the current gzip member, if any, and writes what is left of it.
    async fn end_member(&mut self) -> anyhow::Result<()> {
        let Some(gzip) = self.gzip.take() else { return Ok(()) };
        let gzip = if gzip.in_member {
            tokio::task::spawn_blocking(move || {
                let mut gzip = gzip;
                gzip.compress(&[], flate2::FlushCompress::Finish).map(|()| gzip)
            })
            .await??
        } else {
            gzip
        };
        self.gzip = Some(gzip);
        self.flush_pending(0).await
    }

    /// Ends the file: the last member, and for a gzip file with nothing in it, one empty member
    /// (an empty file is not valid gzip).
    async fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(gzip) = self.gzip.as_mut()
            && !gzip.in_member
            && self.written == 0
        {
            gzip.compress(&[], flate2::FlushCompress::None)?;
        }
        self.end_member().await
    }

    /// The pooled buffer, to give back.
    fn take_buffer(&mut self) -> Option<Vec<u8>> {
        self.gzip.as_mut().map(|g| std::mem::take(&mut g.pending))
    }

    async fn sync(&mut self) -> anyhow::Result<()> {
        self.file.flush().await.map_err(storage_error)?;
        self.file.sync_data().await.map_err(storage_error)?;
        Ok(())
    }
}

/// A deadline on a COPY stream's silence that costs nothing while rows come out of the
/// connection's buffer (most of them): the timer is armed only when the stream has to wait
/// for the socket, once per wait, to `first` for the first message and `next` after it.
struct Silence {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    next: Duration,
}

impl Silence {
    fn new(first: Duration, next: Duration) -> Self {
        Self { sleep: Box::pin(tokio::time::sleep(first)), limit: first, next }
    }

    /// The next message, or an error when the stream stays silent for the limit.
    async fn next<S>(&mut self, stream: &mut S) -> anyhow::Result<Option<bytes::Bytes>>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, sqlx::Error>> + Unpin,
    {
        use futures::StreamExt;
        use std::{future::Future, task::Poll};
        let mut waiting = false;
        let item = std::future::poll_fn(|cx| match stream.poll_next_unpin(cx) {
            Poll::Ready(item) => Poll::Ready(Some(item)),
            Poll::Pending => {
                if !std::mem::replace(&mut waiting, true) {
                    self.sleep.as_mut().reset(Instant::now() + self.limit);
                }
                match self.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            }
        })
        .await;
        let Some(item) = item else { return Err(db::timed_out(self.limit, "reading a chunk").into()) };
        self.limit = self.next;
        Ok(item.transpose()?)
    }
}

/// Context for file write errors.
fn storage_error(e: std::io::Error) -> anyhow::Error {
    anyhow::Error::new(e).context("writing the export file")
}

/// The error as users read it in `error`: the whole cause chain, and a full disk named as such
/// (the one storage error they can act on), wherever in the run it struck.
fn describe(e: &anyhow::Error) -> String {
    let full = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
            || c.downcast_ref::<PrepareError>()
                .is_some_and(|p| matches!(p, PrepareError::Io(io) if io.kind() == std::io::ErrorKind::StorageFull))
    });
    if full { format!("disk full: no space left on the storage device ({e:#})") } else { format!("{e:#}") }
}
