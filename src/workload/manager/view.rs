//! One workload as `status` shows it when asked about it by request_id
//! (`params.workload_request_id`): where it stands, and for one that ended
//! its terminal event, rebuilt from its files. This is what lets a client
//! that was away (`send wait`, or `send` after a reconnect) learn the end
//! it missed, and what a client attaching late prints as "so far".

use super::super::output::TAIL_BYTES;
use super::*;
use crate::fsutil::tail_text;

impl Workloads {
    /// `status`'s `workload` for `request_id`; `null` when this node does
    /// not know it (never received, or forgotten after retention).
    pub fn view(&self, request_id: &str) -> Value {
        if let Some(queued) = self
            .queued_summaries()
            .into_iter()
            .find(|q| q["request_id"] == request_id)
        {
            return json!({
                "request_id": request_id,
                "type": queued["type"],
                "state": "queued",
                "position": queued["position"],
                "queued_for_seconds": queued["queued_for_seconds"],
            });
        }
        let Some(entry) = self.entries.get(request_id) else {
            return Value::Null;
        };
        let record = &entry.record;
        let ended = !record.state.is_active() || entry.finished;
        let mut view = json!({
            "request_id": record.request_id,
            "type": record.workload_type,
            "state": record.state.name(),
            "pid": record.pid,
            "running_for_seconds": record.age_seconds(now_unix_ms()).round(),
            "stdout_log": record.stdout_log,
            "stderr_log": record.stderr_log,
        });
        // What it wrote so far, and up to which byte, so a client can print
        // what it missed and place the live chunks after it.
        for (stream, path) in [
            ("stdout", entry.paths.stdout()),
            ("stderr", entry.paths.stderr()),
        ] {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            view[format!("{stream}_tail")] = json!(tail_text(&path, TAIL_BYTES));
            view[format!("{stream}_bytes")] = json!(size);
        }
        if !ended {
            return view;
        }
        let exit = load_json::<super::super::record::ExitFile>(&entry.paths.exit())
            .ok()
            .flatten();
        let classified = classify(record, exit.as_ref());
        let ending = match record.state {
            // Finished, its end not yet recorded: what the event says.
            WorkloadState::Starting | WorkloadState::Running => classified,
            state @ (WorkloadState::Completed
            | WorkloadState::Failed
            | WorkloadState::Cancelled) => {
                let error = match (state == classified.state, state) {
                    (true, _) => classified.error,
                    (false, WorkloadState::Completed) => None,
                    (false, _) => Some(format!("Workload {}", state.name())),
                };
                Ending { state, error }
            }
        };
        view["state"] = json!(ending.state.name());
        view["event"] = json!(ending.event().name());
        if let Some(error) = ending.error {
            view["error"] = json!(error);
        }
        view["output"] = terminal_output(
            record,
            &entry.paths,
            exit.as_ref(),
            self.config.max_result_bytes,
        );
        view
    }
}
