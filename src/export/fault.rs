//! Test-only fault and pause points: a run dies, or holds still, at a precise instant, so tests
//! force the schedules that break exactness deterministically instead of hoping a sleep lines
//! them up. Nothing here is armed unless a test arms it, and without the `faults` cargo
//! feature (which only the tests turn on) nothing of it is compiled in: the points are no-ops.

#[cfg(feature = "faults")]
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

#[cfg(feature = "faults")]
use tokio::sync::Semaphore;

/// Where a run dies or holds (all unarmed by default; empty without the `faults` feature).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    #[cfg(feature = "faults")]
    /// Die after the n-th chunk (1-based, counted per run) is written and synced, before its checkpoint.
    pub crash_before_checkpoint: Option<u64>,
    #[cfg(feature = "faults")]
    /// Die right after the n-th chunk's checkpoint is saved.
    pub crash_after_checkpoint: Option<u64>,
    #[cfg(feature = "faults")]
    /// The crashes above strike in this key range's writer only (None: any writer's; a serial
    /// export's is range 0).
    pub crash_in_range: Option<i32>,
    #[cfg(feature = "faults")]
    /// Hold the run at a point until the test lets it go on (see [`Pause`]).
    pub pause: Option<(PauseAt, Pause)>,
}

/// Instants of a run where a [`Pause`] can hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseAt {
    /// The run's file is prepared (the checkpointed prefix adopted or copied), no chunk read yet.
    FilePrepared,
    /// The writer holds the first piece of the n-th chunk of this run (1-based), not yet written:
    /// a paused (SIGSTOPped, partitioned) runner with bytes still to write.
    BeforeChunkWrite(u64),
    /// The n-th slice of a checkpointed prefix is copied into the run's new file (1-based).
    PrefixCopySlice(u64),
    /// A download has read the export's row (it is `completed`) and not yet opened the file.
    DownloadLookedUp,
}

/// A rendezvous between a test and a paused run: the run announces it got there and waits;
/// the test waits for the announcement, does what the schedule needs, then lets the run go.
/// It holds once: later runs that pass the same point go on.
#[cfg(feature = "faults")]
#[derive(Debug, Clone)]
pub struct Pause {
    reached: Arc<Semaphore>,
    resume: Arc<Semaphore>,
    used: Arc<AtomicBool>,
}

#[cfg(feature = "faults")]
impl Default for Pause {
    fn default() -> Self {
        Self {
            reached: Arc::new(Semaphore::new(0)),
            resume: Arc::new(Semaphore::new(0)),
            used: Arc::new(AtomicBool::new(false)),
        }
    }
}

#[cfg(feature = "faults")]
impl Pause {
    /// A new, unreached pause.
    pub fn new() -> Self {
        Self::default()
    }

    /// (Test side) waits until a run is held here.
    pub async fn reached(&self) {
        self.reached.acquire().await.expect("pause semaphore open").forget();
    }

    /// (Test side) lets one held run go on.
    pub fn resume(&self) {
        self.resume.add_permits(1);
    }

    /// (Run side) announces the run got here and waits to be let go (the first time only).
    pub async fn hold(&self) {
        if self.used.swap(true, Ordering::SeqCst) {
            return;
        }
        self.reached.add_permits(1);
        self.resume.acquire().await.expect("pause semaphore open").forget();
    }
}

#[cfg(feature = "faults")]
impl Faults {
    /// Holds the run if a pause is armed at `at`.
    pub async fn pause_at(&self, at: PauseAt) {
        if let Some((armed, pause)) = &self.pause
            && *armed == at
        {
            tracing::info!(?at, "test pause point reached; holding");
            pause.hold().await;
        }
    }

    /// Whether the run dies after range `range`'s `chunk`-th chunk is synced, before its checkpoint.
    pub fn crash_before_checkpoint(&self, range: i32, chunk: u64) -> bool {
        self.crash_before_checkpoint == Some(chunk) && self.crash_in_range.is_none_or(|r| r == range)
    }

    /// Whether the run dies right after range `range`'s `chunk`-th checkpoint.
    pub fn crash_after_checkpoint(&self, range: i32, chunk: u64) -> bool {
        self.crash_after_checkpoint == Some(chunk) && self.crash_in_range.is_none_or(|r| r == range)
    }
}

/// Without the feature every point is a no-op the compiler removes.
#[cfg(not(feature = "faults"))]
impl Faults {
    /// Holds the run if a pause is armed at `at` (never, in this build).
    #[inline(always)]
    pub async fn pause_at(&self, _at: PauseAt) {}

    /// Whether the run dies before its `chunk`-th checkpoint (never, in this build).
    #[inline(always)]
    pub fn crash_before_checkpoint(&self, _range: i32, _chunk: u64) -> bool {
        false
    }

    /// Whether the run dies after its `chunk`-th checkpoint (never, in this build).
    #[inline(always)]
    pub fn crash_after_checkpoint(&self, _range: i32, _chunk: u64) -> bool {
        false
    }
}
