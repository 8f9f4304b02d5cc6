//! Where one `send` stands in its request's story, and what each message on
//! the response topic means for it: show it, wait on, or end with a code.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::render::Renderer;
use super::{Wait, EXIT_ERROR, EXIT_OK};

/// Where a `send` stands.
pub struct Session {
    pub request_id: String,
    pub wait: Wait,
    pub first_deadline: Instant,
    pub overall_deadline: Option<Instant>,
    /// The node answered (or, attaching, said where the workload stands).
    pub answered: bool,
    /// The broker has the command (PUBACK); attaching sends nothing.
    pub sent: bool,
}

impl Session {
    /// Before the first answer the timeout (default 10 s) applies; after a
    /// `started`, a long training run is waited for unless --timeout was given.
    pub fn deadline(&self) -> Instant {
        match (self.answered, self.overall_deadline) {
            (false, _) => self.first_deadline,
            (true, Some(deadline)) => deadline,
            (true, None) => Instant::now() + Duration::from_secs(365 * 86_400),
        }
    }

    /// Shows one response-topic message of this request; `Some(code)` when
    /// the wait is over.
    pub fn on_message(&mut self, renderer: &mut Renderer, message: &Value) -> Option<u8> {
        self.answered = true;
        let event = message["event"].as_str().unwrap_or("");
        renderer.response(message);
        let terminal = matches!(event, "completed" | "failed" | "cancelled");
        if terminal {
            return Some(terminal_exit_code(message));
        }
        if event == "progress" {
            return None;
        }
        let error = message["status"] == "error";
        // A queued workload's `started` (and its end) come later.
        let wait_more = self.wait == Wait::Done && matches!(event, "started" | "queued");
        match (error, wait_more) {
            (true, _) => Some(EXIT_ERROR),
            (false, true) => None,
            (false, false) => Some(EXIT_OK),
        }
    }
}

/// 0 for `completed`, the workload's own code for `failed` (128 + the
/// signal's number when it was killed, as shells do), 1 otherwise.
pub fn terminal_exit_code(message: &Value) -> u8 {
    let output = &message["output"];
    match message["event"].as_str() {
        Some("completed") => EXIT_OK,
        Some("failed") => match (output["exit_code"].as_i64(), output["signal"].as_str()) {
            (Some(code), _) => u8::try_from(code).unwrap_or(EXIT_ERROR),
            (None, Some(signal)) => signal
                .parse::<nix::sys::signal::Signal>()
                .map(|s| 128u8.saturating_add(s as u8))
                .unwrap_or(EXIT_ERROR),
            _ => EXIT_ERROR,
        },
        _ => EXIT_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exit_codes_follow_the_workload() {
        assert_eq!(terminal_exit_code(&json!({"event": "completed"})), 0);
        assert_eq!(
            terminal_exit_code(&json!({"event": "failed", "output": {"exit_code": 3}})),
            3
        );
        assert_eq!(
            terminal_exit_code(
                &json!({"event": "failed", "output": {"exit_code": null, "signal": "SIGKILL"}})
            ),
            137
        );
        assert_eq!(
            terminal_exit_code(&json!({"event": "cancelled", "output": {}})),
            1
        );
    }
}
