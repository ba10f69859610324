//! A TCP proxy between the service and PostgreSQL that can go silent: it stops forwarding
//! without closing anything (no RST, no FIN), as a half-open connection, a stuck pooler or a
//! partition does. Keepalive probes would still be answered by its kernel.

use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

/// The proxy; dropping it closes every connection it holds.
pub struct Proxy {
    /// `url` with PostgreSQL's address replaced by the proxy's.
    pub url: String,
    state: Arc<State>,
    tasks: Arc<std::sync::Mutex<JoinSet<()>>>,
}

struct State {
    /// Serial number of the next accepted connection.
    next: AtomicU64,
    /// Connections with a serial below this forward nothing more.
    frozen_below: AtomicU64,
    /// New connections are accepted and then left silent.
    freeze_new: AtomicBool,
}

impl State {
    fn frozen(&self, serial: u64) -> bool {
        serial < self.frozen_below.load(Ordering::SeqCst)
    }
}

impl Proxy {
    /// Starts a proxy in front of the server of `url`.
    pub async fn start(url: &str) -> Proxy {
        let options = sqlx::postgres::PgConnectOptions::from_str(url).unwrap();
        let upstream = format!("{}:{}", options.get_host(), options.get_port());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap().to_string();
        assert!(url.contains(&upstream), "the URL names the server as host:port: {url}");
        let url = url.replacen(&upstream, &local, 1);
        let state = Arc::new(State {
            next: AtomicU64::new(0),
            frozen_below: AtomicU64::new(0),
            freeze_new: AtomicBool::new(false),
        });
        let tasks = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let (st, ts) = (state.clone(), tasks.clone());
        tasks.lock().unwrap().spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                let serial = st.next.fetch_add(1, Ordering::SeqCst);
                if st.freeze_new.load(Ordering::SeqCst) {
                    // Accepted, never answered: like a server that froze.
                    ts.lock().unwrap().spawn(async move {
                        let _hold = client;
                        std::future::pending::<()>().await
                    });
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream).await else { continue };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let mut set = ts.lock().unwrap();
                set.spawn(pump(cr, sw, serial, st.clone()));
                set.spawn(pump(sr, cw, serial, st.clone()));
            }
        });
        Proxy { url, state, tasks }
    }

    /// Every connection open now stops forwarding, for good; later ones still work.
    pub fn freeze_open_connections(&self) {
        self.state.frozen_below.store(self.state.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// New connections are accepted but never answered (a frozen server), until [`Self::thaw_new`].
    pub fn freeze_new_connections(&self) {
        self.state.freeze_new.store(true, Ordering::SeqCst);
    }

    /// New connections work again.
    pub fn thaw_new(&self) {
        self.state.freeze_new.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

/// Copies one direction until the connection is frozen, then holds both ends open, silent.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, serial: u64, state: Arc<State>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if state.frozen(serial) {
            // Both ends stay open (this task owns them) and nothing more moves.
            return std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
