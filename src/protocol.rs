//! The MQTT payloads of docs/protocol.md: commands in, responses and presence out.
//! The command kinds and response events are enums ([`CommandKind`],
//! [`Event`]) with the wire's names.
//!
//! Parsing never fails silently and never panics: a payload is a command, an
//! echo of a response (ignored), or invalid with a message that names the
//! problem and, where one could be read, the request_id to answer on (as
//! sent, cut past [`MAX_REQUEST_ID_LEN`]). Refused values are quoted short
//! ([`quote`]), and what the node publishes is cut to the broker's limit
//! ([`fit`]).

mod answer;
mod event;
pub mod fit;
mod kind;
pub mod quote;
pub mod round;
mod stream;

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

pub use answer::{Answer, Outgoing};
pub use event::Event;
pub use kind::{CommandKind, DeployCommand, TerminalCommand, WorkloadKind};
pub use quote::{echoed_request_id, quote, quote_json};
pub use stream::Stream;

/// The longest request_id the node accepts, in bytes. Ids name files only
/// in their sanitized-plus-hash form (`workload::paths::rid`), never
/// topics; a longer one is refused and echoed cut to this length.
pub const MAX_REQUEST_ID_LEN: usize = 1024;

/// A valid command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub kind: CommandKind,
    pub request_id: String,
    pub params: Map<String, Value>,
}

/// What a payload turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Command(Command),
    /// A message with a `status` key: a response published back on a command
    /// topic (some backends echo). Answering it would start a loop.
    Echo,
    Invalid {
        request_id: Option<String>,
        error: String,
    },
}

const EXAMPLE: &str = r#"{"command": "status", "request_id": "r-1", "params": {}}"#;

/// Why a payload is not a command. Its text is the `error` of the response
/// (made into a string once, in [`parse_command`]).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("payload is not valid JSON ({0}); send an object like {example}", example = EXAMPLE)]
    NotJson(#[source] serde_json::Error),
    #[error("payload must be a JSON object, got {got}; send an object like {example}", example = EXAMPLE)]
    NotObject { got: &'static str },
    #[error("field \"request_id\" must be a string, got {got}")]
    RequestIdType { got: &'static str },
    #[error("field \"request_id\" must not be empty")]
    RequestIdEmpty,
    #[error("field \"request_id\" is {len} bytes long; the limit is {limit}", limit = MAX_REQUEST_ID_LEN)]
    RequestIdTooLong { len: usize },
    #[error(
        "field \"request_id\" must not contain control characters; found {found:?} at byte {at}"
    )]
    RequestIdControl { found: char, at: usize },
    #[error("missing required field \"command\"; send an object like {example}", example = EXAMPLE)]
    MissingCommand,
    #[error("unknown command {}; this node supports: {}", quote(.name), supported_commands())]
    UnknownCommand { name: String },
    #[error("field \"command\" must be a string, got {got}")]
    CommandType { got: &'static str },
    #[error("field \"params\" must be a JSON object, got {got}")]
    ParamsType { got: &'static str },
}

/// Every command name, for the refusal of an unknown one.
fn supported_commands() -> String {
    let known: Vec<&str> = CommandKind::ALL.iter().map(|k| k.name()).collect();
    known.join(", ")
}

/// Parses one MQTT payload. `new_id` makes a request_id when none was given.
pub fn parse_command(payload: &[u8], new_id: impl FnOnce() -> String) -> Incoming {
    match read_command(payload, new_id) {
        Ok(Some(command)) => Incoming::Command(command),
        Ok(None) => Incoming::Echo,
        Err((request_id, error)) => Incoming::Invalid {
            request_id,
            error: error.to_string(),
        },
    }
}

/// The command; `None` for an echo; the error with the request_id to
/// answer on, where one could be read.
fn read_command(
    payload: &[u8],
    new_id: impl FnOnce() -> String,
) -> Result<Option<Command>, (Option<String>, CommandError)> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| (None, CommandError::NotJson(e)))?;
    let Value::Object(mut object) = value else {
        let got = json_kind(&value);
        return Err((None, CommandError::NotObject { got }));
    };
    if object.contains_key("status") {
        return Ok(None);
    }
    let request_id = read_request_id(object.remove("request_id"), new_id)?;
    let kind = match read_kind(object.remove("command")) {
        Ok(kind) => kind,
        Err(error) => return Err((Some(request_id), error)),
    };
    let params = match object.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(params)) => params,
        Some(other) => {
            let got = json_kind(&other);
            return Err((Some(request_id), CommandError::ParamsType { got }));
        }
    };
    Ok(Some(Command {
        kind,
        request_id,
        params,
    }))
}

/// The request_id, or the error with the id as sent (cut past the limit;
/// a non-string id as its JSON text).
fn read_request_id(
    value: Option<Value>,
    new_id: impl FnOnce() -> String,
) -> Result<String, (Option<String>, CommandError)> {
    let id = match value {
        None | Some(Value::Null) => return Ok(new_id()),
        Some(Value::String(id)) => id,
        Some(other) => {
            let error = CommandError::RequestIdType {
                got: json_kind(&other),
            };
            let sent = match other {
                Value::Number(n) => n.to_string(),
                other => echoed_request_id(&other.to_string()),
            };
            return Err((Some(sent), error));
        }
    };
    let problem = if id.trim().is_empty() {
        Some(CommandError::RequestIdEmpty)
    } else if id.len() > MAX_REQUEST_ID_LEN {
        Some(CommandError::RequestIdTooLong { len: id.len() })
    } else {
        id.char_indices()
            .find(|(_, c)| c.is_control())
            .map(|(at, found)| CommandError::RequestIdControl { found, at })
    };
    match problem {
        None => Ok(id),
        Some(problem) => Err((Some(echoed_request_id(&id)), problem)),
    }
}

fn read_kind(value: Option<Value>) -> Result<CommandKind, CommandError> {
    match value {
        None | Some(Value::Null) => Err(CommandError::MissingCommand),
        Some(Value::String(name)) => {
            CommandKind::from_name(&name).ok_or(CommandError::UnknownCommand { name })
        }
        Some(other) => Err(CommandError::CommandType {
            got: json_kind(&other),
        }),
    }
}

/// "an array", "a number": for messages that say what came instead.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Who is answering: every response carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRef {
    pub uuid: String,
    pub slug: String,
}

/// A message on the response topic.
#[derive(Debug, Clone, Serialize)]
pub struct Response {
    pub status: &'static str,
    pub request_id: String,
    pub slug: String,
    pub instance_uuid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(node: &NodeRef, request_id: &str, output: Value) -> Response {
        Response {
            status: "ok",
            request_id: request_id.to_owned(),
            slug: node.slug.clone(),
            instance_uuid: node.uuid.clone(),
            event: None,
            output: Some(output),
            error: None,
        }
    }

    /// An error; `request_id` is `""` only when none was sent or the payload
    /// could not be read as an object, so the backend still sees that
    /// something it sent was refused.
    pub fn error(node: &NodeRef, request_id: Option<&str>, error: impl fmt::Display) -> Response {
        Response {
            status: "error",
            request_id: request_id.unwrap_or_default().to_owned(),
            slug: node.slug.clone(),
            instance_uuid: node.uuid.clone(),
            event: None,
            output: None,
            error: Some(error.to_string()),
        }
    }

    /// An owner's answer, with this node's name on it.
    pub fn answer(node: &NodeRef, answer: Answer) -> Response {
        Response {
            status: if answer.error.is_some() {
                "error"
            } else {
                "ok"
            },
            request_id: answer.request_id,
            slug: node.slug.clone(),
            instance_uuid: node.uuid.clone(),
            event: answer.event,
            output: answer.output,
            error: answer.error,
        }
    }
}

/// The retained message on the presence topic.
#[derive(Debug, Clone, Serialize)]
pub struct Presence<'a> {
    pub state: &'static str,
    pub uuid: &'a str,
    pub slug: &'a str,
    pub version: &'static str,
    /// RFC 3339 UTC.
    pub ts: String,
}

impl Presence<'_> {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("presence serializes")
    }
}

/// Now, as RFC 3339 UTC with seconds.
/// RFC 3339 (seconds) of a Unix time in milliseconds.
pub fn rfc3339_from_unix_ms(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Incoming {
        parse_command(text.as_bytes(), || "generated".to_owned())
    }

    fn error_of(incoming: Incoming) -> (Option<String>, String) {
        match incoming {
            Incoming::Invalid { request_id, error } => (request_id, error),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn valid_command_with_params() {
        let Incoming::Command(cmd) =
            parse(r#"{"command":"training","request_id":"r-1","params":{"epochs":3}}"#)
        else {
            panic!()
        };
        assert_eq!(cmd.kind, CommandKind::Workload(WorkloadKind::Training));
        assert_eq!(cmd.request_id, "r-1");
        assert_eq!(cmd.params["epochs"], 3);
    }

    #[test]
    fn missing_request_id_is_generated() {
        let Incoming::Command(cmd) = parse(r#"{"command":"status"}"#) else {
            panic!()
        };
        assert_eq!(cmd.request_id, "generated");
        assert!(cmd.params.is_empty());
    }

    #[test]
    fn echo_is_ignored() {
        assert_eq!(parse(r#"{"status":"ok","request_id":"x"}"#), Incoming::Echo);
        assert_eq!(
            parse(r#"{"command":"status","status":"ok"}"#),
            Incoming::Echo
        );
    }

    #[test]
    fn malformed_inputs_name_the_problem() {
        assert!(error_of(parse("not json")).1.contains("not valid JSON"));
        assert!(error_of(parse("[1,2]")).1.contains("got an array"));
        assert!(error_of(parse("\"status\"")).1.contains("got a string"));
        let (id, err) = error_of(parse(r#"{"request_id":"r-2"}"#));
        assert_eq!(id.as_deref(), Some("r-2"));
        assert!(err.contains("missing required field \"command\""));
        let (id, err) = error_of(parse(r#"{"command":"explode","request_id":"r-3"}"#));
        assert_eq!(id.as_deref(), Some("r-3"));
        assert!(err.contains("unknown command \"explode\"") && err.contains("status"));
        assert!(error_of(parse(r#"{"command":5}"#))
            .1
            .contains("\"command\" must be a string, got a number"));
        assert!(error_of(parse(r#"{"command":"status","params":[1]}"#))
            .1
            .contains("\"params\" must be a JSON object"));
        let (id, err) = error_of(parse(r#"{"command":"status","request_id":17}"#));
        assert_eq!(id.as_deref(), Some("17"));
        assert!(err.contains("must be a string"));
        assert!(error_of(parse(r#"{"command":"status","request_id":""}"#))
            .1
            .contains("must not be empty"));
        let kib = format!(
            r#"{{"command":"status","request_id":"{}"}}"#,
            "x".repeat(MAX_REQUEST_ID_LEN)
        );
        assert!(matches!(parse(&kib), Incoming::Command(_)));
        let long = format!(
            r#"{{"command":"status","request_id":"{}"}}"#,
            "x".repeat(1100)
        );
        let (id, err) = error_of(parse(&long));
        assert!(err.contains("limit is 1024"), "{err}");
        assert_eq!(id.unwrap(), format!("{}…(1100 bytes)", "x".repeat(1024)));
        let (id, err) = error_of(parse(r#"{"command":"training","request_id":"a\u0000b"}"#));
        assert_eq!(id.as_deref(), Some("a\0b"));
        assert!(
            err.contains("\"request_id\" must not contain control characters"),
            "{err}"
        );
        let (id, _) = error_of(parse(r#"{"command":"status","request_id":[1]}"#));
        assert_eq!(id.as_deref(), Some("[1]"));
        let big = format!(
            r#"{{"command":"{}","request_id":"r"}}"#,
            "a".repeat(100_000)
        );
        let (_, err) = error_of(parse(&big));
        assert!(err.len() < 300 && err.contains("(100000 bytes)"), "{err}");
        assert!(error_of(parse_command(&[0xff, 0xfe, 0x00], String::new))
            .1
            .contains("not valid JSON"));
    }

    #[test]
    fn response_shape() {
        let node = NodeRef {
            uuid: "u".into(),
            slug: "s".into(),
        };
        let ok: Value = serde_json::from_slice(
            &serde_json::to_vec(&Response::ok(&node, "r", serde_json::json!({"a":1}))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            ok,
            serde_json::json!({"status":"ok","request_id":"r","slug":"s","instance_uuid":"u","output":{"a":1}})
        );
        let err: Value = serde_json::to_value(Response::error(&node, Some("r"), "bad")).unwrap();
        assert_eq!(err["status"], "error");
        assert_eq!(err["error"], "bad");
        assert!(err.get("output").is_none());
    }
}
