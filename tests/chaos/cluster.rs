//! A throwaway PostgreSQL cluster, started from the installed server binaries, that a scenario
//! may stop (fast or immediate) and start again. Never the shared service.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

/// The cluster; stopped (immediately) and deleted when dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    listen: String,
}

fn as_postgres(program: PathBuf) -> Command {
    // initdb and postgres refuse to run as root.
    if crate::support::process::is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn server_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (make test installs them)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|p| p.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()).unwrap_or(0));
    dirs.pop().expect("an installed PostgreSQL server")
}

impl Cluster {
    /// initdb + start on a free port of the loopback interface.
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// initdb + start on a free port, listening on `listen` (comma-separated addresses).
    pub fn start_on(listen: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("exportd-chaos-pg-").tempdir_in("/tmp").unwrap();
        if crate::support::process::is_root() {
            let ok = Command::new("chown").arg("postgres").arg(dir.path()).status().unwrap().success();
            assert!(ok, "chown postgres {}", dir.path().display());
        }
        let bin = server_bin();
        let status = as_postgres(bin.join("initdb"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "-D"])
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb");
        if listen != "127.0.0.1" {
            // Hosts on the other addresses' networks connect too (test namespaces on a bridge).
            use std::io::Write as _;
            let hba = dir.path().join("data/pg_hba.conf");
            let mut f = std::fs::OpenOptions::new().append(true).open(hba).unwrap();
            writeln!(f, "host all all samenet trust").unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cluster = Self { dir, bin, port, listen: listen.to_owned() };
        cluster.start_server();
        cluster
    }

    fn pg_ctl(&self) -> Command {
        let mut c = as_postgres(self.bin.join("pg_ctl"));
        c.arg("-D").arg(self.dir.path().join("data")).stdout(Stdio::null());
        c
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start_server(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses={} -c max_connections=200",
            self.port,
            self.dir.path().display(),
            self.listen,
        );
        let status = self
            .pg_ctl()
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .status()
            .unwrap();
        let log = || std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        assert!(status.success(), "pg_ctl start:\n{}", log());
    }

    /// Stops the server: `fast` (clean) or `immediate` (like a crash: recovery at next start).
    pub fn stop_server(&self, mode: &str) {
        let status = self.pg_ctl().args(["-m", mode, "-w", "stop"]).status().unwrap();
        assert!(status.success(), "pg_ctl stop -m {mode}");
    }

    /// A hot standby of this cluster (`pg_basebackup -R`: streaming replication from it),
    /// started on a port of its own.
    pub fn replica(&self) -> Self {
        let dir = tempfile::Builder::new().prefix("exportd-chaos-replica-").tempdir_in("/tmp").unwrap();
        if crate::support::process::is_root() {
            let ok = Command::new("chown").arg("postgres").arg(dir.path()).status().unwrap().success();
            assert!(ok, "chown postgres {}", dir.path().display());
        }
        let status = as_postgres(self.bin.join("pg_basebackup"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-D",
            ])
            .arg(dir.path().join("data"))
            .status()
            .unwrap();
        assert!(status.success(), "pg_basebackup");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let replica = Self { dir, bin: self.bin.clone(), port, listen: "127.0.0.1".into() };
        replica.start_server();
        replica
    }

    /// URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl().args(["-m", "immediate", "stop"]).stderr(Stdio::null()).status();
    }
}
