//! The node as a service: JSON log lines for collectors, plain lines under
//! the journal, and sd_notify readiness for a `Type=notify` unit.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::free_port;
use common::{Node, NodeProcess, TestClient};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const READY_LOG: &str = "ready: listening on";

fn ready(node: &NodeProcess) {
    assert!(
        node.wait_for_log(READY_LOG, Duration::from_secs(15)),
        "the node did not get ready:\n{}",
        node.stderr()
    );
}

fn stop(node: &NodeProcess) {
    node.signal(Signal::SIGTERM);
    assert!(
        node.wait_exit(Duration::from_secs(10)).is_some(),
        "the node did not stop:\n{}",
        node.stderr()
    );
}

#[test]
fn json_logs_are_one_json_object_a_line() {
    let port = free_port().to_string();
    let node = Node::new()
        .args(["--log-format", "json", "start", "--standalone"])
        .args(["--mqtt-port", &port])
        .spawn();
    ready(&node);
    stop(&node);
    let stderr = node.stderr();
    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{stderr}"))
        })
        .collect();
    assert!(lines.len() >= 3, "{stderr}");
    for line in &lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["level"].is_string(), "{line}");
        assert!(line["message"].is_string(), "{line}");
    }
    let ready = lines
        .iter()
        .find(|l| l["message"].as_str().unwrap().starts_with(READY_LOG))
        .expect("the ready line");
    assert_eq!(ready["level"], "INFO");
    assert!(
        ready["uuid"].is_string(),
        "fields are keys of their own: {ready}"
    );
    assert!(lines.iter().any(|l| l["message"] == "stopped"), "{stderr}");

    // The flag is checked by clap; a bad value in the environment (a typo
    // in a service's env file) falls back to text with a warning.
    let (status, _, err) = Node::new()
        .args(["--log-format", "xml", "status"])
        .run_to_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("xml") && err.contains("json"), "{err}");
    let (status, _, err) = Node::new()
        .env_var("CYBERWAVE_LOG_FORMAT", "xml")
        .args(["status"])
        .run_to_exit(Duration::from_secs(10));
    assert!(status.success(), "{err}");
    assert!(
        err.contains("CYBERWAVE_LOG_FORMAT=\"xml\" is neither text nor json; logging text"),
        "{err}"
    );
}

/// Starts a standalone node with stderr going to a file of our own, so the
/// test knows the stream's device and inode as systemd would.
fn node_with_journal_stream(journal_stream: impl Fn(&std::fs::Metadata) -> String) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let file = std::fs::File::create(&log).unwrap();
    let stream = journal_stream(&file.metadata().unwrap());
    let mut child = Command::new(common::node::NODE_BIN)
        .args([
            "start",
            "--standalone",
            "--mqtt-port",
            &free_port().to_string(),
        ])
        .current_dir(dir.path())
        .env_clear()
        .env("HOME", dir.path())
        .env("PATH", "/usr/bin:/bin")
        .env("JOURNAL_STREAM", stream)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&log).unwrap().contains(READY_LOG) {
        assert!(Instant::now() < deadline, "not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn under_the_journal_lines_have_no_timestamps() {
    let journal = node_with_journal_stream(|m| format!("{}:{}", m.dev(), m.ino()));
    assert!(journal.contains(READY_LOG), "{journal}");
    for line in journal.lines() {
        // The syslog priority first (the journal strips it), then the level.
        let (priority, level) = line.split_once('>').unwrap_or(("", line));
        let expected = match level.split_whitespace().next().unwrap_or("") {
            "ERROR" => "<3",
            "WARN" => "<4",
            "INFO" => "<6",
            "DEBUG" | "TRACE" => "<7",
            _ => panic!("a journal line starts with its level, not a time: {line:?}"),
        };
        assert_eq!(priority, expected, "{line:?}");
        assert!(!line.contains('\x1b'), "no colours: {line:?}");
    }
    assert!(
        journal.contains("<6> INFO ready: listening on"),
        "{journal}"
    );

    // JOURNAL_STREAM names another stream (stderr was redirected): times stay.
    let redirected = node_with_journal_stream(|m| format!("{}:{}", m.dev(), m.ino() + 1));
    let first = redirected.lines().next().unwrap();
    assert!(
        first.starts_with("20") && first.contains('T'),
        "a timestamp first: {first:?}"
    );
}

#[test]
fn sd_notify_ready_once_subscribed_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&socket).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let port = free_port();
    let node = Node::new()
        .env_var("NOTIFY_SOCKET", socket.to_str().unwrap())
        .env_var("CYBERWAVE_LOG_FORMAT", "json")
        .env_var(
            "CYBERWAVE_TRAINING_CMD",
            format!(
                "echo \"${{NOTIFY_SOCKET-unset}}\" > {0}.tmp && mv {0}.tmp {0}",
                dir.path().join("seen").display()
            ),
        )
        .args(["start", "--standalone", "--slug", "svc"])
        .args(["--mqtt-port", &port.to_string()])
        .spawn();

    let mut buf = [0u8; 512];
    let n = listener.recv(&mut buf).expect("READY=1 within 15 s");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        node.stderr().contains(READY_LOG),
        "READY=1 came before the node was subscribed:\n{}",
        node.stderr()
    );
    // Ready means a command is answered now.
    let client = TestClient::connect(port);
    client.subscribe("cyberwave/cloud-node/+/response");
    let answer = client
        .request(
            "cyberwave/cloud-node/svc/command",
            "cyberwave/cloud-node/+/response",
            &json!({"command": "status"}),
        )
        .expect("a status answer");
    assert_eq!(answer["status"], "ok", "{answer}");
    // systemd's socket is the node's: a workload does not inherit it.
    let started = client
        .request(
            "cyberwave/cloud-node/svc/command",
            "cyberwave/cloud-node/+/response",
            &json!({"command": "training", "request_id": "no-notify"}),
        )
        .expect("a training answer");
    assert_eq!(started["event"], "started", "{started}");
    let seen = dir.path().join("seen");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !seen.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = std::fs::read_to_string(&seen).unwrap_or_default();
    assert_eq!(seen.trim(), "unset", "the workload saw NOTIFY_SOCKET");

    node.signal(Signal::SIGTERM);
    let n = listener.recv(&mut buf).expect("STOPPING=1 on SIGTERM");
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(node.wait_exit(Duration::from_secs(10)).is_some());
}
