//! A real S3-compatible object store for a test: a one-node Garage started by `scripts/s3.sh`
//! in a directory of its own, on free ports, stopped (by its pid) when dropped.

use std::{path::PathBuf, process::Command};

use exportd::storage::{ObjectStorage, S3Settings};

/// A running Garage node with the bucket `exports` and a key for it.
pub struct Garage {
    dir: tempfile::TempDir,
    /// `AWS_*` variables and `EXPORTD_STORAGE` for an exportd process.
    pub env: Vec<(String, String)>,
}

/// Three consecutive free ports (S3 API, RPC, admin) on the loopback interface.
fn free_ports() -> u16 {
    for _ in 0..100 {
        let base = super::process::free_port();
        if base < 65_000 && (1..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no three consecutive free ports");
}

impl Garage {
    /// Starts a node on the loopback interface (installing Garage first if this machine has
    /// none: CI does it beforehand).
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// Starts a node listening on `addr` (e.g. a bridge address test hosts reach).
    pub fn start_on(addr: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/s3.sh");
        let out = Command::new(&script)
            .args(["start", dir.path().to_str().unwrap(), addr])
            .env("EXPORTD_S3_PORT", free_ports().to_string())
            .output()
            .expect("scripts/s3.sh runs");
        assert!(
            out.status.success(),
            "scripts/s3.sh start failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        Self { dir, env }
    }

    /// One of the variables.
    pub fn var(&self, name: &str) -> &str {
        &self.env.iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("{name} not set")).1
    }

    /// The variables as `object_store` options (for a store opened inside the test process).
    pub fn options(&self) -> Vec<(String, String)> {
        self.env.iter().filter(|(k, _)| k.starts_with("AWS_")).map(|(k, v)| (k.to_lowercase(), v.clone())).collect()
    }

    /// `AppOptions::object_storage` for an in-process app on the bucket under `prefix`.
    pub fn for_app(&self, prefix: &str, part_size: u64) -> Option<S3Settings> {
        Some(S3Settings { url: format!("s3://exports/{prefix}"), part_size, options: self.options() })
    }

    /// The bucket under `prefix`, with parts of `part_size` bytes.
    pub fn storage(&self, prefix: &str, part_size: u64) -> ObjectStorage {
        let settings = self.for_app(prefix, part_size).expect("settings");
        ObjectStorage::new(&settings).expect("object storage")
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/s3.sh");
        let _ = Command::new(script).args(["stop", self.dir.path().to_str().unwrap()]).status();
    }
}
