//! `cyberwave-cloud-node status` and `logs`, the workloads' part: what an
//! operator on the machine can see without a broker or a running node,
//! straight from the records (and the queue) in the config dir, as JSON
//! (the CLI makes the table). Logs are streamed (never read whole) and only
//! from regular files, a model server's as well ([`stream`]); damaged
//! records are listed with what they hide.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::queue::WorkloadQueue;
use super::record::{load_json, scan, ExitFile, WorkloadRecord, WorkloadState};
use crate::fsutil::{self, Links, ReadError};
use crate::supervised::procfs;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("no workload with request_id {request_id:?} in {dir}; `cyberwave-cloud-node status` lists the known ones")]
    UnknownRequest { request_id: String, dir: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Unreadable(#[from] ReadError),
}

/// The state of a workload whose record says running but whose process
/// has ended: the node has not seen it end (it is not running, or not yet).
pub const ENDED_UNREPORTED: &str = "ended (not yet reported)";

/// A record as the operator sees it: "running" only if the process is.
pub fn effective_state(record: &WorkloadRecord) -> &'static str {
    match (
        record.state,
        record.supervisor_pid.zip(record.supervisor_start_time),
    ) {
        (WorkloadState::Running, Some((pid, start))) if !procfs::is_running(pid, start) => {
            ENDED_UNREPORTED
        }
        (state, _) => state.name(),
    }
}

/// One workload as `status --json` lists it; `exit` is its shim's exit file.
fn summary(record: &WorkloadRecord, exit: Option<&ExitFile>, now_ms: u64) -> Value {
    let started = record.started_unix_ms.unwrap_or(record.created_unix_ms);
    let ended = exit
        .map(|e| e.ended_unix_ms)
        .or(record.finished_unix_ms)
        .unwrap_or(now_ms);
    json!({
        "request_id": record.request_id,
        "type": record.workload_type,
        "state": effective_state(record),
        "pid": record.pid,
        "exit_code": exit.and_then(|e| e.exit_code),
        "signal": exit.and_then(|e| e.signal.clone()),
        "started_unix_ms": started,
        "duration_seconds": ended.saturating_sub(started) as f64 / 1000.0,
        "age_seconds": (record.age_seconds(now_ms)).round(),
        "stdout_log": record.stdout_log,
        "stderr_log": record.stderr_log,
    })
}

/// What `status` lists of the workloads in `logs_dir`: the records, then
/// the queue, as `status --json` prints them; and a line for each damaged
/// record, with what it hides.
pub fn status(logs_dir: &Path, now_ms: u64) -> (Vec<Value>, Vec<String>) {
    let (found, damaged) = scan(logs_dir);
    let mut all: Vec<Value> = found
        .iter()
        .map(|(paths, record)| {
            let exit = load_json::<ExitFile>(&paths.exit()).ok().flatten();
            summary(record, exit.as_ref(), now_ms)
        })
        .collect();
    // Read only: the queue's files are the running node's to change.
    let queued = WorkloadQueue::open(logs_dir, 0).summaries(now_ms);
    all.extend(queued.iter().map(|q| {
        json!({
            "request_id": q["request_id"],
            "type": q["type"],
            "state": "queued",
            "position": q["position"],
            "pid": null,
            "age_seconds": q["queued_for_seconds"],
        })
    }));
    let damaged = damaged
        .iter()
        .map(|d| format!("damaged record: {}; {}", d.problem, d.story()))
        .collect();
    (all, damaged)
}

/// Copies a workload's log to `out`; with `follow`, keeps copying new bytes
/// until the workload has ended.
pub fn logs(
    logs_dir: &Path,
    request_id: &str,
    stderr: bool,
    follow: bool,
    out: &mut dyn Write,
) -> Result<(), LocalError> {
    let (paths, record) = scan(logs_dir)
        .0
        .into_iter()
        .find(|(_, r)| r.request_id == request_id)
        .ok_or_else(|| LocalError::UnknownRequest {
            request_id: request_id.to_owned(),
            dir: logs_dir.to_owned(),
        })?;
    let path = if stderr {
        record.stderr_log.clone()
    } else {
        record.stdout_log.clone()
    };
    let supervisor = record.supervisor_pid.zip(record.supervisor_start_time);
    let running = || follow && still_running(&paths.exit(), supervisor, record.state.is_active());
    stream(&path, &running, out)
}

/// Copies the log at `path` to `out`, then keeps copying what is added
/// while `running` says so (`logs --follow`), and what came last.
pub fn stream(
    path: &Path,
    running: &dyn Fn() -> bool,
    out: &mut dyn Write,
) -> Result<(), LocalError> {
    let mut offset = copy_from(path, 0, out)?;
    while running() {
        std::thread::sleep(Duration::from_millis(200));
        offset = copy_from(path, offset, out)?;
    }
    copy_from(path, offset, out)?;
    Ok(())
}

/// Whether a supervised process (a workload, a model server) may still
/// write its logs: no exit file yet, and its shim alive (`active`, the
/// record's state, when the shim is not known yet).
pub fn still_running(exit_file: &Path, supervisor: Option<(i32, u64)>, active: bool) -> bool {
    if exit_file.exists() {
        return false;
    }
    match supervisor {
        Some((pid, start)) => procfs::is_running(pid, start),
        None => active,
    }
}

fn copy_from(path: &Path, offset: u64, out: &mut dyn Write) -> Result<u64, LocalError> {
    let read_error = |source| LocalError::Read {
        path: path.to_owned(),
        source,
    };
    let Some((mut file, _)) = fsutil::open_regular(path, Links::Follow)? else {
        return Ok(offset);
    };
    file.seek(SeekFrom::Start(offset)).map_err(read_error)?;
    // Streamed through a small buffer: a log of any size costs no memory. A
    // reader that went away (`logs | head`) ends the copy quietly.
    let mut buffer = vec![0u8; 64 * 1024];
    let mut copied = 0u64;
    loop {
        let n = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        };
        if out.write_all(&buffer[..n]).is_err() {
            break;
        }
        copied += n as u64;
    }
    let _ = out.flush();
    Ok(offset + copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::WorkloadKind;

    #[test]
    fn status_lists_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        assert!(status(dir.path(), 0).0.is_empty());
        let mut queue = WorkloadQueue::open(dir.path(), 2);
        let params = serde_json::Map::new();
        queue
            .push(WorkloadKind::Training, "q-1", params.clone(), None)
            .unwrap();
        queue
            .push(WorkloadKind::Simulate, "q-2", params, None)
            .unwrap();
        let (rows, damaged) = status(dir.path(), crate::supervised::now_unix_ms());
        assert!(damaged.is_empty());
        assert_eq!(rows[0]["state"], "queued");
        assert_eq!(rows[0]["request_id"], "q-1");
        assert_eq!(rows[1]["type"], "simulate");
        assert_eq!(rows[1]["position"], 2);
    }
}
