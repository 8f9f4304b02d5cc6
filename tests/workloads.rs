//! Workloads end to end: real supervisor processes, real exit codes, live
//! output, progress and results, over real MQTT.

mod common;

use std::time::Duration;

use common::scenario::Scenario;
use serde_json::{json, Value};

/// Waits for the event `event` of `request_id`.
fn event(s: &Scenario, request_id: &str, event: &str, timeout: Duration) -> Value {
    s.client
        .recv_json_where(timeout, |_, v| {
            v["request_id"] == request_id && v["event"] == event
        })
        .unwrap_or_else(|| {
            panic!(
                "no {event} event for {request_id}; node log:\n{}",
                s.node.stderr()
            )
        })
}

fn training(template: &str) -> Scenario {
    Scenario::start(|n| n.env_var("CYBERWAVE_TRAINING_CMD", template))
}

#[test]
fn exit_codes_and_tails_are_reported() {
    let s = training("echo out-line; echo err-line >&2; exit 3");
    let started = s.request(json!({"command": "training", "request_id": "ec-3"}));
    assert_eq!(started["status"], "ok", "{started}");
    assert_eq!(started["event"], "started");
    let out = &started["output"];
    assert!(out["pid"].as_i64().unwrap() > 0);
    assert_eq!(out["workload_type"], "training");
    assert_eq!(out["workload_request_id"], "ec-3");
    assert!(out["stdout_log"]
        .as_str()
        .unwrap()
        .ends_with("workload_logs/training_ec-3.stdout.log"));
    let failed = event(&s, "ec-3", "failed", Duration::from_secs(5));
    assert_eq!(failed["status"], "error");
    let out = &failed["output"];
    assert_eq!(out["exit_code"], 3);
    assert_eq!(out["signal"], Value::Null);
    assert_eq!(out["stdout_tail"], "out-line\n");
    assert_eq!(out["stderr_tail"], "err-line\n");
    assert!(out["duration_seconds"].as_f64().unwrap() >= 0.0);
    assert!(failed["error"].as_str().unwrap().contains("code 3"));
}
