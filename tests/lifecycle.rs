//! Registration, identity, install script, token rejection, backend outages,
//! heartbeats and their failure policy, against the fake backend.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::scenario::{read_identity, Scenario, READY, TOKEN};
use common::{standard_env, Broker, FakeBackend, Node};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const KNOWN_UUID: &str = "5b8a1c9e-3f2d-4e6a-9b7c-0d1e2f3a4b5c";

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_start_creates_then_restart_registers_the_saved_identity() {
    let s = Scenario::start(|n| n.arg("--slug").arg("gpu1").arg("--profile").arg("gpu-a100"));
    let create = s
        .backend
        .wait_for_request("POST", "/api/v1/cloud-node", Duration::ZERO)
        .unwrap();
    assert_eq!(
        create.body,
        json!({"profile_slug": "gpu-a100", "slug": "gpu1"})
    );
    assert_eq!(create.headers["authorization"], format!("Token {TOKEN}"));
    let register = s
        .backend
        .wait_for_request("POST", &format!("/{}/register", s.uuid), Duration::ZERO)
        .unwrap();
    assert_eq!(register.body["profile_slug"], "gpu-a100");
    // An addition the backend may ignore: what the machine has.
    assert!(register.body["hardware"]["logical_cores"].as_u64().unwrap() >= 1);
    assert!(register.body["hardware"]["gpus"].is_array());
    assert_eq!(s.slug, "gpu1");
    let config_dir = s.node.config_dir().to_owned();
    assert_eq!(mode(&config_dir), 0o700);
    assert_eq!(mode(&config_dir.join("instance_identity.json")), 0o600);
    let identity = read_identity(&s.node);
    assert!(identity["registered_at"]
        .as_str()
        .unwrap()
        .starts_with("20"));
    // The contract's four keys, always: no workspace slug is known here.
    let mut keys: Vec<&String> = identity.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["registered_at", "slug", "uuid", "workspace_slug"],
        "{identity}"
    );
    assert_eq!(identity["workspace_slug"], Value::Null);

    // Restart with the same HOME: same instance, no second create.
    s.node.signal(Signal::SIGTERM);
    assert!(s.node.wait_exit(Duration::from_secs(5)).unwrap().success());
    let restarted = Node::new()
        .arg("start")
        .envs(standard_env(s.broker.port(), &s.backend.url(), TOKEN))
        .env_var("HOME", s.node.home().to_str().unwrap())
        .spawn();
    assert!(
        restarted.wait_for_log(READY, Duration::from_secs(10)),
        "{}",
        restarted.stderr()
    );
    assert_eq!(
        s.backend.created_count(),
        1,
        "a restart must not create a new instance"
    );
    assert_eq!(
        s.backend
            .requests_matching("POST", &format!("/{}/register", s.uuid))
            .len(),
        2
    );
}

#[test]
fn backend_assigned_slug_wins_over_the_hint() {
    let broker = Broker::start();
    let backend = FakeBackend::start();
    backend.set_slug_override(Some("assigned-7"));
    let s = Scenario::start_with(broker, backend, |n| n.arg("--slug").arg("wanted"));
    assert_eq!(s.slug, "assigned-7");
    assert_eq!(
        s.request_on("assigned-7", json!({"command": "status"}))["status"],
        "ok"
    );
}

#[test]
fn unknown_saved_uuid_is_created_anew() {
    let identity =
        json!({"uuid": KNOWN_UUID, "slug": "old", "registered_at": "2026-01-01T00:00:00Z"});
    let s = Scenario::start(|n| {
        n.home_file(".cyberwave/instance_identity.json", &identity.to_string())
    });
    let first =
        s.backend
            .wait_for_request("POST", &format!("/{KNOWN_UUID}/register"), Duration::ZERO);
    assert!(first.is_some(), "the saved uuid is tried first");
    assert_eq!(s.backend.created_count(), 1);
    assert_ne!(s.uuid, KNOWN_UUID);
    assert_eq!(read_identity(&s.node)["uuid"], s.uuid.as_str());
}

#[test]
fn instance_uuid_from_environment_is_registered() {
    let broker = Broker::start();
    let backend = FakeBackend::start();
    backend.add_instance(KNOWN_UUID, "env-node");
    let s = Scenario::start_with(broker, backend, |n| {
        n.env_var("CYBERWAVE_CLOUD_NODE_INSTANCE_UUID", KNOWN_UUID)
    });
    assert_eq!(s.uuid, KNOWN_UUID);
    assert_eq!(s.slug, "env-node");
    assert_eq!(s.backend.created_count(), 0);
}

#[test]
fn corrupt_identity_is_reported_and_replaced() {
    let s = Scenario::start(|n| n.home_file(".cyberwave/instance_identity.json", "{\"uuid\": tru"));
    assert!(
        s.node
            .stderr()
            .contains("instance_identity.json is corrupt"),
        "{}",
        s.node.stderr()
    );
    assert_eq!(s.backend.created_count(), 1);
    assert_eq!(read_identity(&s.node)["uuid"], s.uuid.as_str());
}

#[test]
fn rejected_token_exits_1_within_two_seconds_naming_the_source() {
    let backend = FakeBackend::start_with_tokens(&["the-good-token"]);
    let started = Instant::now();
    let (status, _out, err) = Node::new()
        .arg("start")
        .envs(standard_env(1, &backend.url(), "a-revoked-token"))
        .run_to_exit(Duration::from_secs(5));
    let elapsed = started.elapsed();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert!(err.contains("API token rejected by"), "{err}");
    assert!(err.contains("HTTP 401"), "{err}");
    assert!(
        err.contains("environment variable CYBERWAVE_API_TOKEN"),
        "{err}"
    );
    assert!(
        !err.contains("a-revoked-token"),
        "the token must never be logged"
    );
    assert_eq!(backend.created_count(), 0);
}

#[test]
fn backend_down_at_start_is_retried_until_it_comes_up() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let broker = Broker::start();
    let node = Node::new()
        .arg("start")
        .envs(standard_env(
            broker.port(),
            &format!("http://127.0.0.1:{port}"),
            TOKEN,
        ))
        .env_var("CYBERWAVE_RETRY_BASE_MS", "100")
        .spawn();
    assert!(
        node.wait_for_log("retrying in", Duration::from_secs(5)),
        "{}",
        node.stderr()
    );
    assert!(
        node.wait_for_log("attempt 3", Duration::from_secs(5)),
        "{}",
        node.stderr()
    );
    let log = node.stderr();
    assert!(log.contains("could not validate the API token"), "{log}");
    assert!(node.try_status().is_none(), "the node must wait, not exit");
    let backend = FakeBackend::start_on(port);
    assert!(
        node.wait_for_log(READY, Duration::from_secs(15)),
        "{}",
        node.stderr()
    );
    assert_eq!(backend.created_count(), 1);
}

#[test]
fn heartbeats_follow_the_interval() {
    let s = Scenario::start(|n| n);
    let path = format!("/{}/heartbeat", s.uuid);
    assert!(s
        .backend
        .wait_for_count("POST", &path, 3, Duration::from_secs(5)));
    let beats = s.backend.requests_matching("POST", &path);
    assert_eq!(beats[0].headers["authorization"], format!("Token {TOKEN}"));
    assert_eq!(beats[0].body["is_busy"], false);
}

#[test]
fn rejected_heartbeats_stop_the_node_after_five_tries() {
    let s = Scenario::start(|n| n);
    let path = format!("/{}/heartbeat", s.uuid);
    assert!(s
        .backend
        .wait_for_count("POST", &path, 1, Duration::from_secs(3)));
    let before = s.backend.requests_matching("POST", &path).len();
    s.backend.set_reject_all(true);
    let status = s
        .node
        .wait_exit(Duration::from_secs(15))
        .expect("the node must stop");
    assert_eq!(status.code(), Some(1));
    let after = s.backend.requests_matching("POST", &path).len();
    assert!(
        after - before >= 5,
        "{} rejected heartbeats before stopping",
        after - before
    );
    let failed = s
        .backend
        .wait_for_request("POST", "/api/v1/cloud-node/failed", Duration::ZERO);
    let failed = failed.expect("the failed endpoint is called");
    assert_eq!(failed.body["instance_uuid"], s.uuid.as_str());
    assert!(failed.body["error"].as_str().unwrap().contains("rejected"));
    assert!(s.node.stderr().contains("heartbeat rejected (1/5)"));
}

#[test]
fn reaped_instance_reregisters_and_moves_subscriptions() {
    let s = Scenario::start(|n| n);
    s.backend.forget_instance(&s.uuid);
    assert!(
        s.node
            .wait_for_log("moving the MQTT subscriptions", Duration::from_secs(5)),
        "{}",
        s.node.stderr()
    );
    let identity = read_identity(&s.node);
    let new_uuid = identity["uuid"].as_str().unwrap().to_owned();
    assert_ne!(new_uuid, s.uuid);
    // The first `ready` line (old uuid) is already in the log: wait for the
    // one naming the new uuid, logged once the broker acknowledged the new
    // subscription. A command published before that would be lost.
    let ready_again = format!("ready: listening on cyberwave/cloud-node/{new_uuid}/command");
    assert!(
        s.node.wait_for_log(&ready_again, Duration::from_secs(5)),
        "{}",
        s.node.stderr()
    );
    assert_eq!(s.backend.created_count(), 2);
    let response_topic = format!("cyberwave/cloud-node/{new_uuid}/response");
    s.client.subscribe(&response_topic);
    let response = s
        .client
        .request(
            &format!("cyberwave/cloud-node/{new_uuid}/command"),
            &response_topic,
            &json!({"command": "status"}),
        )
        .expect("the new uuid answers");
    assert_eq!(response["instance_uuid"], new_uuid.as_str());
}

#[test]
fn install_script_runs_after_registration_and_before_the_broker() {
    let s = Scenario::start(|n| {
        n.cwd_file(
            "install.sh",
            "echo preparing; echo step two >&2; touch installed.marker\n",
        )
        .cwd_file(
            "cyberwave.yml",
            "cyberwave-cloud-node:\n  install: sh ./install.sh\n",
        )
    });
    assert!(s.node.workdir().join("installed.marker").exists());
    let log = s.node.stderr();
    assert!(
        log.contains("preparing") && log.contains("step two"),
        "{log}"
    );
    let registered_at = log.find("registered with").unwrap();
    let install_at = log.find("install script finished").unwrap();
    let ready_at = log.find("ready: listening").unwrap();
    assert!(
        registered_at < install_at && install_at < ready_at,
        "registration, then the install script, then the broker: {log}"
    );
}

#[test]
fn failing_install_script_exits_1_and_reports_with_the_known_identity() {
    let backend = FakeBackend::start();
    backend.add_instance(KNOWN_UUID, "known");
    let script = "for i in 1 2 3 4 5; do echo line-$i; done; echo fatal-oops >&2; exit 7";
    let (status, _out, err) = Node::new()
        .arg("start")
        .envs(standard_env(1, &backend.url(), TOKEN))
        .env_var("CYBERWAVE_INSTALL_SCRIPT", script)
        .env_var("CYBERWAVE_CLOUD_NODE_INSTANCE_UUID", KNOWN_UUID)
        .run_to_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("exit code 7"), "{err}");
    assert!(
        err.contains("line-5") && err.contains("fatal-oops"),
        "{err}"
    );
    let failed = backend
        .wait_for_request("POST", "/api/v1/cloud-node/failed", Duration::from_secs(1))
        .expect("failed endpoint");
    assert_eq!(failed.body["instance_uuid"], KNOWN_UUID);
    assert!(failed.body["error"]
        .as_str()
        .unwrap()
        .contains("exit code 7"));
    assert_eq!(backend.created_count(), 0, "the known instance is reused");
}

/// The seed promises "notifying you if it fails": on a first start there is
/// no uuid yet, so the node registers first and reports under the new one.
#[test]
fn failing_install_script_on_a_first_start_is_reported_under_the_new_uuid() {
    let backend = FakeBackend::start();
    let node = Node::new()
        .arg("start")
        .envs(standard_env(1, &backend.url(), TOKEN))
        .env_var("CYBERWAVE_INSTALL_SCRIPT", "exit 3")
        .spawn();
    let status = node
        .wait_exit(Duration::from_secs(10))
        .expect("the node exits");
    let err = node.stderr();
    assert_eq!(status.code(), Some(1));
    assert!(
        err.contains("exit code 3") && err.contains("(no output)"),
        "{err}"
    );
    assert_eq!(backend.created_count(), 1, "{err}");
    let failed = backend
        .wait_for_request("POST", "/api/v1/cloud-node/failed", Duration::from_secs(1))
        .expect("the failed install is reported");
    let saved: serde_json::Value = serde_json::from_slice(
        &std::fs::read(node.config_dir().join("instance_identity.json")).expect("identity saved"),
    )
    .unwrap();
    assert_eq!(failed.body["instance_uuid"], saved["uuid"], "{saved}");
    assert!(
        failed.body["error"]
            .as_str()
            .unwrap()
            .contains("exit code 3"),
        "{}",
        failed.body
    );
}
