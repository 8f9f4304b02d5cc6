//! `cyberwave-cloud-node send`: a command-line stand-in for the backend.
//!
//! It publishes one command to a node and shows what comes back: the
//! response, and with `--wait done` every later event of that request until
//! the terminal one, the workload's live output with `--follow-logs`, and
//! progress as a bar on a terminal. `send wait <request_id>` attaches to a
//! workload started earlier by anyone; `send cancel <request_id>` is the
//! cancel command for it. The broker and node come from
//! [`super::address::resolve_target`]. How the wait survives node and
//! broker restarts is in `link.rs`.

mod link;
mod render;
mod session;
mod summary;

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Map, Value};

use super::address::{resolve_target, TargetError};
use crate::config::{Environment, Settings};
use crate::protocol::WorkloadKind;

/// How long `send` waits for the first answer unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit codes (the workload's own code passes through for `failed`).
pub const EXIT_OK: u8 = 0;
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_TIMEOUT: u8 = 2;
/// Ctrl-C, as shells report SIGINT.
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Wait {
    /// Return once the broker has the command
    None,
    /// Wait for the immediate response
    Started,
    /// Wait for the terminal event of a workload
    Done,
}

/// What to send and how to wait.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// A node command, or `wait` (attach, nothing is sent but a `status`).
    pub command: String,
    /// `send wait <id>` / `send cancel <id>`: the workload's request_id.
    pub workload: Option<String>,
    /// `--params`: JSON text, or `@path` to a file holding it.
    pub params: Option<String>,
    pub request_id: Option<String>,
    pub node: Option<String>,
    pub wait: Wait,
    pub follow_logs: bool,
    pub json: bool,
    pub timeout: Option<Duration>,
    /// The flags that chose the node and broker, repeated in the hints
    /// (`send wait <id>` after Ctrl-C).
    pub reattach_flags: String,
}

/// What `send` does: publish a command, or attach to a workload.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Command(Value),
    Attach,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("invalid --params: {0}")]
    Params(String),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Mqtt(#[from] crate::mqtt::MqttError),
    #[error("cannot connect to the MQTT broker at {broker}: {reason}\n{hint}")]
    Unreachable {
        broker: String,
        reason: String,
        hint: String,
    },
    #[error("node {node} knows no workload {request_id} (never received, or removed after log_retention_days); `cyberwave-cloud-node send status` lists what it runs")]
    UnknownWorkload { node: String, request_id: String },
    #[error("{0}")]
    Timeout(String),
}

impl SendError {
    pub fn exit_code(&self) -> u8 {
        match self {
            SendError::Timeout(_) | SendError::Unreachable { .. } => EXIT_TIMEOUT,
            SendError::Params(_)
            | SendError::Usage(_)
            | SendError::Target(_)
            | SendError::Mqtt(_)
            | SendError::UnknownWorkload { .. } => EXIT_ERROR,
        }
    }
}

/// Parses `--params` (inline JSON or `@file`) into an object, before
/// anything is sent.
pub fn parse_params(text: &str) -> Result<Map<String, Value>, SendError> {
    let (json, origin) = match text.strip_prefix('@') {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| SendError::Params(format!("cannot read {path}: {e}")))?,
            format!("in {path} "),
        ),
        None => (text.to_owned(), String::new()),
    };
    match serde_json::from_str::<Value>(&json) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(SendError::Params(format!(
            "{origin}must be a JSON object like '{{\"epochs\": 3}}', got {}",
            crate::protocol::json_kind(&other)
        ))),
        // serde_json's message already ends with "at line L column C".
        Err(e) => Err(SendError::Params(format!("{origin}is not valid JSON: {e}"))),
    }
}

/// The command to publish (or none, to attach), from the command name, its
/// request_id argument and `--params`.
fn action(request: &SendRequest, request_id: &str) -> Result<Action, SendError> {
    let params = request.params.as_deref().map(parse_params).transpose()?;
    let command = request.command.as_str();
    let mut params = match (command, &request.workload, params) {
        ("wait", None, _) => {
            return Err(SendError::Usage(
                "`send wait` needs the workload's request_id: `cyberwave-cloud-node send wait <request_id>` (the `started` line shows it; `send status` lists the running ones)".into(),
            ))
        }
        ("wait", Some(_), _) => return Ok(Action::Attach),
        ("cancel", Some(workload), params) => {
            let mut params = params.unwrap_or_default();
            match params.get("workload_request_id") {
                Some(given) if given != workload.as_str() => {
                    return Err(SendError::Usage(format!(
                        "`send cancel {workload}` and --params' workload_request_id {given} disagree; give one"
                    )))
                }
                _ => params.insert("workload_request_id".into(), workload.as_str().into()),
            };
            Some(params)
        }
        (_, Some(extra), _) => {
            return Err(SendError::Usage(format!(
                "unexpected argument {extra:?}: only `send wait <request_id>` and `send cancel <request_id>` take a request_id (use --request-id to name a new command's)"
            )))
        }
        (_, None, params) => params,
    };
    let mut message = serde_json::json!({"command": command, "request_id": request_id});
    if let Some(params) = params.take() {
        message["params"] = Value::Object(params);
    }
    Ok(Action::Command(message))
}

/// Sends (or attaches) and waits; returns the exit code.
pub async fn send(settings: &Settings, request: SendRequest) -> Result<u8, SendError> {
    let request_id = match (&request.workload, request.command.as_str()) {
        (Some(workload), "wait") => workload.clone(),
        _ => request
            .request_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
    };
    let action = action(&request, &request_id)?;
    let target = resolve_target(settings, request.node.as_deref())?;
    let watched = match &action {
        Action::Attach => true,
        Action::Command(_) => WorkloadKind::from_name(&request.command).is_some(),
    };
    link::Exchange::new(target, action, request, request_id, watched)?
        .run()
        .await
}

/// `send` from the command line: settings, flags, then [`send`]; the exit
/// code is the answer's.
pub(super) fn run(args: &super::SendArgs) -> ExitCode {
    let settings = match Settings::load(&args.broker.overrides(), &Environment::from_process()) {
        Ok(settings) => settings,
        Err(error) => return super::output::fail(&error.into()),
    };
    let timeout = match args.timeout {
        Some(t) if !(t > 0.0 && t.is_finite()) => {
            let error = anyhow::anyhow!("--timeout must be a positive number of seconds, got {t}");
            return super::output::fail(&error);
        }
        t => t.map(std::time::Duration::from_secs_f64),
    };
    let request = SendRequest {
        command: args.command.clone(),
        workload: args.workload.clone(),
        params: args.params.clone(),
        request_id: args.request_id.clone(),
        node: args.node.clone(),
        wait: args.wait,
        follow_logs: args.follow_logs,
        json: args.json,
        timeout,
        reattach_flags: reattach_flags(args),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return super::output::fail(&error.into()),
    };
    match runtime.block_on(send(&settings, request)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            let code = error.exit_code();
            super::output::fatal(&error.into());
            ExitCode::from(code)
        }
    }
}

/// ` --node X --mqtt-port P ...`: what chose the node and broker.
fn reattach_flags(args: &super::SendArgs) -> String {
    let mut flags = String::new();
    if let Some(node) = &args.node {
        flags.push_str(&format!(" --node {node}"));
    }
    flags.push_str(&args.broker.as_flags());
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_errors_name_the_position_once() {
        let err = parse_params("{\"epochs\": 3,\n \"lr\": }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("column"), "{err}");
        assert_eq!(err.matches("line").count(), 1, "{err}");
        assert!(parse_params("[1]")
            .unwrap_err()
            .to_string()
            .contains("JSON object"));
        assert_eq!(parse_params("{\"a\": 1}").unwrap()["a"], 1);
        assert!(parse_params("@/nonexistent.json")
            .unwrap_err()
            .to_string()
            .contains("/nonexistent.json"));
    }

    fn request(command: &str, workload: Option<&str>, params: Option<&str>) -> SendRequest {
        SendRequest {
            command: command.into(),
            workload: workload.map(str::to_owned),
            params: params.map(str::to_owned),
            request_id: None,
            node: None,
            wait: Wait::Started,
            follow_logs: false,
            json: false,
            timeout: None,
            reattach_flags: String::new(),
        }
    }

    #[test]
    fn cancel_and_wait_take_the_workload_id() {
        let Action::Command(cancel) = action(&request("cancel", Some("r-1"), None), "c-1").unwrap()
        else {
            panic!("cancel is a command");
        };
        assert_eq!(cancel["params"]["workload_request_id"], "r-1");
        assert_eq!(cancel["request_id"], "c-1");
        let with_signal = request("cancel", Some("r-1"), Some(r#"{"signal": "SIGKILL"}"#));
        let Action::Command(cancel) = action(&with_signal, "c-2").unwrap() else {
            panic!("cancel is a command");
        };
        assert_eq!(cancel["params"]["signal"], "SIGKILL");
        assert_eq!(
            action(&request("wait", Some("r-1"), None), "r-1").unwrap(),
            Action::Attach
        );
        assert!(action(&request("wait", None, None), "x").is_err());
        assert!(action(&request("status", Some("r-1"), None), "x").is_err());
        let clash = request(
            "cancel",
            Some("r-1"),
            Some(r#"{"workload_request_id": "r-2"}"#),
        );
        assert!(action(&clash, "x").is_err());
    }
}
