//! The shim binary on its own: the exit status it reports through its own
//! exit code and its exit file, and what it does when the disk cannot take
//! that file or the command cannot start.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

mod common;

const SHIM: &str = env!("CARGO_BIN_EXE_cyberwave-cloud-node-shim");

fn run_shim(base: &Path, cwd: &Path, command: &str) -> Output {
    Command::new(SHIM)
        .arg(base)
        .arg(cwd)
        .arg(command)
        .stdin(Stdio::null())
        .output()
        .expect("the shim runs")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn suffixed(base: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

#[test]
fn exits_with_the_workloads_code_and_writes_it_down() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("w");
    let out = run_shim(&base, dir.path(), "echo out; echo err >&2; exit 7");
    assert_eq!(out.status.code(), Some(7));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pid = report["started"]["pid"].as_i64().expect("a started report");
    let started = read_json(&suffixed(&base, ".started.json"));
    assert_eq!(started["pid"].as_i64(), Some(pid));
    let exit = read_json(&suffixed(&base, ".exit.json"));
    assert_eq!(exit["exit_code"], 7);
    assert_eq!(exit["signal"], Value::Null);
    let stdout = std::fs::read_to_string(suffixed(&base, ".stdout.log")).unwrap();
    let stderr = std::fs::read_to_string(suffixed(&base, ".stderr.log")).unwrap();
    assert_eq!((stdout.as_str(), stderr.as_str()), ("out\n", "err\n"));
}

#[test]
fn a_killed_workload_is_128_plus_its_signal() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("w");
    let out = run_shim(&base, dir.path(), "kill -KILL $$");
    assert_eq!(out.status.code(), Some(128 + 9));
    let exit = read_json(&suffixed(&base, ".exit.json"));
    assert_eq!(exit["exit_code"], Value::Null);
    assert_eq!(exit["signal"], "SIGKILL");
}

#[test]
fn an_exit_file_the_disk_refuses_is_logged_and_the_code_still_comes_out() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("w");
    // A directory where the exit file goes: the rename onto it fails, as a
    // full or read-only disk would make it.
    let blocker = suffixed(&base, ".exit.json");
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("keep"), b"").unwrap();
    let out = run_shim(&base, dir.path(), "exit 3");
    assert_eq!(
        out.status.code(),
        Some(3),
        "the exit code is the shim's own"
    );
    let stderr = std::fs::read_to_string(suffixed(&base, ".stderr.log")).unwrap();
    assert!(
        stderr.contains("cyberwave-cloud-node-shim: cannot write")
            && stderr.contains("w.exit.json")
            && stderr.contains("exit status (3)"),
        "the failed write is logged where people look: {stderr:?}"
    );
}

#[test]
fn a_command_that_cannot_start_is_127_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("w");
    let out = run_shim(&base, &dir.path().join("missing"), "true");
    assert_eq!(out.status.code(), Some(127));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = report["failed"]["error"].as_str().expect("a failed report");
    assert!(error.contains("cannot start /bin/sh in"), "{error}");
    let exit = read_json(&suffixed(&base, ".exit.json"));
    assert_eq!(exit["exit_code"], 127);
    assert_eq!(exit["error"], error);
}

#[test]
fn a_wrong_command_line_is_a_usage_error() {
    let out = Command::new(SHIM).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: cyberwave-cloud-node-shim"));
}

/// The shim maps libc and nothing of the node: no LibTorch (with
/// `--features torch` the node does), no ONNX Runtime, no TLS. This is what
/// keeps it small beside every running workload.
#[test]
fn the_shim_maps_no_library_but_libc() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("w");
    let mut shim = Command::new(SHIM)
        .arg(&base)
        .arg(dir.path())
        .arg("sleep 5")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The report line: the shim is past its start-up and waits.
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(shim.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", shim.id())).unwrap();
    let report: Value = serde_json::from_str(&line).unwrap();
    let workload = report["started"]["pid"].as_i64().unwrap() as i32;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(-workload),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = shim.wait();
    let libraries: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|path| path.contains(".so"))
        .collect();
    let allowed = ["libc.so", "ld-linux", "libgcc_s.so"];
    let strangers: Vec<&&str> = libraries
        .iter()
        .filter(|path| !allowed.iter().any(|name| path.contains(name)))
        .collect();
    assert!(!libraries.is_empty(), "no libraries mapped at all?\n{maps}");
    assert!(strangers.is_empty(), "the shim maps {strangers:?}");
}

/// A node installed without its shim still starts and answers; a workload
/// it cannot start is refused with the path it tried, and the start-up log
/// says what is missing.
#[test]
fn a_node_without_its_shim_answers_and_says_where_it_looked() {
    let bin = tempfile::tempdir().unwrap();
    let node = bin.path().join("cyberwave-cloud-node");
    if std::fs::hard_link(common::node::NODE_BIN, &node).is_err() {
        std::fs::copy(common::node::NODE_BIN, &node).unwrap();
    }
    // Nor on PATH (a machine with the package installed has one there).
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs =
        std::env::split_paths(&path).filter(|d| !d.join("cyberwave-cloud-node-shim").exists());
    let path = std::env::join_paths(dirs).unwrap().into_string().unwrap();
    let s = common::scenario::Scenario::start(|n| {
        n.binary(&node)
            .env_var("PATH", path)
            .env_var("CYBERWAVE_TRAINING_CMD", "echo never")
    });
    let status = s.status();
    assert_eq!(status["status"], "ok", "{status}");
    let refused = s.request(serde_json::json!({"command": "training", "request_id": "no-shim"}));
    assert_eq!(refused["status"], "error", "{refused}");
    let shim = bin.path().join("cyberwave-cloud-node-shim");
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains("the workload could not be started")
            && error.contains(&shim.display().to_string()),
        "{error}"
    );
    assert!(
        s.node
            .stderr()
            .contains("no cyberwave-cloud-node-shim beside"),
        "{}",
        s.node.stderr()
    );
}
