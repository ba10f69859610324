//! Where export files live: one small trait ([`Storage`]) the engine writes through and the API
//! reads through, with the local directory ([`LocalDir`]) as its first backend.
//!
//! The contract every backend keeps (and `tests/api/storage.rs` checks):
//! - each run writes a file of its own (`<export>/<run token>.<ext>`); a run that takes over
//!   from a run that may still be alive gets the checkpointed prefix *copied* into its own file
//!   ([`Prepared::Copy`], in slices so a stop is never held up), so a stale runner can never
//!   change a byte that will be served; one that takes over from a clean release continues the
//!   file in place, cut back to the checkpoint;
//! - [`RunWriter::sync`] says, at a chunk boundary, whether every appended byte is durable (and
//!   what else a checkpoint must record to find them again: [`Durable::state`]); the engine saves
//!   a checkpoint only then, so a checkpoint never points past durable bytes. A directory makes
//!   every chunk durable; an object store only once a part's worth is buffered;
//! - [`RunWriter::finish`] makes the file whole and readable (an object store completes its
//!   upload), before the export is marked completed;
//! - a stored file opened for reading keeps its bytes until read, even if it is deleted.
//!
//! Names are relative to the backend's root and are what checkpoints store. The object-store
//! backend ([`ObjectStorage`]) maps a run file to a multipart upload (append = buffer, sync =
//! upload a part) and a prefix copy to server-side part copies.

mod direct;
mod local;
mod s3;

use std::{
    fmt, io,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use uuid::Uuid;

pub use local::LocalDir;
pub use s3::{MIN_PART_SIZE, ObjectStorage, S3Settings};

/// A storage backend, shared by the engine, the API and the sweeper.
pub type SharedStorage = std::sync::Arc<dyn Storage>;

/// Where export files live (see the module docs for the contract).
#[async_trait]
pub trait Storage: fmt::Debug + Send + Sync {
    /// Opens the file a run appends to, holding exactly the checkpointed bytes of `from`: ready
    /// at once (adopted: continued in place), or a copy of the prefix for the caller to drive
    /// slice by slice.
    async fn prepare_run(&self, run: RunId<'_>, from: Resume<'_>) -> Result<Prepared, PrepareError>;

    /// Creates a run's own empty file, durably.
    async fn create_run(&self, run: RunId<'_>) -> io::Result<RunFile>;

    /// Opens a finished file for reading.
    async fn open(&self, name: &str) -> io::Result<Box<dyn StoredFile>>;

    /// Deletes the files of an export but those in `keep` (after completion; best effort).
    async fn remove_other_runs(&self, export_id: Uuid, keep: &[&str]);

    /// Deletes every file of an export (best effort).
    async fn remove_export(&self, export_id: Uuid);

    /// The exports that have files here.
    async fn exports(&self) -> io::Result<Vec<Uuid>>;

    /// The files of an export (names as stored in checkpoints) and when each was last written.
    async fn run_files(&self, export_id: Uuid) -> io::Result<Vec<(String, SystemTime)>>;

    /// Deletes one stored file (best effort).
    async fn remove_file(&self, name: &str);

    /// A URL the client can fetch the finished file from directly (an object store's presigned
    /// URL, valid for `ttl`, naming `file_name` as the download's name); None: serve it ourselves.
    async fn download_url(&self, _name: &str, _file_name: &str, _ttl: Duration) -> io::Result<Option<String>> {
        Ok(None)
    }

    /// Joins `pieces` (in order, each up to its checkpointed bytes) into one stored file `name`,
    /// without their bytes passing through this process, when the backend can (object storage:
    /// `UploadPartCopy`, server-side); false when it cannot, and the pieces stay the file.
    async fn join(&self, _name: &str, _pieces: &[PieceFile]) -> io::Result<bool> {
        Ok(false)
    }

    /// Bytes still free for files (None: unknown, or no such limit for this backend).
    fn free_bytes(&self) -> Option<u64>;

    /// The free bytes when they are below `floor` (0: no floor), None otherwise.
    fn below_floor(&self, floor: u64) -> Option<u64> {
        self.free_bytes().filter(|free| floor > 0 && *free < floor)
    }
}

/// Which run a file belongs to, and its extension (`csv`, `csv.gz`).
#[derive(Debug, Clone, Copy)]
pub struct RunId<'a> {
    /// The export.
    pub export_id: Uuid,
    /// The run's owner token.
    pub token: Uuid,
    /// The file's extension (`csv`, `csv.gz`).
    pub extension: &'a str,
    /// The key range whose piece this is (a parallel export), or None: the export's own file.
    pub piece: Option<i32>,
}

impl RunId<'_> {
    /// The run file's name: `<export>/<token>.<extension>`, or for a key range's piece
    /// `<export>/<token>-<position>.<extension>`.
    pub fn file_name(&self) -> String {
        match self.piece {
            None => format!("{}/{}.{}", self.export_id, self.token, self.extension),
            Some(p) => format!("{}/{}-{p}.{}", self.export_id, self.token, self.extension),
        }
    }
}

/// A finished piece of a parallel export: its file and its checkpointed length.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PieceFile {
    /// The piece's name in storage.
    pub name: String,
    /// Its bytes (what follows, if anything, is not the piece's).
    pub bytes: u64,
}

/// Where a run resumes: the checkpointed file (None: nothing yet), its checkpointed length, what
/// else the checkpoint recorded of it, and whether the run that wrote it released cleanly (so it
/// may be continued in place).
#[derive(Debug, Clone, Copy)]
pub struct Resume<'a> {
    /// The checkpointed file's name.
    pub file: Option<&'a str>,
    /// Its checkpointed length: everything after is cut off (or not copied).
    pub bytes: u64,
    /// The backend's state saved with the checkpoint ([`Durable::state`]).
    pub state: Option<&'a serde_json::Value>,
    /// Continue the file in place rather than copy its prefix.
    pub adopt: bool,
}

/// A file opened for a run, positioned at the checkpoint's byte offset.
pub struct RunFile {
    /// Where the run appends.
    pub out: Box<dyn RunWriter>,
    /// Name in storage, saved with each checkpoint.
    pub name: String,
    /// The backend's state of the file as opened (saved with the next checkpoint).
    pub state: Option<serde_json::Value>,
}

/// Every byte appended so far is durable; `state` is what the checkpoint must save besides the
/// file's name and length to find them again (None for a file on disk; an object store's upload
/// id and the ETags and sizes of its parts).
#[derive(Debug, Clone, Default)]
pub struct Durable {
    /// The backend's state, saved with the checkpoint and handed back in [`Resume::state`].
    pub state: Option<serde_json::Value>,
}

impl fmt::Debug for RunFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunFile").field("name", &self.name).finish_non_exhaustive()
    }
}

/// The writing end of a run's file.
#[async_trait]
pub trait RunWriter: Send {
    /// Appends `bytes` (durable only after [`RunWriter::sync`] says so).
    async fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// At a chunk boundary: makes the appended bytes durable when this backend does so now, and
    /// says whether all of them are (None: some wait for more, as bytes short of an object
    /// store's part do; the engine then checkpoints at a later boundary).
    async fn sync(&mut self) -> io::Result<Option<Durable>>;
    /// Ends the file: every byte durable, the file whole and readable under its name.
    async fn finish(&mut self) -> io::Result<Durable>;
}

/// A run's file: ready, or still to be filled with the checkpointed prefix.
#[derive(Debug)]
pub enum Prepared {
    /// The file holds exactly the checkpointed bytes: append.
    Ready(RunFile),
    /// The checkpointed prefix is still to be copied, slice by slice.
    Copy(Box<dyn PrefixCopy>),
}

/// The copy of a checkpointed prefix into a new run's file, in slices, so that a run told to
/// stop stops within a slice instead of after the whole prefix.
#[async_trait]
pub trait PrefixCopy: fmt::Debug + Send {
    /// Copies the next slice; true once the whole prefix is copied.
    async fn step(&mut self) -> Result<bool, PrepareError>;
    /// The copied file, durable, positioned after the prefix.
    async fn finish(self: Box<Self>) -> Result<RunFile, PrepareError>;
    /// Stops the copy and deletes its partial file (nothing refers to it).
    async fn abandon(self: Box<Self>);
}

/// A stored file opened for reading.
#[async_trait]
pub trait StoredFile: Send {
    /// Its length in bytes.
    fn size(&self) -> u64;
    /// `count` bytes from `start`, read as the consumer takes them.
    async fn read(self: Box<Self>, start: u64, count: u64) -> io::Result<BoxStream<'static, io::Result<Bytes>>>;
    /// `count` bytes from `start` as spans of open local files, for a zero-copy send; None when
    /// the file is not held in local files (object storage).
    fn spans(&self, _start: u64, _count: u64) -> Option<Vec<FileSpan>> {
        None
    }
}

/// A byte range of an open local file (kept open while the span is held).
#[derive(Debug, Clone)]
pub struct FileSpan {
    /// The file.
    pub file: std::sync::Arc<std::fs::File>,
    /// Where the span starts in it.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// Why a run's file could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The checkpointed bytes are not there (file gone or shorter than the checkpoint).
    #[error("checkpointed file {name} is missing or shorter than {bytes} bytes")]
    CheckpointLost {
        /// The checkpointed file.
        name: String,
        /// The bytes the checkpoint says it holds.
        bytes: u64,
    },
    #[error(transparent)]
    /// Any other storage error.
    Io(#[from] io::Error),
}

/// The pieces of a completed parallel export, opened (each read to its end even if deleted
/// meanwhile) and served as one file: their checkpointed bytes one after the other, so Range
/// requests and the ETag see the same bytes a joined file would hold, and nothing is copied.
pub async fn open_pieces(storage: &dyn Storage, pieces: &[PieceFile]) -> io::Result<Box<dyn StoredFile>> {
    let mut files = Vec::with_capacity(pieces.len());
    for piece in pieces {
        let file = storage.open(&piece.name).await?;
        if file.size() < piece.bytes {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("piece {} has {} bytes, its checkpoint {}", piece.name, file.size(), piece.bytes),
            ));
        }
        files.push((file, piece.bytes));
    }
    Ok(Box::new(Sequence(files)))
}

/// Pieces served one after the other (see [`open_pieces`]).
struct Sequence(Vec<(Box<dyn StoredFile>, u64)>);

#[async_trait]
impl StoredFile for Sequence {
    fn size(&self) -> u64 {
        self.0.iter().map(|(_, bytes)| bytes).sum()
    }

    async fn read(self: Box<Self>, start: u64, count: u64) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
        use futures::StreamExt as _;
        let slices = self.slices(start, count);
        let mut parts = Vec::with_capacity(slices.len());
        for ((file, _), (from, len)) in self.0.into_iter().zip(slices) {
            if len > 0 {
                parts.push(file.read(from, len).await?);
            }
        }
        Ok(futures::stream::iter(parts).flatten().boxed())
    }

    fn spans(&self, start: u64, count: u64) -> Option<Vec<FileSpan>> {
        let mut spans = Vec::new();
        for ((file, _), (from, len)) in self.0.iter().zip(self.slices(start, count)) {
            if len > 0 {
                spans.extend(file.spans(from, len)?);
            }
        }
        Some(spans)
    }
}

impl Sequence {
    /// For each piece, where its part of the bytes `start..start + count` of the whole begins
    /// in it and how long it is (0: none of them).
    fn slices(&self, start: u64, count: u64) -> Vec<(u64, u64)> {
        let (end, mut at) = (start + count, 0u64);
        let mut slices = Vec::with_capacity(self.0.len());
        for (_, bytes) in &self.0 {
            let (from, to) = (start.max(at), end.min(at + bytes));
            slices.push(if from < to { (from - at, to - from) } else { (0, 0) });
            at += bytes;
        }
        slices
    }
}
