//! The local directory backend: one file per run under `<root>/<export>/`, appended past the
//! page cache ([`super::direct`]) and synced with `fdatasync`, prefix copies with
//! `copy_file_range`, downloads sent from an open file.

use std::{io, path::PathBuf, time::SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use tokio::{
    fs::{self, File, OpenOptions},
    io::{AsyncReadExt, AsyncSeekExt},
};
use uuid::Uuid;

use super::{
    FileSpan, PrefixCopy, PrepareError, Prepared, Resume, RunFile, RunId, RunWriter, Storage, StoredFile,
    direct::Appender,
};

/// A storage directory.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

/// Bytes copied per [`PrefixCopy::step`]: a stop request waits for one slice at most.
const COPY_SLICE: u64 = 8 * 1024 * 1024;
/// Read size when streaming a file: large enough for loopback speeds, small enough for flat memory.
const READ_BYTES: usize = 256 * 1024;

/// A run's file on disk, appended to from byte `at` (past the page cache where the filesystem
/// allows).
async fn run_writer(file: std::fs::File, at: u64) -> io::Result<Box<dyn RunWriter>> {
    let appender = tokio::task::spawn_blocking(move || Appender::open(file, at)).await.map_err(io::Error::other)??;
    Ok(Box::new(appender))
}

/// A finished file, open (so it reads to its end even if deleted meanwhile).
struct LocalStoredFile {
    file: std::sync::Arc<std::fs::File>,
    size: u64,
}

#[async_trait]
impl StoredFile for LocalStoredFile {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(self: Box<Self>, start: u64, count: u64) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
        let file = std::sync::Arc::try_unwrap(self.file).or_else(|shared| shared.try_clone())?;
        let mut file = File::from_std(file);
        if start > 0 {
            file.seek(io::SeekFrom::Start(start)).await?;
        }
        Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(file.take(count), READ_BYTES)))
    }

    fn spans(&self, start: u64, count: u64) -> Option<Vec<FileSpan>> {
        Some(vec![FileSpan { file: self.file.clone(), offset: start, len: count }])
    }
}

/// The copy of a checkpointed prefix into a new run's file, slice by slice (`copy_file_range`
/// on Linux).
#[derive(Debug)]
struct LocalPrefixCopy {
    src: Option<std::fs::File>,
    dst: Option<std::fs::File>,
    /// The new file's name, and its path.
    name: String,
    path: PathBuf,
    /// Bytes to copy, and copied so far.
    bytes: u64,
    copied: u64,
    previous: String,
}

#[async_trait]
impl PrefixCopy for LocalPrefixCopy {
    async fn step(&mut self) -> Result<bool, PrepareError> {
        let (Some(mut src), Some(mut dst)) = (self.src.take(), self.dst.take()) else {
            return Ok(self.copied == self.bytes);
        };
        let (at, n) = (self.copied, (self.bytes - self.copied).min(COPY_SLICE));
        let (src, dst, copied) = tokio::task::spawn_blocking(move || -> io::Result<_> {
            use std::io::{Read, Seek};
            src.seek(io::SeekFrom::Start(at))?;
            dst.seek(io::SeekFrom::Start(at))?;
            let copied = io::copy(&mut (&mut src).take(n), &mut dst)?; // copy_file_range on Linux
            Ok((src, dst, copied))
        })
        .await
        .map_err(io::Error::other)??;
        if copied != n {
            return Err(PrepareError::CheckpointLost { name: self.previous.clone(), bytes: self.bytes });
        }
        self.copied += copied;
        (self.src, self.dst) = (Some(src), Some(dst));
        Ok(self.copied == self.bytes)
    }

    async fn finish(mut self: Box<Self>) -> Result<RunFile, PrepareError> {
        let dst = self.dst.take().expect("the copy owns its file until finished");
        dst.sync_data()?;
        let out = run_writer(dst, self.bytes).await?;
        Ok(RunFile { out, name: std::mem::take(&mut self.name), state: None })
    }

    async fn abandon(mut self: Box<Self>) {
        self.dst.take();
        if let Err(e) = fs::remove_file(&self.path).await {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove an abandoned copy");
        }
    }
}

impl LocalDir {
    /// Uses (and creates) `root`.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let storage = Self::at(root);
        std::fs::create_dir_all(&storage.root)?;
        Ok(storage)
    }

    /// Refers to `root` without touching the disk.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Absolute path of a stored file.
    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Creates a run's own empty file (and the export's directory), durably.
    async fn create_file(&self, run: RunId<'_>) -> io::Result<(File, String)> {
        let dir = self.root.join(run.export_id.to_string());
        fs::create_dir_all(&dir).await?;
        let name = run.file_name();
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(self.path(&name)).await?;
        // Make the new directory entry durable too.
        File::open(dir).await?.sync_all().await?;
        Ok((file, name))
    }
}

#[async_trait]
impl Storage for LocalDir {
    fn free_bytes(&self) -> Option<u64> {
        use std::os::unix::ffi::OsStrExt as _;
        let path = std::ffi::CString::new(self.root.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs only writes into the struct we pass; `path` is a valid C string.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return None;
        }
        // Blocks free to unprivileged users (root's reserve is not ours to fill).
        #[allow(clippy::useless_conversion)] // the field types differ between platforms
        Some(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
    }

    async fn prepare_run(&self, run: RunId<'_>, from: Resume<'_>) -> Result<Prepared, PrepareError> {
        let Resume { file: previous, bytes, adopt, .. } = from;
        let previous = match previous {
            Some(p) if bytes > 0 => p,
            _ => return Ok(Prepared::Ready(self.create_run(run).await?)),
        };
        let lost = || PrepareError::CheckpointLost { name: previous.to_owned(), bytes };
        let old_path = self.path(previous);
        let old_len = match fs::metadata(&old_path).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(lost()),
            Err(e) => return Err(e.into()),
        };
        if old_len < bytes {
            return Err(lost());
        }
        if adopt {
            let file = OpenOptions::new().read(true).write(true).open(&old_path).await?;
            file.set_len(bytes).await?; // drop a torn or uncheckpointed tail
            file.sync_data().await?;
            return Ok(Prepared::Ready(RunFile {
                out: run_writer(file.into_std().await, bytes).await?,
                name: previous.to_owned(),
                state: None,
            }));
        }
        let (file, name) = self.create_file(run).await?;
        Ok(Prepared::Copy(Box::new(LocalPrefixCopy {
            src: Some(std::fs::File::open(old_path)?),
            dst: Some(file.into_std().await),
            path: self.path(&name),
            name,
            bytes,
            copied: 0,
            previous: previous.to_owned(),
        })))
    }

    async fn create_run(&self, run: RunId<'_>) -> io::Result<RunFile> {
        let (file, name) = self.create_file(run).await?;
        Ok(RunFile { out: run_writer(file.into_std().await, 0).await?, name, state: None })
    }

    async fn open(&self, name: &str) -> io::Result<Box<dyn StoredFile>> {
        let file = File::open(self.path(name)).await?.into_std().await;
        let size = file.metadata()?.len();
        Ok(Box::new(LocalStoredFile { file: std::sync::Arc::new(file), size }))
    }

    async fn remove_other_runs(&self, export_id: Uuid, keep: &[&str]) {
        let dir = self.root.join(export_id.to_string());
        let Ok(mut entries) = fs::read_dir(&dir).await else {
            return;
        };
        let keep: Vec<PathBuf> = keep.iter().map(|k| self.path(k)).collect();
        while let Ok(Some(entry)) = entries.next_entry().await {
            if !keep.contains(&entry.path())
                && let Err(e) = fs::remove_file(entry.path()).await
            {
                tracing::warn!(path = %entry.path().display(), error = %e, "could not remove a stale run file");
            }
        }
    }

    async fn remove_export(&self, export_id: Uuid) {
        let dir = self.root.join(export_id.to_string());
        if let Err(e) = fs::remove_dir_all(&dir).await
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %dir.display(), error = %e, "could not remove an export's files");
        }
    }

    async fn exports(&self) -> io::Result<Vec<Uuid>> {
        let mut out = Vec::new();
        let mut entries = fs::read_dir(&self.root).await?;
        while let Some(entry) = entries.next_entry().await? {
            if entry.file_type().await?.is_dir()
                && let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok())
            {
                out.push(id);
            }
        }
        Ok(out)
    }

    async fn run_files(&self, export_id: Uuid) -> io::Result<Vec<(String, SystemTime)>> {
        let mut out = Vec::new();
        let Ok(mut entries) = fs::read_dir(self.root.join(export_id.to_string())).await else { return Ok(out) };
        while let Some(entry) = entries.next_entry().await? {
            let Some(file) = entry.file_name().to_str().map(str::to_owned) else { continue };
            out.push((format!("{export_id}/{file}"), entry.metadata().await?.modified()?));
        }
        Ok(out)
    }

    async fn remove_file(&self, name: &str) {
        if let Err(e) = fs::remove_file(self.path(name)).await
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(name, error = %e, "could not remove a stray file");
        }
    }
}
