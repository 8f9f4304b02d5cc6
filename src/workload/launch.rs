//! Launching one workload: files first, then the supervisor, then the pid.
//!
//! The record is on disk (state `starting`) before the supervisor exists,
//! and updated with the pid before the node answers `started`, so a node
//! that dies at any point leaves enough behind for the next one to find the
//! workload and never start it twice.

use std::path::PathBuf;

use tokio::process::Child;

use super::paths::WorkloadPaths;
use super::record::{StartedFile, WorkloadRecord, WorkloadState};
use crate::fsutil;
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
pub async fn launch(spec: LaunchSpec) -> Result<(WorkloadRecord, Child), String> {
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
        .map_err(|e| e.to_string())
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
        .map_err(|e| e.to_string()),
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
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| {
            format!(
                "cannot write the workload record {}: {e}",
                paths.record().display()
            )
        })?;
    Ok((record, child))
}

fn write_initial_files(
    paths: &WorkloadPaths,
    record: &WorkloadRecord,
    params_json: &str,
) -> Result<(), String> {
    let dir = paths.base().parent().map(PathBuf::from).unwrap_or_default();
    let fail = |what: &str, e: std::io::Error| {
        format!(
            "cannot write {what} in {}: {e}; check free space and permissions of the config dir",
            dir.display()
        )
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
