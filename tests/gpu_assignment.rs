//! Workloads and the node's GPUs (issue 13), on this GPU-less machine with
//! `CYBERWAVE_GPUS=0,1,2,3` declaring four: each workload given GPUs holds
//! them alone and sees only them (it writes its `CUDA_VISIBLE_DEVICES` to a
//! file), `all` leaves the environment alone, a request may ask for its own
//! count, what can never be served is refused at once, what must wait for
//! GPUs waits in the queue, a restarted node keeps a running workload's GPUs
//! reserved, and `allow_cpu_fallback` runs on the CPU with a warning.
//!
//! Each workload waits for a release file the test writes, so the test
//! decides when GPUs free up.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::restart::{again, ask_status, request, stop_gracefully, terminal, wait_until, Reaper};
use common::scenario::{Scenario, READY};
use common::{Node, NodeProcess};
use serde_json::{json, Value};

/// Writes what it sees, then waits to be released.
const TEMPLATE: &str = r#"echo "${CUDA_VISIBLE_DEVICES-unset}|${NVIDIA_VISIBLE_DEVICES-unset}|${CYBERWAVE_GPUS-unset}" > "$GATES/seen-$CYBERWAVE_REQUEST_ID.tmp" && mv "$GATES/seen-$CYBERWAVE_REQUEST_ID.tmp" "$GATES/seen-$CYBERWAVE_REQUEST_ID"; i=0; until [ -e "$GATES/release-$CYBERWAVE_REQUEST_ID" ] || [ $i -ge 400 ]; do sleep 0.05; i=$((i+1)); done"#;

fn has_nvidia_driver() -> bool {
    Path::new("/dev/nvidiactl").exists()
}

macro_rules! needs_declared_gpus {
    () => {
        if has_nvidia_driver() {
            eprintln!("skipped: this machine has an NVIDIA driver, so CYBERWAVE_GPUS restricts rather than declares");
            return;
        }
    };
}

struct Gates(tempfile::TempDir);

impl Gates {
    fn new() -> Gates {
        Gates(tempfile::tempdir().unwrap())
    }
    fn dir(&self) -> &Path {
        self.0.path()
    }
    /// What the workload saw: (CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES,
    /// CYBERWAVE_GPUS), `unset` where the variable was not set.
    fn seen(&self, request_id: &str) -> (String, String, String) {
        let path: PathBuf = self.dir().join(format!("seen-{request_id}"));
        assert!(
            wait_until(Duration::from_secs(10), || path.exists()),
            "{request_id} never ran"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let mut parts = text.trim_end().split('|').map(str::to_owned);
        (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        )
    }
    fn release(&self, request_id: &str) {
        std::fs::write(self.dir().join(format!("release-{request_id}")), b"").unwrap();
    }
}

fn configure(node: Node, gates: &Gates, env: &[(&str, &str)]) -> Node {
    let mut node = node
        .env_var("CYBERWAVE_GPUS", "0,1,2,3")
        .env_var("CYBERWAVE_MAX_CONCURRENT_WORKLOADS", "8")
        .env_var("CYBERWAVE_TRAINING_CMD", TEMPLATE)
        .env_var("GATES", gates.dir().to_str().unwrap());
    for (key, value) in env {
        node = node.env_var(*key, *value);
    }
    node
}

fn start(gates: &Gates, env: &[(&str, &str)]) -> Scenario {
    Scenario::start(|n| configure(n, gates, env))
}

fn training(s: &Scenario, node: &NodeProcess, reaper: &Reaper, id: &str, params: Value) -> Value {
    let answer = request(
        s,
        node,
        json!({"command": "training", "request_id": id, "params": params}),
    );
    if let Some(pid) = answer["output"]["pid"].as_i64() {
        reaper.add(pid as i32);
    }
    answer
}

fn holders(status: &Value) -> Vec<Value> {
    status["output"]["gpus"]
        .as_array()
        .expect("gpus in status")
        .iter()
        .map(|g| g["held_by"].clone())
        .collect()
}

#[test]
fn concurrent_workloads_each_hold_their_own_gpu() {
    needs_declared_gpus!();
    let gates = Gates::new();
    let s = start(&gates, &[("CYBERWAVE_GPUS_PER_WORKLOAD", "1")]);
    let reaper = Reaper::new(&s);
    let ids = ["g-1", "g-2", "g-3", "g-4"];
    for id in ids {
        let started = training(&s, &s.node, &reaper, id, json!({}));
        assert_eq!(started["event"], "started", "{started}");
        assert_eq!(
            started["output"]["gpus"].as_array().map(Vec::len),
            Some(1),
            "{started}"
        );
    }
    let mut seen = BTreeSet::new();
    for id in ids {
        let (cuda, nvidia, cyberwave) = gates.seen(id);
        assert_eq!((&nvidia, &cyberwave), (&cuda, &cuda), "{id}");
        assert!(seen.insert(cuda.clone()), "GPU {cuda} given twice");
    }
    assert_eq!(seen, BTreeSet::from(["0", "1", "2", "3"].map(String::from)));
    let status = ask_status(&s, &s.node);
    for holder in holders(&status) {
        assert!(holder["workload"].is_string(), "{status}");
    }
    // A fifth finds none free: refused (no queue here), naming who holds them.
    let refused = training(&s, &s.node, &reaper, "g-5", json!({}));
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("0 of 4 GPUs are free") && error.contains("workload g-1"),
        "{refused}"
    );

    gates.release("g-2");
    let done = terminal(&s.client, &s.node, "g-2", Duration::from_secs(10));
    assert_eq!(done["event"], "completed", "{done}");
    let resources = &done["output"]["resources"];
    assert_eq!(
        resources["gpus"].as_array().map(Vec::len),
        Some(1),
        "{done}"
    );
    assert!(resources["gpu_seconds"].as_f64().unwrap() > 0.0, "{done}");
    let again = training(&s, &s.node, &reaper, "g-6", json!({}));
    assert_eq!(
        again["event"], "started",
        "the freed GPU is given again: {again}"
    );
    assert_eq!(gates.seen("g-6").0, gates.seen("g-2").0);
    for id in ["g-1", "g-3", "g-4", "g-6"] {
        gates.release(id);
    }
}

#[test]
fn all_mode_leaves_the_environment_and_a_request_may_ask_its_own_count() {
    needs_declared_gpus!();
    let gates = Gates::new();
    let s = start(&gates, &[]);
    let reaper = Reaper::new(&s);
    let all = training(&s, &s.node, &reaper, "all-1", json!({}));
    assert_eq!(all["output"].get("gpus"), None, "{all}");
    assert_eq!(gates.seen("all-1").0, "unset");
    let two = training(&s, &s.node, &reaper, "two", json!({"gpus": 2}));
    assert_eq!(two["output"]["gpus"], json!(["0", "1"]), "{two}");
    assert_eq!(gates.seen("two").0, "0,1");
    let none = training(&s, &s.node, &reaper, "none", json!({"gpus": 0}));
    assert_eq!(none["output"]["gpus"], json!([]), "{none}");
    let (cuda, nvidia, _) = gates.seen("none");
    assert_eq!((cuda.as_str(), nvidia.as_str()), ("", "none"));
    let bad = training(&s, &s.node, &reaper, "bad", json!({"gpus": -1}));
    assert!(
        bad["error"]
            .as_str()
            .unwrap_or_default()
            .contains("params.gpus must be"),
        "{bad}"
    );
    for id in ["all-1", "two", "none"] {
        gates.release(id);
    }
}

#[test]
fn more_gpus_than_the_node_has_is_refused_unless_the_cpu_is_allowed() {
    needs_declared_gpus!();
    let gates = Gates::new();
    let s = start(&gates, &[("CYBERWAVE_MAX_QUEUED_WORKLOADS", "4")]);
    let reaper = Reaper::new(&s);
    let refused = training(&s, &s.node, &reaper, "five", json!({"gpus": 5}));
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("asks for 5 GPUs, but this node has 4")
            && error.contains("allow_cpu_fallback"),
        "refused at once, not queued: {refused}"
    );
    let cpu = training(
        &s,
        &s.node,
        &reaper,
        "five-cpu",
        json!({"gpus": 5, "allow_cpu_fallback": true}),
    );
    assert_eq!(cpu["event"], "started", "{cpu}");
    let warnings = cpu["output"]["warnings"].to_string();
    assert!(warnings.contains("running on the CPU"), "{cpu}");
    assert_eq!(gates.seen("five-cpu").0, "");
    gates.release("five-cpu");
}

#[test]
fn a_workload_waits_in_the_queue_for_gpus_and_gets_the_freed_ones() {
    needs_declared_gpus!();
    let gates = Gates::new();
    let s = start(
        &gates,
        &[
            ("CYBERWAVE_GPUS_PER_WORKLOAD", "2"),
            ("CYBERWAVE_MAX_QUEUED_WORKLOADS", "2"),
        ],
    );
    let reaper = Reaper::new(&s);
    for id in ["a", "b"] {
        assert_eq!(
            training(&s, &s.node, &reaper, id, json!({}))["event"],
            "started"
        );
    }
    let queued = training(&s, &s.node, &reaper, "c", json!({}));
    assert_eq!(queued["event"], "queued", "{queued}");
    assert!(
        queued["output"]["message"]
            .to_string()
            .contains("GPUs are free"),
        "{queued}"
    );
    gates.release("a");
    let started = s
        .client
        .recv_json_where(Duration::from_secs(10), |_, v| {
            v["request_id"] == "c" && v["event"] == "started"
        })
        .unwrap_or_else(|| panic!("c never started:\n{}", s.node.stderr()));
    if let Some(pid) = started["output"]["pid"].as_i64() {
        reaper.add(pid as i32);
    }
    assert_eq!(gates.seen("c").0, gates.seen("a").0, "c got a's GPUs");
    for id in ["b", "c"] {
        gates.release(id);
    }
}

#[test]
fn a_restarted_node_keeps_a_running_workloads_gpus_reserved() {
    needs_declared_gpus!();
    let gates = Gates::new();
    let env = [("CYBERWAVE_GPUS_PER_WORKLOAD", "3")];
    let s = start(&gates, &env);
    let reaper = Reaper::new(&s);
    assert_eq!(
        training(&s, &s.node, &reaper, "kept", json!({}))["event"],
        "started"
    );
    assert_eq!(gates.seen("kept").0, "0,1,2");
    stop_gracefully(&s);
    let node = configure(again(&s, TEMPLATE), &gates, &env).spawn();
    assert!(
        node.wait_for_log(READY, Duration::from_secs(10)),
        "{}",
        node.stderr()
    );
    let status = ask_status(&s, &node);
    let held: Vec<Value> = holders(&status);
    assert_eq!(
        held.iter().filter(|h| h["workload"] == "kept").count(),
        3,
        "{status}"
    );
    let refused = training(&s, &node, &reaper, "more", json!({}));
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("1 of 4 GPUs is free") && error.contains("workload kept"),
        "{refused}"
    );
    gates.release("kept");
    let done = terminal(&s.client, &node, "kept", Duration::from_secs(10));
    assert_eq!(done["event"], "completed", "{done}");
    assert!(
        wait_until(Duration::from_secs(5), || holders(&ask_status(&s, &node))
            .iter()
            .all(Value::is_null)),
        "the GPUs were not freed"
    );
}

/// Deployments take their GPUs from the same pool: a workload never gets a
/// deployment's GPU, and an undeploy gives it back.
#[test]
fn deployments_and_workloads_never_share_a_gpu() {
    needs_declared_gpus!();
    let gates = Gates::new();
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let s = Scenario::start(|n| {
        configure(n, &gates, &[("CYBERWAVE_GPUS_PER_WORKLOAD", "1")])
            .env_var("CYBERWAVE_GPUS", "0,1")
            .env_var("CYBERWAVE_MODEL_ROOTS", models.to_str().unwrap())
    });
    let reaper = Reaper::new(&s);
    let deploy = |id: &str, params: Value| {
        let mut params = params;
        params["model"] = json!("add_matmul.onnx");
        params["deployment_id"] = json!(id);
        let answer = request(
            &s,
            &s.node,
            json!({"command": "deploy", "request_id": format!("deploy-{id}"), "params": params}),
        );
        if let Some(pid) = answer["output"]["pid"].as_i64() {
            reaper.add(pid as i32);
        }
        answer
    };
    let started = deploy("model", json!({"gpus": 1}));
    assert_eq!(started["event"], "started", "{started}");
    let held = holders(&ask_status(&s, &s.node));
    assert_eq!(held[0], json!({"deployment": "model"}), "{held:?}");
    let w1 = training(&s, &s.node, &reaper, "w1", json!({}));
    assert_eq!(w1["event"], "started", "{w1}");
    assert_eq!(
        gates.seen("w1").0,
        "1",
        "the workload got the deployment's GPU"
    );
    let refused = training(&s, &s.node, &reaper, "w2", json!({}));
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("deployment model (GPU 0)") && error.contains("workload w1 (GPU 1)"),
        "{refused}"
    );
    // A GPU named by the runner's options counts as one.
    let cuda = deploy("cuda", json!({"options": {"execution_provider": "cuda"}}));
    let error = cuda["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("0 of 2 GPUs are free") && error.contains("allow_cpu_fallback"),
        "{cuda}"
    );

    let stopped = request(
        &s,
        &s.node,
        json!({"command": "undeploy", "request_id": "undeploy-model", "params": {"deployment_id": "model"}}),
    );
    assert_eq!(stopped["status"], "ok", "{stopped}");
    assert!(
        wait_until(Duration::from_secs(15), || holders(&ask_status(
            &s, &s.node
        ))[0]
            .is_null()),
        "the undeployed model's GPU was not freed"
    );
    let w3 = training(&s, &s.node, &reaper, "w3", json!({}));
    assert_eq!(w3["event"], "started", "{w3}");
    assert_eq!(gates.seen("w3").0, "0");
    for id in ["w1", "w3"] {
        gates.release(id);
    }
}

/// A model server outlives a node restart (tests/deployments.rs); so does its
/// GPU: the restarted node adopts the deployment with the GPU it had, never
/// gives that GPU to a workload, and frees it at undeploy.
#[test]
fn a_restarted_node_keeps_a_deployments_gpu_reserved() {
    needs_declared_gpus!();
    let gates = Gates::new();
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let env = [
        ("CYBERWAVE_GPUS_PER_WORKLOAD", "1"),
        ("CYBERWAVE_GPUS", "0,1"),
        ("CYBERWAVE_MODEL_ROOTS", models.to_str().unwrap()),
    ];
    let s = start(&gates, &env);
    let reaper = Reaper::new(&s);
    let deployed = request(
        &s,
        &s.node,
        json!({"command": "deploy", "request_id": "deploy-kept", "params":
            {"model": "add_matmul.onnx", "deployment_id": "kept", "gpus": 1}}),
    );
    assert_eq!(deployed["event"], "started", "{deployed}");
    if let Some(pid) = deployed["output"]["pid"].as_i64() {
        reaper.add(pid as i32);
    }
    stop_gracefully(&s);

    let node = configure(again(&s, TEMPLATE), &gates, &env).spawn();
    assert!(
        node.wait_for_log(READY, Duration::from_secs(10)),
        "{}",
        node.stderr()
    );
    let held = holders(&ask_status(&s, &node));
    assert_eq!(held[0], json!({"deployment": "kept"}), "{held:?}");
    let w1 = training(&s, &node, &reaper, "w1", json!({}));
    assert_eq!(w1["event"], "started", "{w1}");
    assert_eq!(
        gates.seen("w1").0,
        "1",
        "a workload got the deployment's GPU"
    );
    let refused = training(&s, &node, &reaper, "w2", json!({}));
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(error.contains("deployment kept (GPU 0)"), "{refused}");

    let stopped = request(
        &s,
        &node,
        json!({"command": "undeploy", "request_id": "undeploy-kept", "params": {"deployment_id": "kept"}}),
    );
    assert_eq!(stopped["status"], "ok", "{stopped}");
    assert!(
        wait_until(Duration::from_secs(15), || holders(&ask_status(&s, &node))
            [0]
        .is_null()),
        "the undeployed model's GPU was not freed"
    );
    gates.release("w1");
}
