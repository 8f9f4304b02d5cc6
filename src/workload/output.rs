//! The terminal event of a workload: which one, and its output (docs/protocol.md,
//! "Terminal output").
//!
//! Everything here is read from files the workload controls, so every read
//! is bounded and refuses devices and FIFOs (`fsutil`): the log tails read
//! their last [`TAIL_BYTES`], the result file at most `max_result_bytes`.
//! A bigger result is not read at all (a JSON document cut anywhere is not
//! JSON): `result` is null, `result_truncated` true, `result_size_bytes`
//! its size, and `result_error` says so; the file stays on disk.

use crate::fsutil::tail_text;
use std::path::Path;

use serde_json::{json, Value};

use super::paths::WorkloadPaths;
use super::record::{ExitFile, WorkloadRecord, WorkloadState};
use crate::fsutil::{self, Contents, Links};
use crate::protocol::Event;

/// The most of each log a terminal event carries.
pub const TAIL_BYTES: u64 = 4096;

/// How a workload ended, as the protocol names it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    pub state: WorkloadState,
    /// `None` for `completed`.
    pub error: Option<String>,
}

impl Ending {
    pub fn event(&self) -> Event {
        match self.state {
            WorkloadState::Completed => Event::Completed,
            WorkloadState::Cancelled => Event::Cancelled,
            // `classify` makes only the three ending states.
            WorkloadState::Failed | WorkloadState::Starting | WorkloadState::Running => {
                Event::Failed
            }
        }
    }
}

/// Decides the terminal event from the record and the supervisor's exit file
/// (`None` when no exit status is known; the manager words why, and only a
/// cancel reaches here without one).
pub fn classify(record: &WorkloadRecord, exit: Option<&ExitFile>) -> Ending {
    let ending = |state, error: String| Ending {
        state,
        error: Some(error),
    };
    if let Some(cancel) = &record.cancel {
        return ending(
            WorkloadState::Cancelled,
            format!("Workload cancelled with {}", cancel.signal),
        );
    }
    match exit {
        None => ending(
            WorkloadState::Failed,
            "the workload's exit status is unknown".into(),
        ),
        Some(ExitFile {
            error: Some(error), ..
        }) => ending(
            WorkloadState::Failed,
            format!("the workload could not start: {error}"),
        ),
        Some(ExitFile {
            exit_code: Some(0), ..
        }) => Ending {
            state: WorkloadState::Completed,
            error: None,
        },
        Some(ExitFile {
            exit_code: Some(code),
            ..
        }) => ending(
            WorkloadState::Failed,
            format!("Workload exited with code {code}"),
        ),
        Some(ExitFile {
            signal: Some(signal),
            ..
        }) => ending(
            WorkloadState::Failed,
            format!("Workload killed by {signal}"),
        ),
        Some(_) => ending(
            WorkloadState::Failed,
            "the workload ended in an unknown way".into(),
        ),
    }
}

/// Every field of the terminal output, plus `resources` (an addition);
/// the result file is read up to `max_result_bytes`.
pub fn terminal_output(
    record: &WorkloadRecord,
    paths: &WorkloadPaths,
    exit: Option<&ExitFile>,
    max_result_bytes: u64,
) -> Value {
    let started = record.started_unix_ms.unwrap_or(record.created_unix_ms);
    let ended = exit
        .map(|e| e.ended_unix_ms)
        .or(record.finished_unix_ms)
        .unwrap_or_else(super::record::now_unix_ms);
    let mut output = json!({
        "workload_type": record.workload_type,
        "pid": record.pid,
        "exit_code": exit.and_then(|e| e.exit_code),
        "signal": exit.and_then(|e| e.signal.clone()),
        "duration_seconds": ended.saturating_sub(started) as f64 / 1000.0,
        "stdout_log": record.stdout_log,
        "stderr_log": record.stderr_log,
        "stdout_tail": tail_text(&paths.stdout(), TAIL_BYTES),
        "stderr_tail": tail_text(&paths.stderr(), TAIL_BYTES),
        "result": Value::Null,
    });
    let path = paths.result();
    match read_result(&path, max_result_bytes) {
        ResultFile::Absent => {}
        ResultFile::Json(result) => output["result"] = result,
        ResultFile::Unusable(problem) => output["result_error"] = json!(problem),
        ResultFile::OverLimit { len } => {
            tracing::warn!(
                "the result file {} is {len} bytes, over max_result_bytes ({max_result_bytes}); not read",
                path.display()
            );
            output["result_truncated"] = json!(true);
            output["result_size_bytes"] = json!(len);
            output["result_error"] = json!(format!(
                "the result file {} is {len} bytes, over max_result_bytes ({max_result_bytes}); \
                 not read, and kept on disk",
                path.display()
            ));
        }
    }
    if let Some(exit) = exit {
        output["resources"] = json!({
            "cpu_seconds": crate::protocol::round::decimals(exit.cpu_seconds, 3),
            "max_rss_bytes": exit.max_rss_bytes,
        });
        if let Some(gpus) = &record.gpus {
            // What it held, and for how long: GPUs x wall time.
            let seconds = ended.saturating_sub(started) as f64 / 1000.0;
            output["resources"]["gpus"] = json!(gpus);
            output["resources"]["gpu_seconds"] = json!(gpus.len() as f64 * seconds);
        }
    }
    output
}

/// What became of the result file.
#[derive(Debug, PartialEq)]
enum ResultFile {
    /// None written (or only whitespace): `result` is null.
    Absent,
    Json(Value),
    /// Not read or not JSON; the text says why, naming the file.
    Unusable(String),
    /// `len` bytes, over the limit: not read.
    OverLimit {
        len: u64,
    },
}

fn read_result(path: &Path, limit: u64) -> ResultFile {
    match fsutil::read_whole(path, Links::Follow, limit) {
        Ok(None) => ResultFile::Absent,
        Ok(Some(Contents::OverLimit { len })) => ResultFile::OverLimit { len },
        Ok(Some(Contents::Read(bytes))) if bytes.iter().all(u8::is_ascii_whitespace) => {
            ResultFile::Absent
        }
        Ok(Some(Contents::Read(bytes))) => match serde_json::from_slice(&bytes) {
            Ok(value) => ResultFile::Json(value),
            Err(e) => ResultFile::Unusable(format!(
                "the result file {} is not valid JSON: {e}",
                path.display()
            )),
        },
        Err(e) => ResultFile::Unusable(format!("the result file was not used: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_cuts_at_a_character_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "aé".repeat(10)).unwrap();
        let t = tail_text(&path, 4);
        assert!(t == "aé" || t == "éaé" || t.ends_with('é'), "{t:?}");
        assert!(!t.contains('\u{FFFD}'));
        assert_eq!(tail_text(&dir.path().join("missing"), 10), "");
    }

    #[test]
    fn results_are_bounded_and_never_read_from_devices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        assert_eq!(read_result(&path, 10), ResultFile::Absent);
        std::fs::write(&path, r#"{"a": 1}"#).unwrap();
        assert_eq!(read_result(&path, 8), ResultFile::Json(json!({"a": 1})));
        assert_eq!(read_result(&path, 7), ResultFile::OverLimit { len: 8 });
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        let ResultFile::Unusable(problem) = read_result(&path, 10) else {
            panic!("/dev/zero was read");
        };
        assert!(problem.contains("not a regular file (a character device)"));
        assert_eq!(tail_text(&path, 10), "");
    }
}
