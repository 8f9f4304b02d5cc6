//! Commands over real MQTT: status on both topics, malformed input, echoes,
//! refusals, topic prefix, and a slow backend that must not stall answers.

mod common;

use std::time::{Duration, Instant};

use common::scenario::Scenario;
use serde_json::{json, Value};

fn error_text(response: &Value) -> &str {
    assert_eq!(response["status"], "error", "{response}");
    response["error"].as_str().unwrap()
}

#[test]
fn status_has_every_field_on_both_topics() {
    let s = Scenario::start(|n| {
        n.env_var("CYBERWAVE_TRAINING_CMD", "python train.py {body}")
            .env_var("CYBERWAVE_PROFILE_SLUG", "gpu-a100")
            .env_var("CYBERWAVE_MAX_CONCURRENT_WORKLOADS", "3")
    });
    let by_uuid = s.request(json!({"command": "status", "request_id": "st-1"}));
    assert_eq!(by_uuid["status"], "ok");
    assert_eq!(by_uuid["request_id"], "st-1");
    assert_eq!(by_uuid["slug"], s.slug.as_str());
    assert_eq!(by_uuid["instance_uuid"], s.uuid.as_str());
    let out = &by_uuid["output"];
    assert_eq!(out["slug"], s.slug.as_str());
    assert_eq!(out["instance_uuid"], s.uuid.as_str());
    assert_eq!(out["profile_slug"], "gpu-a100");
    assert_eq!(out["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(out["is_busy"], false);
    assert_eq!(out["accepting_commands"], true);
    assert_eq!(out["max_concurrent_workloads"], 3);
    assert!(out["uptime_seconds"].is_u64());
    assert_eq!(out["has_training"], true);
    assert_eq!(out["has_inference"], false);
    assert_eq!(out["has_simulate"], false);
    assert_eq!(out["active_workloads"], json!([]));

    let by_slug = s.request_on(
        &s.slug.clone(),
        json!({"command": "status", "request_id": "st-2"}),
    );
    assert_eq!(by_slug["status"], "ok");
    assert_eq!(by_slug["output"]["instance_uuid"], s.uuid.as_str());
}

#[test]
fn missing_request_id_gets_a_generated_one() {
    let s = Scenario::start(|n| n);
    s.client
        .publish(&s.topic(&s.uuid, "command"), r#"{"command":"status"}"#);
    let response = s
        .client
        .recv_json_where(Duration::from_secs(5), |_, v| v["status"] == "ok")
        .expect("a response");
    let id = response["request_id"].as_str().unwrap();
    assert!(
        uuid::Uuid::parse_str(id).is_ok(),
        "generated request_id {id} is a uuid"
    );
}

#[test]
fn malformed_commands_get_errors_and_the_node_keeps_serving() {
    let s = Scenario::start(|n| n);
    let command_topic = s.topic(&s.uuid, "command");
    let cases: Vec<(&[u8], &str)> = vec![
        (b"not json at all", "not valid JSON"),
        (b"[1,2,3]", "must be a JSON object"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (
            br#"{"request_id":"m-1"}"#,
            "missing required field \"command\"",
        ),
        (
            br#"{"command":"explode","request_id":"m-2"}"#,
            "unknown command \"explode\"",
        ),
        (
            br#"{"command":42,"request_id":"m-3"}"#,
            "\"command\" must be a string",
        ),
        (
            br#"{"command":"status","request_id":"m-4","params":"x"}"#,
            "\"params\" must be a JSON object",
        ),
        (
            br#"{"command":"status","request_id":{"a":1}}"#,
            "\"request_id\" must be a string",
        ),
        (
            br#"{"command":"cancel","request_id":"m-5","params":{}}"#,
            "params.pid or params.workload_request_id",
        ),
        (
            br#"{"command":"cancel","request_id":"m-6","params":{"pid":"12"}}"#,
            "positive integer",
        ),
        (
            br#"{"command":"cancel","request_id":"m-7","params":{"pid":1,"signal":"SIGHUP"}}"#,
            "SIGTERM, SIGINT, SIGKILL",
        ),
        (
            br#"{"command":"training","request_id":"m-8"}"#,
            "no training command is configured",
        ),
    ];
    for (payload, expected) in cases {
        s.client.publish(&command_topic, payload.to_vec());
        let response = s
            .client
            .recv_json_where(Duration::from_secs(5), |_, v| v["status"] == "error")
            .unwrap_or_else(|| panic!("no error for {:?}", String::from_utf8_lossy(payload)));
        let text = error_text(&response);
        assert!(
            text.contains(expected),
            "{text:?} should contain {expected:?}"
        );
        assert_eq!(response["instance_uuid"], s.uuid.as_str());
    }
    // A request_id that could be read is echoed back on the error.
    let response = s.request(json!({"command": "nope", "request_id": "m-9"}));
    assert_eq!(response["request_id"], "m-9");
    // And the node still answers.
    assert_eq!(s.status()["status"], "ok");
}

#[test]
fn cancel_of_an_unknown_workload_signals_nothing() {
    let s = Scenario::start(|n| n);
    let victim = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let response = s
        .request(json!({"command": "cancel", "params": {"pid": victim.id(), "signal": "SIGKILL"}}));
    assert!(error_text(&response).contains("nothing was signalled"));
    let alive =
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim.id() as i32), None).is_ok();
    assert!(
        alive,
        "a process the node did not start must not be touched"
    );
    let mut victim = victim;
    let _ = victim.kill();
    let _ = victim.wait();
}

#[test]
fn echoed_responses_are_ignored() {
    let s = Scenario::start(|n| n);
    s.client.publish_json(
        &s.topic(&s.uuid, "command"),
        &json!({"status": "ok", "request_id": "echo-1", "command": "status"}),
    );
    let answered = s
        .client
        .recv_json_where(Duration::from_millis(700), |_, v| {
            v["request_id"] == "echo-1"
        });
    assert!(
        answered.is_none(),
        "an echo must not be answered: {answered:?}"
    );
    assert_eq!(s.status()["status"], "ok");
}

#[test]
fn topic_prefix_from_environment() {
    let s = Scenario::start(|n| n.env_var("CYBERWAVE_ENVIRONMENT", "dev"));
    assert_eq!(s.prefix, "dev");
    let response = s.request(json!({"command": "status"}));
    assert_eq!(response["status"], "ok");
    // Nothing listens on the unprefixed topic.
    let plain = format!("cyberwave/cloud-node/{}/command", s.uuid);
    s.client
        .publish_json(&plain, &json!({"command": "status", "request_id": "plain"}));
    let stray = s
        .client
        .recv_json_where(Duration::from_millis(700), |_, v| {
            v["request_id"] == "plain"
        });
    assert!(stray.is_none());
}

#[test]
fn explicit_topic_prefix_beats_environment() {
    let s = Scenario::start(|n| {
        n.env_var("CYBERWAVE_ENVIRONMENT", "dev")
            .env_var("CYBERWAVE_MQTT_TOPIC_PREFIX", "lab/")
    });
    assert_eq!(s.prefix, "lab/");
    assert_eq!(s.status()["status"], "ok");
}

#[test]
fn slow_backend_does_not_delay_answers() {
    let s = Scenario::start(|n| n);
    s.backend
        .set_delay("POST", "/heartbeat", Duration::from_secs(4));
    // Let a heartbeat get stuck in the slow backend.
    assert!(s
        .backend
        .wait_for_request("POST", "/heartbeat", Duration::from_secs(3))
        .is_some());
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(s.status()["status"], "ok");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "20 status answers took {elapsed:?} while a heartbeat hung"
    );
}

#[test]
fn env_only_configuration_without_cyberwave_yml() {
    let s = Scenario::start(|n| {
        n.env_var("CYBERWAVE_INFERENCE_CMD", "python infer.py {body}")
            .env_var("CYBERWAVE_SIMULATE_CMD", "python sim.py")
    });
    let out = &s.status()["output"];
    assert_eq!(out["has_inference"], true);
    assert_eq!(out["has_simulate"], true);
    assert_eq!(out["has_training"], false);
}
