//! What the shim and the node tell each other: the shim's arguments, the
//! line it prints once the process runs, and the two files it writes
//! (started, exit). Compiled into both the node library and the shim
//! binary (`src/shim/main.rs`), so the format has one definition; it
//! therefore uses only std, libc, serde and `fsutil::atomic`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::fsutil::atomic::now_unix_ms;

/// The shim's file name: installed beside the node's executable.
pub const SHIM_NAME: &str = "cyberwave-cloud-node-shim";
/// The one line the shim prints on its stdout, as JSON: the process runs,
/// or it could not be started. The node reads this, not the files, while
/// it launches; the files are for a node that restarts later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    Started(StartedFile),
    Failed { error: String },
}

/// Written by the shim right after the process exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartedFile {
    pub supervisor_pid: i32,
    pub supervisor_start_time: u64,
    pub pid: i32,
    pub start_time: u64,
    pub started_unix_ms: u64,
    /// The cgroup the process runs in (`None`: the node asked for none,
    /// or moving the process into it failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
}

impl StartedFile {
    /// What the shim reported, as an owner's record keeps it: `None`
    /// until both the shim's and the process's (pid, start time) are known.
    pub fn from_ids(
        shim: Option<(i32, u64)>,
        process: Option<(i32, u64)>,
        started_unix_ms: u64,
        cgroup: Option<PathBuf>,
    ) -> Option<StartedFile> {
        let ((supervisor_pid, supervisor_start_time), (pid, start_time)) = (shim?, process?);
        Some(StartedFile {
            supervisor_pid,
            supervisor_start_time,
            pid,
            start_time,
            started_unix_ms,
            cgroup,
        })
    }
}

/// Written by the shim when the process has ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitFile {
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub ended_unix_ms: u64,
    /// CPU time of the process and every descendant it waited for.
    pub cpu_seconds: f64,
    /// Peak resident set of the largest process in that tree.
    pub max_rss_bytes: u64,
    /// Set when the process could not be started at all.
    #[serde(default)]
    pub error: Option<String>,
}

impl ExitFile {
    /// What is known when only the shim's own exit status is: the process's
    /// code, or 128 + its signal, reported as the code a shell's `$?` gives
    /// (a process may exit 130 on its own: the number alone cannot say).
    pub fn from_shim_status(code: i32) -> ExitFile {
        ExitFile {
            exit_code: Some(code),
            signal: None,
            ended_unix_ms: now_unix_ms(),
            cpu_seconds: 0.0,
            max_rss_bytes: 0,
            error: None,
        }
    }
}

/// The name of a signal number (`SIGTERM`), or `signal N`.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSTKFLT => "SIGSTKFLT",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        libc::SIGURG => "SIGURG",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGIO => "SIGIO",
        libc::SIGPWR => "SIGPWR",
        libc::SIGSYS => "SIGSYS",
        other => return format!("signal {other}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_status_means_code_or_signal() {
        let exit = ExitFile::from_shim_status(3);
        assert_eq!((exit.exit_code, exit.signal), (Some(3), None));
        let exit = ExitFile::from_shim_status(128 + 9);
        assert_eq!((exit.exit_code, exit.signal), (Some(137), None));
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(64), "signal 64");
    }

    #[test]
    fn exit_files_read_back_as_written() {
        use crate::fsutil::atomic::{write_file, Durability};
        let dir = std::env::temp_dir().join(format!("handoff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.exit.json");
        let exit = ExitFile::from_shim_status(3);
        let bytes = serde_json::to_vec_pretty(&exit).unwrap();
        write_file(&path, &bytes, 0o600, Durability::Synced).unwrap();
        let back: ExitFile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, exit);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
