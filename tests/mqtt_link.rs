//! The broker connection: presence and last will, credentials, TLS with a
//! custom CA, broker restarts, and the graceful stop.

mod common;

use std::time::{Duration, Instant};

use common::scenario::{Scenario, READY, TOKEN};
use common::{standard_env, Broker, FakeBackend, Node, TestClient};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const KNOWN_UUID: &str = "6c9b2d0f-4a3e-4f7b-8c8d-1e2f3a4b5c6d";

/// Logged once the node no longer accepts commands; the earlier "SIGTERM
/// received: stopping" line comes before that.
const STOPPED_ACCEPTING: &str = "stopping: no new commands are accepted";

fn presence(client: &TestClient, uuid: &str, state: &str) -> Option<Value> {
    client.recv_json_where(Duration::from_secs(5), |topic, v| {
        topic.ends_with(&format!("{uuid}/presence")) && v["state"] == state
    })
}

#[test]
fn presence_is_online_then_offline_after_sigterm() {
    let s = Scenario::start(|n| n);
    let watcher = TestClient::connect(s.broker.port());
    watcher.subscribe(&s.topic(&s.uuid, "presence"));
    let online = presence(&watcher, &s.uuid, "online").expect("retained online presence");
    assert_eq!(online["uuid"], s.uuid.as_str());
    assert_eq!(online["slug"], s.slug.as_str());
    assert_eq!(online["version"], env!("CARGO_PKG_VERSION"));
    assert!(online["ts"].as_str().unwrap().ends_with('Z'));
    s.node.signal(Signal::SIGTERM);
    assert!(
        presence(&watcher, &s.uuid, "offline").is_some(),
        "offline on a graceful stop"
    );
    assert!(s.node.wait_exit(Duration::from_secs(5)).unwrap().success());
    // Retained: a late subscriber sees offline too.
    let late = TestClient::connect(s.broker.port());
    late.subscribe(&s.topic(&s.uuid, "presence"));
    assert!(presence(&late, &s.uuid, "offline").is_some());
}

#[test]
fn last_will_says_offline_when_the_node_is_killed() {
    let s = Scenario::start(|n| n);
    let watcher = TestClient::connect(s.broker.port());
    watcher.subscribe(&s.topic(&s.uuid, "presence"));
    assert!(presence(&watcher, &s.uuid, "online").is_some());
    s.node.kill9();
    let offline = presence(&watcher, &s.uuid, "offline").expect("the broker publishes the will");
    assert_eq!(offline["uuid"], s.uuid.as_str());
}

#[test]
fn mqtt_credentials_default_to_uuid_and_token() {
    let broker = Broker::start_with_password(KNOWN_UUID, TOKEN);
    let backend = FakeBackend::start();
    backend.add_instance(KNOWN_UUID, "secured");
    let node = Node::new()
        .arg("start")
        .envs(standard_env(broker.port(), &backend.url(), TOKEN))
        .env_var("CYBERWAVE_CLOUD_NODE_INSTANCE_UUID", KNOWN_UUID)
        .spawn();
    assert!(
        node.wait_for_log(READY, Duration::from_secs(10)),
        "{}",
        node.stderr()
    );
}

#[test]
fn wrong_mqtt_password_is_explained_and_not_logged() {
    let broker = Broker::start_with_password(KNOWN_UUID, TOKEN);
    let backend = FakeBackend::start();
    let node = Node::new()
        .arg("start")
        .envs(standard_env(broker.port(), &backend.url(), TOKEN))
        .env_var("CYBERWAVE_MQTT_USERNAME", "someone")
        .env_var("CYBERWAVE_MQTT_PASSWORD", "wrong-password-xyz")
        .spawn();
    assert!(
        node.wait_for_log("refused the credentials", Duration::from_secs(10)),
        "{}",
        node.stderr()
    );
    let log = node.stderr();
    assert!(log.contains("CYBERWAVE_MQTT_PASSWORD"), "{log}");
    assert!(
        !log.contains("wrong-password-xyz") && !log.contains(TOKEN),
        "secrets leaked:\n{log}"
    );
}

#[test]
fn tls_with_a_custom_ca() {
    let broker = Broker::start_tls();
    let backend = FakeBackend::start();
    let node = Node::new()
        .arg("start")
        .envs(standard_env(broker.port(), &backend.url(), TOKEN))
        .env_var("CYBERWAVE_MQTT_HOST", "localhost")
        .env_var("CYBERWAVE_MQTT_USE_TLS", "true")
        .env_var(
            "CYBERWAVE_MQTT_TLS_CA_CERTS",
            broker.ca_file().to_str().unwrap(),
        )
        .spawn();
    assert!(
        node.wait_for_log(READY, Duration::from_secs(10)),
        "{}",
        node.stderr()
    );
}

#[test]
fn tls_without_the_right_ca_fails_clearly() {
    let broker = Broker::start_tls();
    let backend = FakeBackend::start();
    let node = Node::new()
        .arg("start")
        .envs(standard_env(broker.port(), &backend.url(), TOKEN))
        .env_var("CYBERWAVE_MQTT_HOST", "localhost")
        .env_var("CYBERWAVE_MQTT_USE_TLS", "1")
        .spawn();
    assert!(
        node.wait_for_log("TLS with the broker", Duration::from_secs(10)),
        "{}",
        node.stderr()
    );
    let missing = Node::new()
        .arg("start")
        .envs(standard_env(broker.port(), &backend.url(), TOKEN))
        .env_var("CYBERWAVE_MQTT_USE_TLS", "1")
        .env_var("CYBERWAVE_MQTT_TLS_CA_CERTS", "/nonexistent/ca.pem")
        .run_to_exit(Duration::from_secs(10));
    assert_eq!(missing.0.code(), Some(1));
    assert!(missing.2.contains("/nonexistent/ca.pem"), "{}", missing.2);
}

#[test]
fn broker_restart_then_status_is_answered() {
    let mut s = Scenario::start(|n| n);
    assert_eq!(s.status()["status"], "ok");
    let connections = s.client.connections();
    s.broker.stop();
    assert!(
        s.node
            .wait_for_log("reconnecting in", Duration::from_secs(5)),
        "{}",
        s.node.stderr()
    );
    s.broker.restart();
    assert!(s
        .client
        .wait_connections(connections + 1, Duration::from_secs(10)));
    // The node resubscribes on its own reconnect; give it a few tries.
    let answer = s.status_once_subscribed(Duration::from_secs(10));
    assert_eq!(answer["status"], "ok");
}

#[test]
fn sigterm_stops_gracefully_and_refuses_commands_meanwhile() {
    let s = Scenario::start(|n| n);
    s.backend
        .set_delay("POST", "/terminated", Duration::from_millis(1000));
    let started = Instant::now();
    s.node.signal(Signal::SIGTERM);
    assert!(s
        .node
        .wait_for_log(STOPPED_ACCEPTING, Duration::from_secs(2)));
    let refused = s.request(json!({"command": "status", "request_id": "late"}));
    assert_eq!(refused["status"], "error");
    assert!(
        refused["error"].as_str().unwrap().contains("shutting down"),
        "{refused}"
    );
    let status = s.node.wait_exit(Duration::from_secs(4)).expect("exits");
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let terminated = s
        .backend
        .wait_for_request("POST", "/api/v1/cloud-node/terminated", Duration::ZERO)
        .expect("terminated endpoint");
    assert_eq!(
        terminated.body,
        json!({"instance_uuid": s.uuid, "slug": s.slug})
    );
}

#[test]
fn second_sigint_exits_at_once() {
    let s = Scenario::start(|n| n);
    s.backend
        .set_delay("POST", "/terminated", Duration::from_secs(8));
    s.node.signal(Signal::SIGINT);
    assert!(s
        .node
        .wait_for_log(STOPPED_ACCEPTING, Duration::from_secs(2)));
    let started = Instant::now();
    s.node.signal(Signal::SIGINT);
    let status = s
        .node
        .wait_exit(Duration::from_secs(2))
        .expect("exits at once");
    assert_eq!(status.code(), Some(130));
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[test]
fn commands_sent_while_the_node_was_down_are_delivered_on_return() {
    let s = Scenario::start(|n| n);
    assert!(
        s.broker.log().contains(&format!("cloud-node-{}", s.uuid)),
        "client id is cloud-node-<uuid>:\n{}",
        s.broker.log()
    );
    s.node.kill9();
    s.node.wait_exit(Duration::from_secs(2));
    // The persistent session keeps the subscription and queues QoS 1 commands.
    s.client.publish_json(
        &s.topic(&s.uuid, "command"),
        &json!({"command": "status", "request_id": "while-down"}),
    );
    let restarted = Node::new()
        .arg("start")
        .envs(standard_env(s.broker.port(), &s.backend.url(), TOKEN))
        .env_var("HOME", s.node.home().to_str().unwrap())
        .spawn();
    let answer = s.client.recv_json_where(Duration::from_secs(10), |_, v| {
        v["request_id"] == "while-down"
    });
    let answer = answer.unwrap_or_else(|| panic!("queued command lost:\n{}", restarted.stderr()));
    assert_eq!(answer["status"], "ok");
}
