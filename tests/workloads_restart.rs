//! Workloads across node restarts and crashes: adoption of running
//! workloads after a graceful stop or a SIGKILL, exit codes that arrive
//! while no node is running, cancel of an adopted workload, and pids that
//! are not (or no longer) the workload's: killed while the node was down,
//! or pointing at a stranger (a pid reused by one: `tests/pid_reuse.rs`).
//!
//! Every process a test leaves running (workloads, their supervisors, the
//! strangers some tests start) is SIGKILLed by process group when the test
//! ends, pass or fail: see [`Reaper`].

mod common;

use std::thread;
use std::time::Duration;

use common::restart::{
    active, again, alive, ask_status, go, kill_while_the_node_is_down, logs_dir, more_terminals,
    read_record, record_path, request, restart, spawn_again, start_workload, stop_gracefully,
    terminal, training, wait_until, Gate, Reaper, Stranger,
};
use common::scenario::{Scenario, READY};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Adoption after a stop or a crash

/// Starts a workload that exits 4 when told to, takes the node down with
/// `down`, and checks that the next node adopts the workload and reports
/// its true exit code exactly once.
fn adopted_workload_reports_its_exit_code(down: impl FnOnce(&Scenario)) {
    const TEMPLATE: &str = "while [ ! -e go ]; do sleep 0.05; done; exit 4";
    let s = training(TEMPLATE);
    let reaper = Reaper::new(&s);
    let started = start_workload(&s, &reaper, "adopt-1");
    let pid = started["pid"].as_i64().unwrap() as i32;

    down(&s);
    assert!(alive(pid), "the workload must outlive the node");

    let node = restart(&s, TEMPLATE);
    let status = ask_status(&s, &node);
    let listed = active(&status);
    assert_eq!(listed.len(), 1, "{status}");
    assert_eq!(listed[0]["request_id"], "adopt-1", "{status}");
    assert_eq!(listed[0]["pid"], pid, "the adopted workload keeps its pid");
    assert_eq!(listed[0]["type"], "training");
    assert_eq!(status["output"]["is_busy"], true, "{status}");

    go(&s);
    let failed = terminal(&s.client, &node, "adopt-1", Duration::from_secs(6));
    assert_eq!(failed["event"], "failed", "{failed}");
    assert_eq!(failed["status"], "error");
    assert_eq!(failed["instance_uuid"], s.uuid.as_str());
    assert_eq!(failed["output"]["exit_code"], 4, "{failed}");
    assert_eq!(failed["output"]["signal"], Value::Null);
    assert_eq!(failed["output"]["pid"], pid);
    assert!(
        failed["error"].as_str().unwrap().contains("code 4"),
        "{failed}"
    );
    let extra = more_terminals(&s.client, "adopt-1", Duration::from_secs(1));
    assert!(extra.is_empty(), "a second terminal event: {extra:?}");

    let status = ask_status(&s, &node);
    assert!(active(&status).is_empty(), "{status}");
    assert_eq!(read_record(&s, "adopt-1")["state"], "failed");
}

#[test]
fn workload_outlives_sigterm_and_is_adopted_with_its_exit_code() {
    adopted_workload_reports_its_exit_code(stop_gracefully);
}

#[test]
fn workload_outlives_kill_9_and_is_adopted_with_its_exit_code() {
    adopted_workload_reports_its_exit_code(|s| {
        s.node.kill9();
        assert!(s.node.try_status().is_some());
    });
}

#[test]
fn exit_while_the_node_is_down_is_reported_by_the_next_node() {
    const TEMPLATE: &str = "while [ ! -e go ]; do sleep 0.05; done; exit 0";
    let s = training(TEMPLATE);
    let reaper = Reaper::new(&s);
    let pid = start_workload(&s, &reaper, "down-1")["pid"]
        .as_i64()
        .unwrap() as i32;
    stop_gracefully(&s);
    go(&s);
    assert!(
        wait_until(Duration::from_secs(5), || !alive(pid)),
        "the workload did not end"
    );
    assert!(
        wait_until(Duration::from_secs(2), || logs_dir(&s)
            .join("training_down-1.exit.json")
            .exists()),
        "the supervisor wrote no exit file"
    );

    let node = spawn_again(&s, TEMPLATE);
    let completed = terminal(&s.client, &node, "down-1", Duration::from_secs(10));
    assert_eq!(completed["event"], "completed", "{completed}");
    assert_eq!(completed["status"], "ok");
    assert_eq!(completed["output"]["exit_code"], 0);
    assert_eq!(completed["output"]["pid"], pid);
    assert!(node.wait_for_log(READY, Duration::from_secs(10)));
    let status = ask_status(&s, &node);
    assert!(active(&status).is_empty(), "{status}");
}

/// The next node learns of the exit before its MQTT connection is up (the
/// gate keeps it off the broker until then): the event is stored in the
/// outbox and queued for publishing, and must still go out only once when
/// the connection comes.
#[test]
fn exit_while_the_node_is_down_is_reported_once() {
    const TEMPLATE: &str = "while [ ! -e go ]; do sleep 0.05; done; exit 0";
    let s = training(TEMPLATE);
    let reaper = Reaper::new(&s);
    let pid = start_workload(&s, &reaper, "once-1")["pid"]
        .as_i64()
        .unwrap() as i32;
    stop_gracefully(&s);
    go(&s);
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));

    let gate = Gate::start(s.broker.port());
    gate.close();
    let node = again(&s, TEMPLATE)
        .env_var("CYBERWAVE_MQTT_PORT", gate.port().to_string())
        .spawn();
    assert!(
        node.wait_for_log("training workload completed", Duration::from_secs(10)),
        "{}",
        node.stderr()
    );
    gate.open();
    terminal(&s.client, &node, "once-1", Duration::from_secs(10));
    let extra = more_terminals(&s.client, "once-1", Duration::from_secs(1));
    assert!(
        extra.is_empty(),
        "the terminal event was published {} times:\n{extra:?}\nnode log:\n{}",
        extra.len() + 1,
        node.stderr()
    );
}

#[test]
fn adopted_workload_can_be_cancelled() {
    const TEMPLATE: &str = "sleep 30";
    let s = training(TEMPLATE);
    let reaper = Reaper::new(&s);
    let pid = start_workload(&s, &reaper, "cx-1")["pid"].as_i64().unwrap() as i32;
    stop_gracefully(&s);
    assert!(alive(pid));
    let node = restart(&s, TEMPLATE);

    let cancel = request(
        &s,
        &node,
        json!({"command": "cancel", "request_id": "cancel-cx-1", "params": {"workload_request_id": "cx-1"}}),
    );
    assert_eq!(cancel["status"], "ok", "{cancel}");
    let out = &cancel["output"];
    assert_eq!(out["signal"], "SIGTERM", "{cancel}");
    assert_eq!(out["pid"], pid);
    assert_eq!(out["workload_request_id"], "cx-1");
    assert_eq!(out["workload_type"], "training");
    assert_eq!(out["message"], "Workload cancelled with SIGTERM");

    let cancelled = terminal(&s.client, &node, "cx-1", Duration::from_secs(5));
    assert_eq!(cancelled["event"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["status"], "error");
    assert_eq!(cancelled["error"], "Workload cancelled with SIGTERM");
    assert_eq!(cancelled["output"]["signal"], "SIGTERM", "{cancelled}");
    assert!(
        wait_until(Duration::from_secs(3), || !alive(pid)),
        "the workload survived its cancel"
    );
    let status = ask_status(&s, &node);
    assert!(active(&status).is_empty(), "{status}");
}

// ---------------------------------------------------------------------------
// Pids that are not (or no longer) the workload

#[test]
fn workload_killed_while_the_node_is_down_is_reported_not_adopted() {
    const TEMPLATE: &str = "sleep 30";
    let s = training(TEMPLATE);
    let reaper = Reaper::new(&s);
    let pid = start_workload(&s, &reaper, "gone-1")["pid"]
        .as_i64()
        .unwrap() as i32;
    stop_gracefully(&s);
    kill_while_the_node_is_down(&s, pid, "gone-1");

    let node = restart(&s, TEMPLATE);
    let failed = terminal(&s.client, &node, "gone-1", Duration::from_secs(5));
    assert_eq!(failed["event"], "failed", "{failed}");
    assert_eq!(failed["output"]["signal"], "SIGKILL", "{failed}");
    assert_eq!(failed["output"]["exit_code"], Value::Null);
    assert!(
        failed["error"].as_str().unwrap().contains("SIGKILL"),
        "{failed}"
    );
    let status = ask_status(&s, &node);
    assert!(active(&status).is_empty(), "{status}");
    assert_eq!(status["output"]["is_busy"], false);
}

/// The state a pid reuse leaves behind when it happens while the node still
/// counts the workload as running (its exit not yet processed): the record
/// names pid P with the workload's start time, and P now belongs to a
/// stranger that leads a process group of its own. To get there
/// deterministically the record of a running workload is edited while the
/// node is down (its supervisor stays alive, so the next node adopts the
/// entry as running). A cancel must then leave P alone: P is not the
/// process the node started. (It may still reach the workload's real
/// processes, through its cgroup or its supervisor's tree.)
#[test]
fn cancel_never_signals_a_stranger_that_took_the_workloads_pid() {
    const TEMPLATE: &str = "sleep 30";
    let s = training(TEMPLATE);
    let reaper = Reaper::new(&s);
    start_workload(&s, &reaper, "strange-1");
    stop_gracefully(&s);

    let mut stranger = Stranger::spawn();
    reaper.add(stranger.pid());
    let mut record = read_record(&s, "strange-1");
    record["pid"] = json!(stranger.pid());
    std::fs::write(
        record_path(&s, "strange-1"),
        serde_json::to_vec_pretty(&record).unwrap(),
    )
    .unwrap();

    let node = restart(&s, TEMPLATE);
    let cancel = request(
        &s,
        &node,
        json!({"command": "cancel", "request_id": "cancel-strange-1", "params": {"workload_request_id": "strange-1", "signal": "SIGKILL"}}),
    );
    thread::sleep(Duration::from_millis(200));
    assert!(
        stranger.alive(),
        "the node killed a process it did not start; cancel answered {cancel}"
    );
}
