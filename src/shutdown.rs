//! The one thing that owns stopping.
//!
//! Every loop in the node watches the same [`Shutdown`]; tripping it (a
//! signal, a fatal error, or an embedding program) starts the graceful
//! sequence of docs/protocol.md. A second Ctrl+C is for an operator who does not
//! want to wait for it.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Starts the graceful stop.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the stop has been asked for.
    pub async fn wait(&self) {
        self.token.cancelled().await;
    }

    /// Trips on the first SIGTERM or SIGINT; on a second one, exits the
    /// process at once with the shell's code for that signal (130 or 143).
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let token = self.token.clone();
        tokio::spawn(async move {
            let first = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
                _ = token.cancelled() => return,
            };
            tracing::info!(
                "{first} received: stopping gracefully; running workloads keep running. Press Ctrl+C again to exit at once"
            );
            token.cancel();
            wait_for_second_signal(terminate, interrupt).await;
        });
        Ok(())
    }
}

async fn wait_for_second_signal(
    mut terminate: tokio::signal::unix::Signal,
    mut interrupt: tokio::signal::unix::Signal,
) {
    let (name, code) = tokio::select! {
        _ = terminate.recv() => ("SIGTERM", 143),
        _ = interrupt.recv() => ("SIGINT", 130),
    };
    tracing::warn!("second {name}: exiting now without finishing the graceful stop");
    std::process::exit(code);
}
