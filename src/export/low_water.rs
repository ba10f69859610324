//! Fewer wake-ups while a chunk streams in: a receive low-water mark (`SO_RCVLOWAT`) on the
//! reading connection's socket.
//!
//! PostgreSQL writes a COPY's rows to its socket 8 KiB at a time, and a reader faster than the
//! server is woken for each write: about 31,000 wake-ups per 256 MB, which cost this process
//! more CPU than everything else it does with the rows. With the mark at [`MARK`] the kernel
//! wakes the reader once that much has arrived (measured: reading 1M rows of COPY took 0.07
//! CPU-s instead of 0.40, and less wall time, as the server kept the core).
//!
//! Fewer bytes than the mark may be all that is coming: a chunk's last rows, a slow query. The
//! mark is lowered to one byte before each chunk is asked for and raised once its rows flow.
//! Over a chunk's tail (the rows it can still hold, its row limit being known, fit under the
//! mark) it follows half of what may still come, halving as the tail shrinks, and drops to one
//! byte for the last [`TAIL_MARK`] (a tail woken at every 8 KiB write was most of the wake-ups
//! left: 2,100 per 1M rows with a 128 KiB mark lowered at once, 700 so). It is lowered too when
//! the stream stays silent for [`LOWER_AFTER`]. Lowering it wakes a reader waiting on bytes
//! that are there, so no wait outlasts that moment.
//!
//! sqlx does not hand out its socket. The session asks the server for both ends of its
//! connection (`inet_client_addr()`, `inet_server_addr()` and their ports), and the socket is
//! found among this process's descriptors by the same two ends, on a duplicate of each
//! candidate, so a descriptor closed and reused meanwhile is never touched: only the socket
//! whose four-tuple is the session's. Through NAT or a proxy the ends differ and no socket
//! matches; over a Unix socket there is no address: reads then wake as before. Linux only.

use std::{net::IpAddr, os::fd::OwnedFd, time::Duration};

/// The low-water mark while rows flow.
const MARK: usize = 512 * 1024;
/// How long a wait for the mark lasts before the mark is lowered.
pub(super) const LOWER_AFTER: Duration = Duration::from_millis(5);

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
    /// The mark set (1: lowered).
    mark: usize,
}

/// Below this, a chunk's tail wakes the reader for every write again (the mark is lowered).
const TAIL_MARK: usize = 16 * 1024;

impl LowWater {
    /// The socket of the connection whose ends are `ends`, when this process holds it and the
    /// server end is the one dialed (`host`, `port`): through a proxy the server sees the
    /// proxy's own connection, whose socket (a test's proxy runs in its process) is not ours.
    pub(super) fn find(ends: &Ends, (host, port): (&str, u16)) -> Option<Self> {
        let local = (ends.client_addr.as_deref()?.parse::<IpAddr>().ok()?, u16::try_from(ends.client_port?).ok()?);
        let peer = (ends.server_addr.as_deref()?.parse::<IpAddr>().ok()?, u16::try_from(ends.server_port?).ok()?);
        let dialed = peer.1 == port
            && match host.trim_matches(['[', ']']).parse::<IpAddr>() {
                Ok(ip) => ip.to_canonical() == peer.0.to_canonical(),
                // A name: the port tells enough (a path would be a Unix socket: no addresses).
                Err(_) => !host.starts_with('/'),
            };
        if !dialed {
            tracing::debug!(
                ?ends,
                host,
                port,
                "the session's server end is not the one dialed (a proxy?); reads wake on every write"
            );
            return None;
        }
        let found = sys::find(local, peer);
        if found.is_none() {
            tracing::debug!(?ends, "the reading connection's socket was not found; reads wake on every write");
        }
        found.map(|socket| Self { socket, mark: 1 })
    }

    /// A message of a chunk arrived: `rows_left` more rows may follow, of `mean_row` bytes each
    /// so far. The mark is up while they fill it; over the chunk's tail it follows half of what
    /// may still come (halving as the tail shrinks: a few wake-ups per tail, not one per write,
    /// and an estimate twice too high still wakes the reader), and is lowered for the last bytes.
    pub(super) fn follow(&mut self, rows_left: usize, mean_row: usize) {
        let coming = rows_left.saturating_mul(mean_row);
        if coming >= MARK {
            self.raise();
        } else if coming / 2 < TAIL_MARK {
            self.lower();
        } else if coming / 2 <= self.mark / 2 {
            self.set(coming / 2);
        }
    }

    /// Raises the mark (rows are flowing).
    pub(super) fn raise(&mut self) {
        if self.mark != MARK {
            self.set(MARK);
        }
    }

    /// Lowers the mark to one byte: every byte wakes the reader again.
    pub(super) fn lower(&mut self) {
        if self.mark > 1 {
            self.set(1);
        }
    }

    fn set(&mut self, mark: usize) {
        match sys::set_mark(&self.socket, mark) {
            Ok(()) => self.mark = mark,
            // Never seen; a wait on bytes that do not reach the mark then ends at the silence
            // deadline, and the run is retried from its checkpoint.
            Err(e) if mark == 1 => tracing::warn!(error = %e, "could not lower the reading socket's low-water mark"),
            Err(_) => {}
        }
    }

    /// Another descriptor of the socket (for [`super::wire::WireCopy`]).
    pub(super) fn duplicate(&self) -> std::io::Result<OwnedFd> {
        self.socket.try_clone()
    }

    /// Whether the mark is up.
    pub(super) fn is_raised(&self) -> bool {
        self.mark > 1
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
            let dialed = (host, peer.port());
            let mut low = LowWater::find(&ends, dialed).expect("the client socket");
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
            // A chunk's rows: the mark up while more than it may come, then half of what may
            // still come, halving, then one byte for the last few.
            let mut marks = Vec::new();
            for rows_left in [10_000, 3_000, 2_500, 1_400, 1_000, 300, 100, 9_000] {
                low.follow(rows_left, 200);
                marks.push(mark(&found));
            }
            assert_eq!(marks, [MARK, MARK, 250_000, 250_000, 100_000, 30_000, 1, MARK], "{host}");
            let elsewhere = Ends { server_port: Some(i32::from(peer.port()) ^ 1), ..ends.clone() };
            assert!(LowWater::find(&elsewhere, (host, peer.port() ^ 1)).is_none(), "{host}: no socket has that tuple");
            // The server end is not the one dialed (a proxy in between): not ours, though the
            // four-tuple is this process's.
            assert!(LowWater::find(&ends, (host, peer.port() ^ 1)).is_none(), "{host}: another port dialed");
            let other = if host == "::1" { "127.0.0.1" } else { "127.0.0.2" };
            assert!(LowWater::find(&ends, (other, peer.port())).is_none(), "{host}: another address dialed");
            assert!(LowWater::find(&ends, ("localhost", peer.port())).is_some(), "{host}: a name, the same port");
            let unix = Ends { client_addr: None, client_port: None, ..ends };
            assert!(LowWater::find(&unix, dialed).is_none(), "no address: a Unix socket");
        }
    }
}
