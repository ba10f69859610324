//! Real `exportd` processes, started from the built binary and stopped with real signals; a
//! process's peak memory; a size-limited filesystem.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// One `exportd serve` or `exportd worker` process, restartable with the same settings.
pub struct Exportd {
    child: Option<Child>,
    command: &'static str,
    env: Vec<(String, String)>,
    /// Base URL of the API (serve only).
    pub base: Option<String>,
    /// Where a `serve` process keeps its development key (`EXPORTD_DEV_KEY_FILE`).
    key_dir: Option<tempfile::TempDir>,
    /// Where its stderr (the logs) goes (None: the test's own stderr).
    log: Option<PathBuf>,
    /// The network namespace it runs in (None: this one).
    netns: Option<String>,
}

/// The settings of a process on `db_url` writing to `storage`, plus `extra`.
pub fn exportd_env(db_url: &str, storage: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let base = [("DATABASE_URL", db_url.to_owned()), ("EXPORTD_STORAGE_DIR", storage.display().to_string())];
    base.into_iter().chain(extra.iter().map(|(k, v)| (*k, (*v).to_owned()))).map(|(k, v)| (k.to_owned(), v)).collect()
}

/// The Prometheus text a process's metrics listener at `addr` serves.
pub async fn scrape_metrics(addr: &str) -> String {
    reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap()
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Peak resident memory of a process (KiB), since it started or since [`reset_peak_rss`].
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Starts measuring a process's peak memory afresh.
pub fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

impl Exportd {
    /// `exportd serve` on a free port, once `/healthz` answers.
    pub async fn serve(env: Vec<(String, String)>) -> Self {
        Self::http("serve", env, None).await
    }

    /// `exportd serve` on `db_url`, writing to `storage`, with its own `/metrics` listener (so
    /// what it counts is this test's alone); returns it and the listener's address.
    pub async fn serve_measured(db_url: &str, storage: &Path) -> (Self, String) {
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let env = exportd_env(db_url, storage, &[("RUST_LOG", "warn"), ("EXPORTD_METRICS_LISTEN", &metrics_addr)]);
        (Self::serve(env).await, metrics_addr)
    }

    /// `exportd api` (HTTP only) on a free port, its logs appended to `log`.
    pub async fn api_only(env: Vec<(String, String)>, log: &Path) -> Self {
        Self::http("api", env, Some(log)).await
    }

    /// `exportd worker`, its logs appended to `log`.
    pub async fn worker_logged(env: Vec<(String, String)>, log: &Path) -> Self {
        Self::worker_in(None, env, Some(log)).await
    }

    /// `exportd worker` in network namespace `netns` (None: this one).
    async fn worker_in(netns: Option<String>, env: Vec<(String, String)>, log: Option<&Path>) -> Self {
        let log = log.map(Path::to_owned);
        let mut p = Self { child: None, command: "worker", env, base: None, key_dir: None, log, netns };
        p.start().await;
        p
    }

    /// `exportd api` (HTTP only) on `host` (a network namespace), port 8080 of its address.
    pub async fn api_on(host: &super::netns::Host, env: Vec<(String, String)>, log: &Path) -> Self {
        let mut env = env;
        env.push(("EXPORTD_LISTEN".into(), format!("{}:8080", host.ip)));
        let key_dir = tempfile::tempdir().expect("tempdir");
        env.push(("EXPORTD_DEV_KEY_FILE".into(), key_dir.path().join("dev-key").display().to_string()));
        let mut p = Self {
            child: None,
            command: "api",
            env,
            base: Some(format!("http://{}:8080", host.ip)),
            key_dir: Some(key_dir),
            log: Some(log.to_owned()),
            netns: Some(host.ns.clone()),
        };
        p.start().await;
        p
    }

    /// `exportd worker` on `host` (a network namespace).
    pub async fn worker_on(host: &super::netns::Host, env: Vec<(String, String)>, log: &Path) -> Self {
        Self::worker_in(Some(host.ns.clone()), env, Some(log)).await
    }

    /// `command` (`serve` or `api`) on a free port, once `/healthz` answers.
    async fn http(command: &'static str, env: Vec<(String, String)>, log: Option<&Path>) -> Self {
        let port = free_port();
        let mut env = env;
        env.push(("EXPORTD_LISTEN".into(), format!("127.0.0.1:{port}")));
        // The process makes an admin key there at its first start (as `make run` does).
        let key_dir = tempfile::tempdir().expect("tempdir");
        env.push(("EXPORTD_DEV_KEY_FILE".into(), key_dir.path().join("dev-key").display().to_string()));
        let base = Some(format!("http://127.0.0.1:{port}"));
        let log = log.map(Path::to_owned);
        let mut p = Self { child: None, command, env, base, key_dir: Some(key_dir), log, netns: None };
        p.start().await;
        p
    }

    /// [`Exportd::serve`] with its logs appended to `log`.
    pub async fn serve_logged(env: Vec<(String, String)>, log: &Path) -> Self {
        Self::http("serve", env, Some(log)).await
    }

    /// `exportd worker`.
    pub async fn worker(env: Vec<(String, String)>) -> Self {
        Self::worker_in(None, env, None).await
    }

    /// (Re)starts the process with its settings.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let exe = env!("CARGO_BIN_EXE_exportd");
        let mut command = match &self.netns {
            // `ip netns exec` execs the program: the child's pid is exportd's own.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, exe]);
                c
            }
            None => Command::new(exe),
        };
        let child = command
            .arg(self.command)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(match &self.log {
                Some(path) => {
                    std::fs::OpenOptions::new().create(true).append(true).open(path).expect("log file").into()
                }
                None => Stdio::inherit(),
            })
            .spawn()
            .expect("start exportd");
        self.child = Some(child);
        if let Some(base) = &self.base {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !matches!(reqwest::get(format!("{base}/healthz")).await, Ok(r) if r.status() == 200) {
                assert!(Instant::now() < deadline, "exportd serve did not come up");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The API of a `serve` process, called with its development key (admin).
    pub fn api(&self) -> super::client::Api {
        let dir = self.key_dir.as_ref().expect("a serve process");
        let key = std::fs::read_to_string(dir.path().join("dev-key")).expect("serve wrote its development key");
        super::client::Api::new(self.base.clone().expect("a serve process"), key.trim())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal (`-9`, `-TERM`, `-STOP`, `-CONT`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.pid().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        self.signal("-9");
        self.child.take().unwrap().wait().unwrap();
    }

    /// SIGTERM; returns how long the process took to exit, and whether it exited cleanly.
    pub fn terminate(&mut self) -> (Duration, bool) {
        let started = Instant::now();
        self.signal("-TERM");
        let status = self.child.take().unwrap().wait().unwrap();
        (started.elapsed(), status.success())
    }
}

impl Drop for Exportd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// True when running as root (needed to mount a tmpfs).
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.trim_ascii() == b"0").unwrap_or(false)
}

/// A size-limited tmpfs, unmounted on drop.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, size: &str) -> Self {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs");
        Self { path: path.to_owned() }
    }

    /// Grows (or shrinks) the filesystem: "freeing space".
    pub fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
