//! `status` and `logs`: what the node that would run here has on disk, read
//! without a broker.

use std::path::PathBuf;

use crate::config::{Environment, Overrides, Settings};

/// The workload log dir of the node that would run here.
fn local_logs_dir() -> anyhow::Result<PathBuf> {
    let settings = Settings::load(&Overrides::default(), &Environment::from_process())?;
    Ok(crate::workload::paths::logs_dir(&settings.config_dir.value))
}

pub(super) fn status(json: bool) -> anyhow::Result<()> {
    print!(
        "{}",
        crate::workload::local::status(&local_logs_dir()?, json)
    );
    Ok(())
}

pub(super) fn logs(request_id: &str, stderr: bool, follow: bool) -> anyhow::Result<()> {
    let dir = local_logs_dir()?;
    crate::workload::local::logs(
        &dir,
        request_id,
        stderr,
        follow,
        &mut std::io::stdout().lock(),
    )?;
    Ok(())
}
