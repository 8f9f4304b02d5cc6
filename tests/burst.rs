//! A burst of workload commands gets exactly one answer each, through the
//! embedded broker of `start --standalone` as through Mosquitto, and the
//! node's own link to the broker holds; commands the broker delivers again
//! after a reconnect are not answered again.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::broker::free_port;
use common::scenario::{read_identity, Scenario, READY};
use common::{Node, NodeProcess, TestClient};
use nix::sys::signal::Signal;
use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet};
use serde_json::{json, Value};

const CONFIG: &str = "cyberwave-cloud-node:\n  simulate: sleep 5\n  max_concurrent_workloads: 4\n";
const BURST: usize = 20;

/// Publishes BURST different `simulate` commands back to back, then counts
/// the immediate answers (not the later terminal events) per request_id.
fn burst(client: &TestClient, command_topic: &str) -> HashMap<String, Vec<Value>> {
    for i in 0..BURST {
        client.publish_json(
            command_topic,
            &json!({"command": "simulate", "request_id": format!("b-{i}")}),
        );
    }
    let mut answers: HashMap<String, Vec<Value>> = HashMap::new();
    let until = Instant::now() + Duration::from_secs(4);
    while let Some((_, payload)) = client.recv(until.saturating_duration_since(Instant::now())) {
        let Ok(value) = serde_json::from_slice::<Value>(&payload) else {
            continue;
        };
        let immediate = value["event"].is_null() || value["event"] == "started";
        if let (Some(id), true) = (value["request_id"].as_str(), immediate) {
            answers.entry(id.to_owned()).or_default().push(value);
        }
    }
    answers
}

fn check(answers: &HashMap<String, Vec<Value>>, node: &NodeProcess) {
    let total: usize = answers.values().map(Vec::len).sum();
    let started = answers
        .values()
        .flatten()
        .filter(|v| v["event"] == "started")
        .count();
    eprintln!("{total} answers to {BURST} commands, {started} started");
    for i in 0..BURST {
        let id = format!("b-{i}");
        let got = answers.get(&id).map(Vec::len).unwrap_or(0);
        assert_eq!(
            got,
            1,
            "{id} was answered {got} times: {:?}",
            answers.get(&id)
        );
    }
    assert_eq!(started, 4, "as many start as max_concurrent_workloads");
    let log = node.stderr();
    assert!(
        !log.contains("reconnecting in"),
        "the node's MQTT link dropped during the burst:\n{log}"
    );
}

#[test]
fn a_burst_through_the_embedded_broker_is_answered_once_each() {
    let port = free_port();
    let node = Node::new()
        .cwd_file("cyberwave.yml", CONFIG)
        .args(["start", "--standalone", "--mqtt-port", &port.to_string()])
        .spawn();
    assert!(
        node.wait_for_log(READY, Duration::from_secs(15)),
        "standalone node not ready:\n{}",
        node.stderr()
    );
    let uuid = read_identity(&node)["uuid"].as_str().unwrap().to_owned();
    let client = TestClient::connect(port);
    client.subscribe(&format!("cyberwave/cloud-node/{uuid}/response"));
    let answers = burst(&client, &format!("cyberwave/cloud-node/{uuid}/command"));
    check(&answers, &node);
}

#[test]
fn a_burst_through_mosquitto_is_answered_once_each() {
    let s = Scenario::start(|n| n.cwd_file("cyberwave.yml", CONFIG));
    let answers = burst(&s.client, &s.topic(&s.uuid, "command"));
    check(&answers, &s.node);
}

/// Connects as `client_id` with the persistent session, which makes the
/// broker drop the node's connection; takes whatever the session delivers
/// without acknowledging it, and leaves.
fn take_over_session(port: u16, client_id: &str) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(5));
    let (client, mut connection) = Client::new(options, 10);
    let until = Instant::now() + Duration::from_secs(5);
    for event in connection.iter() {
        assert!(
            Instant::now() < until,
            "the session takeover got no CONNACK"
        );
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("session takeover: {e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    client.disconnect().unwrap();
    for event in connection.iter() {
        if matches!(event, Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)) {
            break;
        }
    }
}

#[test]
fn commands_delivered_again_after_a_reconnect_are_answered_once() {
    let s = Scenario::start(|n| n);
    // The node stops reading: the commands wait unacknowledged in its
    // socket, then its connection is taken away and it must reconnect.
    s.node.signal(Signal::SIGSTOP);
    let command_topic = s.topic(&s.uuid, "command");
    for i in 0..3 {
        s.client.publish_json(
            &command_topic,
            &json!({"command": "status", "request_id": format!("d-{i}")}),
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    take_over_session(s.broker.port(), &format!("cloud-node-{}", s.uuid));
    s.node.signal(Signal::SIGCONT);
    let mut answers: HashMap<String, usize> = HashMap::new();
    let until = Instant::now() + Duration::from_secs(5);
    while let Some((_, payload)) = s
        .client
        .recv(until.saturating_duration_since(Instant::now()))
    {
        let Ok(value) = serde_json::from_slice::<Value>(&payload) else {
            continue;
        };
        if let Some(id) = value["request_id"].as_str() {
            *answers.entry(id.to_owned()).or_default() += 1;
        }
    }
    assert!(
        s.node.stderr().contains("reconnecting in"),
        "the node's connection was taken over"
    );
    for i in 0..3 {
        let id = format!("d-{i}");
        assert_eq!(answers.get(&id), Some(&1), "{id}: {answers:?}");
    }
}
