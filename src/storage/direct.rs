//! Appending a run's file on disk past the page cache (`O_DIRECT`): the bytes go from one
//! aligned buffer of this process to the disk, so the kernel copies nothing into its cache. An
//! export writes a file once and does not read it back; a buffered write paid a copy of every
//! byte into page cache pages (on these VMs a third to a half of the export's CPU, as fresh
//! guest memory is slow to touch) and pushed the database's own cached pages out.
//!
//! `O_DIRECT` wants whole blocks at block offsets from block-aligned memory. Bytes gather in
//! the buffer from the block their file offset falls in; whole blocks are written as the
//! buffer fills. A sync writes the partial last block too, padded with zeros, cuts the file
//! back to its true length and `fdatasync`s; the partial block stays in the buffer and is
//! written whole again once more bytes follow. Where the filesystem refuses `O_DIRECT`
//! (`EINVAL`), the file is written through the page cache instead, as before.

use std::{fs::File, io, os::unix::fs::FileExt as _};

use async_trait::async_trait;

use super::{Durable, RunWriter};

/// The block size writes are aligned to: a multiple of every logical block size in use (512
/// and 4096 bytes), and of the page size, so the buffer's alignment suits every device.
const BLOCK: usize = 4096;
/// Bytes gathered before whole blocks are written (a run's pieces are 512 KiB).
const WRITE_AT: usize = 1024 * 1024;

/// A run's file on disk, appended to through an aligned buffer.
pub struct Appender {
    /// The file; None only while a blocking write holds it.
    file: Option<File>,
    buf: Aligned,
    /// The file offset of the buffer's first byte (a block offset when direct).
    base: u64,
    /// Whether the file is open with `O_DIRECT`.
    direct: bool,
}

impl Appender {
    /// Appends to `file` from byte `at` (its true length: what follows is overwritten): the
    /// partial block before `at` is read back into the buffer, then `O_DIRECT` is turned on
    /// where the filesystem allows it.
    pub fn open(file: File, at: u64) -> io::Result<Self> {
        let base = at - at % BLOCK as u64;
        let mut buf = Aligned::new(WRITE_AT + BLOCK);
        let head = (at - base) as usize;
        buf.len = head;
        file.read_exact_at(&mut buf.bytes_mut()[..head], base)?;
        let direct = set_direct(&file, true).is_ok();
        Ok(Self { file: Some(file), buf, base, direct })
    }

    /// Writes the buffer's whole blocks (`all`: every byte, the last block padded, the file cut
    /// back to its true length, and synced) and keeps what is left of it.
    async fn write_out(&mut self, all: bool) -> io::Result<()> {
        let mut file = self.file.take().ok_or_else(|| io::Error::other("an earlier write of this file failed"))?;
        let mut buf = std::mem::replace(&mut self.buf, Aligned::new(0));
        let (base, mut direct) = (self.base, self.direct);
        let result = tokio::task::spawn_blocking(move || {
            let done = write_blocks(&mut file, &mut buf, base, &mut direct, all);
            (file, buf, direct, done)
        })
        .await;
        let (file, buf, direct, done) = result.map_err(io::Error::other)?;
        self.file = Some(file);
        self.direct = direct;
        self.buf = buf;
        let written = done?;
        self.buf.consume(written);
        self.base += written as u64;
        Ok(())
    }
}

/// Writes `buf` at `base`: its whole blocks, or with `all` every byte (the last block padded
/// with zeros, the file cut back to `base + buf.len`, then `fdatasync`). Returns the bytes
/// the buffer may drop (whole blocks written; with `direct` off, every byte written). Turns
/// `direct` off when the filesystem refuses an `O_DIRECT` write.
fn write_blocks(file: &mut File, buf: &mut Aligned, base: u64, direct: &mut bool, all: bool) -> io::Result<usize> {
    let len = buf.len;
    let whole = len - len % BLOCK;
    if *direct {
        let end = if all { len.next_multiple_of(BLOCK) } else { whole };
        if end > len {
            buf.zero_to(end);
        }
        match file.write_all_at(&buf.bytes_all()[..end], base) {
            Ok(()) => {
                if end > len {
                    file.set_len(base + len as u64)?;
                }
                if all {
                    file.sync_data()?;
                }
                return Ok(whole);
            }
            // The filesystem takes the flag but not the write: through the page cache, then.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!("O_DIRECT writes refused by the filesystem; writing through the page cache");
                set_direct(file, false)?;
                *direct = false;
            }
            Err(e) => return Err(e),
        }
    }
    file.write_all_at(&buf.bytes_all()[..len], base)?;
    if all {
        file.sync_data()?;
    }
    Ok(len)
}

/// Turns `O_DIRECT` on or off for `file` (Linux; elsewhere it stays off).
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        let fd = file.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL take and return flags only.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, on);
        Err(io::Error::new(io::ErrorKind::Unsupported, "O_DIRECT is used on Linux only"))
    }
}

#[async_trait]
impl RunWriter for Appender {
    async fn append(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.file.is_none() {
                return Err(io::Error::other("an earlier write of this file failed"));
            }
            let n = bytes.len().min(self.buf.room());
            self.buf.extend(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buf.len >= WRITE_AT {
                self.write_out(false).await?;
            }
        }
        Ok(())
    }

    async fn sync(&mut self) -> io::Result<Option<Durable>> {
        self.finish().await.map(Some)
    }

    async fn finish(&mut self) -> io::Result<Durable> {
        self.write_out(true).await?;
        Ok(Durable::default())
    }
}

/// A buffer whose bytes start at a block-aligned address.
struct Aligned {
    /// The allocation, a block longer than the capacity so an aligned start fits in it.
    memory: Vec<u8>,
    /// Where the aligned bytes start in `memory`.
    start: usize,
    /// Bytes held.
    len: usize,
}

impl Aligned {
    fn new(capacity: usize) -> Self {
        let memory = vec![0u8; capacity + BLOCK];
        let start = memory.as_ptr().align_offset(BLOCK);
        Self { memory, start, len: 0 }
    }

    fn capacity(&self) -> usize {
        self.memory.len().saturating_sub(BLOCK)
    }

    fn room(&self) -> usize {
        self.capacity() - self.len
    }

    /// Every byte of the capacity.
    fn bytes_all(&self) -> &[u8] {
        &self.memory[self.start..self.start + self.capacity()]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let capacity = self.capacity();
        &mut self.memory[self.start..self.start + capacity]
    }

    fn extend(&mut self, bytes: &[u8]) {
        let at = self.len;
        self.bytes_mut()[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Zeroes the bytes after the held ones, up to `end`.
    fn zero_to(&mut self, end: usize) {
        let len = self.len;
        self.bytes_mut()[len..end].fill(0);
    }

    /// Drops the first `n` bytes, moving the rest to the start.
    fn consume(&mut self, n: usize) {
        let len = self.len;
        self.bytes_mut().copy_within(n..len, 0);
        self.len -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the descriptor of `file` has `O_DIRECT` set, as the kernel reports it.
    fn has_direct_flag(file: &File) -> bool {
        use std::os::fd::AsRawFd as _;
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd())).unwrap();
        let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim();
        u32::from_str_radix(flags, 8).unwrap() & libc::O_DIRECT as u32 != 0
    }

    /// Appends of every size, synced at odd places, reopened at a checkpoint mid-block: the
    /// file holds exactly the bytes appended, and is never longer than them after a sync.
    #[tokio::test]
    async fn appends_and_syncs_at_any_offset_leave_exactly_the_bytes() {
        // Under target/ (a disk; /tmp may be a tmpfs elsewhere).
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap();
        let path = dir.path().join("f");
        let mut expected = Vec::new();
        let mut next = 7u8;
        let mut bytes = |n: usize| {
            (0..n)
                .map(|_| {
                    next = next.wrapping_mul(31).wrapping_add(11);
                    next
                })
                .collect::<Vec<u8>>()
        };
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        let mut out = Appender::open(file, 0).unwrap();
        assert!(out.direct, "this filesystem takes O_DIRECT");
        assert!(has_direct_flag(out.file.as_ref().unwrap()));
        for (i, n) in [1024 * 1024 + 9, 1, 4095, 1, 5000, 3 * 1024 * 1024 + 17, 0, 4096, 8191, 300_000, 2, 1024 * 1024]
            .into_iter()
            .enumerate()
        {
            let piece = bytes(n);
            out.append(&piece).await.unwrap();
            expected.extend_from_slice(&piece);
            if i % 2 == 0 {
                out.sync().await.unwrap();
                assert_eq!(std::fs::read(&path).unwrap(), expected, "after the sync of append {i}");
            }
        }
        out.finish().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        drop(out);

        // Resume at a checkpoint inside a block: the bytes after it are replaced.
        let at = expected.len() as u64 - 1234;
        expected.truncate(at as usize);
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        file.set_len(at).unwrap();
        let mut out = Appender::open(file, at).unwrap();
        let piece = bytes(10_000);
        out.append(&piece).await.unwrap();
        expected.extend_from_slice(&piece);
        out.finish().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    /// Without O_DIRECT (a filesystem that refuses it), the same bytes through the page cache.
    #[tokio::test]
    async fn buffered_when_direct_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        let mut out = Appender::open(file, 0).unwrap();
        set_direct(out.file.as_ref().unwrap(), false).unwrap();
        out.direct = false;
        let piece: Vec<u8> = (0..2_000_003u32).map(|i| (i % 251) as u8).collect();
        out.append(&piece[..5]).await.unwrap();
        out.sync().await.unwrap();
        out.append(&piece[5..]).await.unwrap();
        out.finish().await.unwrap();
        assert!(!has_direct_flag(out.file.as_ref().unwrap()));
        assert_eq!(std::fs::read(&path).unwrap(), piece);
    }
}
