//! What each command does. Pure functions of the node's state, so they are
//! cheap enough to run inline on the node task and easy to test.

use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::config::Settings;
use crate::protocol::{json_kind, Command, CommandKind, NodeRef, Response};

/// The signals `cancel` may send.
pub const CANCEL_SIGNALS: [&str; 3] = ["SIGTERM", "SIGINT", "SIGKILL"];

/// The state a command can see.
pub struct CommandContext<'a> {
    pub settings: &'a Settings,
    pub node: &'a NodeRef,
    pub started: Instant,
    pub accepting: bool,
}

/// The one immediate response to `command`.
pub fn handle(ctx: &CommandContext<'_>, command: &Command) -> Response {
    let id = command.request_id.as_str();
    if !ctx.accepting {
        return Response::error(
            ctx.node,
            Some(id),
            "the node is shutting down and takes no new commands; resend to another node or after it restarts",
        );
    }
    match command.kind {
        CommandKind::Status => Response::ok(ctx.node, id, status_output(ctx)),
        CommandKind::Cancel => match cancel_target(&command.params) {
            Ok(target) => Response::error(
                ctx.node,
                Some(id),
                format!("no running workload with {target} was started by this node; nothing was signalled"),
            ),
            Err(problem) => Response::error(ctx.node, Some(id), problem),
        },
        kind => workload(ctx, kind, id),
    }
}

fn workload(ctx: &CommandContext<'_>, kind: CommandKind, id: &str) -> Response {
    let name = kind.name();
    if ctx.settings.template(name).is_none() {
        return Response::error(
            ctx.node,
            Some(id),
            format!(
                "no {name} command is configured on this node: set `{name}:` in cyberwave.yml or CYBERWAVE_{}_CMD",
                name.to_ascii_uppercase()
            ),
        );
    }
    Response::error(
        ctx.node,
        Some(id),
        format!("this version of cyberwave-cloud-node cannot run {name} workloads yet; nothing was started"),
    )
}

/// The `status` output of PROTOCOL.md, every field.
pub fn status_output(ctx: &CommandContext<'_>) -> Value {
    let settings = ctx.settings;
    json!({
        "slug": ctx.node.slug,
        "instance_uuid": ctx.node.uuid,
        "profile_slug": settings.profile_slug.value,
        "version": env!("CARGO_PKG_VERSION"),
        "is_busy": false,
        "accepting_commands": ctx.accepting,
        "max_concurrent_workloads": settings.max_concurrent_workloads.value,
        "uptime_seconds": ctx.started.elapsed().as_secs(),
        "has_inference": settings.inference_cmd.is_some(),
        "has_training": settings.training_cmd.is_some(),
        "has_simulate": settings.simulate_cmd.is_some(),
        "active_workloads": [],
    })
}

/// The heartbeat body: a short status summary (PROTOCOL.md allows one).
pub fn heartbeat_summary(ctx: &CommandContext<'_>) -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "is_busy": false,
        "accepting_commands": ctx.accepting,
        "active_workloads": 0,
        "uptime_seconds": ctx.started.elapsed().as_secs(),
    })
}

/// Validates `cancel` params; `Ok` names the workload asked for.
pub fn cancel_target(params: &Map<String, Value>) -> Result<String, String> {
    if let Some(signal) = params.get("signal") {
        match signal.as_str() {
            Some(name) if CANCEL_SIGNALS.contains(&name) => {}
            _ => {
                return Err(format!(
                    "params.signal must be one of {}, got {signal}",
                    CANCEL_SIGNALS.join(", ")
                ))
            }
        }
    }
    if let Some(grace) = params.get("grace_seconds") {
        if !grace
            .as_f64()
            .is_some_and(|g| (0.0..=86_400.0).contains(&g))
        {
            return Err(format!(
                "params.grace_seconds must be a number of seconds between 0 and 86400, got {grace}"
            ));
        }
    }
    match (params.get("pid"), params.get("workload_request_id")) {
        (Some(pid), _) => match pid.as_u64() {
            Some(pid) if (1..=i32::MAX as u64).contains(&pid) => Ok(format!("pid {pid}")),
            _ => Err(format!("params.pid must be a positive integer, got {pid}")),
        },
        (None, Some(Value::String(id))) if !id.is_empty() => Ok(format!("request_id {id:?}")),
        (None, Some(other)) => Err(format!(
            "params.workload_request_id must be a non-empty string, got {}",
            json_kind(other)
        )),
        (None, None) => Err(
            "cancel needs params.pid or params.workload_request_id to say which workload to stop"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn cancel_validation() {
        assert_eq!(
            cancel_target(&params(json!({"pid": 12}))),
            Ok("pid 12".into())
        );
        assert!(cancel_target(&params(json!({"workload_request_id": "r"}))).is_ok());
        assert!(cancel_target(&params(json!({})))
            .unwrap_err()
            .contains("params.pid or"));
        assert!(cancel_target(&params(json!({"pid": -1})))
            .unwrap_err()
            .contains("positive integer"));
        assert!(cancel_target(&params(json!({"pid": "12"}))).is_err());
        assert!(
            cancel_target(&params(json!({"pid": 1, "signal": "SIGHUP"})))
                .unwrap_err()
                .contains("SIGTERM, SIGINT, SIGKILL")
        );
        assert!(cancel_target(&params(json!({"workload_request_id": 5}))).is_err());
        assert!(cancel_target(&params(json!({"pid": 3, "grace_seconds": -2}))).is_err());
    }
}
