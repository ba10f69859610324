//! S3-compatible object storage (`EXPORTD_STORAGE=s3://bucket/prefix`) through the
//! `object_store` crate: a run's file is a multipart upload at a key of its own.
//!
//! - **Appends** are buffered and uploaded as parts once a part's worth is there (at a chunk
//!   boundary, or mid-chunk at twice that, so memory stays within two part buffers); a chunk
//!   boundary with nothing left in the buffer is durable, and the checkpoint saves the upload
//!   id and every part's ETag and size ([`Upload`]) with the key position.
//! - **A clean release** is continued in place: the next run uploads its parts into the same
//!   upload after the checkpointed ones (parts a released run uploaded past its checkpoint are
//!   replaced or left out of the completion, which names its parts).
//! - **A takeover** (the previous run may still be alive) first *seals* the previous upload at
//!   the checkpoint (completes it with exactly the checkpointed parts: an object no run can
//!   change any more; if the stale run completed it first, its object begins with those same
//!   parts), then copies it part by part into its own upload with `UploadPartCopy` (server-side,
//!   so the rows in uploaded parts are never read again, from PostgreSQL or through us). Nothing
//!   the stale run still uploads or completes touches the new run's key.
//! - **Cleanup**: on completion the export's other objects are deleted and its other uploads
//!   aborted; the sweeper does the same for ended exports and for stray keys of live ones
//!   (`ListMultipartUploads`). A bucket lifecycle rule aborting incomplete uploads after a few
//!   days is a good backstop (README).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload,
    aws::{AmazonS3, AmazonS3Builder},
    multipart::{MultipartStore, PartId},
    path::Path,
    signer::{HeaderName, HeaderValue, Method, SignedUrlOptions, Signer},
};
use serde::{Deserialize, Serialize};
use std::{io, time::SystemTime};
use uuid::Uuid;

use super::{
    Durable, PieceFile, PrefixCopy, PrepareError, Prepared, Resume, RunFile, RunId, RunWriter, Storage, StoredFile,
};

/// The smallest part S3 takes (all but the last part of an upload).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// The most parts an upload may have.
const MAX_PARTS: usize = 10_000;
/// How long a signed request made for our own use (a part copy, a listing) stays valid.
const OWN_REQUEST_TTL: Duration = Duration::from_secs(300);

/// Where and how to use an object store.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `s3://bucket/prefix` (the prefix may be empty).
    pub url: String,
    /// Bytes per uploaded part (at least 5 MiB; a part holds whole chunks, up to twice this).
    pub part_size: u64,
    /// `object_store` config keys and values applied over the environment's (`aws_endpoint`,
    /// `aws_access_key_id`, ...; empty in production, where the AWS_* variables say it all).
    pub options: Vec<(String, String)>,
}

/// An S3-compatible bucket (and key prefix) holding export files.
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    store: Arc<AmazonS3>,
    bucket: String,
    /// Key prefix, empty or ending in `/`.
    prefix: String,
    part_size: usize,
    /// For the two requests `object_store` has no call for (UploadPartCopy with a range,
    /// ListMultipartUploads), sent to URLs its signer signs.
    http: reqwest::Client,
}

/// A run file's multipart upload as a checkpoint saves it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Upload {
    /// The upload's id.
    pub id: String,
    /// Its parts in order, all durable.
    pub parts: Vec<Part>,
}

/// One uploaded part.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Part {
    /// Its ETag (what completing the upload names it by).
    pub etag: String,
    /// Its size in bytes.
    pub size: u64,
}

impl Upload {
    fn bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("an upload serializes")
    }

    fn part_ids(&self) -> Vec<PartId> {
        self.parts.iter().map(|p| PartId { content_id: p.etag.clone() }).collect()
    }
}

impl ObjectStorage {
    /// The bucket of `settings.url`, with endpoint, region and credentials from the usual AWS
    /// variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`, ...).
    pub fn new(settings: &S3Settings) -> anyhow::Result<Self> {
        let rest = settings
            .url
            .strip_prefix("s3://")
            .ok_or_else(|| anyhow::anyhow!("EXPORTD_STORAGE: {:?} is not an s3://bucket/prefix URL", settings.url))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        anyhow::ensure!(!bucket.is_empty(), "EXPORTD_STORAGE: {:?} names no bucket", settings.url);
        anyhow::ensure!(
            settings.part_size >= MIN_PART_SIZE,
            "EXPORTD_S3_PART_SIZE: {} bytes is below S3's minimum part size of 5 MiB",
            settings.part_size
        );
        let prefix = prefix.trim_matches('/');
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (key, value) in &settings.options {
            let key = key.parse().map_err(|e| anyhow::anyhow!("object store option {key}: {e}"))?;
            builder = builder.with_config(key, value);
        }
        let store =
            builder.build().map_err(|e| anyhow::anyhow!("EXPORTD_STORAGE: cannot use {}: {e}", settings.url))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            .build()?;
        Ok(Self {
            store: Arc::new(store),
            bucket: bucket.to_owned(),
            prefix: if prefix.is_empty() { String::new() } else { format!("{prefix}/") },
            part_size: settings.part_size as usize,
            http,
        })
    }

    /// The object key of a stored file's name.
    fn path(&self, name: &str) -> Path {
        Path::from(format!("{}{name}", self.prefix))
    }

    /// A stored file's name from an object key under the prefix.
    fn name(&self, key: &str) -> Option<String> {
        key.strip_prefix(&self.prefix).map(str::to_owned)
    }

    fn export_prefix(&self, export_id: Uuid) -> Path {
        Path::from(format!("{}{export_id}", self.prefix))
    }

    fn writer(&self, path: Path, upload: Upload) -> S3RunWriter {
        S3RunWriter { store: self.store.clone(), path, upload, buffer: Vec::new(), part_size: self.part_size }
    }

    /// Creates a run's upload.
    async fn create_upload(&self, name: &str) -> io::Result<Upload> {
        let id = self.store.create_multipart(&self.path(name)).await?;
        Ok(Upload { id, parts: Vec::new() })
    }

    /// Seals a previous run's upload at its checkpoint (completes it with exactly the
    /// checkpointed parts); Ok when the object under its key now begins with those bytes.
    async fn seal(&self, name: &str, upload: &Upload, bytes: u64) -> Result<(), PrepareError> {
        let path = self.path(name);
        let lost = || PrepareError::CheckpointLost { name: name.to_owned(), bytes };
        let completed = self.store.complete_multipart(&path, &upload.id, upload.part_ids()).await;
        // Completed now, or before: by an earlier takeover, or by the stale run itself with more
        // parts after the same first ones. Either way the object's first `bytes` are the prefix.
        match self.store.head(&path).await {
            Ok(meta) if meta.size >= bytes => Ok(()),
            Ok(_) => Err(lost()),
            Err(object_store::Error::NotFound { .. }) => match completed {
                Err(e) if !upload_gone(&e) => Err(PrepareError::Io(e.into())),
                _ => Err(lost()),
            },
            Err(e) => Err(PrepareError::Io(e.into())),
        }
    }

    /// Copies `range` of object `from` into part `part` (1-based) of `upload` at `to`,
    /// server-side (UploadPartCopy); returns the new part's ETag.
    async fn copy_part(
        &self,
        from: &Path,
        to: &Path,
        upload: &str,
        part: usize,
        range: (u64, u64),
    ) -> io::Result<String> {
        let source = format!("{}/{}", self.bucket, from.as_ref());
        let options = SignedUrlOptions::new()
            .with_query([("partNumber", part.to_string()), ("uploadId", upload.to_owned())])
            .with_signed_header(HeaderName::from_static("x-amz-copy-source"), header(&source)?)
            .with_signed_header(
                HeaderName::from_static("x-amz-copy-source-range"),
                header(&format!("bytes={}-{}", range.0, range.1 - 1))?,
            );
        let url = self.store.signed_url_opts(Method::PUT, to, OWN_REQUEST_TTL, &options).await?;
        // The request carries exactly the headers the URL's signature binds.
        let resp =
            self.http.put(url.as_str()).headers(options.signed_headers).send().await.map_err(io::Error::other)?;
        let status = resp.status();
        let body = resp.text().await.map_err(io::Error::other)?;
        if !status.is_success() {
            let kind = if status.as_u16() == 404 { io::ErrorKind::NotFound } else { io::ErrorKind::Other };
            return Err(io::Error::new(kind, format!("UploadPartCopy answered {status}: {}", excerpt(&body))));
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct CopyPartResult {
            e_tag: String,
        }
        // S3 may answer 200 with an error document when a copy fails midway.
        let result: CopyPartResult = quick_xml::de::from_str(&body)
            .map_err(|e| io::Error::other(format!("UploadPartCopy answered {}: {e}", excerpt(&body))))?;
        Ok(result.e_tag)
    }

    /// The multipart uploads in progress under `prefix` (a key prefix): key and upload id, with
    /// when each began.
    async fn uploads(&self, prefix: &str) -> io::Result<Vec<(String, String, SystemTime)>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct ListResult {
            #[serde(default)]
            upload: Vec<UploadEntry>,
            #[serde(default)]
            is_truncated: bool,
            next_key_marker: Option<String>,
            next_upload_id_marker: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct UploadEntry {
            key: String,
            upload_id: String,
            initiated: Option<String>,
        }
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query = vec![("uploads".to_owned(), String::new()), ("prefix".to_owned(), prefix.to_owned())];
            if let Some((key, id)) = &markers {
                query.push(("key-marker".to_owned(), key.clone()));
                query.push(("upload-id-marker".to_owned(), id.clone()));
            }
            let options = SignedUrlOptions::new().with_query(query);
            let url = self.store.signed_url_opts(Method::GET, &Path::from(""), OWN_REQUEST_TTL, &options).await?;
            let resp = self.http.get(url.as_str()).send().await.map_err(io::Error::other)?;
            let status = resp.status();
            let body = resp.text().await.map_err(io::Error::other)?;
            if !status.is_success() {
                return Err(io::Error::other(format!("ListMultipartUploads answered {status}: {}", excerpt(&body))));
            }
            let list: ListResult = quick_xml::de::from_str(&body)
                .map_err(|e| io::Error::other(format!("ListMultipartUploads answered {}: {e}", excerpt(&body))))?;
            for u in list.upload {
                let began = u
                    .initiated
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                    .map(SystemTime::from)
                    .unwrap_or_else(SystemTime::now);
                out.push((u.key, u.upload_id, began));
            }
            match (list.is_truncated, list.next_key_marker, list.next_upload_id_marker) {
                (true, Some(key), Some(id)) => markers = Some((key, id)),
                _ => return Ok(out),
            }
        }
    }

    /// Aborts the uploads under a key prefix for which `abort` says so.
    async fn abort_uploads(&self, prefix: &str, abort: impl Fn(&str) -> bool) {
        let uploads = match self.uploads(prefix).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(prefix, error = %e, "could not list multipart uploads");
                return;
            }
        };
        for (key, id, _) in uploads.into_iter().filter(|(key, _, _)| abort(key)) {
            if let Err(e) = self.store.abort_multipart(&Path::from(key.as_str()), &id).await {
                tracing::warn!(key, error = %e, "could not abort a multipart upload");
            }
        }
    }

    /// Deletes the objects under an export's prefix for which `delete` says so.
    async fn delete_objects(&self, export_id: Uuid, delete: impl Fn(&str) -> bool) {
        let prefix = self.export_prefix(export_id);
        let objects: Vec<_> = match self.store.list(Some(&prefix)).try_collect().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(%export_id, error = %e, "could not list an export's objects");
                return;
            }
        };
        for meta in objects.into_iter().filter(|m| delete(m.location.as_ref())) {
            if let Err(e) = self.store.delete(&meta.location).await
                && !matches!(e, object_store::Error::NotFound { .. })
            {
                tracing::warn!(key = %meta.location, error = %e, "could not delete an object");
            }
        }
    }
}

/// Whether completing an upload failed because the upload or its parts are not as the
/// checkpoint names them (S3's `NoSuchUpload`, `InvalidPart`, `InvalidPartOrder`), as opposed
/// to the store not answering.
fn upload_gone(e: &object_store::Error) -> bool {
    let text = e.to_string();
    matches!(e, object_store::Error::NotFound { .. })
        || ["NoSuchUpload", "InvalidPart"].iter().any(|code| text.contains(code))
}

fn header(value: &str) -> io::Result<HeaderValue> {
    HeaderValue::from_str(value).map_err(io::Error::other)
}

/// The start of a response body, for an error message.
fn excerpt(body: &str) -> &str {
    &body[..body.floor_char_boundary(300)]
}

/// A run's upload being written.
struct S3RunWriter {
    store: Arc<AmazonS3>,
    path: Path,
    upload: Upload,
    /// Bytes not yet in a part.
    buffer: Vec<u8>,
    part_size: usize,
}

impl S3RunWriter {
    /// Uploads the buffer as the next part.
    async fn upload_part(&mut self) -> io::Result<()> {
        if self.upload.parts.len() >= MAX_PARTS {
            return Err(io::Error::other(format!(
                "the export needs more than S3's {MAX_PARTS} parts per upload; raise EXPORTD_S3_PART_SIZE"
            )));
        }
        let bytes = Bytes::from(std::mem::take(&mut self.buffer));
        let size = bytes.len() as u64;
        let idx = self.upload.parts.len();
        let part = self.store.put_part(&self.path, &self.upload.id, idx, PutPayload::from_bytes(bytes)).await?;
        self.upload.parts.push(Part { etag: part.content_id, size });
        Ok(())
    }
}

#[async_trait]
impl RunWriter for S3RunWriter {
    async fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.buffer.capacity() == 0 {
            self.buffer.reserve(self.part_size + bytes.len());
        }
        self.buffer.extend_from_slice(bytes);
        // A chunk much larger than a part: upload mid-chunk (its rows are read again after a
        // crash before the chunk's end, as with any bytes past a checkpoint).
        if self.buffer.len() >= 2 * self.part_size {
            self.upload_part().await?;
        }
        Ok(())
    }

    async fn sync(&mut self) -> io::Result<Option<Durable>> {
        if self.buffer.len() >= self.part_size {
            self.upload_part().await?;
        }
        Ok(self.buffer.is_empty().then(|| Durable { state: Some(self.upload.state()) }))
    }

    async fn finish(&mut self) -> io::Result<Durable> {
        if !self.buffer.is_empty() || self.upload.parts.is_empty() {
            self.upload_part().await?; // the last part may be short (or empty: an empty file)
        }
        self.store.complete_multipart(&self.path, &self.upload.id, self.upload.part_ids()).await?;
        Ok(Durable { state: None })
    }
}

/// `UploadPartCopy` requests of one join in flight at once.
const JOIN_COPIES_AT_ONCE: usize = 8;
/// The most one `UploadPartCopy` copies (S3's limit).
const MAX_COPY_PART: u64 = 5 * 1024 * 1024 * 1024;

/// The parts joining `pieces` into one object: each piece's checkpointed bytes as one part, or
/// as equal parts of at most 5 GiB; None when S3 would refuse them (a part before the last
/// under 5 MiB, an empty piece, more than 10,000 parts).
fn join_parts(pieces: &[PieceFile]) -> Option<Vec<(usize, (u64, u64))>> {
    let mut parts = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        if piece.bytes == 0 || (!last && piece.bytes < MIN_PART_SIZE) {
            return None;
        }
        let n = piece.bytes.div_ceil(MAX_COPY_PART);
        let size = piece.bytes.div_ceil(n);
        parts.extend((0..n).map(|k| (i, (k * size, ((k + 1) * size).min(piece.bytes)))));
    }
    (parts.len() <= 10_000).then_some(parts)
}

/// A finished object, read by ranged GETs pinned to the version opened (`If-Match`).
struct S3StoredFile {
    store: Arc<AmazonS3>,
    path: Path,
    size: u64,
    etag: Option<String>,
}

#[async_trait]
impl StoredFile for S3StoredFile {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(self: Box<Self>, start: u64, count: u64) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
        if count == 0 {
            return Ok(futures::stream::empty().boxed());
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(start..start + count)),
            if_match: self.etag.clone(),
            ..GetOptions::default()
        };
        let result = self.store.get_opts(&self.path, options).await?;
        Ok(result.into_stream().map_err(io::Error::from).boxed())
    }
}

/// The copy of a sealed previous upload into a new run's upload, one part per step.
#[derive(Debug)]
struct S3PrefixCopy {
    storage: ObjectStorage,
    from: Path,
    /// The parts to copy (sizes as checkpointed).
    parts: Vec<Part>,
    name: String,
    upload: Upload,
}

#[async_trait]
impl PrefixCopy for S3PrefixCopy {
    async fn step(&mut self) -> Result<bool, PrepareError> {
        let done = self.upload.parts.len();
        let Some(part) = self.parts.get(done) else { return Ok(true) };
        let start: u64 = self.parts[..done].iter().map(|p| p.size).sum();
        let to = self.storage.path(&self.name);
        let etag =
            self.storage.copy_part(&self.from, &to, &self.upload.id, done + 1, (start, start + part.size)).await?;
        self.upload.parts.push(Part { etag, size: part.size });
        Ok(self.upload.parts.len() == self.parts.len())
    }

    async fn finish(mut self: Box<Self>) -> Result<RunFile, PrepareError> {
        let state = Some(self.upload.state());
        let path = self.storage.path(&self.name);
        let out = Box::new(self.storage.writer(path, std::mem::take(&mut self.upload)));
        Ok(RunFile { out, name: std::mem::take(&mut self.name), state })
    }

    async fn abandon(self: Box<Self>) {
        let path = self.storage.path(&self.name);
        if let Err(e) = self.storage.store.abort_multipart(&path, &self.upload.id).await {
            tracing::warn!(key = %path, error = %e, "could not abort an abandoned copy's upload");
        }
    }
}

#[async_trait]
impl Storage for ObjectStorage {
    fn free_bytes(&self) -> Option<u64> {
        None
    }

    async fn prepare_run(&self, run: RunId<'_>, from: Resume<'_>) -> Result<Prepared, PrepareError> {
        let Resume { file: previous, bytes, state, adopt } = from;
        let previous = match previous {
            Some(p) if bytes > 0 => p,
            _ => return Ok(Prepared::Ready(self.create_run(run).await?)),
        };
        let lost = || PrepareError::CheckpointLost { name: previous.to_owned(), bytes };
        // No upload in the checkpoint (written by another backend) or one that does not add up.
        let upload: Upload = state.and_then(|s| serde_json::from_value(s.clone()).ok()).ok_or_else(lost)?;
        if upload.bytes() != bytes || upload.id.is_empty() {
            return Err(lost());
        }
        if adopt {
            let state = Some(upload.state());
            let out = Box::new(self.writer(self.path(previous), upload));
            return Ok(Prepared::Ready(RunFile { out, name: previous.to_owned(), state }));
        }
        self.seal(previous, &upload, bytes).await?;
        let name = run.file_name();
        let own = self.create_upload(&name).await?;
        Ok(Prepared::Copy(Box::new(S3PrefixCopy {
            storage: self.clone(),
            from: self.path(previous),
            parts: upload.parts,
            name,
            upload: own,
        })))
    }

    async fn create_run(&self, run: RunId<'_>) -> io::Result<RunFile> {
        let name = run.file_name();
        let upload = self.create_upload(&name).await?;
        let state = Some(upload.state());
        Ok(RunFile { out: Box::new(self.writer(self.path(&name), upload)), name, state })
    }

    async fn open(&self, name: &str) -> io::Result<Box<dyn StoredFile>> {
        let path = self.path(name);
        let meta = self.store.head(&path).await?;
        Ok(Box::new(S3StoredFile { store: self.store.clone(), path, size: meta.size, etag: meta.e_tag }))
    }

    async fn download_url(&self, name: &str, file_name: &str, ttl: Duration) -> io::Result<Option<String>> {
        let disposition = format!("attachment; filename=\"{file_name}\"");
        let options = SignedUrlOptions::new().with_query([("response-content-disposition", disposition)]);
        let url = self.store.signed_url_opts(Method::GET, &self.path(name), ttl, &options).await?;
        Ok(Some(url.to_string()))
    }

    async fn join(&self, name: &str, pieces: &[PieceFile]) -> io::Result<bool> {
        let Some(parts) = join_parts(pieces) else { return Ok(false) };
        use futures::{StreamExt as _, TryStreamExt as _};
        let to = self.path(name);
        let upload = self.store.create_multipart(&to).await?;
        // The store copies each part at its own pace: several at once, completed in order.
        let copies = futures::stream::iter(parts.into_iter().enumerate())
            .map(|(n, (piece, range))| {
                let (from, to, upload) = (self.path(&pieces[piece].name), &to, &upload);
                async move { self.copy_part(&from, to, upload, n + 1, range).await }
            })
            .buffered(JOIN_COPIES_AT_ONCE)
            .map_ok(|etag| PartId { content_id: etag })
            .try_collect::<Vec<_>>()
            .await;
        let ids = match copies {
            Ok(ids) => ids,
            Err(e) => {
                if let Err(abort) = self.store.abort_multipart(&to, &upload).await {
                    tracing::warn!(error = %abort, key = %to, "could not abort a failed join");
                }
                return Err(e);
            }
        };
        self.store.complete_multipart(&to, &upload, ids).await?;
        Ok(true)
    }

    async fn remove_other_runs(&self, export_id: Uuid, keep: &[&str]) {
        let keep: Vec<Path> = keep.iter().map(|k| self.path(k)).collect();
        self.abort_uploads(self.export_prefix(export_id).as_ref(), |_| true).await;
        self.delete_objects(export_id, |key| !keep.iter().any(|k| k.as_ref() == key)).await;
    }

    async fn remove_export(&self, export_id: Uuid) {
        self.abort_uploads(self.export_prefix(export_id).as_ref(), |_| true).await;
        self.delete_objects(export_id, |_| true).await;
    }

    async fn exports(&self) -> io::Result<Vec<Uuid>> {
        let root = (!self.prefix.is_empty()).then(|| Path::from(self.prefix.trim_end_matches('/')));
        let listed = self.store.list_with_delimiter(root.as_ref()).await?;
        let mut out: Vec<Uuid> =
            listed.common_prefixes.iter().filter_map(|p| p.filename().and_then(|n| n.parse().ok())).collect();
        for (key, _, _) in self.uploads(&self.prefix).await? {
            if let Some(id) = self.name(&key).and_then(|n| n.split('/').next().and_then(|d| d.parse().ok()))
                && !out.contains(&id)
            {
                out.push(id);
            }
        }
        Ok(out)
    }

    async fn run_files(&self, export_id: Uuid) -> io::Result<Vec<(String, SystemTime)>> {
        let prefix = self.export_prefix(export_id);
        let objects: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        let mut out: Vec<(String, SystemTime)> = objects
            .into_iter()
            .filter_map(|m| self.name(m.location.as_ref()).map(|n| (n, m.last_modified.into())))
            .collect();
        for (key, _, began) in self.uploads(&format!("{}/", prefix.as_ref())).await? {
            if let Some(name) = self.name(&key)
                && !out.iter().any(|(n, _)| *n == name)
            {
                out.push((name, began));
            }
        }
        Ok(out)
    }

    async fn remove_file(&self, name: &str) {
        let path = self.path(name);
        self.abort_uploads(path.as_ref(), |key| key == path.as_ref()).await;
        if let Err(e) = self.store.delete(&path).await
            && !matches!(e, object_store::Error::NotFound { .. })
        {
            tracing::warn!(name, error = %e, "could not delete a stray object");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_parts_follow_s3s_limits() {
        let piece = |bytes| PieceFile { name: String::new(), bytes };
        let mib = 1024 * 1024;
        assert_eq!(join_parts(&[piece(6 * mib), piece(1)]), Some(vec![(0, (0, 6 * mib)), (1, (0, 1))]));
        assert_eq!(join_parts(&[piece(4 * mib), piece(6 * mib)]), None, "a part before the last under 5 MiB");
        assert_eq!(join_parts(&[piece(6 * mib), piece(0)]), None, "an empty piece");
        let big = 2 * MAX_COPY_PART + 3;
        let parts = join_parts(&[piece(big)]).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts.iter().map(|(_, (a, b))| b - a).sum::<u64>(), big);
        assert!(parts.iter().all(|(_, (a, b))| b - a <= MAX_COPY_PART && b - a >= MIN_PART_SIZE));
        assert!(parts.windows(2).all(|w| w[0].1.1 == w[1].1.0), "contiguous");
    }
}
