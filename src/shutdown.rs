//! One shutdown signal, fanned out to the HTTP server, the queue monitor and every running export.

use tokio_util::sync::CancellationToken;

/// A cloneable handle on the process-wide stop signal. Cancelling any clone stops them all.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A signal not yet triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask everything to stop: HTTP stops accepting, exports release at their next chunk boundary.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// True once a stop was requested; exports poll this between chunks.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when a stop is requested.
    pub async fn wait(&self) {
        self.token.cancelled().await;
    }

    /// Triggers this signal on SIGINT or SIGTERM (spawned once by the binary).
    pub fn trigger_on_os_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("install SIGTERM handler");
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                    _ = this.wait() => return,
                }
            }
            #[cfg(not(unix))]
            {
                tokio::select! { _ = ctrl_c => {}, _ = this.wait() => return }
            }
            tracing::info!("stop signal received: releasing exports and shutting down");
            this.trigger();
        });
    }
}
