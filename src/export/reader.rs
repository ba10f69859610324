//! The chunk reader: keyset chunks (`WHERE key > last ORDER BY key LIMIT n`) read as
//! PostgreSQL's own CSV (`COPY (...) TO STDOUT`) on one connection per run, shaped (CRLF, the
//! formula guard) and handed to the writer in pieces, each wait on the socket with a deadline.

use std::time::Duration;

use tokio::{sync::mpsc, time::Instant};

use crate::{
    db,
    export::{
        buffers::PIECE_BYTES,
        csv::{self, RowShaper},
        engine::{Engine, Outcome},
    },
    model::{Dataset, ExportRecord, spec::LineEnding},
};

/// What the reader hands the writer: encoded rows, or the end of a chunk (its last key and rows).
pub(super) enum Piece {
    Data(Vec<u8>),
    ChunkEnd { last_id: i64, rows: u64 },
}

impl Engine {
    /// Reads chunks from the checkpoint up to the export's upper bound, as PostgreSQL's own
    /// CSV (`COPY (chunk query) TO STDOUT`), shapes the rows (CRLF, formula guard) and hands
    /// them to the writer in pieces. `fresh`: the file is empty (BOM and header go first).
    /// Returns None once every row is read, or `Released` when the process is stopping.
    pub(super) async fn produce(
        &self,
        ds: &Dataset,
        export: &ExportRecord,
        mut last: Option<i64>,
        fresh: bool,
        tx: mpsc::Sender<Piece>,
    ) -> anyhow::Result<Option<Outcome>> {
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
                return Ok(Some(Outcome::Released));
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
                        return Err(writer_gone());
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
                    return Err(writer_gone());
                }
            }
            if tx.send(Piece::ChunkEnd { last_id, rows: count }).await.is_err() {
                return Err(writer_gone());
            }
            last = Some(last_id);
            rows_this_run += count;
            if let Some(rate) = rate {
                // Pace after each chunk (the last one too), so the whole export keeps the rate.
                let due = started + Duration::from_secs_f64(rows_this_run as f64 / f64::from(rate));
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = self.shutdown.wait() => return Ok(Some(Outcome::Released)),
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
            return Err(writer_gone());
        }
        Ok(None)
    }
}

/// The writer returned early; the run is ending on its side.
fn writer_gone() -> anyhow::Error {
    anyhow::anyhow!("the file writer stopped unexpectedly")
}

/// A deadline on a COPY stream's silence that costs nothing while rows come out of the
/// connection's buffer (most of them): the timer is armed only when the stream has to wait
/// for the socket, once per wait, to `first` for the first message and `next` after it.
pub(super) struct Silence {
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
