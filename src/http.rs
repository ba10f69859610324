//! The HTTP server: the API's routes served over HTTP/1.1 by hyper, with every resource a
//! client can hold bounded — connections (in all and per client address), the time to send a
//! request head (and to stay idle between requests), the time a response may stall.
//!
//! poem's own server has none of these: no header-read or idle timeout (a slowloris
//! connection stays open), no connection cap, and an accept loop that retries at once when
//! accepting fails, so at the file descriptor limit it spun a core at 100%.

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
    time::Duration,
};

use hyper_util::rt::{TokioIo, TokioTimer};
use poem::{Endpoint, EndpointExt, IntoEndpoint, Response};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::Sleep,
};

use crate::shutdown::Shutdown;

mod zero_copy;
pub use zero_copy::ZeroCopy;

/// What one client (and all of them) may hold of the server.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Open connections in all; beyond, new connections wait in the listen backlog.
    pub max_connections: usize,
    /// Open connections from one address (0 = no limit); beyond, a new one is answered 503
    /// and closed, so one client cannot take every connection.
    pub max_connections_per_client: usize,
    /// Time to send a request's head; also how long a connection may sit idle between requests.
    pub header_timeout: Duration,
    /// How long a response may make no progress (the client not reading) before its
    /// connection is closed.
    pub send_timeout: Duration,
    /// How long stopping waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl HttpLimits {
    /// The limits `settings` ask for, with the connection cap kept `reserve` file descriptors
    /// below the process's limit (database connections, files being written and read), so
    /// accepting never runs out of descriptors the rest of the service needs.
    pub fn new(settings: &crate::config::HttpSettings, reserve: usize) -> Self {
        let mut max_connections = settings.http_max_connections.max(1);
        if let Some(fds) = open_files_limit() {
            let fit = fds.saturating_sub(reserve).max(16);
            if max_connections > fit {
                tracing::warn!(
                    asked = max_connections,
                    kept = fit,
                    open_files_limit = fds,
                    "HTTP connection cap lowered to fit the open files limit (raise it with ulimit -n)"
                );
                max_connections = fit;
            }
        }
        Self {
            max_connections,
            max_connections_per_client: settings.http_max_connections_per_client,
            header_timeout: settings.http_header_timeout,
            send_timeout: settings.http_send_timeout,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// The soft limit on open files of this process.
fn open_files_limit() -> Option<usize> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then(|| usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}

/// How often freed connection memory is handed back to the OS (when connections closed).
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// At most one warning this often while accepting fails for lack of resources.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Pause after accepting failed for lack of resources (file descriptors, memory), so the
/// loop waits for them instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a connection over its client's cap is told before it is closed.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 92\r\n\r\n\
{\"error\":\"too_many_connections\",\"message\":\"too many open connections from this address\"}\n";

/// Serves `routes` on `listener` until `shutdown`, then lets requests in flight finish (up to
/// `shutdown_grace`).
pub async fn serve(
    listener: TcpListener,
    routes: impl IntoEndpoint<Endpoint: 'static>,
    limits: HttpLimits,
    shutdown: Shutdown,
) -> io::Result<()> {
    let endpoint: Arc<poem::endpoint::BoxEndpoint<'static, Response>> =
        Arc::new(routes.into_endpoint().map_to_response().boxed());
    let local = poem::web::LocalAddr(poem::Addr::SocketAddr(listener.local_addr()?));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let clients = Clients::default();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trimmer = tokio::spawn(trim_after_closes(closed.clone(), shutdown.clone()));
    let mut last_warning: Option<tokio::time::Instant> = None;
    // hyper's own buffer size (~408 KiB per connection) is kept: a download the client does
    // not read holds at most that plus one 256 KiB piece of its file. 64 KiB cut download
    // throughput by about a third (the next piece was no longer read while one was sent).
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            _ = shutdown.wait() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if out_of_resources(&e) {
                    if last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                        tracing::warn!(error = %e, "cannot accept connections; waiting for resources (said at most every 10 s)");
                        last_warning = Some(tokio::time::Instant::now());
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        let Some(client) = clients.enter(peer.ip(), limits.max_connections_per_client) else {
            tracing::debug!(%peer, "connection refused: too many from this address");
            let _ = stream.try_write(TOO_MANY_CONNECTIONS);
            continue;
        };
        let (endpoint, local) = (endpoint.clone(), local.clone());
        let zero_copy = ZeroCopy::for_connection();
        let io = Guarded::new(stream, limits.send_timeout, zero_copy.clone());
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let (endpoint, local) = (endpoint.clone(), local.clone());
            if let Some(zero_copy) = &zero_copy {
                zero_copy.begin_request();
                req.extensions_mut().insert(zero_copy.clone());
            }
            let remote = poem::web::RemoteAddr(poem::Addr::SocketAddr(peer));
            async move {
                let response = endpoint.get_response((req, local, remote, poem::http::uri::Scheme::HTTP).into()).await;
                Ok::<hyper::Response<_>, Infallible>(response.into())
            }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(io), service));
        let closed = closed.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop((slot, client));
            closed.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    drop(listener);
    trimmer.abort();
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(grace = ?limits.shutdown_grace, "requests still in flight at shutdown were cut off");
    }
    Ok(())
}

/// Every [`TRIM_EVERY`], if connections closed meanwhile, hands their freed memory back to the OS.
async fn trim_after_closes(closed: Arc<std::sync::atomic::AtomicBool>, shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TRIM_EVERY) => {}
            _ = shutdown.wait() => return,
        }
        if closed.swap(false, std::sync::atomic::Ordering::Relaxed) {
            crate::alloc::trim();
        }
    }
}

/// Accept errors that mean "no resources now" (as opposed to one connection failing).
fn out_of_resources(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Open connections per client address.
#[derive(Debug, Default, Clone)]
struct Clients(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One open connection of a client; leaving drops the count.
struct Client {
    clients: Clients,
    ip: IpAddr,
}

impl Clients {
    fn enter(&self, ip: IpAddr, cap: usize) -> Option<Client> {
        let mut open = self.0.lock().expect("not poisoned");
        let n = open.entry(ip).or_default();
        if cap > 0 && *n >= cap {
            return None;
        }
        *n += 1;
        Some(Client { clients: self.clone(), ip })
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let mut open = self.clients.0.lock().expect("not poisoned");
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A connection whose writes fail once they have made no progress for the send timeout
/// (the client stopped reading): hyper then closes it, and what the response held is freed.
/// Files of zero-copy bodies are sent with `sendfile` (see [`zero_copy`]).
struct Guarded {
    stream: TcpStream,
    send_timeout: Duration,
    /// Running while a write waits for the client.
    stalled: Option<Pin<Box<Sleep>>>,
    zero_copy: Option<ZeroCopy>,
}

impl Guarded {
    fn new(stream: TcpStream, send_timeout: Duration, zero_copy: Option<ZeroCopy>) -> Self {
        Self { stream, send_timeout, stalled: None, zero_copy }
    }

    /// The outcome of a write: progress clears the stall; waiting starts (or checks) its clock.
    fn watch<T>(&mut self, cx: &mut Context<'_>, write: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if write.is_ready() {
            self.stalled = None;
            return write;
        }
        let timeout = self.send_timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stalled.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client read nothing for {timeout:?}: send timeout"),
        )))
    }
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let write = match &this.zero_copy {
            Some(zero_copy) => zero_copy.poll_write(&mut this.stream, cx, buf),
            None => Pin::new(&mut this.stream).poll_write(cx, buf),
        };
        self.watch(cx, write)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let write = match &this.zero_copy {
            Some(zero_copy) => zero_copy.poll_write_vectored(&mut this.stream, cx, bufs),
            None => Pin::new(&mut this.stream).poll_write_vectored(cx, bufs),
        };
        self.watch(cx, write)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flush = Pin::new(&mut self.stream).poll_flush(cx);
        self.watch(cx, flush)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
