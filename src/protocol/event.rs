//! The `event` field of a response: which step of a command it reports.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Every event the node publishes, serialised as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// A workload or deployment was launched.
    Started,
    /// A workload command waits in the node's queue for a slot.
    Queued,
    /// A workload's progress file changed.
    Progress,
    /// A streamed piece of an `infer`.
    Token,
    /// A terminal session ended.
    Closed,
    /// The terminal events of a workload.
    Completed,
    Failed,
    Cancelled,
    /// A deployment loaded its model.
    Ready,
    /// A deployment ended after an `undeploy`.
    Stopped,
}

impl Event {
    /// The wire name; the same as the serde form.
    pub const fn name(self) -> &'static str {
        match self {
            Event::Started => "started",
            Event::Queued => "queued",
            Event::Progress => "progress",
            Event::Token => "token",
            Event::Closed => "closed",
            Event::Completed => "completed",
            Event::Failed => "failed",
            Event::Cancelled => "cancelled",
            Event::Ready => "ready",
            Event::Stopped => "stopped",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_its_name() {
        for event in [
            Event::Started,
            Event::Queued,
            Event::Progress,
            Event::Token,
            Event::Closed,
            Event::Completed,
            Event::Failed,
            Event::Cancelled,
            Event::Ready,
            Event::Stopped,
        ] {
            assert_eq!(serde_json::to_value(event).unwrap(), event.name());
        }
    }
}
