//! The run file's framing: bytes appended plain or as gzip members (one per chunk, so a
//! checkpoint always falls on a member boundary), compressed off the async threads, and synced.

use crate::{
    model::spec::Compression,
    storage::{Durable, RunWriter},
};

/// The run's file, written plain or as gzip members (one per chunk, so every checkpoint falls
/// on a member boundary and a resumed run appends a new member after it: decoders read
/// concatenated members as one stream).
pub(super) struct Output {
    file: Box<dyn RunWriter>,
    /// gzip: one raw deflate stream reset for each member, so its state is allocated once per run.
    gzip: Option<Gzip>,
    /// Bytes in the file.
    pub(super) written: i64,
}

/// The gzip framing (RFC 1952) around a reused deflate stream.
struct Gzip {
    deflate: flate2::Compress,
    crc: flate2::Crc,
    /// Compressed bytes not yet written to the file (a pooled buffer).
    pending: Vec<u8>,
    in_member: bool,
}

/// A gzip member header: magic, deflate, no flags, no mtime, no extra flags, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// Compressed bytes are written to the file once this many are pending.
const GZIP_FLUSH_BYTES: usize = 256 * 1024;

impl Gzip {
    /// Compresses `input` into `pending` (CPU work: call off the async threads).
    fn compress(&mut self, input: &[u8], flush: flate2::FlushCompress) -> std::io::Result<()> {
        if !self.in_member {
            self.in_member = true;
            self.deflate.reset();
            self.crc.reset();
            self.pending.extend_from_slice(&GZIP_HEADER);
        }
        self.crc.update(input);
        let mut rest = input;
        loop {
            self.pending.reserve(64 * 1024);
            let before = self.deflate.total_in();
            let status = self.deflate.compress_vec(rest, &mut self.pending, flush).map_err(std::io::Error::other)?;
            rest = &rest[(self.deflate.total_in() - before) as usize..];
            let done = match flush {
                flate2::FlushCompress::Finish => status == flate2::Status::StreamEnd,
                _ => rest.is_empty() && self.pending.len() < self.pending.capacity(),
            };
            if done {
                break;
            }
        }
        if flush == flate2::FlushCompress::Finish {
            self.pending.extend_from_slice(&self.crc.sum().to_le_bytes());
            self.pending.extend_from_slice(&self.crc.amount().to_le_bytes());
            self.in_member = false;
        }
        Ok(())
    }
}

impl Output {
    pub(super) fn new(file: Box<dyn RunWriter>, compression: Compression, written: i64, pending: Vec<u8>) -> Self {
        let gzip = (compression == Compression::Gzip).then(|| Gzip {
            deflate: flate2::Compress::new(flate2::Compression::fast(), false),
            crc: flate2::Crc::new(),
            pending,
            in_member: false,
        });
        Self { file, gzip, written }
    }

    /// Appends `bytes` (compressing them when gzip) and hands the buffer back.
    pub(super) async fn write(&mut self, bytes: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        let Some(gzip) = self.gzip.take() else {
            self.file.append(&bytes).await.map_err(storage_error)?;
            self.written += bytes.len() as i64;
            return Ok(bytes);
        };
        // Compression is CPU work: off the async threads, so the API never waits behind it.
        let (gzip, bytes) = tokio::task::spawn_blocking(move || {
            let mut gzip = gzip;
            gzip.compress(&bytes, flate2::FlushCompress::None).map(|()| (gzip, bytes))
        })
        .await??;
        self.gzip = Some(gzip);
        self.flush_pending(GZIP_FLUSH_BYTES).await?;
        Ok(bytes)
    }

    /// Writes the pending compressed bytes once there are at least `min` of them.
    async fn flush_pending(&mut self, min: usize) -> anyhow::Result<()> {
        let Some(gzip) = self.gzip.as_mut() else { return Ok(()) };
        if gzip.pending.len() >= min.max(1) {
            self.file.append(&gzip.pending).await.map_err(storage_error)?;
            self.written += gzip.pending.len() as i64;
            gzip.pending.clear();
        }
        Ok(())
    }

    /// Ends the current gzip member, if any, and writes what is left of it.
    pub(super) async fn end_member(&mut self) -> anyhow::Result<()> {
        let Some(gzip) = self.gzip.take() else { return Ok(()) };
        let gzip = if gzip.in_member {
            tokio::task::spawn_blocking(move || {
                let mut gzip = gzip;
                gzip.compress(&[], flate2::FlushCompress::Finish).map(|()| gzip)
            })
            .await??
        } else {
            gzip
        };
        self.gzip = Some(gzip);
        self.flush_pending(0).await
    }

    /// Ends the file: the last member, and for a gzip file with nothing in it, one empty member
    /// (an empty file is not valid gzip).
    pub(super) async fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(gzip) = self.gzip.as_mut()
            && !gzip.in_member
            && self.written == 0
        {
            gzip.compress(&[], flate2::FlushCompress::None)?;
        }
        self.end_member().await
    }

    /// The pooled buffer, to give back.
    pub(super) fn take_buffer(&mut self) -> Option<Vec<u8>> {
        self.gzip.as_mut().map(|g| std::mem::take(&mut g.pending))
    }

    /// At a chunk boundary: whether every byte written so far is durable (see [`RunWriter::sync`]).
    pub(super) async fn sync(&mut self) -> anyhow::Result<Option<Durable>> {
        self.file.sync().await.map_err(storage_error)
    }

    /// Makes the file whole: every byte durable and the file readable under its name.
    pub(super) async fn finish_file(&mut self) -> anyhow::Result<Durable> {
        self.file.finish().await.map_err(storage_error)
    }
}

/// Context for file write errors.
fn storage_error(e: std::io::Error) -> anyhow::Error {
    anyhow::Error::new(e).context("writing the export file")
}
