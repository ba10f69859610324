//! A chunk's `COPY ... TO STDOUT` read straight off the reading connection's socket: the query
//! written and its replies parsed here, many rows per read, each row a slice of one buffer.
//!
//! Through sqlx every CopyData message (PostgreSQL sends one per row) is an item of a stream: a
//! boxed future polled, a mutex taken twice, a shared buffer's count moved up and down, and the
//! socket read 8 KiB at a time (sqlx's buffer size): about a sixth of the engine's CPU. Here a
//! read takes up to [`READ_BYTES`] and a row costs a header parsed.
//!
//! sqlx does not hand out its socket: the run's own descriptor for it is found by the session's
//! two ends (see `low_water`), over plain TCP only (sqlx is built without TLS here; through NAT,
//! a proxy or a Unix socket nothing matches and sqlx reads the rows). It is used only between
//! sqlx's statements, on the run's own connection: the query is sent and every message it causes
//! is read, up to ReadyForQuery (an error too), so sqlx finds the connection as it left it. A COPY
//! not read to its end (a deadline, a dropped run) leaves the protocol mid-stream; such a
//! connection is never used again (a reading connection is closed, never pooled, and a run whose
//! read fails drops its reader).

use std::{
    borrow::Cow,
    io,
    ops::Range,
    os::fd::{AsRawFd as _, OwnedFd},
    task::{Context, Poll, ready},
};

use tokio::io::{Interest, unix::AsyncFd};

/// Bytes asked of the socket per read: the buffer's usual size (a message longer than that
/// grows it for as long as it is read). Half the low-water mark: a wake-up finds at least two
/// reads' worth, and a run holds 256 KiB fewer (memory per range counts at 4 ranges).
const READ_BYTES: usize = 256 * 1024;
/// The longest message taken (PostgreSQL allocates at most 1 GiB for one), so a corrupt
/// length fails the read instead of growing the buffer without bound.
const MAX_MESSAGE: usize = 1 << 30;
/// Below this much room at the buffer's end, what is left unread moves to its start first.
const MIN_ROOM: usize = 64 * 1024;

/// What the reply holds next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// A row: [`WireCopy::row`].
    Row,
    /// Nothing whole in the buffer: [`WireCopy::poll_fill`], then ask again.
    More,
    /// The COPY ended (CopyDone, CommandComplete, ReadyForQuery read).
    Done,
}

/// Where the reply to the query is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No query sent, or its reply read to ReadyForQuery.
    Idle,
    /// Waiting for CopyOutResponse.
    Starting,
    /// CopyData messages: rows.
    Rows,
    /// After CopyDone: CommandComplete, then ReadyForQuery.
    Ending,
}

/// The COPY reader on a duplicate of the connection's socket.
pub(super) struct WireCopy {
    socket: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
    /// Bytes read and not yet parsed: `buf[at..end]`.
    at: usize,
    end: usize,
    /// The last message returned.
    row: Range<usize>,
    /// The message kept ([`Self::keep`]): it stays in the buffer until the next query (the
    /// chunk's last row, whose key is read at the chunk's end).
    kept: Range<usize>,
    /// Bytes the next message takes from `at`, once its header is read.
    need: usize,
    state: State,
    /// An ErrorResponse, returned when ReadyForQuery follows it.
    error: Option<ServerError>,
}

impl WireCopy {
    /// A reader on `socket` (a duplicate of the connection's descriptor), registered with the
    /// current runtime (the run's).
    pub(super) fn new(socket: OwnedFd) -> io::Result<Self> {
        // SAFETY: the descriptor is owned by the AsyncFd, open for as long as it lives.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE | Interest::WRITABLE) }?;
        Ok(Self {
            socket,
            buf: vec![0; READ_BYTES],
            at: 0,
            end: 0,
            row: 0..0,
            kept: 0..0,
            need: 0,
            state: State::Idle,
            error: None,
        })
    }

    /// Sends `sql` as a simple query; its rows follow from [`Self::next`].
    pub(super) async fn query(&mut self, sql: &str) -> io::Result<()> {
        if self.state != State::Idle {
            return Err(io::Error::other("a COPY was left unread on this connection"));
        }
        let len = i32::try_from(4 + sql.len() + 1).map_err(|_| io::Error::other("a query too long to send"))?;
        let mut message = Vec::with_capacity(sql.len() + 6);
        message.push(b'Q');
        message.extend_from_slice(&len.to_be_bytes());
        message.extend_from_slice(sql.as_bytes());
        message.push(0);
        let mut sent = 0;
        while sent < message.len() {
            let mut ready = self.socket.writable().await?;
            let rest = &message[sent..];
            // SAFETY: write(2) reads at most `rest.len()` bytes from `rest`.
            match ready.try_io(|fd| cvt(unsafe { libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len()) })) {
                Ok(Ok(n)) => sent += n,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        self.state = State::Starting;
        (self.row, self.kept) = (0..0, 0..0);
        Ok(())
    }

    /// The reply's next message that matters: a row, the need for more bytes, or the end.
    /// Notices, parameter changes and notifications are skipped; an error of the query is
    /// returned once its ReadyForQuery is read (the connection is in step again).
    pub(super) fn next(&mut self) -> Result<Next, sqlx::Error> {
        loop {
            let avail = self.end - self.at;
            if avail < 5 {
                self.need = 5;
                return Ok(Next::More);
            }
            let head = &self.buf[self.at..self.at + 5];
            let kind = head[0];
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if !(4..=MAX_MESSAGE).contains(&len) {
                return Err(protocol(format!("a message of length {len}")));
            }
            let total = 1 + len;
            if avail < total {
                self.need = total;
                return Ok(Next::More);
            }
            let body = self.at + 5..self.at + total;
            self.at += total;
            match (kind, self.state) {
                (b'd', State::Rows) => {
                    self.row = body;
                    return Ok(Next::Row);
                }
                (b'H', State::Starting) => self.state = State::Rows,
                (b'c', State::Rows) => self.state = State::Ending,
                (b'C', State::Ending) => {}
                (b'E', State::Starting | State::Rows | State::Ending) => {
                    self.error = Some(ServerError::parse(&self.buf[body]));
                }
                (b'Z', State::Starting | State::Rows | State::Ending) => {
                    let was = std::mem::replace(&mut self.state, State::Idle);
                    return match self.error.take() {
                        Some(e) => Err(sqlx::Error::Database(Box::new(e))),
                        None if was == State::Ending => Ok(Next::Done),
                        None => Err(protocol("the query's reply ended without a whole COPY".into())),
                    };
                }
                // A notice, a parameter's new value, a notification: not the COPY's.
                (b'N' | b'S' | b'A', _) => {}
                (kind, state) => {
                    return Err(protocol(format!("message {:?} unexpected while {state:?}", char::from(kind))));
                }
            }
        }
    }

    /// The last row returned by [`Self::next`] (a CopyData message's payload).
    pub(super) fn row(&self) -> &[u8] {
        &self.buf[self.row.clone()]
    }

    /// Keeps the last row returned until the next query (see [`Self::kept`]).
    pub(super) fn keep(&mut self) {
        self.kept = self.row.clone();
    }

    /// The row last kept.
    pub(super) fn kept(&self) -> &[u8] {
        &self.buf[self.kept.clone()]
    }

    /// Reads what the socket has (at least one byte; waits until then). The server closing the
    /// connection ends it with an error: the one it sent first (a FATAL, such as 57P01 when an
    /// administrator ends the backend), else an unexpected end of file.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), sqlx::Error>> {
        self.make_room();
        loop {
            let mut ready = ready!(self.socket.poll_read_ready(cx))?;
            let room = &mut self.buf[self.end..];
            // SAFETY: read(2) writes at most `room.len()` bytes into `room`.
            let read =
                ready.try_io(|fd| cvt(unsafe { libc::read(fd.as_raw_fd(), room.as_mut_ptr().cast(), room.len()) }));
            match read {
                Ok(Ok(0)) => {
                    return Poll::Ready(Err(match self.error.take() {
                        Some(e) => sqlx::Error::Database(Box::new(e)),
                        None => io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the database closed the connection during a COPY",
                        )
                        .into(),
                    }));
                }
                Ok(Ok(n)) => {
                    self.end += n;
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Poll::Ready(Err(e.into())),
                Err(_would_block) => {} // readiness cleared: poll again
            }
        }
    }

    /// Makes room for the next read: what is unread (and the row kept) moves to the buffer's
    /// start when little room is left or the next message would not fit; the buffer grows for
    /// a message longer than it, and shrinks back once none is held.
    fn make_room(&mut self) {
        let keep = if self.kept.is_empty() { self.at } else { self.kept.start.min(self.at) };
        let fits = self.at + self.need <= self.buf.len();
        if keep > 0 && (self.buf.len() - self.end < MIN_ROOM || !fits) {
            self.buf.copy_within(keep..self.end, 0);
            self.at -= keep;
            self.end -= keep;
            let moved = |r: &Range<usize>| if r.start >= keep { r.start - keep..r.end - keep } else { 0..0 };
            (self.row, self.kept) = (moved(&self.row), moved(&self.kept));
        }
        let want = (self.at + self.need).max(self.end + MIN_ROOM).max(READ_BYTES);
        if want > self.buf.len() {
            self.buf.resize(want, 0);
        } else if self.buf.len() > READ_BYTES && want == READ_BYTES {
            self.buf.truncate(READ_BYTES);
            self.buf.shrink_to_fit();
        }
    }
}

/// A syscall's result as io::Result (negative: errno).
fn cvt(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn protocol(what: String) -> sqlx::Error {
    sqlx::Error::Protocol(format!("reading a COPY: {what}"))
}

/// PostgreSQL's ErrorResponse, as sqlx's own errors describe it (SQLSTATE, message, detail).
#[derive(Debug)]
pub(super) struct ServerError {
    code: String,
    message: String,
    detail: Option<String>,
}

impl ServerError {
    /// The fields of an ErrorResponse body (each a type byte and a C string, then a zero).
    fn parse(body: &[u8]) -> Self {
        let mut e = Self { code: String::new(), message: String::new(), detail: None };
        for field in body.split(|b| *b == 0) {
            let Some((&kind, text)) = field.split_first() else { continue };
            let text = String::from_utf8_lossy(text).into_owned();
            match kind {
                b'C' => e.code = text,
                b'M' => e.message = text,
                b'D' => e.detail = Some(text),
                _ => {}
            }
        }
        e
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

impl sqlx::error::DatabaseError for ServerError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        (!self.code.is_empty()).then_some(Cow::Borrowed(&self.code))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection as _, PgConnection};

    use super::*;
    use crate::export::low_water::{Ends, LowWater};

    #[test]
    fn an_error_response_reads_as_sqlx_describes_it() {
        let body = b"SERROR\0VERROR\0C57014\0Mcanceling statement due to statement timeout\0Dsome detail\0\0";
        let e = ServerError::parse(body);
        assert_eq!(sqlx::error::DatabaseError::code(&e).as_deref(), Some("57014"));
        assert_eq!(sqlx::error::DatabaseError::message(&e), "canceling statement due to statement timeout");
        assert_eq!(e.to_string(), "canceling statement due to statement timeout (some detail)");
    }

    /// A sqlx connection to the test database over TCP, and a reader on its socket.
    async fn connect() -> (PgConnection, WireCopy) {
        let url = std::env::var("DATABASE_URL").expect("DATABASE_URL: the tests run against PostgreSQL");
        let mut conn = PgConnection::connect(&url).await.unwrap();
        // The run's own session set-up, which reads back the connection's two ends.
        let ends: Ends = sqlx::query_as(crate::db::dataset::session_setup())
            .bind("UTC")
            .bind(Vec::<String>::new())
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        let low = LowWater::find(&ends, (options.get_host(), options.get_port()))
            .expect("the tests' database is reached over TCP");
        let wire = WireCopy::new(low.duplicate().unwrap()).unwrap();
        (conn, wire)
    }

    /// Every row of `sql`'s COPY read by `wire`, concatenated, and how many; the last row kept.
    async fn read_all(wire: &mut WireCopy, sql: &str) -> Result<(Vec<u8>, usize, Vec<u8>), sqlx::Error> {
        wire.query(sql).await?;
        let (mut all, mut rows) = (Vec::new(), 0);
        loop {
            match wire.next()? {
                Next::Row => {
                    all.extend_from_slice(wire.row());
                    wire.keep();
                    rows += 1;
                }
                Next::More => std::future::poll_fn(|cx| wire.poll_fill(cx)).await?,
                Next::Done => return Ok((all, rows, wire.kept().to_vec())),
            }
        }
    }

    /// Rows across reads and one row longer than the buffer, read off the socket, are the
    /// bytes sqlx reads for the same COPY on the same connection afterwards (the connection is
    /// in step); notices in the middle are skipped.
    #[tokio::test]
    async fn rows_read_off_the_socket_are_sqlxs_bytes_and_leave_the_connection_in_step() {
        let (mut conn, mut wire) = connect().await;
        sqlx::query(
            "create function pg_temp.noisy(i int) returns int language plpgsql as \
             $$ begin if i % 5000 = 0 then raise notice 'row %', i; end if; return i; end $$",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let sql = "copy (select pg_temp.noisy(i), case when i = 7000 then repeat('y', 1200000) else md5(i::text) end, \
                   'a,\"b\"' from generate_series(1, 30000) i) to stdout (format csv)";
        let (wired, rows, last) = read_all(&mut wire, sql).await.unwrap();
        assert_eq!(rows, 30000);
        let md5: String = sqlx::query_scalar("select md5('30000')").fetch_one(&mut conn).await.unwrap();
        assert_eq!(String::from_utf8(last).unwrap(), format!("30000,{md5},\"a,\"\"b\"\"\"\n"), "the last row kept");
        assert!(wire.buf.len() == READ_BYTES, "the buffer shrank back after the long row");
        use futures::TryStreamExt as _;
        let messages: Vec<bytes::Bytes> = conn.copy_out_raw(sql).await.unwrap().try_collect().await.unwrap();
        let through_sqlx = messages.concat();
        assert_eq!(wired.len(), through_sqlx.len());
        assert!(wired == through_sqlx, "the same bytes as sqlx's");
        // And the other way round: after sqlx, the reader again.
        let (again, _, _) = read_all(&mut wire, sql).await.unwrap();
        assert!(again == through_sqlx);
        let n: i32 = sqlx::query_scalar("select 41 + 1").fetch_one(&mut conn).await.unwrap();
        assert_eq!(n, 42);
    }

    /// A backend ended mid-COPY (it terminates itself here, so no timing is involved) sends its
    /// FATAL and closes the connection: the FATAL's SQLSTATE comes back, not a bare end of file.
    #[tokio::test]
    async fn a_backend_ended_mid_copy_reports_its_fatal_error() {
        let (_conn, mut wire) = connect().await;
        let sql = "copy (select i, case when i = 5000 then pg_terminate_backend(pg_backend_pid()) end \
                   from generate_series(1, 100000) i) to stdout";
        let err = read_all(&mut wire, sql).await.unwrap_err();
        assert!(matches!(&err, sqlx::Error::Database(db) if db.code().as_deref() == Some("57P01")), "{err:?}");
    }

    /// An error in the middle of a COPY (rows already sent) comes back with its SQLSTATE, once
    /// the reply has ended: the connection then answers sqlx's next query.
    #[tokio::test]
    async fn an_error_mid_copy_keeps_its_sqlstate_and_the_connection_in_step() {
        let (mut conn, mut wire) = connect().await;
        let err = read_all(&mut wire, "copy (select 1 / (20000 - i) from generate_series(1, 30000) i) to stdout")
            .await
            .unwrap_err();
        let sqlx::Error::Database(db) = &err else { panic!("{err:?}") };
        assert_eq!(db.code().as_deref(), Some("22012"), "{err}");
        let n: i32 = sqlx::query_scalar("select 41 + 1").fetch_one(&mut conn).await.unwrap();
        assert_eq!(n, 42);
        // A query the server refuses before any row.
        let err = read_all(&mut wire, "copy (select nope from nowhere) to stdout").await.unwrap_err();
        assert!(matches!(&err, sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01")), "{err}");
        let (_, rows, _) = read_all(&mut wire, "copy (select 1) to stdout").await.unwrap();
        assert_eq!(rows, 1);
    }
}
