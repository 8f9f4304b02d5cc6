//! The node's side of the remote terminal: commands in, PTY output out.

use serde_json::{json, Map, Value};

use super::running::RunningNode;
use crate::config::Settings;
use crate::mqtt::Tracked;
use crate::protocol::{Event, Response, TerminalCommand};
use crate::terminal::{TerminalConfig, TerminalEvent};

pub(super) fn terminal_config(settings: &Settings) -> TerminalConfig {
    TerminalConfig {
        enabled: settings.terminal_enabled.value,
        shell: settings
            .terminal_shell
            .as_ref()
            .map(|s| s.value.clone())
            .unwrap_or_else(TerminalConfig::default_shell),
        max_sessions: settings.terminal_max_sessions.value as usize,
        idle_timeout: settings.terminal_idle_timeout.value,
    }
}

impl RunningNode {
    pub(super) fn on_terminal_command(
        &mut self,
        command: TerminalCommand,
        id: &str,
        params: &Map<String, Value>,
    ) -> Response {
        let outcome = match command {
            TerminalCommand::Open => self.terminals.open(id, params),
            TerminalCommand::Resize => self.terminals.resize(params),
            TerminalCommand::Close => self.terminals.close(params),
        };
        match outcome {
            Ok(output) => Response::ok(&self.node, id, output),
            Err(error) => Response::error(&self.node, Some(id), error.to_string()),
        }
    }

    pub(super) async fn on_terminal(&mut self, event: TerminalEvent) {
        match event {
            TerminalEvent::Output { session_id, bytes } => {
                self.terminals.touch(&session_id);
                self.publish_terminal(session_id, bytes);
            }
            TerminalEvent::Closed {
                session_id,
                request_id,
                exit_code,
                signal,
            } => {
                self.terminals.on_closed(&session_id);
                let output =
                    json!({"session_id": session_id, "exit_code": exit_code, "signal": signal});
                let mut response = Response::ok(&self.node, &request_id, output);
                response.event = Some(Event::Closed);
                self.respond(response).await;
            }
        }
    }

    /// Terminal bytes are bulk: what the MQTT link refuses waits here, and
    /// no more PTY output is read until it is out (`Room`), which stops
    /// the shell's writes instead of buffering them.
    pub(super) fn publish_terminal(&mut self, session_id: String, bytes: Vec<u8>) {
        let topic = self.topics.terminal_out(&self.node.uuid, &session_id);
        if let Err(bytes) = self
            .mqtt
            .try_publish_bulk(&topic, bytes, Tracked::Untracked)
        {
            self.held_terminal = Some((session_id, bytes));
        }
    }
}
