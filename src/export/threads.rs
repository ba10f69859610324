//! The engine's own threads: each run executes on one of a few single-threaded runtimes, so a
//! run's reader, writer and their sockets wake that one thread instead of the API's workers.
//!
//! Why (docs/performance.md, "exportd's own CPU"): on the shared multi-threaded runtime a
//! run's wake-ups went to whichever worker was parked, and a worker woke another to steal the
//! task (about 10,000 context switches per 1M-row export, a fifth of exportd's CPU). A run's
//! tasks on one thread wake it and no other. The reading connection is connected from the
//! run's thread (a pool of its own that never keeps idle connections), so its socket is
//! watched there too.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::{runtime::Handle, sync::oneshot, task::AbortHandle};

/// The engine's threads, each running a single-threaded runtime until the last clone of this is
/// dropped (tasks still on it are then cancelled, as a process exit would).
#[derive(Clone)]
pub(super) struct EngineThreads(Arc<Threads>);

struct Threads {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropping these ends the threads' runtimes.
    _stop: Vec<oneshot::Sender<()>>,
}

impl std::fmt::Debug for EngineThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineThreads").field("threads", &self.0.handles.len()).finish()
    }
}

impl EngineThreads {
    /// Starts `count` threads (at least one).
    pub(super) fn start(count: usize) -> std::io::Result<Self> {
        let (mut handles, mut stop) = (Vec::new(), Vec::new());
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (tx, rx) = oneshot::channel::<()>();
            handles.push(runtime.handle().clone());
            stop.push(tx);
            std::thread::Builder::new().name(format!("exportd-engine-{index}")).spawn(move || {
                // Until every sender is dropped; the runtime's remaining tasks are dropped then.
                let _ = runtime.block_on(rx);
            })?;
        }
        Ok(Self(Arc::new(Threads { handles, next: AtomicUsize::new(0), _stop: stop })))
    }

    /// Runs `work` on the next thread in turn and waits for it. Dropping the returned future
    /// cancels `work` (as dropping `work` itself would have); a panic in it is raised here.
    pub(super) async fn run<F>(&self, work: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let threads = &self.0;
        let handle = &threads.handles[threads.next.fetch_add(1, Ordering::Relaxed) % threads.handles.len()];
        let task = handle.spawn(work);
        let _cancel = CancelOnDrop(task.abort_handle());
        match task.await {
            Ok(output) => output,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: only by this future's drop, or by the threads' end, which needs every
            // clone gone (this one is alive).
            Err(e) => unreachable!("an engine task was cancelled while awaited: {e}"),
        }
    }
}

/// Aborts a task when dropped (a finished task ignores it).
struct CancelOnDrop(AbortHandle);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The number of engine threads for `cores` cores: half of them, at least one (the database
/// formats the rows and needs the rest; one thread carries several runs).
pub fn default_threads(cores: usize) -> usize {
    cores.div_ceil(2).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_an_engine_thread_and_is_cancelled_with_its_caller() {
        let threads = EngineThreads::start(2).unwrap();
        let name = || async { std::thread::current().name().map(str::to_owned) };
        let mut names = vec![threads.run(name()).await.unwrap(), threads.run(name()).await.unwrap()];
        names.sort();
        assert_eq!(names, ["exportd-engine-0", "exportd-engine-1"], "runs take the threads in turn");
        // Dropping the caller's future drops the work: its sender goes, the receiver sees it.
        let (tx, rx) = oneshot::channel::<()>();
        let started = Arc::new(tokio::sync::Notify::new());
        let work = {
            let started = started.clone();
            async move {
                started.notify_one();
                std::future::pending::<()>().await;
                drop(tx);
            }
        };
        let call = tokio::spawn({
            let threads = threads.clone();
            async move { threads.run(work).await }
        });
        started.notified().await;
        call.abort();
        let dropped = tokio::time::timeout(std::time::Duration::from_secs(10), rx).await;
        assert!(matches!(dropped, Ok(Err(_))), "the work was dropped with its caller");
        assert_eq!(default_threads(1), 1);
        assert_eq!(default_threads(2), 1);
        assert_eq!(default_threads(8), 4);
    }
}
