//! Fewer wake-ups while a chunk streams in: a receive low-water mark (`SO_RCVLOWAT`) on the
//! reading connection's socket.
//!
//! PostgreSQL writes a COPY's rows to its socket 8 KiB at a time, and a reader faster than the
//! server is woken for each write: about 31,000 wake-ups per 256 MB, which cost this process
//! more CPU than everything else it does with the rows. With the mark at [`MARK`] the kernel
//! wakes the reader once that much has arrived, a sixteenth as often (measured: reading 1M rows
//! of COPY took 0.07 CPU-s instead of 0.40, and less wall time, as the server kept the core).
//!
//! Fewer bytes than the mark may be all that is coming: a chunk's last rows, a slow query. The
//! mark is lowered to one byte before each chunk is asked for and raised once its rows flow;
//! lowered again when the rows the chunk can still hold (its row limit is known) fit under the
//! mark, or when the stream stays silent for [`LOWER_AFTER`]. Lowering it wakes a reader waiting
//! on bytes that are there, so no wait outlasts that moment.
//!
//! sqlx does not hand out its socket. The session asks the server for both ends of its
//! connection (`inet_client_addr()`, `inet_server_addr()` and their ports), and the socket is
//! found among this process's descriptors by the same two ends, on a duplicate of each
//! candidate, so a descriptor closed and reused meanwhile is never touched: only the socket
//! whose four-tuple is the session's. Through NAT or a proxy the ends differ and no socket
//! matches; over a Unix socket there is no address: reads then wake as before. Linux only.

use std::{net::IpAddr, os::fd::OwnedFd, time::Duration};

/// The low-water mark while rows flow.
const MARK: usize = 128 * 1024;
/// How long a wait for the mark lasts before the mark is lowered.
pub(super) const LOWER_AFTER: Duration = Duration::from_millis(2);

/// The two ends of the reading session's connection, as the server sees them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct Ends {
    pub client_addr: Option<String>,
    pub client_port: Option<i32>,
    pub server_addr: Option<String>,
    pub server_port: Option<i32>,
}

/// The reading connection's socket (a duplicate of sqlx's descriptor) and its mark.
#[derive(Debug)]
pub(super) struct LowWater {
    socket: OwnedFd,
    raised: bool,
}

impl LowWater {
    /// The socket of the connection whose ends are `ends`, when this process holds it.
    pub(super) fn find(ends: &Ends) -> Option<Self> {
        let local = (ends.client_addr.as_deref()?.parse::<IpAddr>().ok()?, u16::try_from(ends.client_port?).ok()?);
        let peer = (ends.server_addr.as_deref()?.parse::<IpAddr>().ok()?, u16::try_from(ends.server_port?).ok()?);
        let found = sys::find(local, peer);
        if found.is_none() {
            tracing::debug!(?ends, "the reading connection's socket was not found; reads wake on every write");
        }
        found.map(|socket| Self { socket, raised: false })
    }

    /// A message of a chunk arrived: `rows_left` more rows may follow, of `mean_row` bytes each
    /// so far. Raises the mark while they fill it, and lowers it once they would not.
    pub(super) fn follow(&mut self, rows_left: usize, mean_row: usize) {
        if rows_left.saturating_mul(mean_row) < MARK { self.lower() } else { self.raise() }
    }

    /// Raises the mark (rows are flowing).
    pub(super) fn raise(&mut self) {
        if !self.raised {
            self.raised = sys::set_mark(&self.socket, MARK).is_ok();
        }
    }

    /// Lowers the mark to one byte: every byte wakes the reader again.
    pub(super) fn lower(&mut self) {
        if std::mem::replace(&mut self.raised, false)
            && let Err(e) = sys::set_mark(&self.socket, 1)
        {
            // Never seen; a wait on bytes that do not reach the mark then ends at the
            // silence deadline, and the run is retried from its checkpoint.
            tracing::warn!(error = %e, "could not lower the reading socket's low-water mark");
        }
    }

    /// Whether the mark is up.
    pub(super) fn is_raised(&self) -> bool {
        self.raised
    }
}

#[cfg(target_os = "linux")]
mod sys {
    use std::{
        io,
        mem::{size_of, zeroed},
        net::{IpAddr, SocketAddr},
        os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    };

    /// The TCP socket from `local` to `peer` among this process's descriptors, duplicated.
    pub fn find(local: (IpAddr, u16), peer: (IpAddr, u16)) -> Option<OwnedFd> {
        let want = |addr: Option<SocketAddr>, (ip, port): (IpAddr, u16)| {
            addr.is_some_and(|a| a.port() == port && a.ip().to_canonical() == ip.to_canonical())
        };
        std::fs::read_dir("/proc/self/fd").ok()?.flatten().find_map(|entry| {
            let fd: RawFd = entry.file_name().to_str()?.parse().ok()?;
            // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor of the same open file (or -1 if
            // `fd` is closed); we own it from here.
            let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
            if dup < 0 {
                return None;
            }
            // SAFETY: `dup` is a descriptor we just opened and nothing else owns.
            let dup = unsafe { OwnedFd::from_raw_fd(dup) };
            (want(address(&dup, libc::getsockname), local) && want(address(&dup, libc::getpeername), peer))
                .then_some(dup)
        })
    }

    type NameFn = unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

    /// The socket's local or peer address (`name`: getsockname or getpeername), if it is IP.
    fn address(socket: &OwnedFd, name: NameFn) -> Option<SocketAddr> {
        // SAFETY: an all-zero sockaddr_storage is valid; the call writes at most `len` bytes.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let ok = unsafe { name(socket.as_raw_fd(), (&raw mut storage).cast(), &mut len) } == 0;
        if !ok {
            return None;
        }
        match libc::c_int::from(storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let a: libc::sockaddr_in = unsafe { *(&raw const storage).cast() };
                Some(SocketAddr::new(IpAddr::from(a.sin_addr.s_addr.to_ne_bytes()), u16::from_be(a.sin_port)))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let a: libc::sockaddr_in6 = unsafe { *(&raw const storage).cast() };
                Some(SocketAddr::new(IpAddr::from(a.sin6_addr.s6_addr), u16::from_be(a.sin6_port)))
            }
            _ => None,
        }
    }

    /// Sets the socket's receive low-water mark.
    pub fn set_mark(socket: &OwnedFd, bytes: usize) -> io::Result<()> {
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `value`.
        let done = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if done == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use std::{io, net::IpAddr, os::fd::OwnedFd};

    pub fn find(_local: (IpAddr, u16), _peer: (IpAddr, u16)) -> Option<OwnedFd> {
        None
    }

    pub fn set_mark(_socket: &OwnedFd, _bytes: usize) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "the low-water mark is used on Linux only"))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The socket's receive low-water mark, as the kernel reports it.
    fn mark(socket: &std::net::TcpStream) -> usize {
        use std::os::fd::AsRawFd as _;
        let (mut value, mut len) = (0 as libc::c_int, std::mem::size_of::<libc::c_int>() as libc::socklen_t);
        // SAFETY: getsockopt writes at most `len` bytes into `value`.
        let done = unsafe {
            libc::getsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVLOWAT, (&raw mut value).cast(), &mut len)
        };
        assert_eq!(done, 0);
        value as usize
    }

    /// Among every descriptor of this process, exactly the socket with the given four-tuple is
    /// found (IPv4 and IPv6), and a tuple no socket has finds none.
    #[test]
    fn finds_exactly_the_socket_of_a_four_tuple() {
        for host in ["127.0.0.1", "::1"] {
            let Ok(listener) = std::net::TcpListener::bind((host, 0)) else { continue }; // no IPv6 here
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            let (local, peer) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
            let ends = Ends {
                client_addr: Some(local.ip().to_string()),
                client_port: Some(local.port().into()),
                server_addr: Some(peer.ip().to_string()),
                server_port: Some(peer.port().into()),
            };
            let mut low = LowWater::find(&ends).expect("the client socket");
            let found = std::net::TcpStream::from(low.socket.try_clone().unwrap());
            assert_eq!((found.local_addr().unwrap(), found.peer_addr().unwrap()), (local, peer), "{host}");
            // The accepted end has the same two addresses the other way round: not it.
            assert_eq!(server.peer_addr().unwrap(), local);
            low.raise();
            assert!(low.is_raised());
            assert_eq!(mark(&found), MARK, "set on the connection's own socket");
            low.lower();
            assert!(!low.is_raised());
            assert_eq!(mark(&found), 1);
            let elsewhere = Ends { server_port: Some(i32::from(peer.port()) ^ 1), ..ends.clone() };
            assert!(LowWater::find(&elsewhere).is_none(), "{host}: no socket has that tuple");
            let unix = Ends { client_addr: None, client_port: None, ..ends };
            assert!(LowWater::find(&unix).is_none(), "no address: a Unix socket");
        }
    }
}
