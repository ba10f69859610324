//! Parallel exports: the keys up to the export's high-water mark split once into contiguous
//! ranges of similar row counts (quantiles of a sample of the keys, so skewed keys split evenly),
//! each range read on its own connection and written as its own piece with its own fenced
//! checkpoint; the completed export's file is its pieces in key order, served one after the
//! other as one file (nothing is copied). A resumed run continues every unfinished range from its own checkpoint and
//! leaves the finished ones as they are.

use std::sync::Arc;

use tokio::{sync::mpsc, task::JoinSet};
use uuid::Uuid;

use crate::{
    db::{self, runs::Fence},
    export::{
        engine::{Adopt, Engine, Outcome, PIECES_IN_FLIGHT},
        parquet::{Layout, SavedRowGroup},
        reader::{Pace, ReadSpan, reading_session},
        writer::{Slot, Written},
    },
    model::{Checkpoint, Dataset, ExportRecord, ExportSpec, KeyRange, spec::FileType},
    storage::{PieceFile, PrepareError, Resume, RunId},
    telemetry::metrics,
};

/// Rows per key range of an export that does not say how many it wants.
pub const ROWS_PER_RANGE: i64 = 500_000;

/// How a range's task ended.
enum RangeEnd {
    /// Every row of the range is in its piece (its last checkpoint saved).
    Done(KeyRange),
    /// The range stopped short; the run ends so (released, lost, crashed, failed).
    Stopped(Outcome),
}

impl Engine {
    /// How many ranges a new export is split into: as many as it asks (up to this worker's
    /// maximum), else one per [`ROWS_PER_RANGE`] rows the planner estimated. One for throttled
    /// exports that do not ask (the throttle, not the reading, sets their pace).
    fn parallelism(&self, export: &ExportRecord) -> anyhow::Result<u32> {
        let spec = export.spec.get()?;
        let max = self.settings.max_parallelism.max(1);
        Ok(match spec.parallelism {
            Some(p) => p.clamp(1, max),
            None if spec.max_rows_per_second.is_some() => 1,
            None => (export.total_rows.unwrap_or(0) / ROWS_PER_RANGE).clamp(1, i64::from(max)) as u32,
        })
    }

    /// The export's key ranges: those saved, or, for the first run of an export to be read in
    /// parallel, a new split, saved (fenced). Empty: the export is read by one reader. None:
    /// the run no longer owns the export.
    pub(super) async fn key_ranges(
        &self,
        ds: &Dataset,
        export: &ExportRecord,
        token: Uuid,
    ) -> anyhow::Result<Option<Vec<KeyRange>>> {
        let saved = engine_db!(self, "reading the export's ranges", |c| db::ranges::ranges(c, export.id)).await?;
        let fresh = export.bytes_written == 0 && export.last_processed_key.is_none();
        let Some(upper) = export.upper_bound_key.as_ref().filter(|_| saved.is_empty() && fresh) else {
            return Ok(Some(saved));
        };
        let n = self.parallelism(export)?;
        if n < 2 {
            return Ok(Some(saved));
        }
        let spec = export.spec.get()?;
        let (mut conn, _) = reading_session(self, spec, export.created_lsn.as_deref()).await?;
        let wait = self.settings.db_statement_wait;
        let uppers = db::within(wait, "splitting the export into key ranges", async {
            db::ranges::split_points(&mut conn, ds, spec, upper, n).await
        })
        .await?;
        drop(conn);
        if uppers.len() < 2 {
            return Ok(Some(Vec::new()));
        }
        tracing::info!(export_id = %export.id, ranges = uppers.len(), ?uppers, "export split into key ranges");
        let fence = Fence { export_id: export.id, token };
        Ok(engine_db!(self, "saving the export's key ranges", |c| db::ranges::split(c, fence, &uppers)).await?)
    }

    /// Runs every unfinished range at once, each as its own task (its reader's connection, its
    /// writer, its checkpoints), then completes the export with their pieces. A range that
    /// fails lets the others finish (their work is kept) and the run then fails, to be retried
    /// from every range's checkpoint; a range that finds the export lost or crashed ends them all.
    pub(super) async fn run_ranges(
        &self,
        ds: Arc<Dataset>,
        export: &ExportRecord,
        token: Uuid,
        mut ranges: Vec<KeyRange>,
        adopt: Adopt,
    ) -> anyhow::Result<Outcome> {
        let spec = export.spec.get()?;
        let pace = Pace::new(spec.max_rows_per_second, ranges.iter().filter(|r| !r.done).count());
        let mut tasks = JoinSet::new();
        for range in ranges.iter().filter(|r| !r.done).cloned() {
            let (engine, ds, export, pace) = (self.clone(), ds.clone(), export.clone(), pace.clone());
            let adopt = adopt.may_continue(range.file_writer);
            tasks.spawn(async move { engine.run_range(&ds, &export, token, range, adopt, pace).await });
        }
        let (mut released, mut failed) = (false, None);
        while let Some(joined) = tasks.join_next().await {
            match joined? {
                Ok(RangeEnd::Done(range)) => {
                    let at = range.position as usize;
                    ranges[at] = range;
                }
                // The others stop at their next chunk boundary too (the same stop signal).
                Ok(RangeEnd::Stopped(Outcome::Released)) => released = true,
                // Dropping the tasks aborts the other ranges (closing their connections).
                Ok(RangeEnd::Stopped(end)) => return Ok(end),
                Err(e) => {
                    tracing::warn!(export_id = %export.id, error = format!("{e:#}"), "a key range failed; the others go on");
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if released {
            return Ok(Outcome::Released);
        }
        self.complete_pieces(export, token, &ranges).await
    }

    /// One key range, from its checkpoint to its end, into its own piece.
    async fn run_range(
        &self,
        ds: &Arc<Dataset>,
        export: &ExportRecord,
        token: Uuid,
        range: KeyRange,
        adopt: bool,
        pace: Arc<Pace>,
    ) -> anyhow::Result<RangeEnd> {
        let spec = export.spec.get()?;
        let fence = Fence { export_id: export.id, token };
        let position = range.position;
        let run = RunId { export_id: export.id, token, extension: spec.extension(), piece: Some(position) };
        let mut cp = range.checkpoint();
        let state = range.file_state.as_ref().map(|s| &s.0);
        let resume = Resume { file: range.file_name.as_deref(), bytes: cp.bytes as u64, state, adopt };
        let file = match self.prepare_file(run, resume).await {
            Ok(Some(file)) => file,
            Ok(None) => return Ok(RangeEnd::Stopped(Outcome::Released)),
            Err(PrepareError::CheckpointLost { name, bytes }) => {
                tracing::error!(export_id = %export.id, range = position, %name, bytes, "a key range's checkpointed piece is gone; the range starts over");
                if !engine_db!(self, "resetting a key range", |c| db::ranges::reset(c, fence, position)).await? {
                    return Ok(RangeEnd::Stopped(Outcome::Lost));
                }
                cp = Checkpoint {
                    last: range.lower_key.clone(),
                    rows: 0,
                    bytes: 0,
                    file_name: String::new(),
                    file_state: None,
                };
                self.storage.create_run(run).await?
            }
            Err(PrepareError::Io(e)) => return Err(e.into()),
        };
        (cp.file_name, cp.file_state) = (file.name, file.state);
        let (tx, rx) = mpsc::channel(pace.pieces_in_flight(PIECES_IN_FLIGHT));
        let span = ReadSpan {
            after: cp.last.clone(),
            upper: Some(range.upper_key.clone()),
            head: position == 0 && cp.bytes == 0,
        };
        let producer = tokio::spawn({
            let (engine, ds, export) = (self.clone(), ds.clone(), export.clone());
            async move { engine.produce(&ds, &export, span, pace, tx).await }
        });
        let written = self.write(file.out, rx, cp, export, token, Slot::Range(position)).await;
        let Written { saved, last, end, unsaved } = match written {
            Ok(w) => w,
            Err(e) => {
                producer.abort();
                return Err(e);
            }
        };
        if let Some(end) = end {
            producer.abort();
            return Ok(RangeEnd::Stopped(end));
        }
        if let Some(end) = producer.await?? {
            return Ok(RangeEnd::Stopped(end));
        }
        if !engine_db!(self, "finishing a key range", |c| {
            db::ranges::save_checkpoint(c, fence, position, (&saved, &last), true, (unsaved.0, &unsaved.1))
        })
        .await?
        {
            metrics::fenced_refused("checkpoint");
            return Ok(RangeEnd::Stopped(Outcome::Lost));
        }
        Ok(RangeEnd::Done(KeyRange {
            last_processed_key: last.last,
            rows_written: last.rows,
            bytes_written: last.bytes,
            file_name: Some(last.file_name),
            file_state: last.file_state.map(sqlx::types::Json),
            file_writer: Some(token),
            done: true,
            ..range
        }))
    }

    /// Every range is done: completes the export (fenced) with its pieces as its file, in key
    /// order. Where the storage joins them without reading them back (object storage, copying
    /// server-side), the file is the one object they make (so it can be redirected to);
    /// otherwise nothing is copied and downloads serve the pieces one after the other.
    async fn complete_pieces(
        &self,
        export: &ExportRecord,
        token: Uuid,
        ranges: &[KeyRange],
    ) -> anyhow::Result<Outcome> {
        let fence = Fence { export_id: export.id, token };
        let mut pieces: Vec<PieceFile> = ranges
            .iter()
            .map(|r| PieceFile { name: r.file_name.clone().unwrap_or_default(), bytes: r.bytes_written as u64 })
            .collect();
        let spec = export.spec.get()?;
        if spec.format.kind == FileType::Parquet {
            pieces.push(self.parquet_footer(export, spec, token, ranges).await?);
        }
        let joined = RunId { export_id: export.id, token, extension: spec.extension(), piece: None }.file_name();
        let joined_up = self.storage.join(&joined, &pieces).await.unwrap_or_else(|e| {
            tracing::warn!(export_id = %export.id, error = %e, "could not join the pieces; serving them in turn");
            false
        });
        let (file_name, file_state) = match joined_up {
            true => (joined, None),
            false => (pieces[0].name.clone(), Some(serde_json::json!({ "pieces": pieces }))),
        };
        let cp = Checkpoint {
            last: ranges.last().and_then(|r| r.last_processed_key.clone()),
            rows: ranges.iter().map(|r| r.rows_written).sum(),
            bytes: pieces.iter().map(|p| p.bytes as i64).sum(),
            file_name,
            file_state,
        };
        if !engine_db!(self, "completing the export", |c| {
            db::runs::complete_export(c, fence, &cp, self.settings.retention)
        })
        .await?
        {
            metrics::fenced_refused("complete");
            return Ok(Outcome::Lost);
        }
        let keep: Vec<&str> = match joined_up {
            true => vec![cp.file_name.as_str()],
            false => pieces.iter().map(|p| p.name.as_str()).collect(),
        };
        self.storage.remove_other_runs(export.id, &keep).await;
        Ok(Outcome::Completed)
    }

    /// A parallel Parquet export's footer: every range's row groups in key order, their offsets
    /// moved by the bytes of the pieces before (range 0's begins with the magic), written as one
    /// more piece after the ranges' (a run that dies before completing writes it again).
    async fn parquet_footer(
        &self,
        export: &ExportRecord,
        spec: &ExportSpec,
        token: Uuid,
        ranges: &[KeyRange],
    ) -> anyhow::Result<PieceFile> {
        let layout = Layout::new(&*self.dataset(export)?, spec)?;
        let (mut groups, mut before) = (Vec::new(), 0);
        for r in ranges {
            let saved = engine_db!(self, "reading a range's row groups", |c| {
                db::runs::row_groups(c, export.id, r.position, r.bytes_written)
            })
            .await?;
            groups.extend(saved.into_iter().map(|g| SavedRowGroup { base: g.base + before, ..g }));
            before += r.bytes_written;
        }
        let footer = layout.footer(&groups)?;
        let run = RunId { export_id: export.id, token, extension: spec.extension(), piece: Some(ranges.len() as i32) };
        let mut file = self.storage.create_run(run).await?;
        file.out.append(&footer).await?;
        file.out.finish().await?;
        Ok(PieceFile { name: file.name, bytes: footer.len() as u64 })
    }
}
