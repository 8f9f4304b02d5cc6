//! `send` as an operator lives with it: it keeps waiting across restarts of
//! the node and of the broker and exits with the workload's code, attaches
//! to a workload started earlier (`send wait`), cancels by request_id, and
//! finds a standalone node on another port with no flags.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::free_port;
use common::{Broker, Node, NodeProcess};
use nix::sys::signal::Signal;
use serde_json::Value;

/// A workload that prints for 3 s, then fails with code 5.
const SLOW_FAIL: &str = "cyberwave-cloud-node:\n  training: \"for i in 1 2 3 4 5 6; do echo step $i; sleep 0.5; done; echo oops >&2; exit 5\"\n";

fn demo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo/cyberwave.yml")
}

/// A standalone node with HOME `home`; `extra` are more `start` flags.
fn start_node(home: &Path, config: &Path, port: u16, extra: &[&str]) -> NodeProcess {
    let node = Node::new()
        .env_var("HOME", home.to_str().unwrap())
        .args(["start", "--standalone", "--slug", "lab", "--mqtt-port"])
        .arg(port.to_string())
        .arg("--config")
        .arg(config.to_str().unwrap())
        .args(extra.iter().copied())
        .spawn();
    assert!(
        node.wait_for_log("try it from another terminal", Duration::from_secs(20)),
        "standalone node not ready:\n{}",
        node.stderr()
    );
    node
}

fn stop(node: &NodeProcess) {
    node.signal(Signal::SIGTERM);
    assert!(
        node.wait_exit(Duration::from_secs(10)).is_some(),
        "{}",
        node.stderr()
    );
}

/// `send` running in the background, its output in files.
struct Send {
    child: Child,
    dir: tempfile::TempDir,
    began: Instant,
}

impl Send {
    fn spawn(home: &Path, args: &[&str]) -> Send {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(common::node::NODE_BIN)
            .arg("send")
            .args(args)
            .env_clear()
            .env("HOME", home)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.path().join("out")).unwrap())
            .stderr(fs::File::create(dir.path().join("err")).unwrap())
            .spawn()
            .unwrap();
        Send {
            child,
            dir,
            began: Instant::now(),
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("err")).unwrap_or_default()
    }

    fn wait_for_stderr(&self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// (exit code, stdout, stderr); kills it after `timeout`.
    fn finish(mut self, timeout: Duration) -> (i32, String, String) {
        let deadline = Instant::now() + timeout;
        let code = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("send still waiting after {timeout:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        eprintln!("send ended with {code} after {:?}", self.began.elapsed());
        let out = fs::read_to_string(self.dir.path().join("out")).unwrap_or_default();
        (code, out, self.stderr())
    }
}

fn send(home: &Path, args: &[&str]) -> (i32, String, String) {
    Send::spawn(home, args).finish(Duration::from_secs(60))
}

fn slow_fail_config(dir: &Path) -> PathBuf {
    let path = dir.join("cyberwave.yml");
    fs::write(&path, SLOW_FAIL).unwrap();
    path
}

#[test]
fn send_waits_through_a_node_restart_and_gets_the_end_it_missed() {
    let home = tempfile::tempdir().unwrap();
    let config = slow_fail_config(home.path());
    let port = free_port();
    let first = start_node(home.path(), &config, port, &[]);
    // No port flag: the node's recorded address is found.
    let waiting = Send::spawn(
        home.path(),
        &["training", "--request-id", "t-1", "--wait", "done"],
    );
    assert!(
        waiting.wait_for_stderr("started training t-1", Duration::from_secs(15)),
        "{}",
        waiting.stderr()
    );
    // The node and its embedded broker go; the workload ends meanwhile.
    stop(&first);
    std::thread::sleep(Duration::from_secs(4));
    let _second = start_node(home.path(), &config, port, &[]);
    let (code, _out, err) = waiting.finish(Duration::from_secs(60));
    assert_eq!(code, 5, "the workload's own exit code:\n{err}");
    assert!(err.contains("lost the MQTT broker"), "{err}");
    assert!(
        err.contains("failed after") && err.contains("exit code 5"),
        "{err}"
    );
    assert!(err.contains("oops"), "the stderr tail of a failure: {err}");
}

#[test]
fn send_waits_through_a_broker_restart() {
    let mut broker = Broker::start();
    let home = tempfile::tempdir().unwrap();
    let config = slow_fail_config(home.path());
    let p = broker.port().to_string();
    let _node = start_node(
        home.path(),
        &config,
        broker.port(),
        &["--mqtt-host", "127.0.0.1"],
    );
    let flags = ["--mqtt-host", "127.0.0.1", "--mqtt-port", &p];
    let mut args = vec![
        "training",
        "--request-id",
        "t-2",
        "--wait",
        "done",
        "--follow-logs",
    ];
    args.extend(flags);
    let waiting = Send::spawn(home.path(), &args);
    assert!(
        waiting.wait_for_stderr("started training t-2", Duration::from_secs(15)),
        "{}",
        waiting.stderr()
    );
    std::thread::sleep(Duration::from_millis(1200));
    // The broker is away (with every session) while the workload ends.
    broker.stop();
    std::thread::sleep(Duration::from_secs(4));
    broker.restart();
    let (code, out, err) = waiting.finish(Duration::from_secs(90));
    assert_eq!(code, 5, "{err}\n{}", broker.log());
    assert!(err.contains("reconnected"), "{err}");
    for step in 1..=6 {
        let line = format!("step {step}\n");
        assert_eq!(out.matches(&line).count(), 1, "{line} once, no gap:\n{out}");
    }
    assert!(err.contains("oops"), "{err}");
}

#[test]
fn send_wait_attaches_to_a_running_and_to_a_finished_workload() {
    let home = tempfile::tempdir().unwrap();
    let _node = start_node(home.path(), &demo_config(), free_port(), &[]);
    let params = r#"{"epochs": 6, "seconds_per_epoch": 0.4}"#;
    let (code, _out, err) = send(
        home.path(),
        &["training", "--params", params, "--request-id", "w-1"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("started training w-1") && err.contains("send wait w-1 --follow-logs"),
        "the started line names the request_id and how to follow it: {err}"
    );
    std::thread::sleep(Duration::from_millis(1200));
    let (code, out, err) = send(home.path(), &["wait", "w-1", "--follow-logs"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("attached to training w-1: running"), "{err}");
    for epoch in 1..=6 {
        let line = format!("epoch {epoch}/6");
        assert_eq!(out.matches(&line).count(), 1, "{line} once:\n{out}");
    }
    assert!(
        out.contains("training done") && err.contains("completed after"),
        "{out}\n{err}"
    );

    let (code, out, err) = send(home.path(), &["wait", "w-1"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("attached to training w-1: completed"), "{err}");
    assert!(out.contains("final_loss"), "the result: {out}");

    let failing = r#"{"fail": true}"#;
    let (code, _out, err) = send(
        home.path(),
        &[
            "training",
            "--params",
            failing,
            "--request-id",
            "w-2",
            "--wait",
            "done",
        ],
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("failing on purpose"), "the stderr tail: {err}");
    let (code, _out, err) = send(home.path(), &["wait", "w-2"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("failing on purpose"), "{err}");

    let (code, _out, err) = send(home.path(), &["wait", "nobody"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("knows no workload nobody"), "{err}");
}

#[test]
fn send_cancel_takes_the_request_id() {
    let home = tempfile::tempdir().unwrap();
    let _node = start_node(home.path(), &demo_config(), free_port(), &[]);
    let params = r#"{"epochs": 100, "seconds_per_epoch": 0.2}"#;
    let (code, _out, err) = send(
        home.path(),
        &["training", "--params", params, "--request-id", "c-1"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _out, err) = send(home.path(), &["cancel", "c-1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("Workload cancelled with SIGTERM") && err.contains("c-1"),
        "{err}"
    );
    let (code, _out, err) = send(home.path(), &["wait", "c-1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cancelled after"), "{err}");
}

#[test]
fn a_standalone_node_is_found_without_flags_and_node_keeps_the_host() {
    let home = tempfile::tempdir().unwrap();
    let port = free_port();
    let node = start_node(home.path(), &demo_config(), port, &[]);
    let record = home.path().join(".cyberwave/standalone_address.json");
    let address: Value = serde_json::from_str(&fs::read_to_string(&record).unwrap()).unwrap();
    assert_eq!(address["port"], port);
    assert_eq!(address["slug"], "lab");
    let mode = fs::metadata(&record).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let (code, out, err) = send(home.path(), &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("node lab (") && out.contains("accepting commands"),
        "a summary for a person: {out}"
    );
    let (code, out, err) = send(home.path(), &["status", "--json", "--node", "lab"]);
    assert_eq!(code, 0, "{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["output"]["slug"], "lab");

    // Another node's name picks its topic, never another broker.
    let p = port.to_string();
    let (code, _out, err) = send(
        home.path(),
        &[
            "status",
            "--node",
            "gpu9",
            "--mqtt-port",
            &p,
            "--timeout",
            "1",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && !err.contains("mqtt.cyberwave.com"),
        "{err}"
    );

    let bad = r#"{"workload_request_id": 3}"#;
    let (code, _out, err) = send(home.path(), &["status", "--params", bad]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("params.workload_request_id must be a non-empty string, got a number"),
        "{err}"
    );

    stop(&node);
    assert!(!record.exists(), "a clean stop removes the record");
}

#[test]
fn ctrl_c_says_the_workload_keeps_running_and_how_to_come_back() {
    let home = tempfile::tempdir().unwrap();
    let _node = start_node(home.path(), &demo_config(), free_port(), &[]);
    let params = r#"{"epochs": 100, "seconds_per_epoch": 0.2}"#;
    let waiting = Send::spawn(
        home.path(),
        &[
            "training",
            "--params",
            params,
            "--request-id",
            "i-1",
            "--wait",
            "done",
        ],
    );
    assert!(
        waiting.wait_for_stderr("started training i-1", Duration::from_secs(15)),
        "{}",
        waiting.stderr()
    );
    let pid = nix::unistd::Pid::from_raw(waiting.child.id() as i32);
    nix::sys::signal::kill(pid, Signal::SIGINT).unwrap();
    let (code, _out, err) = waiting.finish(Duration::from_secs(10));
    assert_eq!(code, 130, "{err}");
    assert!(
        err.contains("workload i-1 keeps running")
            && err.contains("cyberwave-cloud-node send wait i-1 --follow-logs")
            && err.contains("cyberwave-cloud-node send cancel i-1"),
        "{err}"
    );
    let (code, _out, err) = send(home.path(), &["cancel", "i-1"]);
    assert_eq!(code, 0, "it was still running: {err}");
}

#[test]
fn send_waits_through_a_node_restart_on_a_broker_that_stays() {
    let broker = Broker::start();
    let home = tempfile::tempdir().unwrap();
    let config = slow_fail_config(home.path());
    let p = broker.port().to_string();
    let on_broker = ["--mqtt-host", "127.0.0.1"];
    let first = start_node(home.path(), &config, broker.port(), &on_broker);
    let waiting = Send::spawn(
        home.path(),
        &[
            "training",
            "--request-id",
            "t-3",
            "--wait",
            "done",
            "--follow-logs",
            "--mqtt-host",
            "127.0.0.1",
            "--mqtt-port",
            &p,
        ],
    );
    assert!(
        waiting.wait_for_stderr("started training t-3", Duration::from_secs(15)),
        "{}",
        waiting.stderr()
    );
    stop(&first);
    std::thread::sleep(Duration::from_secs(4));
    let _second = start_node(home.path(), &config, broker.port(), &on_broker);
    let (code, out, err) = waiting.finish(Duration::from_secs(60));
    assert_eq!(code, 5, "{err}");
    assert!(
        out.contains("step 6"),
        "the output the node sent after its restart: {out}"
    );
}
