//! The terminal event of a workload: which one, and its output (PROTOCOL.md,
//! "Terminal output").

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::{json, Value};

use super::paths::WorkloadPaths;
use super::record::{ExitFile, WorkloadRecord, WorkloadState};

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
    pub fn event(&self) -> &'static str {
        self.state.name()
    }
}

/// Decides the terminal event from the record and the supervisor's exit file
/// (`None` when the supervisor died without writing one).
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
            "the workload's exit status is unknown: its supervisor process was killed".into(),
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

/// Every field of the terminal output, plus `resources` (an addition).
pub fn terminal_output(
    record: &WorkloadRecord,
    paths: &WorkloadPaths,
    exit: Option<&ExitFile>,
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
        "stdout_tail": tail(&paths.stdout(), TAIL_BYTES),
        "stderr_tail": tail(&paths.stderr(), TAIL_BYTES),
        "result": Value::Null,
    });
    match read_result(&paths.result()) {
        Ok(result) => output["result"] = result,
        Err(problem) => output["result_error"] = json!(problem),
    }
    if let Some(exit) = exit {
        output["resources"] = json!({
            "cpu_seconds": exit.cpu_seconds,
            "max_rss_bytes": exit.max_rss_bytes,
        });
    }
    output
}

/// The last `max` bytes of a file as text, starting at a character boundary.
pub fn tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::with_capacity((len - start) as usize);
    let _ = file.take(max).read_to_end(&mut bytes);
    // Skip UTF-8 continuation bytes cut off by the window.
    let skip = if start > 0 {
        bytes
            .iter()
            .take(3)
            .take_while(|b| (**b & 0xC0) == 0x80)
            .count()
    } else {
        0
    };
    String::from_utf8_lossy(&bytes[skip..]).into_owned()
}

/// The result file's JSON; `Ok(Null)` when the workload wrote none.
fn read_result(path: &Path) -> Result<Value, String> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Value::Null),
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("the result file is not valid JSON: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Value::Null),
        Err(e) => Err(format!("cannot read the result file: {e}")),
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
        let t = tail(&path, 4);
        assert!(t == "aé" || t == "éaé" || t.ends_with('é'), "{t:?}");
        assert!(!t.contains('\u{FFFD}'));
        assert_eq!(tail(&dir.path().join("missing"), 10), "");
    }
}
