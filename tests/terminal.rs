//! The remote terminal over real MQTT and a real PTY.

mod common;

use std::time::{Duration, Instant};

use common::scenario::Scenario;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const CONFIG: &str = "cyberwave-cloud-node:\n  terminal:\n    enabled: true\n    shell: /bin/sh\n    max_sessions: 2\n    idle_timeout_seconds: 3\n";

fn with_terminal() -> Scenario {
    let s = Scenario::start(|n| n.cwd_file("cyberwave.yml", CONFIG));
    s.client.subscribe(&s.topic(&s.uuid, "terminal/+/out"));
    s
}

fn open(s: &Scenario, request_id: &str) -> (String, i64) {
    let opened = s.request(json!({"command": "terminal_open", "request_id": request_id, "params": {"cols": 80, "rows": 24}}));
    assert_eq!(opened["status"], "ok", "{opened}");
    let id = opened["output"]["session_id"].as_str().unwrap().to_owned();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "session ids are uuids: {id}"
    );
    (id, opened["output"]["pid"].as_i64().unwrap())
}

/// Collects the session's output until it contains `needle`.
fn read_until(s: &Scenario, session: &str, needle: &str) -> String {
    let topic = s.topic(&s.uuid, &format!("terminal/{session}/out"));
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !seen.contains(needle) {
        if let Some((t, payload)) = s.client.recv(Duration::from_millis(200)) {
            if t == topic {
                seen.push_str(&String::from_utf8_lossy(&payload));
            }
        }
    }
    assert!(
        seen.contains(needle),
        "no {needle:?} in the terminal output: {seen:?}"
    );
    seen
}

fn type_in(s: &Scenario, session: &str, text: &str) {
    s.client.publish(
        &s.topic(&s.uuid, &format!("terminal/{session}/in")),
        text.as_bytes().to_vec(),
    );
}

fn closed(s: &Scenario, request_id: &str, timeout: Duration) -> Value {
    s.client
        .recv_json_where(timeout, |_, v| {
            v["request_id"] == request_id && v["event"] == "closed"
        })
        .unwrap_or_else(|| panic!("no closed event for {request_id}:\n{}", s.node.stderr()))
}

#[test]
fn echo_resize_and_exit_code() {
    let s = with_terminal();
    let (session, _pid) = open(&s, "t-1");
    type_in(&s, &session, "echo hel''lo\n");
    read_until(&s, &session, "hello");
    let resized = s.request(json!({"command": "terminal_resize", "params": {"session_id": session, "cols": 100, "rows": 40}}));
    assert_eq!(resized["status"], "ok", "{resized}");
    type_in(&s, &session, "stty size\n");
    read_until(&s, &session, "40 100");
    type_in(&s, &session, "exit 3\n");
    let event = closed(&s, "t-1", Duration::from_secs(5));
    assert_eq!(event["output"]["exit_code"], 3);
    assert_eq!(event["output"]["session_id"], session.as_str());
}

#[test]
fn disabled_terminal_refuses_every_command() {
    let s = Scenario::start(|n| n);
    for command in ["terminal_open", "terminal_resize", "terminal_close"] {
        let r = s.request(
            json!({"command": command, "params": {"cols": 80, "rows": 24, "session_id": "x"}}),
        );
        assert_eq!(
            r["error"], "terminal access is disabled on this node",
            "{r}"
        );
    }
}

#[test]
fn bad_input_is_refused_and_the_node_keeps_serving() {
    let s = with_terminal();
    for (params, expected) in [
        (
            json!({"cols": 0, "rows": 24}),
            "params.cols must be a whole number from 1 to 1000",
        ),
        (
            json!({"cols": 80, "rows": 1001}),
            "params.rows must be a whole number from 1 to 1000",
        ),
        (json!({"rows": 24}), "params.cols is required"),
    ] {
        let r = s.request(json!({"command": "terminal_open", "params": params}));
        assert!(r["error"].as_str().unwrap().contains(expected), "{r}");
    }
    let r = s.request(json!({"command": "terminal_resize", "params": {"session_id": "nope", "cols": 10, "rows": 10}}));
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("no open terminal session nope"),
        "{r}"
    );
    let r = s.request(json!({"command": "terminal_close", "params": {"session_id": "nope"}}));
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("no open terminal session"),
        "{r}"
    );
    s.client.publish(
        &s.topic(&s.uuid, "terminal/unknown/in"),
        vec![0xff, 0x00, 0xfe, 0x1b],
    );
    let (a, _) = open(&s, "m-1");
    let (b, _) = open(&s, "m-2");
    let third = s.request(json!({"command": "terminal_open", "params": {"cols": 80, "rows": 24}}));
    assert!(
        third["error"].as_str().unwrap().contains("max_sessions"),
        "{third}"
    );
    type_in(&s, &a, "\u{0}\u{1b}[999;999H garbage \u{7f}\n");
    assert_eq!(s.status()["status"], "ok");
    let r = s.request(json!({"command": "terminal_close", "params": {"session_id": b}}));
    assert_eq!(r["status"], "ok", "{r}");
    closed(&s, "m-2", Duration::from_secs(5));
    assert!(s.node.stderr().contains("unknown terminal session"));
}

#[test]
fn idle_sessions_are_ended() {
    let s = with_terminal();
    let (_session, _) = open(&s, "idle");
    let began = Instant::now();
    closed(&s, "idle", Duration::from_secs(8));
    assert!(
        began.elapsed() >= Duration::from_secs(2),
        "closed before the idle timeout"
    );
}

#[test]
fn stopping_the_node_ends_sessions() {
    let s = with_terminal();
    let (_session, pid) = open(&s, "stop");
    s.node.signal(Signal::SIGTERM);
    assert!(s.node.wait_exit(Duration::from_secs(5)).unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(3);
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok() {
        assert!(Instant::now() < deadline, "the shell outlived the node");
        std::thread::sleep(Duration::from_millis(50));
    }
}
