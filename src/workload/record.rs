//! The files that make workloads survive the node: the node's record, and
//! the two files the supervisor writes (started, exit).
//!
//! The records double as the request_id index: a redelivered command finds
//! its request_id here and is never started twice.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::paths::WorkloadPaths;
use crate::fsutil;

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
    pub workload_type: String,
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
}

impl WorkloadRecord {
    /// The record written before anything runs.
    pub fn starting(
        request_id: &str,
        workload_type: &str,
        paths: &WorkloadPaths,
    ) -> WorkloadRecord {
        WorkloadRecord {
            request_id: request_id.to_owned(),
            workload_type: workload_type.to_owned(),
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
        }
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

/// Written by the supervisor right after the workload process exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartedFile {
    pub supervisor_pid: i32,
    pub supervisor_start_time: u64,
    pub pid: i32,
    pub start_time: u64,
    pub started_unix_ms: u64,
    /// The cgroup the workload runs in (`None`: the node asked for none,
    /// or moving the workload into it failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
}

/// Written by the supervisor when the workload has ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitFile {
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub ended_unix_ms: u64,
    /// CPU time of the workload and every descendant it waited for.
    pub cpu_seconds: f64,
    /// Peak resident set of the largest process in that tree.
    pub max_rss_bytes: u64,
    /// Set when the workload could not be started at all.
    #[serde(default)]
    pub error: Option<String>,
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes `value` as JSON, atomically, mode 0600.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    fsutil::write_atomic(path, &bytes, 0o600)
}

/// Reads JSON; `Ok(None)` when the file does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{} is corrupt: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Every record in `logs_dir`, with the problems of the unreadable ones.
pub fn scan(logs_dir: &Path) -> Vec<(WorkloadPaths, Result<WorkloadRecord, String>)> {
    let Ok(entries) = std::fs::read_dir(logs_dir) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries
        .flatten()
        .filter_map(|entry| WorkloadPaths::from_record_file(&entry.path()))
        .map(|paths| {
            let record = read_json::<WorkloadRecord>(&paths.record())
                .and_then(|r| r.ok_or_else(|| "vanished".to_owned()));
            (paths, record)
        })
        .collect();
    found.sort_by_key(|(_, r)| r.as_ref().map(|r| r.created_unix_ms).unwrap_or(0));
    found
}
