//! Workloads end to end: real supervisor processes, real exit codes, live
//! output, progress and results, over real MQTT.

mod common;

use std::time::Duration;

use common::scenario::Scenario;
use serde_json::{json, Value};

/// Waits for the event `event` of `request_id`.
fn event(s: &Scenario, request_id: &str, event: &str, timeout: Duration) -> Value {
    s.client
        .recv_json_where(timeout, |_, v| {
            v["request_id"] == request_id && v["event"] == event
        })
        .unwrap_or_else(|| {
            panic!(
                "no {event} event for {request_id}; node log:\n{}",
                s.node.stderr()
            )
        })
}

fn training(template: &str) -> Scenario {
    Scenario::start(|n| n.env_var("CYBERWAVE_TRAINING_CMD", template))
}

#[test]
fn exit_codes_and_tails_are_reported() {
    let s = training("echo out-line; echo err-line >&2; exit 3");
    let started = s.request(json!({"command": "training", "request_id": "ec-3"}));
    assert_eq!(started["status"], "ok", "{started}");
    assert_eq!(started["event"], "started");
    let out = &started["output"];
    assert!(out["pid"].as_i64().unwrap() > 0);
    assert_eq!(out["workload_type"], "training");
    assert_eq!(out["workload_request_id"], "ec-3");
    assert!(out["stdout_log"]
        .as_str()
        .unwrap()
        .ends_with("workload_logs/training_ec-3.stdout.log"));
    let failed = event(&s, "ec-3", "failed", Duration::from_secs(5));
    assert_eq!(failed["status"], "error");
    let out = &failed["output"];
    assert_eq!(out["exit_code"], 3);
    assert_eq!(out["signal"], Value::Null);
    assert_eq!(out["stdout_tail"], "out-line\n");
    assert_eq!(out["stderr_tail"], "err-line\n");
    assert!(out["duration_seconds"].as_f64().unwrap() >= 0.0);
    assert!(failed["error"].as_str().unwrap().contains("code 3"));
}

/// The process runs: it exists and is not a zombie (one that has exited
/// but whose status nobody has collected yet, e.g. an orphan whose init is
/// slow to reap).
fn pid_alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat[stat.rfind(')').unwrap() + 2..].chars().next();
        !matches!(state, Some('Z' | 'X'))
    })
}

fn logs_dir(s: &Scenario) -> std::path::PathBuf {
    s.node.config_dir().join("workload_logs")
}

#[test]
fn completed_with_result_progress_and_both_placeholders() {
    let script = r#"
import json, os, sys, time
params = json.loads(sys.argv[1])
from_file = json.load(open(sys.argv[2]))
assert params == from_file, (params, from_file)
with open(os.environ["CYBERWAVE_PROGRESS_FILE"], "a") as p:
    for step in range(1, 4):
        p.write(json.dumps({"step": step, "total": 3}) + "\n"); p.flush()
        time.sleep(0.3)
env = {k: os.environ.get(k) for k in ["CYBERWAVE_REQUEST_ID", "CYBERWAVE_WORKLOAD_TYPE", "CYBERWAVE_PARAMS_FILE"]}
json.dump({"echo": params, "env": env, "cwd": os.getcwd()}, open(os.environ["CYBERWAVE_RESULT_FILE"], "w"))
print("done")
"#;
    let s = Scenario::start(|n| {
        n.cwd_file("train.py", script).env_var(
            "CYBERWAVE_TRAINING_CMD",
            "python3 train.py {body} {params_file}",
        )
    });
    let params = json!({"epochs": 3, "name": "it's \"quoted\" $(touch pwned) `x` ;|&"});
    let started = s.request(json!({"command": "training", "request_id": "ok-1", "params": params}));
    assert_eq!(started["event"], "started", "{started}");
    let progress = event(&s, "ok-1", "progress", Duration::from_secs(5));
    assert_eq!(progress["status"], "ok");
    assert_eq!(progress["output"]["total"], 3);
    let done = event(&s, "ok-1", "completed", Duration::from_secs(10));
    assert_eq!(done["status"], "ok", "{done}");
    let out = &done["output"];
    assert_eq!(out["exit_code"], 0);
    assert_eq!(out["stdout_tail"], "done\n");
    assert_eq!(out["result"]["echo"], params);
    assert_eq!(out["result"]["env"]["CYBERWAVE_REQUEST_ID"], "ok-1");
    assert_eq!(out["result"]["env"]["CYBERWAVE_WORKLOAD_TYPE"], "training");
    assert_eq!(
        std::path::Path::new(out["result"]["cwd"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        s.node.workdir().canonicalize().unwrap()
    );
    assert!(
        !s.node.workdir().join("pwned").exists(),
        "params reached a shell"
    );
    let stdout = std::fs::read_to_string(logs_dir(&s).join("training_ok-1.stdout.log")).unwrap();
    assert_eq!(stdout, "done\n");
}

#[test]
fn command_not_found_is_127_with_the_shells_message() {
    let s = training("no-such-program-xyz --flag");
    s.request(json!({"command": "training", "request_id": "nf"}));
    let failed = event(&s, "nf", "failed", Duration::from_secs(5));
    assert_eq!(failed["output"]["exit_code"], 127);
    assert!(
        failed["output"]["stderr_tail"]
            .as_str()
            .unwrap()
            .contains("not found"),
        "{failed}"
    );
}

#[test]
fn a_signal_nobody_asked_for_is_a_failure_with_its_name() {
    let s = training("kill -9 $$");
    s.request(json!({"command": "training", "request_id": "sig"}));
    let failed = event(&s, "sig", "failed", Duration::from_secs(5));
    assert_eq!(failed["output"]["exit_code"], Value::Null);
    assert_eq!(failed["output"]["signal"], "SIGKILL");
    assert!(failed["error"].as_str().unwrap().contains("SIGKILL"));
}

#[test]
fn workloads_are_detached_in_their_own_session() {
    let s = training("cut -d' ' -f6 /proc/$$/stat > sid.txt; sleep 0.2");
    s.request(json!({"command": "training", "request_id": "sess"}));
    event(&s, "sess", "completed", Duration::from_secs(5));
    let workload_sid: i32 = std::fs::read_to_string(s.node.workdir().join("sid.txt"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let node_sid =
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(s.node.pid() as i32))).unwrap();
    assert_ne!(workload_sid, node_sid.as_raw());
}

#[test]
fn duplicate_request_id_never_starts_twice() {
    // The workload waits for `go`, so the repeat surely finds it running.
    let s = training("echo run >> runs.txt; while [ ! -e go ]; do sleep 0.05; done");
    s.request(json!({"command": "training", "request_id": "dup"}));
    let again = s.request(json!({"command": "training", "request_id": "dup"}));
    assert_eq!(again["status"], "error");
    assert!(
        again["error"].as_str().unwrap().contains("already started"),
        "{again}"
    );
    assert_eq!(again["output"]["workload_request_id"], "dup");
    std::fs::write(s.node.workdir().join("go"), "").unwrap();
    event(&s, "dup", "completed", Duration::from_secs(5));
    let after = s.request(json!({"command": "training", "request_id": "dup"}));
    assert_eq!(after["output"]["state"], "completed");
    assert_eq!(
        std::fs::read_to_string(s.node.workdir().join("runs.txt")).unwrap(),
        "run\n"
    );
}

#[test]
fn busy_node_refuses_and_reports_is_busy() {
    let s = training("sleep 30");
    let first = s.request(json!({"command": "training", "request_id": "b1"}));
    let pid = first["output"]["pid"].as_i64().unwrap();
    let busy = s.request(json!({"command": "training", "request_id": "b2"}));
    assert!(busy["error"].as_str().unwrap().contains("busy"), "{busy}");
    let status = s.status();
    assert_eq!(status["output"]["is_busy"], true);
    let active = &status["output"]["active_workloads"][0];
    assert_eq!(active["pid"], pid);
    assert_eq!(active["request_id"], "b1");
    assert_eq!(active["type"], "training");
    assert!(active["stdout_log"].as_str().is_some());
    let cancel =
        s.request(json!({"command": "cancel", "params": {"pid": pid, "signal": "SIGKILL"}}));
    assert_eq!(cancel["status"], "ok", "{cancel}");
    event(&s, "b1", "cancelled", Duration::from_secs(5));
    assert_eq!(s.status()["output"]["is_busy"], false);
}

#[test]
fn cancel_by_request_id_ends_the_whole_group() {
    let s = training("sh -c 'sleep 60 & echo $! > grandchild.pid; wait' ; sleep 60");
    let started = s.request(json!({"command": "training", "request_id": "c1"}));
    let pid = started["output"]["pid"].as_i64().unwrap();
    let gc_file = s.node.workdir().join("grandchild.pid");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !gc_file.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    let grandchild: i64 = std::fs::read_to_string(&gc_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let cancel = s.request(json!({"command": "cancel", "params": {"workload_request_id": "c1"}}));
    assert_eq!(
        cancel["output"]["message"],
        "Workload cancelled with SIGTERM"
    );
    assert_eq!(cancel["output"]["pid"], pid);
    assert_eq!(cancel["output"]["signal"], "SIGTERM");
    assert_eq!(cancel["output"]["workload_request_id"], "c1");
    let cancelled = event(&s, "c1", "cancelled", Duration::from_secs(5));
    assert_eq!(cancelled["status"], "error");
    assert_eq!(cancelled["error"], "Workload cancelled with SIGTERM");
    assert_eq!(cancelled["output"]["signal"], "SIGTERM");
    assert!(
        !pid_alive(pid) && !pid_alive(grandchild),
        "the whole group is gone"
    );
}

#[test]
fn sigterm_ignoring_workload_is_killed_after_the_grace_period() {
    // `trapped` says the shell ignores SIGTERM: a cancel sent before it
    // would end the shell at once, whatever the node does.
    let s = training("trap '' TERM; : > trapped; sleep 30 & wait; sleep 30");
    let started = s.request(json!({"command": "training", "request_id": "stubborn"}));
    let pid = started["output"]["pid"].as_i64().unwrap();
    let trapped = s.node.workdir().join("trapped");
    assert!(
        common::restart::wait_until(Duration::from_secs(5), || trapped.exists()),
        "the workload never set its trap"
    );
    let began = std::time::Instant::now();
    s.request(json!({"command": "cancel", "params": {"pid": pid, "grace_seconds": 1}}));
    let cancelled = event(&s, "stubborn", "cancelled", Duration::from_secs(6));
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "killed before the grace period: {took:?}"
    );
    assert_eq!(cancelled["error"], "Workload cancelled with SIGTERM");
    assert!(!pid_alive(pid));
}

#[test]
fn hostile_request_ids_stay_inside_workload_logs() {
    let s = training("echo hi");
    for id in ["../../escape", "a/b", "..", "x y;rm -rf", "é"] {
        let started = s.request(json!({"command": "training", "request_id": id}));
        assert_eq!(started["event"], "started", "{started}");
        let log = std::path::PathBuf::from(started["output"]["stdout_log"].as_str().unwrap());
        assert_eq!(
            log.parent().unwrap(),
            logs_dir(&s),
            "{id:?} escaped: {log:?}"
        );
        event(&s, id, "completed", Duration::from_secs(5));
    }
    assert!(!s.node.config_dir().join("escape.stdout.log").exists());
}

#[test]
fn oversized_body_is_refused_pointing_to_params_file() {
    let s = training("echo {body}");
    let big = "x".repeat(200 * 1024);
    let refused =
        s.request(json!({"command": "training", "request_id": "big", "params": {"blob": big}}));
    assert_eq!(refused["status"], "error");
    assert!(
        refused["error"].as_str().unwrap().contains("{params_file}"),
        "{refused}"
    );
    assert_eq!(s.status()["output"]["active_workloads"], json!([]));
}

/// Placeholders are expanded once, in the template: a value that contains
/// `{params_file}` or `{body}` reaches the workload exactly as sent.
#[test]
fn placeholder_text_inside_params_reaches_the_workload_unchanged() {
    let s = training(
        r#"printf '%s' {body} > "$CYBERWAVE_RESULT_FILE.body"; cp {params_file} "$CYBERWAVE_RESULT_FILE""#,
    );
    let params = json!({"note": "see {params_file} and {body}", "path": "/tmp/{body}"});
    let started = s.request(json!({"command": "training", "request_id": "ph-1", "params": params}));
    assert_eq!(started["status"], "ok", "{started}");
    let completed = event(&s, "ph-1", "completed", Duration::from_secs(5));
    assert_eq!(completed["output"]["result"], params, "{completed}");
    let body = std::fs::read_to_string(logs_dir(&s).join("training_ph-1.result.json.body"))
        .expect("the workload wrote its body");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), params);
}

#[test]
fn workload_token_replaces_the_node_token_and_is_never_written() {
    let s = Scenario::start(|n| {
        n.env_var("CYBERWAVE_TRAINING_CMD", "printf '%s|%s|%s' \"$CYBERWAVE_API_TOKEN\" \"$CYBERWAVE_API_KEY\" \"${CYBERWAVE_MQTT_PASSWORD:-none}\"; cat \"$CYBERWAVE_PARAMS_FILE\" >&2")
            .env_var("CYBERWAVE_MQTT_PASSWORD", "broker-secret")
            .env_var("CYBERWAVE_MQTT_USERNAME", "u")
    });
    let started = s.request(json!({"command": "training", "request_id": "wt", "params": {"a": 1, "cyberwave_workload_token": "short-lived-123"}}));
    assert!(!started.to_string().contains("short-lived-123"));
    let done = event(&s, "wt", "completed", Duration::from_secs(5));
    assert_eq!(
        done["output"]["stdout_tail"],
        "short-lived-123|short-lived-123|none"
    );
    assert_eq!(done["output"]["stderr_tail"], r#"{"a":1}"#);
    for entry in std::fs::read_dir(logs_dir(&s)).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".stdout.log") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            !text.contains("short-lived-123"),
            "token written to {path:?}"
        );
    }
    assert!(!s.node.stderr().contains("short-lived-123"));
    // Without a workload token the workload gets the node's.
    s.request(json!({"command": "training", "request_id": "wt2"}));
    let done = event(&s, "wt2", "completed", Duration::from_secs(5));
    assert!(done["output"]["stdout_tail"]
        .as_str()
        .unwrap()
        .starts_with(common::scenario::TOKEN));
}

#[test]
fn local_status_and_logs_commands() {
    let s = training("echo first; echo second; echo oops >&2; sleep 30");
    let started = s.request(json!({"command": "training", "request_id": "loc"}));
    let pid = started["output"]["pid"].as_i64().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::node::NODE_BIN)
            .args(args)
            .env_clear()
            .env("HOME", s.node.home())
            .env("PATH", std::env::var("PATH").unwrap())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The workload writes its lines on its own time: wait until it has.
    let written = common::restart::wait_until(Duration::from_secs(5), || {
        run(&["logs", "loc"]).1 == "first\nsecond\n"
            && run(&["logs", "loc", "--stderr"]).1 == "oops\n"
    });
    assert!(written, "{:?}", run(&["logs", "loc"]));
    let (code, table, _) = run(&["status"]);
    assert_eq!(code, Some(0));
    assert!(
        table.contains("loc") && table.contains("running") && table.contains(&pid.to_string()),
        "{table}"
    );
    let (_, json_text, _) = run(&["status", "--json"]);
    let listed: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(listed[0]["request_id"], "loc");
    assert_eq!(listed[0]["state"], "running");
    assert_eq!(run(&["logs", "loc"]).1, "first\nsecond\n");
    assert_eq!(run(&["logs", "loc", "--stderr"]).1, "oops\n");
    let (code, _, err) = run(&["logs", "nope"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no workload with request_id \"nope\""),
        "{err}"
    );
    s.request(json!({"command": "cancel", "params": {"pid": pid}}));
    event(&s, "loc", "cancelled", Duration::from_secs(5));
}

#[test]
fn logs_follow_stops_when_the_workload_ends() {
    let s = training("for i in 1 2 3; do echo tick-$i; sleep 0.3; done");
    s.request(json!({"command": "training", "request_id": "fol"}));
    let out = std::process::Command::new(common::node::NODE_BIN)
        .args(["logs", "fol", "--follow"])
        .env_clear()
        .env("HOME", s.node.home())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tick-1\ntick-2\ntick-3\n"
    );
}

#[test]
fn live_output_reassembles_to_the_log_file() {
    let s = training("for i in $(seq 1 20); do echo line-$i; sleep 0.05; done; head -c 100000 /dev/zero | tr '\\0' 'x'");
    let logs_topic = s.topic(&s.uuid, "logs");
    s.client.subscribe(&logs_topic);
    s.request(json!({"command": "training", "request_id": "live"}));
    let mut assembled = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut done = false;
    while !done && std::time::Instant::now() < deadline {
        let Some((topic, payload)) = s.client.recv(Duration::from_millis(500)) else {
            continue;
        };
        let value: Value = serde_json::from_slice(&payload).unwrap();
        if topic == logs_topic && value["stream"] == "stdout" && value["request_id"] == "live" {
            assert_eq!(
                value["offset"].as_u64().unwrap() as usize,
                assembled.len(),
                "gap or overlap"
            );
            let data = value["data"].as_str().unwrap();
            assert!(data.len() <= 64 * 1024);
            assembled.extend_from_slice(data.as_bytes());
        }
        done = value["event"] == "completed" && value["request_id"] == "live";
    }
    assert!(done, "no completed event");
    let file = std::fs::read(logs_dir(&s).join("training_live.stdout.log")).unwrap();
    assert_eq!(assembled.len(), file.len());
    assert_eq!(assembled, file);
}

#[test]
fn unwritable_log_dir_gives_a_clear_error() {
    let s = training("echo hi");
    let dir = logs_dir(&s);
    let _ = std::fs::create_dir_all(&dir);
    // A file where the directory should be: works even as root.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    let refused = s.request(json!({"command": "training", "request_id": "disk"}));
    assert_eq!(refused["status"], "error", "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("cannot write"),
        "{refused}"
    );
    assert_eq!(s.status()["status"], "ok");
}

#[test]
fn progress_is_rate_limited_and_the_latest_wins() {
    let script = "for i in $(seq 1 40); do echo \"{\\\"step\\\": $i, \\\"total\\\": 40}\" >> \"$CYBERWAVE_PROGRESS_FILE\"; sleep 0.025; done";
    let s = training(script);
    s.request(json!({"command": "training", "request_id": "rate"}));
    let mut steps = Vec::new();
    let mut times = Vec::new();
    let began = std::time::Instant::now();
    loop {
        let Some(v) = s
            .client
            .recv_json_where(Duration::from_secs(5), |_, v| v["request_id"] == "rate")
        else {
            panic!("no terminal event")
        };
        if v["event"] == "progress" {
            steps.push(v["output"]["step"].as_i64().unwrap());
            times.push(began.elapsed());
        }
        if v["event"] == "completed" {
            break;
        }
    }
    assert_eq!(
        *steps.last().unwrap(),
        40,
        "the latest progress is never dropped: {steps:?}"
    );
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    // 40 lines over about a second: at most 4 a second, plus the final flush.
    let span = times.last().unwrap().saturating_sub(times[0]).as_secs_f64();
    assert!(
        steps.len() as f64 <= span * 4.0 + 2.0,
        "{} events in {span:.2}s: {steps:?}",
        steps.len()
    );
}

#[test]
fn files_of_old_finished_workloads_are_removed_at_start() {
    let old_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 3 * 86_400_000;
    let record = |id: &str, state: &str| {
        json!({
            "request_id": id, "workload_type": "training", "state": state,
            "created_unix_ms": old_ms, "pid": null, "start_time": null, "started_unix_ms": old_ms,
            "supervisor_pid": null, "supervisor_start_time": null,
            "stdout_log": format!("/x/training_{id}.stdout.log"), "stderr_log": "/x/e",
            "finished_unix_ms": old_ms
        })
        .to_string()
    };
    let s = Scenario::start(|n| {
        n.env_var("CYBERWAVE_TRAINING_CMD", "echo again")
            .env_var("CYBERWAVE_LOG_RETENTION_DAYS", "2")
            .home_file(
                ".cyberwave/workload_logs/training_old.record.json",
                &record("old", "completed"),
            )
            .home_file(
                ".cyberwave/workload_logs/training_old.stdout.log",
                "old output\n",
            )
    });
    let dir = logs_dir(&s);
    assert!(
        !dir.join("training_old.record.json").exists(),
        "expired record kept"
    );
    assert!(
        !dir.join("training_old.stdout.log").exists(),
        "expired log kept"
    );
    // Its request_id is forgotten with it and may run again.
    let started = s.request(json!({"command": "training", "request_id": "old"}));
    assert_eq!(started["event"], "started", "{started}");
    event(&s, "old", "completed", Duration::from_secs(5));
}

#[test]
fn workloads_start_with_default_signal_dispositions() {
    // With SIGPIPE ignored, `yes` would complain about a broken pipe.
    let s = training("yes | head -n 1; grep -E '^Sig(Ign|Blk)' /proc/self/status");
    s.request(json!({"command": "training", "request_id": "sigs"}));
    let done = event(&s, "sigs", "completed", Duration::from_secs(5));
    assert_eq!(done["output"]["stderr_tail"], "", "{done}");
    let stdout = done["output"]["stdout_tail"].as_str().unwrap();
    // Signals 1 to 31. (glibc's posix_spawn leaves its two internal signals,
    // 32 and 33, ignored; no program can use those.)
    let mask = |name: &str| {
        let line = stdout.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split('\t').nth(1).unwrap(), 16).unwrap() & 0x7fff_ffff
    };
    assert_eq!(mask("SigIgn:"), 0, "{stdout}");
    assert_eq!(mask("SigBlk:"), 0, "{stdout}");
}
