//! Starting a command under the shim: the shim gets the files' stem, the
//! working directory, the command and the cgroup; it answers with one JSON
//! line ([`Report`]) once the process runs or could not be started.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use super::handoff::{Report, StartedFile};

/// Longest wait for the shim to report the process's pid.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a report line the node reads.
const REPORT_LIMIT: u64 = 64 * 1024;

/// What to start.
pub struct Spec<'a> {
    /// The shim binary.
    pub shim: &'a Path,
    /// The stem of the process's files (`<base>.stdout.log`, ...).
    pub base: &'a Path,
    pub cwd: &'a Path,
    /// Run by `/bin/sh -c`.
    pub command: &'a str,
    pub env: Vec<(String, String)>,
    /// An empty cgroup for the process, when the node could make one.
    pub cgroup: Option<&'a Path>,
}

/// Quotes `text` as one POSIX shell word, for the command the shim hands
/// to `/bin/sh -c`.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Why a launch failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot start the workload supervisor {}: {source}", shim.display())]
    Shim {
        shim: PathBuf,
        source: std::io::Error,
    },
    #[error("the workload supervisor did not report in time")]
    Silent,
    #[error("the workload supervisor reported something unreadable: {0}")]
    Garbled(#[source] serde_json::Error),
    /// The shim ran, the process could not be started (its reason).
    #[error("{0}")]
    Spawn(String),
}

/// Starts `spec` under the shim and waits for the pid. The `Child` is the
/// shim: the caller reaps it (its exit status is the process's).
pub async fn spawn(spec: Spec<'_>) -> Result<(StartedFile, Child), LaunchError> {
    let mut shim = Command::new(spec.shim);
    shim.arg(spec.base).arg(spec.cwd).arg(spec.command);
    if let Some(dir) = spec.cgroup {
        shim.arg(dir);
    }
    let mut child = shim
        .env_clear()
        .envs(spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| LaunchError::Shim {
            shim: spec.shim.to_owned(),
            source,
        })?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    let mut reader = BufReader::new(stdout.take(REPORT_LIMIT));
    let read = tokio::time::timeout(READY_TIMEOUT, reader.read_line(&mut line)).await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        let _ = child.start_kill();
        return Err(LaunchError::Silent);
    }
    match serde_json::from_str::<Report>(&line) {
        Ok(Report::Started(started)) => Ok((started, child)),
        Ok(Report::Failed { error }) => Err(LaunchError::Spawn(error)),
        Err(e) => {
            let _ = child.start_kill();
            Err(LaunchError::Garbled(e))
        }
    }
}
