//! Write buffers shared by every run of the process, so memory stays flat from one export to
//! the next.

use std::sync::{Arc, Mutex};

/// Encoded CSV is handed to the writer in pieces of about this size (with a reader faster than
/// its writer the channel stays full: 1 MiB pieces held 21 MiB at once with 4 ranges).
pub(super) const PIECE_BYTES: usize = 512 * 1024;
/// Write buffers kept for reuse by all runs of the process (beyond these, freed).
const POOLED_BUFFERS: usize = 16;

/// Write buffers shared by every run of the process: a piece goes from the producer to the
/// writer and back here, so the same few buffers serve every export and memory stays flat
/// (a fresh 1 MiB buffer per piece cost an mmap, page faults and an munmap each time, and
/// freed buffers lingered in per-thread malloc arenas from one export to the next).
#[derive(Debug, Clone, Default)]
pub(super) struct BufferPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufferPool {
    /// A cleared buffer with room for a piece.
    pub(super) fn take(&self) -> Vec<u8> {
        let pooled = self.0.lock().expect("buffer pool lock").pop();
        pooled.unwrap_or_else(|| Vec::with_capacity(PIECE_BYTES + 64 * 1024))
    }

    /// Hands a buffer back for reuse (freed beyond the pool's size).
    pub(super) fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut pool = self.0.lock().expect("buffer pool lock");
        if pool.len() < POOLED_BUFFERS {
            pool.push(buf);
        }
    }
}
