//! The files that make workloads survive the node: the node's record, and
//! the two files the supervisor writes (started, exit).
//!
//! The records double as the request_id index: a redelivered command finds
//! its request_id here and is never started twice. A record that cannot be
//! read (empty, torn, corrupt) still holds its request_id: [`scan`] reports
//! it with what the files beside it tell ([`Damaged`]), and the manager
//! refuses that request_id, naming the file, rather than run it again.
//!
//! These files are always written by `fsutil::write_atomic`, so they are
//! read as regular files only, never through a link, and never past
//! `fsutil`'s state-file limit.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::paths::{self, WorkloadPaths};
use crate::fsutil::{self, Contents, Links};
pub use crate::fsutil::{load_json, write_json, StateFileError};
use crate::supervised::procfs;
pub use crate::supervised::{now_unix_ms, ExitFile, StartedFile};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadState {
    /// Record written, supervisor spawned, workload pid not known yet.
    Starting,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl WorkloadState {
    pub fn is_active(self) -> bool {
        matches!(self, WorkloadState::Starting | WorkloadState::Running)
    }

    pub fn name(self) -> &'static str {
        match self {
            WorkloadState::Starting => "starting",
            WorkloadState::Running => "running",
            WorkloadState::Completed => "completed",
            WorkloadState::Failed => "failed",
            WorkloadState::Cancelled => "cancelled",
        }
    }
}

/// A cancel asked for, kept on disk so a restarted node still reports the
/// workload as cancelled (not failed) and still escalates to SIGKILL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelRequest {
    pub signal: String,
    pub requested_unix_ms: u64,
    pub grace_seconds: f64,
}

/// The node's record of one workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    pub request_id: String,
    pub workload_type: crate::protocol::WorkloadKind,
    pub state: WorkloadState,
    pub created_unix_ms: u64,
    /// The workload (`/bin/sh -c ...`), leader of its own process group.
    pub pid: Option<i32>,
    pub start_time: Option<u64>,
    pub started_unix_ms: Option<u64>,
    pub supervisor_pid: Option<i32>,
    pub supervisor_start_time: Option<u64>,
    pub stdout_log: PathBuf,
    pub stderr_log: PathBuf,
    #[serde(default)]
    pub cancel: Option<CancelRequest>,
    #[serde(default)]
    pub finished_unix_ms: Option<u64>,
    /// The workload's own cgroup v2, when it runs in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// The GPUs it holds exclusively (their ids), from its start to its
    /// end, restarts of the node included; `None`: it sees every GPU
    /// (`gpus_per_workload: all`) and holds none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Vec<String>>,
}

impl WorkloadRecord {
    /// The record written before anything runs.
    pub fn starting(
        request_id: &str,
        workload_type: crate::protocol::WorkloadKind,
        paths: &WorkloadPaths,
    ) -> WorkloadRecord {
        WorkloadRecord {
            request_id: request_id.to_owned(),
            workload_type,
            state: WorkloadState::Starting,
            created_unix_ms: now_unix_ms(),
            pid: None,
            start_time: None,
            started_unix_ms: None,
            supervisor_pid: None,
            supervisor_start_time: None,
            stdout_log: paths.stdout(),
            stderr_log: paths.stderr(),
            cancel: None,
            finished_unix_ms: None,
            cgroup: None,
            gpus: None,
        }
    }

    /// The supervised process, once the shim has reported it.
    pub fn process(&self) -> Option<StartedFile> {
        StartedFile::from_ids(
            self.supervisor_pid.zip(self.supervisor_start_time),
            self.pid.zip(self.start_time),
            self.started_unix_ms.unwrap_or(self.created_unix_ms),
            self.cgroup.clone(),
        )
    }

    /// Saves the record before the workload runs: whole, not yet synced.
    /// A power loss then ends the process too, and the command, not yet
    /// acknowledged, comes again; the record is synced once it runs.
    pub fn save_unsynced(&self, paths: &WorkloadPaths) -> std::io::Result<()> {
        fsutil::write_json_with(&paths.record(), self, fsutil::Durability::Atomic)
    }

    pub fn save(&self, paths: &WorkloadPaths) -> std::io::Result<()> {
        write_json(&paths.record(), self)
    }

    /// Seconds since the workload (or, before it ran, the record) started.
    pub fn age_seconds(&self, now_ms: u64) -> f64 {
        let since = self.started_unix_ms.unwrap_or(self.created_unix_ms);
        now_ms.saturating_sub(since) as f64 / 1000.0
    }
}

/// A record file that exists but cannot be read, with what the files
/// beside it still tell. Its request_id stays taken.
#[derive(Debug)]
pub struct Damaged {
    pub paths: WorkloadPaths,
    pub problem: StateFileError,
    /// From the file name, `<type>_<rid>`.
    pub workload_type: String,
    /// The request_id's file-name form ([`paths::rid`]), which a
    /// redelivered command computes again from its request_id.
    pub rid: String,
    /// The request_id itself, when it can be known for sure (see
    /// [`Damaged::rebuild`]).
    pub request_id: Option<String>,
    pub started: Option<StartedFile>,
    pub exit: Option<ExitFile>,
}

impl Damaged {
    /// Gathers what the started and exit files say. The request_id is
    /// known when the supervisor (or the workload) still runs and its
    /// environment's `CYBERWAVE_REQUEST_ID` maps to this file name; a
    /// finished workload's is not needed (a rerun is refused by file name).
    pub fn rebuild(paths: WorkloadPaths, problem: StateFileError) -> Option<Damaged> {
        let name = paths.base().file_name()?.to_str()?.to_owned();
        let (workload_type, rid) = name.split_once('_')?;
        let started = load_json::<StartedFile>(&paths.started()).ok().flatten();
        let exit = load_json::<ExitFile>(&paths.exit()).ok().flatten();
        let request_id = started.as_ref().and_then(|s| {
            [
                (s.supervisor_pid, s.supervisor_start_time),
                (s.pid, s.start_time),
            ]
            .into_iter()
            .filter(|(pid, start)| procfs::is_same_process(*pid, *start))
            .find_map(|(pid, _)| environ_var(pid, "CYBERWAVE_REQUEST_ID"))
            .filter(|id| paths::rid(id) == rid)
        });
        Some(Damaged {
            workload_type: workload_type.to_owned(),
            rid: rid.to_owned(),
            request_id,
            started,
            exit,
            paths,
            problem,
        })
    }

    /// The record of a workload that still runs and can be adopted: it
    /// started, has no exit file, and its request_id is known. No terminal
    /// event can have gone out for it yet.
    pub fn running_record(&self) -> Option<WorkloadRecord> {
        let started = self.started.as_ref()?;
        let running = procfs::is_running(started.supervisor_pid, started.supervisor_start_time)
            || procfs::is_running(started.pid, started.start_time);
        if self.exit.is_some() || !running {
            return None;
        }
        let mut record = WorkloadRecord::starting(
            self.request_id.as_deref()?,
            crate::protocol::WorkloadKind::from_name(&self.workload_type)?,
            &self.paths,
        );
        record.created_unix_ms = started.started_unix_ms;
        super::launch::apply_started(&mut record, started);
        Some(record)
    }

    /// What the files beside the record say happened, for the operator.
    pub fn story(&self) -> String {
        let pid = self
            .started
            .as_ref()
            .map(|s| format!(" (pid {})", s.pid))
            .unwrap_or_default();
        match (&self.started, &self.exit) {
            (_, Some(ExitFile { error: Some(e), .. })) => format!("it could not start: {e}"),
            (
                _,
                Some(ExitFile {
                    exit_code: Some(code),
                    ..
                }),
            ) => {
                format!("it ran{pid} and exited with code {code}")
            }
            (
                _,
                Some(ExitFile {
                    signal: Some(signal),
                    ..
                }),
            ) => {
                format!("it ran{pid} and was killed by {signal}")
            }
            (_, Some(_)) => format!("it ran{pid} and ended"),
            (Some(_), None) => format!("it started{pid}; its end is unknown"),
            (None, None) => "no started or exit file beside it: it may or may not have run".into(),
        }
    }
}

/// One variable of a process's initial environment (same user only).
fn environ_var(pid: i32, name: &str) -> Option<String> {
    let path = PathBuf::from(format!("/proc/{pid}/environ"));
    let Ok(Some(Contents::Read(bytes))) = fsutil::read_whole(&path, Links::Follow, 1 << 20) else {
        return None;
    };
    bytes.split(|b| *b == 0).find_map(|entry| {
        let value = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        String::from_utf8(value.to_vec()).ok()
    })
}

/// Every record in `logs_dir`, in the order they were created, and the
/// damaged ones apart.
pub fn scan(logs_dir: &Path) -> (Vec<(WorkloadPaths, WorkloadRecord)>, Vec<Damaged>) {
    let Ok(entries) = std::fs::read_dir(logs_dir) else {
        return Default::default();
    };
    let mut found = Vec::new();
    let mut damaged = Vec::new();
    for paths in entries
        .flatten()
        .filter_map(|entry| WorkloadPaths::from_record_file(&entry.path()))
    {
        match load_json::<WorkloadRecord>(&paths.record()) {
            Ok(Some(record)) => found.push((paths, record)),
            Ok(None) => {} // removed meanwhile
            Err(problem) => damaged.extend(Damaged::rebuild(paths, problem)),
        }
    }
    found.sort_by_key(|(_, r)| r.created_unix_ms);
    (found, damaged)
}
