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

impl CancelParams {
    /// Validates the params of a `cancel` command.
    pub fn parse(params: &Map<String, Value>) -> Result<CancelParams, String> {
        let names: Vec<&str> = CANCEL_SIGNALS.iter().map(|s| s.as_str()).collect();
        let signal = match params.get("signal") {
            None | Some(Value::Null) => Signal::SIGTERM,
            Some(value) => value
                .as_str()
                .and_then(|name| CANCEL_SIGNALS.into_iter().find(|s| s.as_str() == name))
                .ok_or_else(|| {
                    format!(
                        "params.signal must be one of {}, got {}",
                        names.join(", "),
                        quote_json(value)
                    )
                })?,
        };
        let grace = match params.get("grace_seconds") {
            None | Some(Value::Null) => DEFAULT_GRACE,
            Some(value) => value
                .as_f64()
                .filter(|g| (0.0..=86_400.0).contains(g))
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    format!("params.grace_seconds must be a number of seconds between 0 and 86400, got {}", quote_json(value))
                })?,
        };
        let target = match (params.get("pid"), params.get("workload_request_id")) {
            (Some(pid), _) if !pid.is_null() => match pid.as_u64() {
                Some(pid) if (1..=i32::MAX as u64).contains(&pid) => CancelTarget::Pid(pid as i32),
                _ => {
                    return Err(format!(
                        "params.pid must be a positive integer, got {}",
                        quote_json(pid)
                    ))
                }
            },
            (_, Some(Value::String(id))) if !id.is_empty() => CancelTarget::RequestId(id.clone()),
            (_, Some(other)) if !other.is_null() => {
                return Err(format!(
                    "params.workload_request_id must be a non-empty string, got {}",
                    json_kind(other)
                ))
            }
            _ => {
                return Err(
                    "cancel needs params.pid or params.workload_request_id to say which workload to stop".into(),
                )
            }
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

    fn parse(value: Value) -> Result<CancelParams, String> {
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
        assert!(parse(json!({})).unwrap_err().contains("params.pid or"));
        assert!(parse(json!({"pid": -1}))
            .unwrap_err()
            .contains("positive integer"));
        assert!(parse(json!({"pid": "12"})).is_err());
        assert!(parse(json!({"pid": 1, "signal": "SIGHUP"}))
            .unwrap_err()
            .contains("SIGTERM, SIGINT, SIGKILL"));
        assert!(parse(json!({"workload_request_id": 5})).is_err());
        assert!(parse(json!({"pid": 3, "grace_seconds": -2})).is_err());
    }
}
