//! The writer: appends the reader's pieces to the run's file (plain, or one gzip member per
//! chunk), and at each chunk's end syncs the file, then saves the checkpoint, fenced by the
//! run's token (River's resumable step: the durable effect first, then the cursor). Where the
//! storage makes bytes durable only a part at a time (object storage), the checkpoint waits for
//! the first chunk end at which every byte is: the rows after it are read again after a crash.

use std::time::Duration;

use tokio::{sync::mpsc, time::Instant};
use uuid::Uuid;

use crate::{
    db,
    export::{
        engine::{Engine, Outcome},
        fault::PauseAt,
        output::Output,
        parquet::{Layout, SavedRowGroup},
        reader::Piece,
    },
    model::{
        Checkpoint, ExportRecord,
        spec::{Compression, FileType},
    },
    storage::RunWriter,
    telemetry::metrics,
};

/// Whose checkpoint a writer saves: the export's (a serial export) or one of its key ranges'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    Export,
    Range(i32),
}

impl Slot {
    /// The range's position (0 for a serial export), as fault points count them.
    fn position(self) -> i32 {
        match self {
            Slot::Export => 0,
            Slot::Range(p) => p,
        }
    }
}

/// How a writer ended: its last saved checkpoint, and the end of every byte (synced), or why
/// the run must end here.
pub(super) struct Written {
    /// The last checkpoint saved.
    pub saved: Checkpoint,
    /// Every byte written, synced and whole (when `end` is None).
    pub last: Checkpoint,
    pub end: Option<Outcome>,
    /// A key range's Parquet row groups in `last` but not `saved`, and the first one's position
    /// in the range (saved with its last checkpoint; a serial export's are in its footer).
    pub unsaved: (usize, Vec<SavedRowGroup>),
}

impl Engine {
    /// Appends pieces (gzip-compressed, one member per chunk, when asked); at each chunk end
    /// syncs the file, then saves the checkpoint of `slot` (fenced). Returns the last checkpoint
    /// saved, the file's end (every byte written and synced) and, when the run must end here, why.
    pub(super) async fn write(
        &self,
        file: Box<dyn RunWriter>,
        mut rx: mpsc::Receiver<Piece>,
        mut cp: Checkpoint,
        export: &ExportRecord,
        token: Uuid,
        slot: Slot,
    ) -> anyhow::Result<Written> {
        let stop = |cp: &Checkpoint, end| {
            Ok(Written { saved: cp.clone(), last: cp.clone(), end: Some(end), unsaved: (0, Vec::new()) })
        };
        let export_id = export.id;
        let spec = export.spec.get()?;
        let compression = spec.compression;
        // Parquet: the row groups up to the checkpoint (saved with it) and those written since.
        let layout = match spec.format.kind {
            FileType::Parquet => Some(Layout::new(&*self.dataset(export)?, spec)?),
            _ => None,
        };
        let mut saved: Vec<SavedRowGroup> = match layout {
            Some(_) if cp.bytes > 0 => {
                engine_db!(self, "reading the checkpoint's row groups", |c| db::runs::row_groups(
                    c,
                    export_id,
                    slot.position(),
                    cp.bytes
                ))
                .await?
            }
            _ => Vec::new(),
        };
        let mut pending: Vec<SavedRowGroup> = Vec::new();
        // The gzip output buffer comes from the pool, allocated here rather than in the
        // blocking threads that compress (each of which would grow a malloc arena of its own).
        let spare = if compression == Compression::Gzip { self.buffers.take() } else { Vec::new() };
        let mut out = Output::new(file, compression, cp.bytes, spare);
        let mut chunks = 0u64;
        // Where the appended bytes have got to (durable and checkpointed, or not yet).
        let (mut read_to, mut read_rows) = (cp.last.clone(), cp.rows);
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
                Piece::ChunkEnd { last, rows, row_groups } => {
                    chunk_started = false;
                    // The chunk's row groups are the last bytes written, in order.
                    let mut base = out.written - row_groups.iter().map(|g| g.len as i64).sum::<i64>();
                    for g in row_groups {
                        pending.push(SavedRowGroup { base, footer: g.footer });
                        base += g.len as i64;
                    }
                    let t = Instant::now();
                    out.end_member().await?;
                    let synced = out.sync().await?;
                    t_sync += t.elapsed();
                    chunks += 1;
                    (read_to, read_rows) = (Some(last), read_rows + rows as i64);
                    if self.faults.crash_before_checkpoint(slot.position(), chunks) {
                        return stop(&cp, Outcome::Crashed);
                    }
                    let Some(durable) = synced else {
                        // Not durable yet (bytes short of an object store's part): no checkpoint,
                        // but the progress, fenced, so a cancel or takeover stops the run now.
                        let fence = db::runs::Fence { export_id, token };
                        let noted = match slot {
                            Slot::Export => {
                                engine_db!(self, "recording progress", |c| db::runs::note_progress(c, fence, read_rows))
                                    .await?
                            }
                            Slot::Range(position) => {
                                engine_db!(self, "recording a range's progress", |c| {
                                    db::ranges::note_progress(c, fence, position, read_rows)
                                })
                                .await?
                            }
                        };
                        if !noted {
                            metrics::fenced_refused("progress");
                            return stop(&cp, Outcome::Lost);
                        }
                        continue;
                    };
                    let next = Checkpoint {
                        last: read_to.clone(),
                        rows: read_rows,
                        bytes: out.written,
                        file_name: cp.file_name.clone(),
                        file_state: durable.state,
                    };
                    let t = Instant::now();
                    let first = saved.len();
                    let fence = db::runs::Fence { export_id, token };
                    let saved_it = match slot {
                        Slot::Export => {
                            engine_db!(self, "saving a checkpoint", |c| {
                                db::runs::save_checkpoint(c, fence, &next, first, &pending)
                            })
                            .await?
                        }
                        Slot::Range(position) => {
                            engine_db!(self, "saving a range's checkpoint", |c| {
                                db::ranges::save_checkpoint(c, fence, position, (&cp, &next), false, (first, &pending))
                            })
                            .await?
                        }
                    };
                    if !saved_it {
                        metrics::fenced_refused("checkpoint");
                        return stop(&cp, Outcome::Lost);
                    }
                    t_checkpoint += t.elapsed();
                    ::metrics::histogram!(metrics::CHECKPOINT).record(t.elapsed().as_secs_f64());
                    metrics::chunk_written(
                        &export.dataset,
                        (next.rows - cp.rows) as u64,
                        (next.bytes - cp.bytes) as u64,
                    );
                    cp = next;
                    saved.append(&mut pending);
                    if self.faults.crash_after_checkpoint(slot.position(), chunks) {
                        return stop(&cp, Outcome::Crashed);
                    }
                    if let Some(end) = self.below_floor(export_id, token).await? {
                        return stop(&cp, end);
                    }
                }
            }
        }
        // Producer done: whatever follows the last checkpoint (the header of an export without
        // rows; chunks not yet durable in an object store) is made durable, the file whole, and
        // it all becomes the final checkpoint. A serial Parquet file ends with the footer over
        // every row group (a parallel one's is written when every range is done).
        if let Some(layout) = layout.as_ref().filter(|_| slot == Slot::Export) {
            saved.append(&mut pending);
            let footer = layout.footer(&saved)?;
            out.write(footer).await?;
        }
        out.finish().await?;
        let durable = out.finish_file().await?;
        if read_rows > cp.rows {
            metrics::chunk_written(&export.dataset, (read_rows - cp.rows) as u64, (out.written - cp.bytes) as u64);
        }
        let last = Checkpoint {
            last: read_to,
            rows: read_rows,
            bytes: out.written,
            file_name: cp.file_name.clone(),
            file_state: durable.state,
        };
        if let Some(buf) = out.take_buffer() {
            self.buffers.give(buf);
        }
        tracing::debug!(%export_id, chunks, total = ?started.elapsed(), idle = ?t_idle, write = ?t_write, sync = ?t_sync, checkpoint = ?t_checkpoint, "writer timings");
        Ok(Written { saved: cp, last, end: None, unsaved: (saved.len(), pending) })
    }

    /// After a chunk: when the storage is below its free-space floor, the export fails now
    /// (fenced; its files are then removed) rather than fill the disk. `Lost` if another run
    /// holds it.
    async fn below_floor(&self, export_id: Uuid, token: Uuid) -> anyhow::Result<Option<Outcome>> {
        let floor = self.settings.min_free_disk;
        let Some(free) = self.storage.below_floor(floor) else {
            return Ok(None);
        };
        let message = format!(
            "disk space low: the export storage had {} MiB free, below its floor of {} MiB; the export \
             stopped and its partial file was deleted rather than fill the disk",
            free >> 20,
            floor >> 20
        );
        tracing::warn!(%export_id, %token, free, floor, "storage below its free-space floor; failing the export");
        let failed = engine_db!(self, "failing the export", |c| {
            db::runs::fail_export(c, db::runs::Fence { export_id, token }, &message)
        })
        .await?;
        if !failed {
            metrics::fenced_refused("fail");
        }
        Ok(Some(if failed { Outcome::Failed } else { Outcome::Lost }))
    }
}
