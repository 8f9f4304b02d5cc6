//! Message limits end to end (issue 11, cases 2, 6, 10, 11d): nothing the
//! node publishes exceeds what the broker takes, a message that can never
//! fit is cut and delivered once, refused values are quoted short, and
//! request_ids are checked, kept up to 1 KiB and echoed as sent.

mod common;

use std::time::{Duration, Instant};

use common::scenario::Scenario;
use common::{Broker, FakeBackend, Node, TestClient};
use serde_json::{json, Value};

/// The node's default `mqtt_max_packet_bytes`.
const DEFAULT_MAX_PACKET: usize = 256 * 1024;
/// A broker that disconnects clients sending bigger packets, as a hosted
/// broker with a size limit does; the node's default is well under it.
const BROKER_MAX_PACKET: &str = "max_packet_size 1048576";
/// A 20 MB result: a valid JSON object of one big string.
const BIG_RESULT: &str = r#"python3 -c "import json, os; json.dump({'blob': 'x' * 20000000, 'n': 1}, open(os.environ['CYBERWAVE_RESULT_FILE'], 'w'))"; echo done; exit 3"#;
/// A client that can send and read the 5 MB (and bigger) messages.
const BIG_CLIENT_PACKET: usize = 64 * 1024 * 1024;

/// The terminal events of `id`: waits up to `wait` for the first, then
/// two seconds more for any duplicate.
fn terminal_events(client: &TestClient, id: &str, wait: Duration) -> Vec<Value> {
    let mut deadline = Instant::now() + wait;
    let mut found = Vec::new();
    while let Some(v) = client.recv_json_where(
        deadline.saturating_duration_since(Instant::now()),
        |_, v| {
            v["request_id"] == id
                && matches!(
                    v["event"].as_str(),
                    Some("completed" | "failed" | "cancelled")
                )
        },
    ) {
        if found.is_empty() {
            deadline = Instant::now() + Duration::from_secs(2);
        }
        found.push(v);
    }
    found
}

/// How often the node (re)connected, from its own log.
fn connections(s: &Scenario) -> usize {
    s.node
        .stderr()
        .matches("connected to the MQTT broker at")
        .count()
}

fn outbox_files(s: &Scenario) -> Vec<String> {
    std::fs::read_dir(s.node.config_dir().join("outbox"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default()
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// `status` answered, and how long it took.
fn timed_status(s: &Scenario) -> Duration {
    let asked = Instant::now();
    let status = s.status();
    assert_eq!(status["status"], "ok", "{status}");
    asked.elapsed()
}

#[test]
fn oversized_terminal_event_is_cut_and_delivered_once() {
    let broker = Broker::start_with_conf(BROKER_MAX_PACKET);
    let s = Scenario::start_with(broker, FakeBackend::start(), |n| {
        n.env_var("CYBERWAVE_TRAINING_CMD", BIG_RESULT)
            // Read the whole result, so the event itself is too big to send.
            .env_var("CYBERWAVE_MAX_RESULT_BYTES", "30000000")
    });
    let started = s.request(json!({"command": "training", "request_id": "big-1"}));
    assert_eq!(started["event"], "started", "{started}");
    let events = terminal_events(&s.client, "big-1", Duration::from_secs(12));
    assert_eq!(
        events.len(),
        1,
        "exactly one terminal event; got {} (node connected {} times); node log:\n{}",
        events.len(),
        connections(&s),
        tail(&s.node.stderr())
    );
    let event = &events[0];
    assert!(event.to_string().len() <= DEFAULT_MAX_PACKET, "too big");
    assert_eq!(event["event"], "failed", "{event}");
    assert_eq!(event["output"]["exit_code"], 3, "the true exit code");
    assert_eq!(
        event["output"]["stdout_tail"], "done\n",
        "small fields kept"
    );
    assert_eq!(event["output"]["result"], Value::Null);
    let cut = event["truncated"]["output.result"].as_u64().unwrap_or(0);
    assert!(
        cut > 20_000_000,
        "says what was cut: {}",
        event["truncated"]
    );
    assert_eq!(
        connections(&s),
        1,
        "the node reconnected:\n{}",
        tail(&s.node.stderr())
    );
    assert!(
        wait_until(Duration::from_secs(5), || outbox_files(&s).is_empty()),
        "outbox not drained: {:?}",
        outbox_files(&s)
    );
    assert!(timed_status(&s) < Duration::from_secs(1));
}

/// Mosquitto's `message_size_limit` acknowledges a too-big message and
/// drops it: the outbox empties but the event never arrives.
#[test]
fn broker_message_size_limit_does_not_lose_the_event() {
    let broker = Broker::start_with_conf("message_size_limit 1000000");
    let s = Scenario::start_with(broker, FakeBackend::start(), |n| {
        n.env_var("CYBERWAVE_TRAINING_CMD", BIG_RESULT)
            // Read the whole result, so the event itself is too big to send.
            .env_var("CYBERWAVE_MAX_RESULT_BYTES", "30000000")
    });
    s.request(json!({"command": "training", "request_id": "big-2"}));
    let events = terminal_events(&s.client, "big-2", Duration::from_secs(10));
    assert_eq!(
        events.len(),
        1,
        "exactly one terminal event, got {}",
        events.len()
    );
    assert_eq!(events[0]["output"]["exit_code"], 3);
}

/// An event a version without the cap left in the outbox is cut on its way
/// out instead of being retried for ever.
#[test]
fn oversized_event_left_in_the_outbox_is_cut_on_resend() {
    let broker = Broker::start_with_conf(BROKER_MAX_PACKET);
    let watcher = TestClient::connect(broker.port());
    watcher.subscribe("cyberwave/cloud-node/+/response");
    let legacy = json!({
        "topic": "cyberwave/cloud-node/legacy/response",
        "payload": {"status": "ok", "request_id": "old-1", "slug": "s", "instance_uuid": "u",
                    "event": "completed",
                    "output": {"exit_code": 0, "result": {"blob": "y".repeat(20_000_000)}}},
    });
    let backend = FakeBackend::start();
    let s = Scenario::start_with(broker, backend, |n: Node| {
        n.home_file(
            ".cyberwave/outbox/training_old-1.completed.json",
            &legacy.to_string(),
        )
    });
    let events = terminal_events(&watcher, "old-1", Duration::from_secs(8));
    assert_eq!(events.len(), 1, "log:\n{}", tail(&s.node.stderr()));
    assert_eq!(events[0]["output"]["exit_code"], 0);
    assert!(
        events[0]["truncated"]["output.result"]
            .as_u64()
            .unwrap_or(0)
            > 20_000_000
    );
    assert!(
        wait_until(Duration::from_secs(5), || outbox_files(&s).is_empty()),
        "outbox not drained: {:?}",
        outbox_files(&s)
    );
    assert_eq!(connections(&s), 1, "the node reconnected");
}

/// Every refused field of 5 MB: (command, what the error quotes).
fn refused_commands(big: &str) -> Vec<(Value, &'static str)> {
    let big_array = Value::Array(vec![json!(1); 2_500_000]);
    vec![
        (json!({"command": big}), "unknown command"),
        (
            json!({"command": "cancel", "params": {"workload_request_id": big}}),
            "no running workload",
        ),
        (
            json!({"command": "cancel", "params": {"pid": 1, "signal": big}}),
            "params.signal",
        ),
        (
            json!({"command": "cancel", "params": {"pid": big_array}}),
            "params.pid",
        ),
        (
            json!({"command": "deploy", "params": {"model": "m.onnx", "deployment_id": big}}),
            "deployment_id",
        ),
        (
            json!({"command": "deploy", "params": {"model": big}}),
            "model",
        ),
        (
            json!({"command": "deploy", "params": {"model": "m.onnx", "format": big}}),
            "format",
        ),
        (
            json!({"command": "infer", "params": {"deployment_id": big}}),
            "deployment_id",
        ),
        (
            json!({"command": "terminal_resize", "params": {"session_id": big, "cols": 80, "rows": 24}}),
            "session",
        ),
    ]
}

#[test]
fn refused_values_are_quoted_short() {
    let s = Scenario::start(|n| n.env_var("CYBERWAVE_TERMINAL_ENABLED", "true"));
    let big_client = TestClient::connect_sized(s.broker.port(), BIG_CLIENT_PACKET);
    big_client.subscribe(&s.response_topic());
    let big = "a".repeat(5_000_000);
    let command_topic = s.topic(&s.uuid, "command");
    for (i, (mut command, names)) in refused_commands(&big).into_iter().enumerate() {
        let id = format!("q-{i}");
        command["request_id"] = json!(id);
        let reply = big_client
            .request(&command_topic, &s.response_topic(), &command)
            .unwrap_or_else(|| panic!("no reply to {id}:\n{}", tail(&s.node.stderr())));
        let size = reply.to_string().len();
        let error = reply["error"].as_str().unwrap_or_default();
        assert_eq!(reply["status"], "error", "{id}");
        assert!(
            size < 4096,
            "{id}: the reply is {size} bytes: {}",
            error.chars().take(200).collect::<String>()
        );
        assert!(error.contains(names), "{id}: {error}");
        assert!(
            error.contains("aaaaaaaa…\" (5000000 bytes)")
                || error.contains("(5000001 bytes of JSON)"),
            "{id} quotes a prefix and the length: {error}"
        );
    }
    for _ in 0..3 {
        assert!(timed_status(&s) < Duration::from_secs(1));
    }
    let longest = s.node.stderr().lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 4096, "a node log line is {longest} bytes");
    assert_eq!(connections(&s), 1, "the node lost its broker link");
}

#[test]
fn nul_in_a_request_id_is_refused_naming_the_field() {
    let s = Scenario::start(|n| n.env_var("CYBERWAVE_TRAINING_CMD", "echo hi"));
    let reply = s.request(json!({"command": "training", "request_id": "nul\u{0}id"}));
    assert_eq!(reply["status"], "error", "{reply}");
    assert_eq!(reply["request_id"], "nul\u{0}id", "echoed as sent");
    let error = reply["error"].as_str().unwrap();
    assert!(error.contains("\"request_id\""), "{error}");
    assert!(!error.contains("nul byte found"), "{error}");
    let reply = s.request(json!({"command": "status", "request_id": "line\nbreak"}));
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("control character"),
        "{reply}"
    );
}

#[test]
fn request_ids_up_to_1_kib_run_and_longer_ones_are_echoed_cut() {
    let s = Scenario::start(|n| n.env_var("CYBERWAVE_TRAINING_CMD", "echo hi"));
    let id = format!("{}/é", "r".repeat(997));
    assert_eq!(id.len(), 1000);
    let started = s.request(json!({"command": "training", "request_id": id}));
    assert_eq!(started["event"], "started", "{started}");
    let done = terminal_events(&s.client, &id, Duration::from_secs(5));
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["event"], "completed", "{}", done[0]);

    let long = "L".repeat(5000);
    s.client.publish_json(
        &s.topic(&s.uuid, "command"),
        &json!({"command": "status", "request_id": long}),
    );
    let reply = s
        .client
        .recv_json_where(Duration::from_secs(5), |_, v| {
            v["request_id"]
                .as_str()
                .is_some_and(|r| r.starts_with("LLLL"))
        })
        .unwrap_or_else(|| panic!("no reply:\n{}", tail(&s.node.stderr())));
    let expected = format!("{}…(5000 bytes)", "L".repeat(1024));
    assert_eq!(reply["request_id"], expected.as_str());
    assert!(reply["error"].as_str().unwrap().contains("1024"), "{reply}");
}

/// A command bigger than the node reads (32 MiB) cannot be answered, but it
/// must not cost the node its broker link for good: the broker would
/// redeliver it on every reconnect.
#[test]
fn a_command_too_big_to_read_does_not_loop_the_connection() {
    let s = Scenario::start(|n| n);
    let big_client = TestClient::connect_sized(s.broker.port(), BIG_CLIENT_PACKET);
    let huge = json!({"command": "status", "request_id": "huge", "pad": "p".repeat(40 << 20)});
    big_client.publish_json(&s.topic(&s.uuid, "command"), &huge);
    drop(big_client);
    // The node drops the connection, reconnects with a clean session and
    // subscribes again.
    let reconnected = Instant::now() + Duration::from_secs(10);
    while !(connections(&s) >= 2 && s.node.stderr().contains("starts a clean session")) {
        assert!(Instant::now() < reconnected, "{}", tail(&s.node.stderr()));
        std::thread::sleep(Duration::from_millis(50));
    }
    s.status_once_subscribed(Duration::from_secs(10));
    let connected = connections(&s);
    assert!(connected <= 3, "connected {connected} times");
    assert!(s.node.stderr().contains("starts a clean session"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(connections(&s), connected, "still reconnecting");
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..]
        .iter()
        .map(|l| l.chars().take(300).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}
