//! What the command line prints for a person, on the real binary: fatal
//! errors in one format at every log level, no panic when the reader of
//! stdout goes away, the local `status` table with a deployment in it,
//! `logs` of a deployment, and the shell completion scripts as the shells
//! load them.

mod common;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::broker::free_port;
use common::node::NODE_BIN;
use common::{Node, NodeProcess};
use serde_json::Value;

/// Runs the binary as the user of `home`, with `extra` env vars.
fn run(home: &Path, args: &[&str], extra: &[(&str, &str)]) -> Output {
    Command::new(NODE_BIN)
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A pipe whose reader is already gone: every write to it fails (EPIPE).
fn closed_pipe() -> OwnedFd {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    writer
}

/// Runs `args` with stdout into a closed pipe; asserts it ends quietly.
fn assert_quiet_on_closed_pipe(home: &Path, args: &[&str]) {
    let output = Command::new(NODE_BIN)
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::from(closed_pipe()))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{args:?} on a closed pipe: {stderr}"
    );
    assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
}

/// A standalone node on a port of its own, serving the demo repository,
/// allowed to deploy the test models.
fn standalone(port: u16) -> NodeProcess {
    let root = env!("CARGO_MANIFEST_DIR");
    let node = Node::new()
        .args(["start", "--standalone", "--mqtt-port", &port.to_string()])
        .arg("--config")
        .arg(format!("{root}/examples/demo/cyberwave.yml"))
        .env_var(
            "CYBERWAVE_MODEL_ROOTS",
            format!("{root}/tests/fixtures/models"),
        )
        .spawn();
    assert!(
        node.wait_for_log("try it from another terminal", Duration::from_secs(15)),
        "standalone node not ready:\n{}",
        node.stderr()
    );
    node
}

#[test]
fn no_printing_command_panics_on_a_closed_pipe() {
    let home = tempfile::tempdir().unwrap();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["info"],
        &["info", "--json"],
        &["config", "show"],
        &["--help"],
        &["send", "--help"],
        &["man"],
        &["completions", "bash"],
    ] {
        assert_quiet_on_closed_pipe(home.path(), args);
    }
    let port = free_port();
    let node = standalone(port);
    assert_quiet_on_closed_pipe(
        node.home(),
        &["send", "status", "--mqtt-port", &port.to_string()],
    );
}

#[test]
fn fatal_errors_have_one_format_at_every_log_level() {
    let home = tempfile::tempdir().unwrap();
    // A bad setting, found after the command line is parsed.
    for log in ["off", "info", "trace"] {
        let output = run(
            home.path(),
            &["start"],
            &[
                ("CYBERWAVE_LOG", log),
                ("CYBERWAVE_MQTT_PORT", "0"),
                ("CYBERWAVE_API_TOKEN", "t"),
            ],
        );
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        let fatal: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("cyberwave-cloud-node: error: "))
            .collect();
        assert_eq!(fatal.len(), 1, "CYBERWAVE_LOG={log}: {stderr}");
        assert!(fatal[0].contains("CYBERWAVE_MQTT_PORT"), "{stderr}");
        assert!(
            !stderr.contains("ERROR"),
            "through the log formatter: {stderr}"
        );
    }
    // A bad flag, found by the parser: same prefix, the usage exit code.
    let output = run(
        home.path(),
        &["start", "--mqtt-port", "0"],
        &[("CYBERWAVE_LOG", "off")],
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("cyberwave-cloud-node: error: invalid value '0' for '--mqtt-port"),
        "{stderr}"
    );
    // An unknown id: the message, then the hint on a line of its own.
    let output = run(home.path(), &["logs", "nope"], &[("CYBERWAVE_LOG", "off")]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines[0].starts_with("cyberwave-cloud-node: error: no workload with request_id \"nope\""),
        "{stderr}"
    );
    assert_eq!(
        lines.last().copied(),
        Some("  hint: `cyberwave-cloud-node status` lists the known ones"),
        "{stderr}"
    );
}

/// `status --json` of `node`'s user.
fn status_json(node: &NodeProcess) -> Vec<Value> {
    let output = run(node.home(), &["status", "--json"], &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    serde_json::from_slice::<Value>(&output.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Polls `check` every 100 ms until it holds or `timeout` passes.
fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}

#[test]
fn local_status_lists_a_deployment_within_100_columns_and_logs_show_its_output() {
    let port = free_port();
    let node = standalone(port);
    let p = port.to_string();
    let model =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/add_matmul.onnx");
    let params = format!(
        r#"{{"model": "{}", "deployment_id": "adder-with-a-deployment-id-longer-than-its-column"}}"#,
        model.display()
    );
    let sent = run(
        node.home(),
        &["send", "deploy", "--params", &params, "--mqtt-port", &p],
        &[],
    );
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let id = "adder-with-a-deployment-id-longer-than-its-column";
    let pid = status_json(&node)
        .iter()
        .find(|r| r["deployment_id"] == id)
        .unwrap_or_else(|| panic!("no deployment in status --json:\n{}", node.stderr()))["pid"]
        .as_i64();
    // Whether ONNX Runtime is found or not, the model server says so on
    // its stderr, naming the deployment.
    let logged = eventually(Duration::from_secs(30), || {
        text(&run(node.home(), &["logs", "--stderr", id], &[]).stdout).contains(id)
    });
    assert!(
        logged,
        "no model server output for {id}:\n{}",
        node.stderr()
    );
    let logs = run(node.home(), &["logs", id], &[]);
    assert!(logs.status.success(), "{}", text(&logs.stderr));

    // A workload too, so both kinds are in the table.
    let sent = run(
        node.home(),
        &[
            "send",
            "training",
            "--params",
            r#"{"epochs": 1, "seconds_per_epoch": 0.05}"#,
            "--request-id",
            "train-1",
            "--wait",
            "done",
            "--mqtt-port",
            &p,
        ],
        &[],
    );
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let table = text(&run(node.home(), &["status"], &[]).stdout);
    for line in table.lines() {
        assert!(
            line.chars().count() <= 100,
            "{} columns: {line}\n{table}",
            line.chars().count()
        );
    }
    let header = table.lines().next().unwrap();
    for column in ["TYPE", "STATE", "PID", "EXIT", "DURATION", "STARTED", "ID"] {
        assert!(header.contains(column), "{table}");
    }
    let training = table
        .lines()
        .find(|l| l.contains("train-1"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        training.starts_with("training") && training.contains("completed"),
        "{table}"
    );
    assert!(
        training.split_whitespace().any(|w| w == "0"),
        "exit code 0: {table}"
    );
    let deployment = table
        .lines()
        .find(|l| l.starts_with("deployment"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        deployment.contains("adder-with-a-deployment-id") && deployment.ends_with('…'),
        "{table}"
    );
    if let Some(pid) = pid {
        assert!(deployment.contains(&pid.to_string()), "{table}");
    }

    let undeploy = format!(r#"{{"deployment_id": "{id}"}}"#);
    run(
        node.home(),
        &["send", "undeploy", "--params", &undeploy, "--mqtt-port", &p],
        &[],
    );
    eventually(Duration::from_secs(10), || {
        status_json(&node).iter().all(|r| {
            r["deployment_id"] != id
                || !matches!(r["state"].as_str(), Some("starting" | "ready" | "stopping"))
        })
    });
}

/// The bash completion script, sourced; returns what the completion
/// function offers for `words` (the last one being completed).
fn bash_completions(script: &Path, words: &[&str]) -> Vec<String> {
    let program = r#"
        source "$1"; shift
        fn=$(complete -p cyberwave-cloud-node | sed -E 's/.* -F ([^ ]+) .*/\1/')
        COMP_WORDS=("$@")
        COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
        COMP_LINE="$*"
        COMP_POINT=${#COMP_LINE}
        COMPREPLY=()
        "$fn" cyberwave-cloud-node "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let output = Command::new("bash")
        .args(["-c", program, "bash"])
        .arg(script)
        .arg("cyberwave-cloud-node")
        .args(words)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    text(&output.stdout).lines().map(str::to_owned).collect()
}

fn script(home: &Path, shell: &str) -> PathBuf {
    let output = run(home, &["completions", shell], &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let path = home.join(format!("completion.{shell}"));
    std::fs::write(&path, &output.stdout).unwrap();
    path
}

#[test]
fn bash_completes_flags_values_and_commands() {
    let home = tempfile::tempdir().unwrap();
    let bash = script(home.path(), "bash");
    let start = bash_completions(&bash, &["start", "--"]);
    for flag in ["--standalone", "--mqtt-port", "--config", "--slug"] {
        assert!(start.iter().any(|w| w == flag), "start --<TAB>: {start:?}");
    }
    let mut wait = bash_completions(&bash, &["send", "--wait", ""]);
    wait.sort();
    assert_eq!(wait, ["done", "none", "started"], "send --wait <TAB>");
    let send = bash_completions(&bash, &["send", ""]);
    for command in ["status", "training", "cancel", "deploy", "infer"] {
        assert!(send.iter().any(|w| w == command), "send <TAB>: {send:?}");
    }
    let top = bash_completions(&bash, &["r"]);
    assert_eq!(top, ["run-model"], "r<TAB>");
    let config = bash_completions(&bash, &["config", ""]);
    assert!(
        config.iter().any(|w| w == "show"),
        "config <TAB>: {config:?}"
    );
}

#[test]
fn zsh_and_fish_scripts_load() {
    let home = tempfile::tempdir().unwrap();
    let shells: [(&str, &[&str]); 2] = [
        // compinit defines compdef, which the script calls at its end.
        (
            "zsh",
            &[
                "-f",
                "-c",
                "autoload -Uz compinit && compinit -u -D && source \"$1\"",
                "zsh",
            ],
        ),
        // fish can also say what it would complete: the values of --wait.
        (
            "fish",
            &[
                "--no-config",
                "-c",
                "source $argv[1]; complete -C 'cyberwave-cloud-node send --wait '",
            ],
        ),
    ];
    for (shell, args) in shells {
        if Command::new(shell).arg("--version").output().is_err() {
            eprintln!("skip: {shell} is not installed; its completion script is not checked");
            continue;
        }
        let path = script(home.path(), shell);
        let output = Command::new(shell)
            .args(args)
            .arg(&path)
            .env("HOME", home.path())
            .output()
            .unwrap();
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "{shell} could not load its script: {}",
            text(&output.stderr)
        );
        if shell == "fish" {
            let offered: Vec<String> = text(&output.stdout)
                .lines()
                .filter_map(|l| l.split('\t').next().map(str::to_owned))
                .collect();
            assert_eq!(
                offered,
                ["done", "none", "started"],
                "fish: send --wait <TAB>"
            );
        }
    }
}
