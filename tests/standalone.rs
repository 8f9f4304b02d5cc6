//! Standalone mode and the `send` client end to end, with no external
//! broker: the node embeds one, `send` plays the backend.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::broker::free_port;
use common::{Broker, Node, NodeProcess, TestClient};
use serde_json::Value;

fn demo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo/cyberwave.yml")
}

/// A standalone node on its own port, serving the demo repository.
fn standalone(port: u16) -> NodeProcess {
    let node = Node::new()
        .args([
            "start",
            "--standalone",
            "--mqtt-port",
            &port.to_string(),
            "--slug",
            "lab",
        ])
        .arg("--config")
        .arg(demo_config().to_str().unwrap())
        .spawn();
    assert!(
        node.wait_for_log("try it from another terminal", Duration::from_secs(15)),
        "standalone node not ready:\n{}",
        node.stderr()
    );
    node
}

/// Runs `cyberwave-cloud-node send ...` as the same user (HOME) as `node`.
fn send(home: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::node::NODE_BIN)
        .arg("send")
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn status_and_a_training_job_with_no_account() {
    let port = free_port();
    let node = standalone(port);
    let p = port.to_string();
    assert!(
        node.stderr().contains(&format!("--mqtt-port {port}")),
        "the hint names the port"
    );
    let identity: Value = serde_json::from_str(
        &std::fs::read_to_string(node.config_dir().join("instance_identity.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(identity["standalone"], true);
    assert_eq!(identity["slug"], "lab");

    let (code, out, err) = send(node.home(), &["status", "--json", "--mqtt-port", &p]);
    assert_eq!(code, 0, "{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    let status = &answer["output"];
    assert_eq!(status["slug"], "lab");
    assert_eq!(status["has_training"], true);

    let params = r#"{"epochs": 2, "seconds_per_epoch": 0.05}"#;
    let (code, out, err) = send(
        node.home(),
        &[
            "training",
            "--params",
            params,
            "--wait",
            "done",
            "--follow-logs",
            "--mqtt-port",
            &p,
        ],
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("epoch 1/2") && out.contains("epoch 2/2") && out.contains("training done"),
        "{out}"
    );
    assert!(
        out.contains("\"final_loss\""),
        "the result is printed: {out}"
    );
    assert!(
        err.contains("started training") && err.contains("completed after"),
        "{err}"
    );
    assert!(
        err.contains("progress:"),
        "progress lines when not on a terminal: {err}"
    );
}

#[test]
fn a_failing_job_passes_its_exit_code_through() {
    let port = free_port();
    let node = standalone(port);
    let (code, _out, err) = send(
        node.home(),
        &[
            "training",
            "--params",
            r#"{"fail": true}"#,
            "--wait",
            "done",
            "--mqtt-port",
            &port.to_string(),
        ],
    );
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("failed after") && err.contains("exit code 3"),
        "{err}"
    );
}

#[test]
fn json_mode_prints_every_message_as_a_line() {
    let port = free_port();
    let node = standalone(port);
    let (code, out, err) = send(
        node.home(),
        &[
            "inference",
            "--params",
            r#"{"input": "abc"}"#,
            "--wait",
            "done",
            "--json",
            "--request-id",
            "j-1",
            "--mqtt-port",
            &port.to_string(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["event"], "started");
    let last = events.last().unwrap();
    assert_eq!(last["event"], "completed");
    assert_eq!(last["request_id"], "j-1");
    assert_eq!(last["output"]["result"]["output"], "cba");
}

#[test]
fn an_error_response_exits_1() {
    let port = free_port();
    let node = standalone(port);
    let (code, _out, err) = send(node.home(), &["simulate", "--mqtt-port", &port.to_string()]);
    assert_eq!(code, 1);
    assert!(err.contains("no simulate command is configured"), "{err}");
}

#[test]
fn a_node_that_does_not_answer_times_out_naming_topic_and_broker() {
    let broker = Broker::start();
    let home = tempfile::tempdir().unwrap();
    let p = broker.port().to_string();
    let began = std::time::Instant::now();
    let (code, _out, err) = send(
        home.path(),
        &[
            "status",
            "--node",
            "ghost",
            "--mqtt-host",
            "127.0.0.1",
            "--mqtt-port",
            &p,
            "--timeout",
            "1",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(began.elapsed() < Duration::from_secs(5));
    assert!(err.contains("cyberwave/cloud-node/ghost/command"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{p}")), "{err}");
}

#[test]
fn a_refused_connection_fails_at_once_naming_the_broker() {
    let dead = free_port();
    let home = tempfile::tempdir().unwrap();
    let began = std::time::Instant::now();
    let (code, _out, err) = send(
        home.path(),
        &[
            "status",
            "--node",
            "x",
            "--mqtt-host",
            "127.0.0.1",
            "--mqtt-port",
            &dead.to_string(),
            "--timeout",
            "5",
        ],
    );
    let took = began.elapsed();
    eprintln!("a refused connection failed after {took:?}");
    assert_eq!(code, 2, "{err}");
    assert!(took < Duration::from_secs(3), "{took:?}: {err}");
    assert!(
        err.contains(&format!(
            "cannot connect to the MQTT broker at 127.0.0.1:{dead}"
        )) && err.contains("refused")
            && err.contains("--mqtt-port"),
        "{err}"
    );
}

#[test]
fn invalid_params_are_refused_before_anything_is_sent() {
    let broker = Broker::start();
    let watcher = TestClient::connect(broker.port());
    watcher.subscribe("cyberwave/cloud-node/+/command");
    let home = tempfile::tempdir().unwrap();
    let p = broker.port().to_string();
    let (code, _out, err) = send(
        home.path(),
        &[
            "training",
            "--node",
            "n1",
            "--params",
            "{\"epochs\": 3,\n \"lr\": }",
            "--mqtt-host",
            "127.0.0.1",
            "--mqtt-port",
            &p,
        ],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("invalid --params") && err.contains("line 2 column"),
        "{err}"
    );
    assert!(
        watcher.recv(Duration::from_millis(500)).is_none(),
        "nothing may be published"
    );
    let (code, _out, err) = send(
        home.path(),
        &[
            "status",
            "--node",
            "n1",
            "--params",
            "[1]",
            "--mqtt-port",
            &p,
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("must be a JSON object"), "{err}");
}

#[test]
fn a_second_node_on_the_same_config_dir_is_refused_naming_the_first() {
    let port = free_port();
    let first = standalone(port);
    let second = Node::new()
        .args([
            "start",
            "--standalone",
            "--mqtt-port",
            &free_port().to_string(),
        ])
        .env_var("HOME", first.home().to_str().unwrap())
        .run_to_exit(Duration::from_secs(10));
    assert_eq!(second.0.code(), Some(1), "{}", second.2);
    assert!(
        second.2.contains(&format!("pid {}", first.pid())),
        "{}",
        second.2
    );
    assert!(second.2.contains("CYBERWAVE_CONFIG_DIR"), "{}", second.2);
}

#[test]
fn a_taken_port_is_refused_with_a_suggestion() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (status, _out, err) = Node::new()
        .args(["start", "--standalone", "--mqtt-port", &port])
        .run_to_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("port {port} on 127.0.0.1 is taken")) && err.contains("--mqtt-port"),
        "{err}"
    );
}

#[test]
fn with_mqtt_host_it_uses_that_broker() {
    let broker = Broker::start();
    let p = broker.port().to_string();
    let node = Node::new()
        .args([
            "start",
            "--standalone",
            "--mqtt-host",
            "127.0.0.1",
            "--mqtt-port",
            &p,
        ])
        .spawn();
    assert!(
        node.wait_for_log("try it from another terminal", Duration::from_secs(10)),
        "{}",
        node.stderr()
    );
    assert!(!node.stderr().contains("embedded MQTT broker"));
    let (code, out, err) = send(
        node.home(),
        &["status", "--mqtt-host", "127.0.0.1", "--mqtt-port", &p],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("accepting commands"), "{out}");
}
