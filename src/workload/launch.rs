//! Launching one workload: files first, then the supervisor, then the pid.
//!
//! The record is on disk (state `starting`) before the supervisor exists,
//! and updated with the pid before the node answers `started`, so a node
//! that dies at any point leaves enough behind for the next one to find the
//! workload and never start it twice.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::paths::WorkloadPaths;
use super::record::{read_json, ExitFile, StartedFile, WorkloadRecord, WorkloadState};
use super::supervisor;
use crate::fsutil;

/// Longest wait for a supervisor to report the workload's pid.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct LaunchSpec {
    pub exe: PathBuf,
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
        exe,
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
        Ok(()) => spawn_supervised(&exe, &paths, &cwd, &command, env, cgroup.as_deref()).await,
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
            let _ = super::cgroup::remove(&dir);
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

/// Starts `command` under a supervisor (files named after `paths`, in
/// `cgroup` when given) and waits for it to report the pid; the model
/// server is started this way too.
pub async fn spawn_supervised(
    exe: &Path,
    paths: &WorkloadPaths,
    cwd: &Path,
    command: &str,
    env: Vec<(String, String)>,
    cgroup: Option<&Path>,
) -> Result<(StartedFile, Child), String> {
    let mut supervisor = Command::new(exe);
    supervisor
        .arg(supervisor::MODE)
        .arg(paths.base())
        .arg(cwd)
        .arg(command);
    if let Some(dir) = cgroup {
        supervisor.arg(dir);
    }
    let mut child = supervisor
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start the workload supervisor {}: {e}",
                exe.display()
            )
        })?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    let read =
        tokio::time::timeout(READY_TIMEOUT, BufReader::new(stdout).read_line(&mut line)).await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        let _ = child.start_kill();
        return Err("the workload supervisor did not report in time".into());
    }
    match read_json::<StartedFile>(&paths.started())? {
        Some(started) => Ok((started, child)),
        None => {
            let exit = read_json::<ExitFile>(&paths.exit())?;
            Err(exit
                .and_then(|e| e.error)
                .unwrap_or_else(|| "the supervisor exited without starting the workload".into()))
        }
    }
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
    fsutil::write_atomic(&paths.params(), params_json.as_bytes(), 0o600)
        .map_err(|e| fail("the params file", e))?;
    record
        .save(paths)
        .map_err(|e| fail("the workload record", e))
}
