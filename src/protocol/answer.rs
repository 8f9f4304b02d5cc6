//! What the owners of work (workloads, deployments) have to say on a
//! request_id, and how it must go out. The node adds who it is
//! ([`super::Response::answer`]) and publishes; it decides nothing else.

use std::fmt;

use serde_json::Value;

use super::Event;

/// A response without the node's name on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub request_id: String,
    pub event: Option<Event>,
    pub output: Option<Value>,
    pub error: Option<String>,
}

impl Answer {
    pub fn ok(request_id: &str, output: Value) -> Answer {
        Answer {
            request_id: request_id.to_owned(),
            event: None,
            output: Some(output),
            error: None,
        }
    }

    /// An error answer: a typed error becomes its text here, where it
    /// goes on the wire.
    pub fn error(request_id: &str, error: impl fmt::Display) -> Answer {
        Answer {
            request_id: request_id.to_owned(),
            event: None,
            output: None,
            error: Some(error.to_string()),
        }
    }

    /// `Ok` output or error text, as one answer.
    pub fn of<E: fmt::Display>(request_id: &str, outcome: Result<Value, E>) -> Answer {
        match outcome {
            Ok(output) => Answer::ok(request_id, output),
            Err(error) => Answer::error(request_id, error),
        }
    }

    pub fn with_event(mut self, event: Event) -> Answer {
        self.event = Some(event);
        self
    }

    /// An error that still carries output (a failed workload's logs).
    pub fn with_output(mut self, output: Value) -> Answer {
        self.output = Some(output);
        self
    }
}

/// An answer, and how the node must publish it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// The answer a launch waited for (`started`, or why not): published,
    /// then the command is acknowledged to the broker.
    Launched(Answer),
    /// A reply or a streamed piece: published now.
    Reply(Answer),
    /// An event that must not be lost: stored in the outbox under
    /// `outbox_name` first, removed once the broker has it.
    Durable { outbox_name: String, answer: Answer },
}
