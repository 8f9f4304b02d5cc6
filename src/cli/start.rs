//! `cyberwave-cloud-node start`: load the settings and run the node until
//! a signal stops it.

use super::{load_settings, SettingsArgs};
use crate::shutdown::Shutdown;

/// Runs the node: its event loop on this thread, the tasks it spawns
/// (launches, exit watches, REST calls) on one worker thread.
pub(super) fn run(args: &SettingsArgs) -> anyhow::Result<()> {
    let settings = load_settings(args)?;
    // The loop writes the outbox and records synchronously (fsync); on a
    // single-threaded runtime a launch under way stood still meanwhile (a
    // queued workload's start waited for the previous one's report). One
    // worker keeps the idle footprint small; blocking work goes to tokio's
    // blocking pool.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = Shutdown::new();
        shutdown.listen_for_signals()?;
        crate::node::run(settings, shutdown).await?;
        Ok(())
    })
}
