//! Where export files live: one file per run, durable appends, truncation on resume, streaming out.
//!
//! Each run writes its own file (`<export>/<run token>.csv`, or `.csv.gz`). A run that takes over from a run
//! that may still be alive (crashed, paused, partitioned) copies the checkpointed prefix into a
//! new file instead of touching the old one, so a stale runner, whatever it still writes, can
//! never change a byte of the file that will be served. A run that takes over from a run that
//! released cleanly continues that file in place, cut back to the checkpoint.

use std::{
    io,
    path::{Path, PathBuf},
};

use tokio::{
    fs::{self, File, OpenOptions},
    io::AsyncSeekExt,
};
use uuid::Uuid;

/// The storage directory.
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

/// A file opened for a run, positioned at the checkpoint's byte offset.
#[derive(Debug)]
pub struct RunFile {
    pub file: File,
    /// Name relative to the storage directory, saved with each checkpoint.
    pub name: String,
}

/// A run's file: ready, or still to be filled with the checkpointed prefix.
#[derive(Debug)]
pub enum Prepared {
    Ready(RunFile),
    Copy(PrefixCopy),
}

/// Bytes copied per [`PrefixCopy::step`]: a stop request waits for one slice at most.
const COPY_SLICE: u64 = 8 * 1024 * 1024;

/// The copy of a checkpointed prefix into a new run's file, in slices (`copy_file_range` on
/// Linux), so that a run told to stop stops within a slice instead of after the whole prefix.
#[derive(Debug)]
pub struct PrefixCopy {
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

impl PrefixCopy {
    /// Copies the next slice; true once the whole prefix is copied.
    pub async fn step(&mut self) -> Result<bool, PrepareError> {
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

    /// The copied file, synced, positioned after the prefix.
    pub async fn finish(mut self) -> Result<RunFile, PrepareError> {
        let dst = self.dst.take().expect("the copy owns its file until finished");
        dst.sync_data()?;
        let mut file = File::from_std(dst);
        file.seek(io::SeekFrom::Start(self.bytes)).await?;
        Ok(RunFile { file, name: std::mem::take(&mut self.name) })
    }

    /// Stops the copy and deletes its partial file (nothing refers to it).
    pub async fn abandon(mut self) {
        self.dst.take();
        if let Err(e) = fs::remove_file(&self.path).await {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove an abandoned copy");
        }
    }
}

/// Why a run's file could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The checkpointed bytes are not on disk (file gone or shorter than the checkpoint).
    #[error("checkpointed file {name} is missing or shorter than {bytes} bytes")]
    CheckpointLost { name: String, bytes: u64 },
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Storage {
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

    /// The storage directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Absolute path of a stored file.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Opens the file a run appends to, holding exactly the `bytes` checkpointed bytes of
    /// `previous` (see the module docs for when it is continued in place or copied): ready at
    /// once, or a copy of the prefix for the caller to drive slice by slice.
    pub async fn prepare_run(
        &self,
        export_id: Uuid,
        token: Uuid,
        previous: Option<&str>,
        bytes: u64,
        adopt: bool,
        extension: &str,
    ) -> Result<Prepared, PrepareError> {
        let previous = match previous {
            Some(p) if bytes > 0 => p,
            _ => return Ok(Prepared::Ready(self.create_run(export_id, token, extension).await?)),
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
            let mut file = OpenOptions::new().write(true).open(&old_path).await?;
            file.set_len(bytes).await?; // drop a torn or uncheckpointed tail
            file.sync_data().await?;
            file.seek(io::SeekFrom::Start(bytes)).await?;
            return Ok(Prepared::Ready(RunFile { file, name: previous.to_owned() }));
        }
        let run = self.create_run(export_id, token, extension).await?;
        Ok(Prepared::Copy(PrefixCopy {
            src: Some(std::fs::File::open(old_path)?),
            dst: Some(run.file.into_std().await),
            path: self.path(&run.name),
            name: run.name,
            bytes,
            copied: 0,
            previous: previous.to_owned(),
        }))
    }

    /// Creates a run's own empty file (and the export's directory), durably.
    pub async fn create_run(&self, export_id: Uuid, token: Uuid, extension: &str) -> io::Result<RunFile> {
        let dir = self.root.join(export_id.to_string());
        fs::create_dir_all(&dir).await?;
        let name = format!("{export_id}/{token}.{extension}");
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(self.path(&name)).await?;
        // Make the new directory entry durable too.
        File::open(dir).await?.sync_all().await?;
        Ok(RunFile { file, name })
    }

    /// Deletes the files of an export's other runs (after completion; best effort).
    pub async fn remove_other_runs(&self, export_id: Uuid, keep: &str) {
        let dir = self.root.join(export_id.to_string());
        let Ok(mut entries) = fs::read_dir(&dir).await else {
            return;
        };
        let keep = self.path(keep);
        while let Ok(Some(entry)) = entries.next_entry().await {
            if entry.path() != keep
                && let Err(e) = fs::remove_file(entry.path()).await
            {
                tracing::warn!(path = %entry.path().display(), error = %e, "could not remove a stale run file");
            }
        }
    }

    /// Deletes every file of an export (failed, cancelled or expired: nothing stays on disk).
    pub async fn remove_export(&self, export_id: Uuid) {
        let dir = self.root.join(export_id.to_string());
        if let Err(e) = fs::remove_dir_all(&dir).await
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %dir.display(), error = %e, "could not remove an export's files");
        }
    }

    /// The exports that have a directory here.
    pub async fn export_dirs(&self) -> io::Result<Vec<Uuid>> {
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

    /// The files of an export (names as stored in checkpoints) and when each was last written.
    pub async fn run_files(&self, export_id: Uuid) -> io::Result<Vec<(String, std::time::SystemTime)>> {
        let mut out = Vec::new();
        let Ok(mut entries) = fs::read_dir(self.root.join(export_id.to_string())).await else { return Ok(out) };
        while let Some(entry) = entries.next_entry().await? {
            let Some(file) = entry.file_name().to_str().map(str::to_owned) else { continue };
            out.push((format!("{export_id}/{file}"), entry.metadata().await?.modified()?));
        }
        Ok(out)
    }

    /// Deletes one stored file (best effort).
    pub async fn remove_file(&self, name: &str) {
        if let Err(e) = fs::remove_file(self.path(name)).await
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(name, error = %e, "could not remove a stray file");
        }
    }

    /// Opens a finished file for reading.
    pub async fn open(&self, name: &str) -> io::Result<File> {
        File::open(self.path(name)).await
    }
}
