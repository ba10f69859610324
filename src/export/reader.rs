//! The chunk reader: keyset chunks (`WHERE key > last ORDER BY key LIMIT n`) read with
//! PostgreSQL's own `COPY (...) TO STDOUT` on one connection per run — CSV shaped (CRLF, the
//! formula guard), or binary rows written as JSON Lines, handed to the writer in pieces, or
//! binary rows encoded as Parquet row groups — each wait on the socket with a deadline.

use std::{sync::Arc, time::Duration};

use sqlx::{Postgres, pool::PoolConnection};
use tokio::{sync::mpsc, time::Instant};
use tracing::Instrument as _;

use crate::{
    db,
    export::{
        binary::KeyFields,
        buffers::{BufferPool, PIECE_BYTES},
        csv::{self, RowShaper},
        engine::{Engine, Outcome},
        jsonl::JsonLines,
        low_water::{self, Ends, LowWater},
        parquet::{self, EncodedRowGroup, Layout, RowGroup},
        wire::{Next, WireCopy},
    },
    model::{
        Dataset, ExportRecord, ExportSpec, Key,
        spec::{FileType, LineEnding},
    },
    telemetry,
};

/// What the reader hands the writer: encoded rows, or the end of a chunk (its last key and rows).
pub(super) enum Piece {
    Data(Vec<u8>),
    /// Parquet: the chunk's data was these row groups, in order, the last bytes written.
    ChunkEnd {
        last: Key,
        rows: u64,
        row_groups: Vec<RowGroupEnd>,
    },
}

/// A Parquet chunk's row group, as the writer records it: its length and its metadata.
pub(super) struct RowGroupEnd {
    pub len: usize,
    pub footer: Vec<u8>,
}

/// The keys a reader reads: those after `after` up to `upper` (None: none at all, the table was
/// empty), and whether its bytes begin the file (`head`: the BOM and header, or Parquet's magic,
/// go first).
#[derive(Debug, Clone)]
pub(super) struct ReadSpan {
    pub after: Option<Key>,
    pub upper: Option<Key>,
    pub head: bool,
}

/// What the readers of one run (one per key range) share: the throttle (`maxRowsPerSecond`), so
/// the export as a whole keeps the rate, and the memory for Parquet row groups.
#[derive(Debug)]
pub(super) struct Pace {
    rate: Option<u32>,
    started: Instant,
    rows: std::sync::atomic::AtomicU64,
    /// Bytes of values a reader holds before it cuts a Parquet row group: [`parquet::ROW_GROUP_BYTES`]
    /// shared by the readers running at once (at least [`parquet::MIN_ROW_GROUP_BYTES`] each).
    row_group_bytes: usize,
    /// Readers running at once.
    readers: usize,
}

impl Pace {
    /// `readers` read at once.
    pub(super) fn new(rate: Option<u32>, readers: usize) -> Arc<Self> {
        let row_group_bytes = (parquet::ROW_GROUP_BYTES / readers.max(1)).max(parquet::MIN_ROW_GROUP_BYTES);
        Arc::new(Self {
            rate: rate.filter(|r| *r > 0),
            started: Instant::now(),
            rows: Default::default(),
            row_group_bytes,
            readers: readers.max(1),
        })
    }

    /// Pieces each reader may have on their way to its writer: `in_flight` shared by the readers
    /// running at once (at least one each), so a run's memory does not grow with its ranges
    /// (4 ranges with 4 each held 21 MiB of pieces at once).
    pub(super) fn pieces_in_flight(&self, in_flight: usize) -> usize {
        (in_flight / self.readers).max(1)
    }

    /// Counts `rows` read; the instant the run may read on at the rate (None: no throttle).
    fn after(&self, rows: u64) -> Option<Instant> {
        use std::sync::atomic::Ordering;
        let total = self.rows.fetch_add(rows, Ordering::Relaxed) + rows;
        self.rate.map(|rate| self.started + Duration::from_secs_f64(total as f64 / f64::from(rate)))
    }
}

impl Engine {
    /// Reads chunks of `span`, as PostgreSQL's own CSV (`COPY (chunk query) TO STDOUT`), shapes
    /// the rows (CRLF, formula guard) and hands them to the writer in pieces, keeping the run's
    /// `pace`. Returns None once every row is read, or `Released` when the process is stopping.
    pub(super) async fn produce(
        &self,
        ds: &Dataset,
        export: &ExportRecord,
        span: ReadSpan,
        pace: Arc<Pace>,
        tx: mpsc::Sender<Piece>,
    ) -> anyhow::Result<Option<Outcome>> {
        let spec = export.spec.get()?;
        let lsn = export.created_lsn.as_deref();
        let mut reader = ChunkReader::open(self, ds, spec, span.head, lsn, pace.row_group_bytes, tx).await?;
        let mut last = span.after.clone();
        let started = Instant::now();
        // No upper bound: the table was empty when the export was created (header only). Keys
        // are compared by the database only (text in its collation): a chunk after the upper
        // bound's own text is not asked for; any other end is a short or empty chunk.
        while let Some(upper) = span.upper.as_ref().filter(|u| last.as_ref() != Some(*u)) {
            if self.shutdown.is_triggered() {
                return Ok(Some(Outcome::Released));
            }
            let span = tracing::info_span!("chunk", export_id = %export.id, after = ?last);
            let Some((rows, last_key, row_groups)) = reader.read_chunk(last.as_ref(), upper).instrument(span).await?
            else {
                break;
            };
            send(&reader.tx, Piece::ChunkEnd { last: last_key.clone(), rows, row_groups }).await?;
            last = Some(last_key);
            // Pace after each chunk (the last one too), so the whole export keeps the rate.
            if let Some(due) = pace.after(rows) {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = self.shutdown.wait() => return Ok(Some(Outcome::Released)),
                }
            }
            if (rows as i64) < reader.limit {
                break; // a short chunk: nothing is left up to the upper bound
            }
        }
        tracing::debug!(export_id = %export.id, total = ?started.elapsed(), start = ?reader.t_start, stream = ?reader.t_stream, blocked_on_writer = ?reader.t_send, "producer timings");
        reader.finish().await?;
        Ok(None)
    }
}

/// A connection for reading an export's rows (closed, never pooled, once dropped), its session
/// set up: the time zone and the filter values bound once, and on a read replica, WAL replayed
/// up to the export's creation (`created_lsn`).
/// Returns the connection and its two ends (to find its socket: see [`LowWater`]).
pub(super) async fn reading_session(
    engine: &Engine,
    spec: &ExportSpec,
    created_lsn: Option<&str>,
) -> anyhow::Result<(PoolConnection<Postgres>, Ends)> {
    let mut conn = db::acquire(&engine.reads).await?;
    conn.close_on_drop();
    let values: Vec<&str> = db::dataset::filter_values(spec);
    let setup = sqlx::query_as::<_, Ends>(db::dataset::session_setup()).bind(&spec.format.time_zone).bind(values);
    let wait = engine.settings.db_statement_wait;
    let ends =
        db::within(wait, "setting up the run's session", async { Ok(setup.fetch_one(&mut *conn).await?) }).await?;
    if engine.replica
        && let Some(lsn) = created_lsn
    {
        wait_for_replay(&mut conn, lsn, engine.settings.db_io_timeout).await?;
    }
    Ok((conn, ends))
}

/// Waits until the read replica on `conn` has replayed the primary's WAL up to `lsn` (the
/// export's creation), so every row the export must hold is visible there; fails after
/// `limit` (the run is retried from its checkpoint). A server not in recovery is caught up.
async fn wait_for_replay(conn: &mut PoolConnection<Postgres>, lsn: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let caught_up = db::within(limit, "asking the read replica how far it has replayed", async {
            Ok(sqlx::query_scalar::<_, bool>(db::dataset::replayed_past()).bind(lsn).fetch_one(&mut **conn).await?)
        })
        .await?;
        if caught_up {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the read replica has not replayed the primary's WAL up to the export's creation ({lsn}) within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A run's reading side: its own connection (session set up once), the chunk query's shape,
/// the row shaper, and the piece being filled.
struct ChunkReader<'a> {
    engine: &'a Engine,
    ds: &'a Dataset,
    spec: &'a ExportSpec,
    /// One connection for the whole run; closed (not pooled) afterwards, so a COPY left unread
    /// by an early return never reaches another user of the pool.
    conn: PoolConnection<Postgres>,
    shaper: RowShaper,
    /// Parquet: the file's layout; the chunk's rows go into a row group instead of text.
    parquet: Option<Arc<Layout>>,
    /// JSON Lines: the rows are written from binary COPY rows.
    jsonl: Option<JsonLines>,
    /// Where the key's columns are in a row, to read the chunk's last key back.
    key_fields: KeyFields,
    delimiter: u8,
    /// Rows per chunk.
    limit: i64,
    /// Parquet: bytes of values held before a row group is cut (see [`Pace`]).
    row_group_bytes: usize,
    /// The header line is still to be written (asked of the next COPY).
    header: bool,
    /// The connection's socket, to wake the reader less often (None: not found).
    low_water: Option<LowWater>,
    /// The chunks' rows read off that socket (None: through sqlx; see [`Rows`]).
    wire: Option<WireCopy>,
    /// The piece being filled (a pooled buffer).
    buf: Vec<u8>,
    tx: mpsc::Sender<Piece>,
    t_start: Duration,
    t_stream: Duration,
    t_send: Duration,
}

impl<'a> ChunkReader<'a> {
    /// Takes the run's connection and binds the time zone and the filter values on it once.
    /// `head`: the reader's bytes begin the file (BOM and header, or the magic, first);
    /// `row_group_bytes`: Parquet values held before a row group is cut (see [`Pace`]).
    async fn open(
        engine: &'a Engine,
        ds: &'a Dataset,
        spec: &'a ExportSpec,
        head: bool,
        created_lsn: Option<&str>,
        row_group_bytes: usize,
        tx: mpsc::Sender<Piece>,
    ) -> anyhow::Result<Self> {
        let format = &spec.format;
        let columns = spec.output_columns(ds);
        let key_fields = KeyFields::new(ds, spec, &columns);
        let delimiter = format.delimiter as u8;
        let guard = format
            .formula_guard
            .then(|| columns.iter().map(|c| ds.column(&c.name).is_none_or(|d| d.textual)).collect());
        let crlf = format.line_ending == LineEnding::Crlf;
        let appended = key_fields.fields() - columns.len();
        let shaper = RowShaper::new(delimiter, columns.len(), appended, crlf, guard, &format.null);
        let (mut parquet, mut jsonl) = (None, None);
        match format.kind {
            FileType::Csv => {}
            FileType::Jsonl => jsonl = Some(JsonLines::new(ds, spec)),
            FileType::Parquet => parquet = Some(Arc::new(Layout::new(ds, spec)?)),
        }
        let csv = format.kind == FileType::Csv;
        // With a throttle, a chunk is at most one second of rows, so pacing stays smooth.
        let limit = i64::from(match spec.max_rows_per_second.filter(|r| *r > 0) {
            Some(r) => spec.chunk_size.min(r),
            None => spec.chunk_size,
        });
        let (conn, ends) = reading_session(engine, spec, created_lsn).await?;
        let dialed = engine.reads.connect_options();
        let low_water = LowWater::find(&ends, (dialed.get_host(), dialed.get_port()));
        // Parquet row groups hold slices of sqlx's messages: read through sqlx.
        let wire = match low_water.as_ref().filter(|_| parquet.is_none()) {
            Some(low) => Some(WireCopy::new(low.duplicate()?)?),
            None => None,
        };
        let mut buf = engine.buffers.take();
        if head && csv && format.bom {
            buf.extend_from_slice(b"\xEF\xBB\xBF");
        }
        if head && parquet.is_some() {
            buf.extend_from_slice(parquet::MAGIC);
        }
        Ok(Self {
            engine,
            ds,
            spec,
            conn,
            shaper,
            parquet,
            jsonl,
            key_fields,
            delimiter,
            limit,
            row_group_bytes,
            header: head && csv && format.header,
            low_water,
            wire,
            buf,
            tx,
            t_start: Duration::ZERO,
            t_stream: Duration::ZERO,
            t_send: Duration::ZERO,
        })
    }

    /// Reads the chunk after `last` up to `upper` into pieces; returns its rows, its last key
    /// and (Parquet) its row group, or None when it is empty.
    async fn read_chunk(
        &mut self,
        last: Option<&Key>,
        upper: &Key,
    ) -> anyhow::Result<Option<(u64, Key, Vec<RowGroupEnd>)>> {
        let (first_wait, next_wait) = (self.engine.settings.db_statement_wait, self.engine.settings.db_io_timeout);
        let sql = db::dataset::chunk_copy(self.ds, self.spec, last, Some(upper), self.limit, self.header);
        let t = Instant::now();
        let sent_before = self.t_send;
        let mut rows = match self.wire.as_mut() {
            Some(wire) => {
                db::within(first_wait, "starting a chunk", async {
                    Ok(wire.query(&sql).await.map_err(sqlx::Error::Io)?)
                })
                .await?;
                Rows::Wire(wire)
            }
            None => {
                let conn = &mut self.conn;
                let stream =
                    db::within(first_wait, "starting a chunk", async { Ok(conn.copy_out_raw(&sql).await?) }).await?;
                Rows::Sqlx { stream, row: None, kept: None }
            }
        };
        self.t_start += t.elapsed();
        let streaming = Instant::now();
        let mut count = 0u64;
        let mut group = self.parquet.clone().map(RowGroup::new);
        let mut groups = Vec::new();
        // Every message of the chunk has a deadline: the first one the statement's, the next
        // ones `db_io_timeout` each. A connection that goes silent (half-open, a stuck proxy,
        // a frozen server) fails the run, and the run's connection is closed, never pooled.
        let mut silence = Silence::new(first_wait, next_wait);
        // The chunk's bytes so far: with its rows, an estimate of what is still to come.
        let mut bytes = 0usize;
        while rows.advance(&mut silence, self.low_water.as_mut()).await? {
            let message = rows.row();
            bytes += message.len();
            if let Some(low) = self.low_water.as_mut() {
                let seen = count as usize + 1;
                low.follow((self.limit as usize).saturating_sub(seen), bytes / seen);
            }
            if let Some(jsonl) = &self.jsonl {
                if jsonl.push(message, &mut self.buf)? {
                    count += 1;
                    rows.keep();
                }
                if self.buf.len() >= PIECE_BYTES {
                    send_piece(&self.tx, &mut self.buf, &self.engine.buffers, &mut self.t_send).await?;
                }
                continue;
            }
            if let Some(g) = group.as_mut() {
                let message = rows.row_bytes().expect("Parquet rows are read through sqlx");
                if g.push(message)? {
                    count += 1;
                    rows.keep();
                }
                // A chunk too big to hold is cut into several row groups (one checkpoint still).
                if g.held_bytes() >= self.row_group_bytes {
                    let layout = self.parquet.clone().expect("a Parquet export");
                    let full = std::mem::replace(g, RowGroup::new(layout));
                    groups.push(send_row_group(&self.tx, &mut self.buf, self.engine, full).await?);
                }
                continue;
            }
            // PostgreSQL sends one CopyData message per row (the first one is the header
            // line when asked for).
            let is_header = std::mem::take(&mut self.header);
            if self.shaper.is_identity() {
                self.buf.extend_from_slice(message);
            } else {
                self.shaper.shape(message, is_header, &mut self.buf);
            }
            if !is_header {
                count += 1;
                rows.keep();
            }
            if self.buf.len() >= PIECE_BYTES {
                send_piece(&self.tx, &mut self.buf, &self.engine.buffers, &mut self.t_send).await?;
            }
        }
        if let Some(low) = self.low_water.as_mut() {
            low.lower(); // the next chunk's first bytes are few (its CopyOutResponse)
        }
        self.t_stream += streaming.elapsed();
        // The read alone: time spent waiting for the writer (backpressure) is not PostgreSQL's.
        let read = t.elapsed().saturating_sub(self.t_send - sent_before);
        metrics::histogram!(telemetry::metrics::CHUNK_READ).record(read.as_secs_f64());
        if count == 0 {
            return Ok(None);
        }
        // The chunk's last row, its key read back.
        let row = rows.kept();
        let key = if self.spec.format.kind == FileType::Csv {
            csv::key(row, self.key_fields.positions(), self.delimiter)
        } else {
            self.key_fields.key(row)?
        };
        let key = key.ok_or_else(|| {
            anyhow::anyhow!("cannot read the key of the chunk's last row: {:?}", String::from_utf8_lossy(row))
        })?;
        drop(rows);
        if let Some(group) = group
            && !group.is_empty()
        {
            groups.push(send_row_group(&self.tx, &mut self.buf, self.engine, group).await?);
        }
        if !self.buf.is_empty() {
            send_piece(&self.tx, &mut self.buf, &self.engine.buffers, &mut self.t_send).await?;
        }
        Ok(Some((count, key, groups)))
    }

    /// Ends the reading: a header still owed (nothing at all to export) is asked of COPY
    /// alone, and what is left in the buffer goes to the writer.
    async fn finish(mut self) -> anyhow::Result<()> {
        if self.header {
            let wait = self.engine.settings.db_statement_wait;
            let sql = db::dataset::chunk_copy(self.ds, self.spec, None, None, 0, true);
            let conn = &mut self.conn;
            let mut stream = db::within(wait, "starting a chunk", async { Ok(conn.copy_out_raw(&sql).await?) }).await?;
            let mut silence = Silence::new(wait, wait);
            while let Some(message) = silence.next(&mut stream, None).await? {
                self.shaper.shape(&message, true, &mut self.buf);
            }
        }
        let buf = std::mem::take(&mut self.buf);
        if buf.is_empty() {
            self.engine.buffers.give(buf);
            Ok(())
        } else {
            send(&self.tx, Piece::Data(buf)).await
        }
    }
}

/// Encodes a Parquet row group (CPU work: off the async threads) and hands its bytes to the
/// writer, after what `buf` holds (the magic, when the file is new).
async fn send_row_group(
    tx: &mpsc::Sender<Piece>,
    buf: &mut Vec<u8>,
    engine: &Engine,
    group: RowGroup,
) -> anyhow::Result<RowGroupEnd> {
    let EncodedRowGroup { bytes, footer } = tokio::task::spawn_blocking(move || group.encode()).await??;
    let len = bytes.len();
    let piece = if buf.is_empty() {
        bytes
    } else {
        let mut piece = std::mem::replace(buf, engine.buffers.take());
        piece.extend_from_slice(&bytes);
        piece
    };
    send(tx, Piece::Data(piece)).await?;
    Ok(RowGroupEnd { len, footer })
}

/// Hands the piece filled (`buf`) to the writer, then takes a buffer for the next one: while
/// the writer is behind, the reader waits holding no second buffer (a run's memory is its
/// pieces in flight, and a reader faster than its writer keeps the channel full). Adds the wait
/// to `waited`.
async fn send_piece(
    tx: &mpsc::Sender<Piece>,
    buf: &mut Vec<u8>,
    buffers: &BufferPool,
    waited: &mut Duration,
) -> anyhow::Result<()> {
    let piece = std::mem::take(buf);
    let t = Instant::now();
    send(tx, Piece::Data(piece)).await?;
    *waited += t.elapsed();
    *buf = buffers.take();
    Ok(())
}

/// Hands a piece to the writer.
async fn send(tx: &mpsc::Sender<Piece>, piece: Piece) -> anyhow::Result<()> {
    tx.send(piece).await.map_err(|_| writer_gone())
}

/// The writer returned early; the run is ending on its side.
fn writer_gone() -> anyhow::Error {
    anyhow::anyhow!("the file writer stopped unexpectedly")
}

/// A chunk's rows as they come: parsed off the socket by [`WireCopy`], or sqlx's stream of
/// CopyData messages (Parquet, whose row groups hold slices of the messages, or a connection
/// whose socket was not found).
enum Rows<'c> {
    Wire(&'c mut WireCopy),
    Sqlx {
        stream: futures::stream::BoxStream<'c, Result<bytes::Bytes, sqlx::Error>>,
        row: Option<bytes::Bytes>,
        kept: Option<bytes::Bytes>,
    },
}

impl Rows<'_> {
    /// Moves to the next row (false: the COPY ended), waiting within `silence`.
    async fn advance(&mut self, silence: &mut Silence, mut low: Option<&mut LowWater>) -> anyhow::Result<bool> {
        match self {
            Rows::Wire(wire) => loop {
                match wire.next()? {
                    Next::Row => return Ok(true),
                    Next::Done => return Ok(false),
                    Next::More => silence.until(|cx| wire.poll_fill(cx), low.as_deref_mut()).await??,
                }
            },
            Rows::Sqlx { stream, row, .. } => {
                // Rows usually come out of sqlx's buffer without touching the socket, so the
                // loop would keep its thread for a whole chunk: let other tasks in whenever the
                // task's cooperative budget runs out (the socket reads above count against it).
                tokio::task::consume_budget().await;
                use futures::StreamExt as _;
                let next = silence.until(|cx| stream.poll_next_unpin(cx), low).await?.transpose()?;
                let more = next.is_some();
                if more {
                    *row = next;
                }
                Ok(more)
            }
        }
    }

    /// The current row (a CopyData message).
    fn row(&self) -> &[u8] {
        match self {
            Rows::Wire(wire) => wire.row(),
            Rows::Sqlx { row, .. } => row.as_deref().unwrap_or_default(),
        }
    }

    /// The current row as sqlx handed it (None when read off the socket).
    fn row_bytes(&self) -> Option<&bytes::Bytes> {
        match self {
            Rows::Wire(_) => None,
            Rows::Sqlx { row, .. } => row.as_ref(),
        }
    }

    /// Keeps the current row as the chunk's last one so far.
    fn keep(&mut self) {
        match self {
            Rows::Wire(wire) => wire.keep(),
            Rows::Sqlx { row, kept, .. } => kept.clone_from(row),
        }
    }

    /// The row last kept.
    fn kept(&self) -> &[u8] {
        match self {
            Rows::Wire(wire) => wire.kept(),
            Rows::Sqlx { kept, .. } => kept.as_deref().unwrap_or_default(),
        }
    }
}

/// A deadline on a COPY stream's silence that costs nothing while rows come out of the
/// connection's buffer (most of them): the timer is armed only when the stream has to wait
/// for the socket, once per wait, to `first` for the first message and `next` after it. A wait
/// with the socket's low-water mark up lowers it after [`low_water::LOWER_AFTER`].
pub(super) struct Silence {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    next: Duration,
    lower: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Silence {
    fn new(first: Duration, next: Duration) -> Self {
        let lower = Box::pin(tokio::time::sleep(low_water::LOWER_AFTER));
        Self { sleep: Box::pin(tokio::time::sleep(first)), limit: first, next, lower }
    }

    /// What `poll` gives once it is ready, or an error when it stays pending for the limit.
    async fn until<T>(
        &mut self,
        mut poll: impl FnMut(&mut std::task::Context<'_>) -> std::task::Poll<T>,
        mut low: Option<&mut LowWater>,
    ) -> anyhow::Result<T> {
        use std::{future::Future, task::Poll};
        let mut waiting = false;
        let item = std::future::poll_fn(|cx| {
            loop {
                match poll(cx) {
                    Poll::Ready(item) => return Poll::Ready(Some(item)),
                    Poll::Pending => {
                        if !std::mem::replace(&mut waiting, true) {
                            metrics::counter!(telemetry::metrics::COPY_WAITS).increment(1);
                            let now = Instant::now();
                            self.sleep.as_mut().reset(now + self.limit);
                            self.lower.as_mut().reset(now + low_water::LOWER_AFTER);
                        }
                        // Bytes below the mark may be all there is: lower it (which wakes the
                        // reader if any are there) and poll again.
                        if let Some(low) = low.as_deref_mut().filter(|l| l.is_raised())
                            && self.lower.as_mut().poll(cx).is_ready()
                        {
                            low.lower();
                            continue;
                        }
                        return match self.sleep.as_mut().poll(cx) {
                            Poll::Ready(()) => Poll::Ready(None),
                            Poll::Pending => Poll::Pending,
                        };
                    }
                }
            }
        })
        .await;
        let Some(item) = item else { return Err(db::timed_out(self.limit, "reading a chunk").into()) };
        self.limit = self.next;
        Ok(item)
    }

    /// The stream's next message, or an error when it stays silent for the limit.
    async fn next<S>(&mut self, stream: &mut S, low: Option<&mut LowWater>) -> anyhow::Result<Option<bytes::Bytes>>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, sqlx::Error>> + Unpin,
    {
        use futures::StreamExt as _;
        Ok(self.until(|cx| stream.poll_next_unpin(cx), low).await?.transpose()?)
    }
}
