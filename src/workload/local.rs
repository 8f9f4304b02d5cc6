//! `cyberwave-cloud-node status` and `logs`: what an operator on the
//! machine can see without a broker or a running node, straight from the
//! records (and the queue) in the config dir. Logs are streamed (never read whole) and only
//! from regular files; damaged records are listed with what they hide.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::paths::WorkloadPaths;
use super::queue::WorkloadQueue;
use super::record::{now_unix_ms, scan, WorkloadRecord, WorkloadState};
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

/// A record as the operator sees it: "running" only if the process is.
fn effective_state(record: &WorkloadRecord) -> &'static str {
    match (
        record.state,
        record.supervisor_pid.zip(record.supervisor_start_time),
    ) {
        (WorkloadState::Running, Some((pid, start))) if !procfs::is_running(pid, start) => {
            "ended (not yet reported)"
        }
        (state, _) => state.name(),
    }
}

fn summary(record: &WorkloadRecord, now_ms: u64) -> Value {
    json!({
        "request_id": record.request_id,
        "type": record.workload_type,
        "state": effective_state(record),
        "pid": record.pid,
        "age_seconds": (record.age_seconds(now_ms)).round(),
        "stdout_log": record.stdout_log,
        "stderr_log": record.stderr_log,
    })
}

/// The `status` text (or JSON lines with `json`).
pub fn status(logs_dir: &Path, json: bool) -> String {
    let now = now_unix_ms();
    let (found, damaged) = scan(logs_dir);
    let records: Vec<WorkloadRecord> = found.into_iter().map(|(_, r)| r).collect();
    // Read only: the queue's files are the running node's to change.
    let queued = WorkloadQueue::open(logs_dir, 0).summaries(now);
    if json {
        let mut all: Vec<Value> = records.iter().map(|r| summary(r, now)).collect();
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
        return format!("{}\n", Value::Array(all));
    }
    let damaged: String = damaged
        .iter()
        .map(|d| format!("damaged record: {}; {}\n", d.problem, d.story()))
        .collect();
    if records.is_empty() && queued.is_empty() {
        return format!("no workloads recorded in {}\n{damaged}", logs_dir.display());
    }
    let mut out = format!(
        "{:<10} {:<26} {:>8} {:>9}  {:<24} LOGS\n",
        "TYPE", "STATE", "PID", "AGE", "REQUEST_ID"
    );
    for r in &records {
        out.push_str(&format!(
            "{:<10} {:<26} {:>8} {:>9}  {:<24} {}\n",
            r.workload_type,
            effective_state(r),
            r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            human_age(r.age_seconds(now)),
            r.request_id,
            r.stdout_log.display()
        ));
    }
    for q in &queued {
        out.push_str(&format!(
            "{:<10} {:<26} {:>8} {:>9}  {:<24} -\n",
            q["type"].as_str().unwrap_or_default(),
            format!("queued (position {})", q["position"]),
            "-",
            human_age(q["queued_for_seconds"].as_f64().unwrap_or_default()),
            q["request_id"].as_str().unwrap_or_default(),
        ));
    }
    out.push_str(&damaged);
    out
}

fn human_age(seconds: f64) -> String {
    let s = seconds as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
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
    let mut offset = copy_from(&path, 0, out)?;
    while follow && still_running(&paths, &record) {
        std::thread::sleep(Duration::from_millis(200));
        offset = copy_from(&path, offset, out)?;
    }
    copy_from(&path, offset, out)?;
    Ok(())
}

fn still_running(paths: &WorkloadPaths, record: &WorkloadRecord) -> bool {
    if paths.exit().exists() {
        return false;
    }
    match record.supervisor_pid.zip(record.supervisor_start_time) {
        Some((pid, start)) => procfs::is_running(pid, start),
        None => record.state.is_active(),
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
        assert!(status(dir.path(), false).starts_with("no workloads recorded"));
        let mut queue = WorkloadQueue::open(dir.path(), 2);
        let params = serde_json::Map::new();
        queue
            .push(WorkloadKind::Training, "q-1", params.clone(), None)
            .unwrap();
        queue
            .push(WorkloadKind::Simulate, "q-2", params, None)
            .unwrap();
        let text = status(dir.path(), false);
        assert!(text.contains("queued (position 2)"), "{text}");
        assert!(text.contains("q-1") && text.contains("simulate"), "{text}");
        let rows: Value = serde_json::from_str(&status(dir.path(), true)).unwrap();
        assert_eq!(rows[0]["state"], "queued");
        assert_eq!(rows[1]["position"], 2);
    }
}
