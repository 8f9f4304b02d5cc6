//! `cyberwave-cloud-node doctor` as an operator runs it: a broken config,
//! a missing ONNX Runtime, an unreachable broker, a healthy standalone
//! setup (idle and running), and `--json` for programs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::broker::free_port;
use common::{Broker, FakeBackend, Node};
use serde_json::Value;

/// A repository whose templates' programs exist: `sh` from PATH and a
/// script of its own.
const HEALTHY_YML: &str =
    "cyberwave-cloud-node:\n  training: sh ./train.sh {body}\n  inference: ./infer.sh\n";

fn healthy(node: Node) -> Node {
    let node = node
        .cwd_file("cyberwave.yml", HEALTHY_YML)
        .cwd_file("train.sh", "echo training\n")
        .cwd_file("infer.sh", "#!/bin/sh\necho inference\n");
    let script = node.workdir().join("infer.sh");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    node
}

/// The line of `check` in the human report (mark, name, detail).
fn line<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| {
            l.split_once(' ')
                .is_some_and(|(_, rest)| rest.starts_with(&format!("{check} ")))
        })
        .unwrap_or_else(|| panic!("no {check} line in:\n{out}"))
}

/// The fix printed under the first failed line of `check`.
fn fix_of<'a>(out: &'a str, check: &str) -> &'a str {
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with(&format!("✗ {check} ")))
        .unwrap_or_else(|| panic!("no failed {check} line in:\n{out}"));
    lines
        .get(at + 1)
        .filter(|l| l.trim_start().starts_with("fix: "))
        .unwrap_or_else(|| panic!("no fix under {check} in:\n{out}"))
}

#[test]
fn a_broken_config_reports_every_problem_and_fails() {
    let (status, out, err) = Node::new()
        .args(["doctor", "--standalone"])
        .cwd_file(
            "cyberwave.yml",
            "cyberwave-cloud-node:\n  trainig: python x.py\n  inference: {epochs: 3}\n  mqtt_port: abc\n",
        )
        .cwd_file(".env", "GOOD=1\nthis is not an assignment\n")
        .env_var("CYBERWAVE_HEARTBEAT_INTERVAL", "0")
        .run_to_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{out}\n{err}");
    let failed: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("✗ settings"))
        .collect();
    assert_eq!(failed.len(), 4, "every problem, each on its line:\n{out}");
    for needle in [
        ".env line 2:",
        "cyberwave.yml line 3: `inference` must be a string (a command template), found a mapping",
        "cyberwave.yml line 4 (mqtt_port)",
        "CYBERWAVE_HEARTBEAT_INTERVAL",
    ] {
        assert!(
            failed.iter().any(|l| l.contains(needle)),
            "{needle:?} missing:\n{out}"
        );
    }
    assert!(
        out.contains("line 2: unknown key `trainig` is ignored; did you mean `training`?"),
        "{out}"
    );
    assert!(fix_of(&out, "settings").contains("KEY=VALUE"), "{out}");
    // What does not need the settings is still checked.
    assert!(line(&out, "onnx").starts_with(['✓', '✗']), "{out}");
}

#[test]
fn a_missing_onnx_runtime_fails_with_how_to_install_it() {
    let nowhere = tempfile::tempdir().unwrap();
    let library = nowhere.path().join("libonnxruntime.so");
    let (status, out, _) = healthy(Node::new())
        .args([
            "doctor",
            "--standalone",
            "--mqtt-port",
            &free_port().to_string(),
        ])
        .env_var("ORT_DYLIB_PATH", library.to_str().unwrap())
        .run_to_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        line(&out, "onnx").contains("is not an ONNX Runtime library"),
        "{out}"
    );
    assert!(
        fix_of(&out, "onnx").contains("pip install onnxruntime=="),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with('✗')).count(),
        1,
        "only the runtime fails:\n{out}"
    );
}

#[test]
fn an_unreachable_broker_fails_at_once_with_a_fix() {
    let backend = FakeBackend::start();
    let port = free_port();
    let started = Instant::now();
    let (status, out, _) = healthy(Node::new())
        .arg("doctor")
        .env_var("CYBERWAVE_API_TOKEN", "tok")
        .env_var("CYBERWAVE_API_URL", backend.url())
        .env_var("CYBERWAVE_MQTT_HOST", "127.0.0.1")
        .env_var("CYBERWAVE_MQTT_PORT", port.to_string())
        .run_to_exit(Duration::from_secs(20));
    let took = started.elapsed();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        took < Duration::from_secs(4),
        "a refused port is known at once, took {took:?}"
    );
    assert!(line(&out, "api token").starts_with('✓'), "{out}");
    assert!(line(&out, "backend").starts_with('✓'), "{out}");
    let broker = line(&out, "broker");
    assert!(
        broker.starts_with('✗')
            && broker.contains(&format!("127.0.0.1:{port}"))
            && broker.contains("refused"),
        "{out}"
    );
    assert!(
        fix_of(&out, "broker").contains("environment variable CYBERWAVE_MQTT_PORT"),
        "the fix names where the port came from:\n{out}"
    );
}

#[test]
fn a_real_broker_with_credentials_and_a_rejected_token() {
    let broker = Broker::start_with_password("node-user", "node-pass");
    let backend = FakeBackend::start_with_tokens(&["good"]);
    let run = |token: &str, password: &str| {
        healthy(Node::new())
            .arg("doctor")
            .env_var("CYBERWAVE_API_TOKEN", token)
            .env_var("CYBERWAVE_API_URL", backend.url())
            .env_var("CYBERWAVE_MQTT_HOST", "127.0.0.1")
            .env_var("CYBERWAVE_MQTT_PORT", broker.port().to_string())
            .env_var("CYBERWAVE_MQTT_USERNAME", "node-user")
            .env_var("CYBERWAVE_MQTT_PASSWORD", password)
            .run_to_exit(Duration::from_secs(20))
    };
    let (status, out, _) = run("good", "node-pass");
    assert!(line(&out, "broker").starts_with('✓'), "{out}");
    assert!(line(&out, "api token").starts_with('✓'), "{out}");
    assert_eq!(status.code(), Some(0), "{out}");
    let (status, out, _) = run("stale", "wrong");
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(line(&out, "api token").contains("rejected"), "{out}");
    assert!(
        fix_of(&out, "api token").contains("cyberwave-cli login"),
        "{out}"
    );
    assert!(
        line(&out, "broker").contains("refused the credentials"),
        "{out}"
    );
    assert!(
        fix_of(&out, "broker").contains("CYBERWAVE_MQTT_PASSWORD"),
        "{out}"
    );
}

#[test]
fn a_healthy_standalone_setup_passes_idle_and_running() {
    let port = free_port().to_string();
    let (status, out, err) = healthy(Node::new())
        .args(["doctor", "--standalone", "--mqtt-port", &port])
        .run_to_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{out}\n{err}");
    assert!(!out.contains('✗'), "{out}");
    assert!(
        line(&out, "broker").contains("is free for the embedded broker"),
        "{out}"
    );
    assert!(line(&out, "api token").starts_with('-'), "{out}");
    assert!(line(&out, "templates").contains("infer.sh"), "{out}");
    assert!(line(&out, "config dir").contains("writable"), "{out}");

    let node = healthy(Node::new())
        .args(["start", "--standalone", "--mqtt-port", &port])
        .spawn();
    assert!(
        node.wait_for_log("ready: listening", Duration::from_secs(15)),
        "{}",
        node.stderr()
    );
    let out = doctor_beside(
        node.home(),
        node.workdir(),
        &["--standalone", "--mqtt-port", &port],
    );
    assert!(
        line(&out, "broker").contains(&format!("the node (pid {}) runs", node.pid())),
        "{out}"
    );
    assert!(
        line(&out, "config dir").contains("a node runs with it"),
        "{out}"
    );
}

/// `doctor` as the user of a running node: its HOME and directory.
fn doctor_beside(home: &Path, workdir: &Path, args: &[&str]) -> String {
    let out = Command::new(common::node::NODE_BIN)
        .arg("doctor")
        .args(args)
        .current_dir(workdir)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    text
}

#[test]
fn json_is_an_array_of_checks() {
    let (status, out, _) = Node::new()
        .args([
            "doctor",
            "--standalone",
            "--json",
            "--mqtt-port",
            &free_port().to_string(),
        ])
        .run_to_exit(Duration::from_secs(20));
    let checks: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}:\n{out}"));
    let names: Vec<&str> = checks.iter().filter_map(|c| c["check"].as_str()).collect();
    for name in [
        "settings",
        "api token",
        "backend",
        "broker",
        "config dir",
        "onnx",
        "gpus",
        "templates",
        "systemd",
    ] {
        assert!(names.contains(&name), "no {name} in {names:?}");
    }
    for check in &checks {
        let status = check["status"].as_str().unwrap();
        assert!(["ok", "fail", "warn", "skip"].contains(&status), "{check}");
        assert!(check["detail"].is_string(), "{check}");
        assert!(
            check["fix"].is_null() || check["fix"].is_string(),
            "{check}"
        );
        if status == "fail" {
            assert!(check["fix"].is_string(), "a failure has its fix: {check}");
        }
    }
    // No template here: a warning, which does not fail the run.
    let templates = checks.iter().find(|c| c["check"] == "templates").unwrap();
    assert_eq!(templates["status"], "warn", "{templates}");
    let failed = checks.iter().any(|c| c["status"] == "fail");
    assert_eq!(status.code(), Some(if failed { 1 } else { 0 }), "{out}");
}

#[test]
fn a_standalone_check_on_a_registered_config_dir_fails_before_start_would() {
    let registered = r#"{"uuid":"11111111-2222-4333-8444-555555555555","slug":"real"}"#;
    let (status, out, _) = healthy(Node::new())
        .args([
            "doctor",
            "--standalone",
            "--mqtt-port",
            &free_port().to_string(),
        ])
        .home_file(".cyberwave/instance_identity.json", registered)
        .run_to_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        line(&out, "identity").contains("holds the identity of an instance registered"),
        "{out}"
    );
    assert!(
        fix_of(&out, "identity").contains("CYBERWAVE_CONFIG_DIR="),
        "{out}"
    );
}

#[test]
fn the_broker_check_uses_the_nodes_tls_settings() {
    let broker = Broker::start_tls();
    let backend = FakeBackend::start();
    let run = |ca: Option<&Path>| {
        let mut node = healthy(Node::new())
            .arg("doctor")
            .env_var("CYBERWAVE_API_TOKEN", "tok")
            .env_var("CYBERWAVE_API_URL", backend.url())
            .env_var("CYBERWAVE_MQTT_HOST", "localhost")
            .env_var("CYBERWAVE_MQTT_PORT", broker.port().to_string())
            .env_var("CYBERWAVE_MQTT_USE_TLS", "true");
        if let Some(ca) = ca {
            node = node.env_var("CYBERWAVE_MQTT_TLS_CA_CERTS", ca.to_str().unwrap());
        }
        node.run_to_exit(Duration::from_secs(20))
    };
    let (status, out, _) = run(Some(&broker.ca_file()));
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(line(&out, "broker").contains("over TLS"), "{out}");
    let (status, out, _) = run(None);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        line(&out, "broker").contains("TLS with localhost:"),
        "{out}"
    );
    assert!(
        fix_of(&out, "broker").contains("CYBERWAVE_MQTT_TLS_CA_CERTS"),
        "{out}"
    );
}
