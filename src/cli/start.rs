//! `cyberwave-cloud-node start`: load the settings and run the node until
//! a signal stops it.

use super::{load_settings, SettingsArgs};
use crate::shutdown::Shutdown;

/// Runs the node on a single-threaded runtime.
pub(super) fn run(args: &SettingsArgs) -> anyhow::Result<()> {
    let settings = load_settings(args)?;
    // One thread is plenty for a node that mostly waits, and keeps the idle
    // footprint small; blocking work goes to tokio's blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = Shutdown::new();
        shutdown.listen_for_signals()?;
        crate::node::run(settings, shutdown).await?;
        Ok(())
    })
}
