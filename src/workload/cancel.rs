//! `cancel` params and the signals it may send.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Map, Value};

use crate::protocol::{json_kind, quote, quote_json};

/// The signals `cancel` accepts.
pub const CANCEL_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGKILL];
/// How long a SIGTERM or SIGINT gets before SIGKILL follows.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// Which workload to cancel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelTarget {
    Pid(i32),
    RequestId(String),
}

impl std::fmt::Display for CancelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CancelTarget::Pid(pid) => write!(f, "pid {pid}"),
            CancelTarget::RequestId(id) => write!(f, "request_id {}", quote(id)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CancelParams {
    pub target: CancelTarget,
    pub signal: Signal,
    pub grace: Duration,
}

/// Why a `cancel` command's params are refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CancelParamsError {
    #[error("params.signal must be one of {}, got {got}", signal_names())]
    Signal { got: String },
    #[error("params.grace_seconds must be a number of seconds between 0 and 86400, got {got}")]
    Grace { got: String },
    #[error("params.pid must be a positive integer, got {got}")]
    Pid { got: String },
    #[error("params.workload_request_id must be a non-empty string, got {got}")]
    RequestId { got: &'static str },
    #[error("cancel needs params.pid or params.workload_request_id to say which workload to stop")]
    NoTarget,
}

/// Why a `cancel` signalled nothing.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error(transparent)]
    Params(#[from] CancelParamsError),
    #[error("workload {request_id} is still starting; retry the cancel in a moment")]
    Starting { request_id: String },
    /// Its processes were gone when the signal was sent.
    #[error("workload {request_id} (pid {pid}) has already ended; nothing was signalled")]
    Gone { request_id: String, pid: i32 },
    /// Its record says it has ended.
    #[error("workload {request_id} already ended ({state}); nothing was signalled")]
    Ended {
        request_id: String,
        state: &'static str,
    },
    #[error("no running workload with {target} was started by this node; nothing was signalled")]
    NotFound { target: CancelTarget },
    /// A queued workload's cancel could not be written to its queue file.
    #[error("cannot record the cancel of queued workload {request_id}: {source}; it stays queued, retry the cancel")]
    QueueFile {
        request_id: String,
        #[source]
        source: std::io::Error,
    },
}

/// "SIGTERM, SIGINT, SIGKILL".
fn signal_names() -> String {
    let names: Vec<&str> = CANCEL_SIGNALS.iter().map(|s| s.as_str()).collect();
    names.join(", ")
}

impl CancelParams {
    /// Validates the params of a `cancel` command.
    pub fn parse(params: &Map<String, Value>) -> Result<CancelParams, CancelParamsError> {
        let signal = match params.get("signal") {
            None | Some(Value::Null) => Signal::SIGTERM,
            Some(value) => value
                .as_str()
                .and_then(|name| CANCEL_SIGNALS.into_iter().find(|s| s.as_str() == name))
                .ok_or_else(|| CancelParamsError::Signal {
                    got: quote_json(value),
                })?,
        };
        let grace = match params.get("grace_seconds") {
            None | Some(Value::Null) => DEFAULT_GRACE,
            Some(value) => value
                .as_f64()
                .filter(|g| (0.0..=86_400.0).contains(g))
                .map(Duration::from_secs_f64)
                .ok_or_else(|| CancelParamsError::Grace {
                    got: quote_json(value),
                })?,
        };
        let target = match (params.get("pid"), params.get("workload_request_id")) {
            (Some(pid), _) if !pid.is_null() => match pid.as_u64() {
                Some(pid) if (1..=i32::MAX as u64).contains(&pid) => CancelTarget::Pid(pid as i32),
                _ => {
                    return Err(CancelParamsError::Pid {
                        got: quote_json(pid),
                    })
                }
            },
            (_, Some(Value::String(id))) if !id.is_empty() => CancelTarget::RequestId(id.clone()),
            (_, Some(other)) if !other.is_null() => {
                return Err(CancelParamsError::RequestId {
                    got: json_kind(other),
                })
            }
            _ => return Err(CancelParamsError::NoTarget),
        };
        Ok(CancelParams {
            target,
            signal,
            grace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<CancelParams, CancelParamsError> {
        CancelParams::parse(value.as_object().unwrap())
    }

    #[test]
    fn validation() {
        let p = parse(json!({"pid": 12})).unwrap();
        assert_eq!(
            (p.target, p.signal, p.grace),
            (CancelTarget::Pid(12), Signal::SIGTERM, DEFAULT_GRACE)
        );
        let p =
            parse(json!({"workload_request_id": "r", "signal": "SIGKILL", "grace_seconds": 0.5}))
                .unwrap();
        assert_eq!(p.target, CancelTarget::RequestId("r".into()));
        assert_eq!(p.grace, Duration::from_millis(500));
        assert!(parse(json!({}))
            .unwrap_err()
            .to_string()
            .contains("params.pid or"));
        assert!(parse(json!({"pid": -1}))
            .unwrap_err()
            .to_string()
            .contains("positive integer"));
        assert!(parse(json!({"pid": "12"})).is_err());
        assert!(parse(json!({"pid": 1, "signal": "SIGHUP"}))
            .unwrap_err()
            .to_string()
            .contains("SIGTERM, SIGINT, SIGKILL"));
        assert!(parse(json!({"workload_request_id": 5})).is_err());
        assert!(parse(json!({"pid": 3, "grace_seconds": -2})).is_err());
    }
}
