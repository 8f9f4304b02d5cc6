//! A unit's exit status, from the best source there is: the shim's exit
//! file; else the shim's own exit status, when the node was its parent;
//! else nothing, with the reason in words (never a guess).

use std::path::Path;

use super::handoff::{signal_name, ExitFile, StartedFile};
use super::unit::ShimEnd;
use crate::fsutil::load_json;

/// Where an exit status came from.
#[derive(Debug, Clone, PartialEq)]
pub enum ExitStatus {
    /// The shim's exit file: code or signal, CPU time, peak RSS.
    File(ExitFile),
    /// Only the shim's own exit status: the code, no figures.
    ShimStatus(ExitFile),
    /// Not known; why, in words.
    Unknown(String),
}

impl ExitStatus {
    /// Reads what is known of a unit whose shim has ended. `exit_file` is
    /// the shim's `<base>.exit.json`; `shim` is `None` when the shim never
    /// reported (the node stopped mid-launch).
    pub fn read(exit_file: &Path, shim: Option<&StartedFile>, end: Option<ShimEnd>) -> ExitStatus {
        match load_json::<ExitFile>(exit_file) {
            Ok(Some(exit)) => return ExitStatus::File(exit),
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}"),
        }
        if let Some(ShimEnd::Exited(code)) = end {
            tracing::warn!(
                "no exit file {}: the exit code {code} comes from the shim's own exit status",
                exit_file.display()
            );
            return ExitStatus::ShimStatus(ExitFile::from_shim_status(code));
        }
        ExitStatus::Unknown(unknown_reason(exit_file, shim, end))
    }

    /// The exit file's contents, or what stands in for them.
    pub fn exit(&self) -> Option<&ExitFile> {
        match self {
            ExitStatus::File(exit) | ExitStatus::ShimStatus(exit) => Some(exit),
            ExitStatus::Unknown(_) => None,
        }
    }

    /// "exit code 3", "killed by SIGKILL", or why nothing is known.
    pub fn describe(&self) -> String {
        match self.exit() {
            Some(ExitFile {
                signal: Some(signal),
                ..
            }) => format!("killed by {signal}"),
            Some(ExitFile {
                exit_code: Some(code),
                ..
            }) => format!("exit code {code}"),
            Some(_) => "no exit status recorded".into(),
            None => "no exit status recorded: its supervisor died too".into(),
        }
    }
}

/// Why a unit's exit status is not known, in words for the event.
fn unknown_reason(exit_file: &Path, shim: Option<&StartedFile>, end: Option<ShimEnd>) -> String {
    let Some(shim) = shim else {
        return "the node stopped while starting it, before its supervisor reported".into();
    };
    let supervisor = format!("its supervisor (pid {})", shim.supervisor_pid);
    match end {
        Some(ShimEnd::Killed(signal)) => format!(
            "{supervisor} was killed by {} before it could record the exit status",
            signal_name(signal)
        ),
        _ => format!(
            "{supervisor} ended without writing {} (check free space and permissions there), and its own exit status went to the process that reaped it, not to this node (restarted since the workload started)",
            exit_file.display()
        ),
    }
}
