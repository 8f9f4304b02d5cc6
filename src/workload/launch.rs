//! Launching one workload: files first, then the supervisor, then the pid;
//! and why a workload command may start nothing ([`StartRefusal`]) or a
//! launch fail ([`LaunchFailure`]).
//!
//! The record is on disk (state `starting`) before the supervisor exists,
//! and updated with the pid before the node answers `started`, so a node
//! that dies at any point leaves enough behind for the next one to find the
//! workload and never start it twice.

use std::io;
use std::path::PathBuf;

use tokio::process::Child;
use tokio::task::JoinError;

use super::paths::WorkloadPaths;
use super::record::{StartedFile, WorkloadRecord, WorkloadState};
use super::template::RenderError;
use crate::fsutil;
use crate::protocol::WorkloadKind;
use crate::supervised::{cgroup, launch};

pub struct LaunchSpec {
    /// The shim binary.
    pub shim: PathBuf,
    pub paths: WorkloadPaths,
    pub cwd: PathBuf,
    pub command: String,
    pub env: Vec<(String, String)>,
    pub params_json: String,
    pub record: WorkloadRecord,
    /// An empty cgroup for the workload, when the node could make one.
    pub cgroup: Option<PathBuf>,
}

/// Why a workload could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchFailure {
    /// One of the files the launch writes first (`what`, in `dir`).
    #[error(
        "cannot write {what} in {}: {source}; check free space and permissions of the config dir",
        dir.display()
    )]
    Files {
        what: &'static str,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Shim(#[from] launch::LaunchError),
    /// The record with the pid, written before `started` is answered.
    #[error("cannot write the workload record {}: {source}", path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The blocking task that wrote a file did not finish.
    #[error(transparent)]
    Task(#[from] JoinError),
}

/// Why a workload command starts nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StartRefusal {
    #[error(
        "no {kind} command is configured on this node: set `{kind}:` in cyberwave.yml or CYBERWAVE_{}_CMD",
        kind.name().to_ascii_uppercase()
    )]
    NotConfigured { kind: WorkloadKind },
    /// The request_id is a known workload's (`rebuilt`: its damaged record).
    #[error(
        "request_id {request_id:?} already started a {kind} workload (pid {}, {state}){}; it is not started again",
        pid.map_or_else(|| "not yet known".to_owned(), |p| p.to_string()),
        rebuilt.as_ref().map_or_else(String::new, |file| format!(
            " (its record {} was damaged and has been rebuilt from the files beside it)",
            file.display()
        ))
    )]
    Duplicate {
        request_id: String,
        kind: WorkloadKind,
        pid: Option<i32>,
        state: &'static str,
        rebuilt: Option<PathBuf>,
    },
    /// The request_id's record cannot be read (`problem`); `story` is what
    /// the files beside it tell.
    #[error(
        "request_id {request_id:?} already has a {workload_type} workload whose record cannot be read ({problem}); \
         {story}. It is not started again: the files are kept for the operator, remove {} to allow \
         this request_id again",
        file.display()
    )]
    Damaged {
        request_id: String,
        workload_type: String,
        problem: String,
        story: String,
        file: PathBuf,
    },
    /// The request_id waits in the queue (`position` among the waiting;
    /// `None` while it leaves the queue).
    #[error(
        "request_id {request_id:?} is already queued for a {kind} workload ({}); it is not queued again",
        position.map_or_else(|| "leaving the queue now".to_owned(), |p| format!("position {p} of {waiting}"))
    )]
    Queued {
        request_id: String,
        kind: WorkloadKind,
        position: Option<usize>,
        waiting: usize,
    },
    /// It cannot start now, and there is no queue (`max_queued_workloads: 0`).
    #[error("the node is busy: {wait}; retry later or send it to another node")]
    Busy { wait: Wait },
    #[error(
        "the node is busy: {wait}, and the queue is full: {waiting} of {max} waiting (max_queued_workloads); \
         retry later or send it to another node"
    )]
    QueueFull {
        wait: Wait,
        waiting: usize,
        max: usize,
    },
    /// The queue could not take it (too big, or the disk refused).
    #[error("the node is busy and the request could not be queued: {problem}")]
    NotQueued { problem: String },
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("params.gpus must be a whole number of GPUs from 0 to 64, or \"all\", got {got}")]
    BadGpus { got: String },
    #[error("params.allow_cpu_fallback must be true or false, got {got}")]
    BadFallback { got: String },
    /// More GPUs than the node has, or none at all, and no CPU fallback.
    #[error("{0}; set \"allow_cpu_fallback\": true in the params to run it on the CPU instead")]
    Gpus(crate::gpus::GpuError),
}

/// Why a workload cannot start now: what it waits for in the queue.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Wait {
    #[error("{active} of {max} workloads running (max_concurrent_workloads)")]
    Concurrency { active: usize, max: usize },
    /// The GPUs it asks for are held by others now.
    #[error("{reason}")]
    Gpus { reason: String },
    /// Earlier commands wait in the queue: a new one never overtakes them.
    #[error("{waiting} earlier request(s) waiting in the queue")]
    Behind { waiting: usize },
}

/// Why a launched workload is not `started`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the workload vanished while starting")]
    Vanished,
    #[error(transparent)]
    Launch(#[from] LaunchFailure),
}

/// Fills in what the supervisor reported.
pub fn apply_started(record: &mut WorkloadRecord, started: &StartedFile) {
    record.state = WorkloadState::Running;
    record.pid = Some(started.pid);
    record.start_time = Some(started.start_time);
    record.started_unix_ms = Some(started.started_unix_ms);
    record.supervisor_pid = Some(started.supervisor_pid);
    record.supervisor_start_time = Some(started.supervisor_start_time);
    record.cgroup = started.cgroup.clone();
}

/// Runs the launch; `Ok` carries the running record and the supervisor.
pub async fn launch(spec: LaunchSpec) -> Result<(WorkloadRecord, Child), LaunchFailure> {
    let LaunchSpec {
        shim,
        paths,
        cwd,
        command,
        env,
        params_json,
        mut record,
        cgroup,
    } = spec;
    let (p, r) = (paths.clone(), record.clone());
    let written = tokio::task::spawn_blocking(move || write_initial_files(&p, &r, &params_json))
        .await
        .map_err(LaunchFailure::from)
        .and_then(|written| written);
    let launched = match written {
        Ok(()) => launch::spawn(launch::Spec {
            shim: &shim,
            base: paths.base(),
            cwd: &cwd,
            command: &command,
            env,
            cgroup: cgroup.as_deref(),
        })
        .await
        .map_err(LaunchFailure::from),
        Err(e) => Err(e),
    };
    // An unused cgroup goes at once (a failed launch runs nothing).
    if let Some(dir) = cgroup {
        if !matches!(&launched, Ok((started, _)) if started.cgroup.is_some()) {
            if launched.is_ok() {
                tracing::warn!(
                    request_id = %record.request_id,
                    "the workload could not be moved into its cgroup {}; tracking its processes through /proc instead",
                    dir.display()
                );
            }
            let _ = cgroup::remove(&dir);
        }
    }
    let (started, child) = launched?;
    apply_started(&mut record, &started);
    let (p, r) = (paths.clone(), record.clone());
    tokio::task::spawn_blocking(move || r.save(&p))
        .await?
        .map_err(|source| LaunchFailure::Record {
            path: paths.record(),
            source,
        })?;
    Ok((record, child))
}

fn write_initial_files(
    paths: &WorkloadPaths,
    record: &WorkloadRecord,
    params_json: &str,
) -> Result<(), LaunchFailure> {
    let dir = paths.base().parent().map(PathBuf::from).unwrap_or_default();
    let fail = |what: &'static str, source: io::Error| LaunchFailure::Files {
        what,
        dir: dir.clone(),
        source,
    };
    fsutil::create_private_dir(&dir).map_err(|e| fail("the workload log dir", e))?;
    // Stale files of an earlier workload with the same name (its record
    // expired) must not be taken for this one's.
    for stale in [
        paths.started(),
        paths.exit(),
        paths.offsets(),
        paths.result(),
        paths.progress(),
    ] {
        let _ = std::fs::remove_file(stale);
    }
    // Neither is synced yet: see `WorkloadRecord::save_unsynced`.
    let params = params_json.as_bytes();
    fsutil::atomic::write_file(&paths.params(), params, 0o600, fsutil::Durability::Atomic)
        .map_err(|e| fail("the params file", e))?;
    record
        .save_unsynced(paths)
        .map_err(|e| fail("the workload record", e))
}
