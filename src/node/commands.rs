//! Command dispatch: the one match over every command the node knows.
//!
//! Each family has its handler (workloads here, `terminal.rs`,
//! `deployments.rs`), which matches its own sub-enum; none has a catch-all,
//! so a command added to `protocol::CommandKind` does not compile until it
//! is answered.

use serde_json::{Map, Value};

use super::report::status_output;
use super::running::RunningNode;
use crate::protocol::{Command, CommandKind, Event, Response, WorkloadKind};
use crate::workload::Admitted;

/// When a command is answered.
pub(super) enum Reply {
    Now(Response),
    /// The `started` answer (and the MQTT ack) wait for the launch.
    AfterLaunch(String),
    /// Acknowledged now; the one response follows from a spawned task.
    Later,
}

impl RunningNode {
    pub(super) fn on_command(&mut self, command: Command) -> Reply {
        let Command {
            kind,
            request_id,
            params,
        } = command;
        let id = request_id.as_str();
        if !self.accepting {
            return Reply::Now(Response::error(
                &self.node,
                Some(id),
                "the node is shutting down and takes no new commands; resend to another node or after it restarts",
            ));
        }
        match kind {
            CommandKind::Workload(kind) => self.start_workload(kind, request_id, params),
            CommandKind::Status => Reply::Now(self.status(id, &params)),
            CommandKind::Cancel => Reply::Now(match self.workloads.cancel(&params) {
                Ok(output) => Response::ok(&self.node, id, output),
                Err(error) => Response::error(&self.node, Some(id), error),
            }),
            CommandKind::Terminal(command) => {
                Reply::Now(self.on_terminal_command(command, id, &params))
            }
            CommandKind::Deployment(command) => self.on_deploy_command(command, id, &params),
        }
    }

    /// `status`; with `params.workload_request_id`, also that workload's
    /// `workload` (its state, or its end rebuilt from its files).
    fn status(&self, id: &str, params: &Map<String, Value>) -> Response {
        let mut output = status_output(&self.context());
        match params.get("workload_request_id") {
            None | Some(Value::Null) => {}
            Some(Value::String(asked)) if !asked.is_empty() => {
                output["workload"] = self.workloads.view(asked);
            }
            Some(other) => {
                return Response::error(
                    &self.node,
                    Some(id),
                    format!(
                        "params.workload_request_id must be a non-empty string, got {}",
                        match other {
                            Value::String(_) => "an empty string",
                            other => crate::protocol::json_kind(other),
                        }
                    ),
                )
            }
        }
        Response::ok(&self.node, id, output)
    }

    /// `inference`, `training`, `simulate`: answered once the launch is, or
    /// now when queued (on disk already) or refused.
    fn start_workload(
        &mut self,
        kind: WorkloadKind,
        request_id: String,
        params: Map<String, Value>,
    ) -> Reply {
        match self.workloads.start(kind, &request_id, params) {
            Ok(Admitted::Launching) => Reply::AfterLaunch(request_id),
            Ok(Admitted::Queued(output)) => {
                let mut response = Response::ok(&self.node, &request_id, output);
                response.event = Some(Event::Queued);
                Reply::Now(response)
            }
            Err(refusal) => {
                let mut response = Response::error(&self.node, Some(&request_id), refusal.error);
                response.output = refusal.output;
                Reply::Now(response)
            }
        }
    }
}
