//! The workload queue (`max_queued_workloads`) end to end: order and
//! positions, a start as soon as a slot frees, cancel while queued, a full
//! queue, a redelivered request_id, and the queue across a graceful
//! restart, a kill -9 and the leftovers of a crash.
//!
//! Every workload here appends `<request_id> <API token>` to `runs.txt` and
//! then waits until the test releases it (`go_<request_id>`), so the test
//! decides when a slot frees, and `runs.txt` says what ran, in which order,
//! how many times. The loop also ends when the test's directory is gone.
//! Every message on the response topic is kept in arrival order
//! ([`Seen`]), so "after" means "arrived after".

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::restart::{again, is_terminal, logs_dir, stop_gracefully, wait_until, Reaper};
use common::scenario::{Scenario, READY, TOKEN};
use common::{Node, NodeProcess};
use serde_json::{json, Value};
use tempfile::TempDir;

const TEMPLATE: &str = r#"echo "$CYBERWAVE_REQUEST_ID $CYBERWAVE_API_TOKEN" >> "$QUEUE_TEST_DIR/runs.txt"; while [ -d "$QUEUE_TEST_DIR" ] && [ ! -e "$QUEUE_TEST_DIR/go_$CYBERWAVE_REQUEST_ID" ]; do sleep 0.02; done"#;

/// How long any one message may take.
const WAIT: Duration = Duration::from_secs(10);

/// The files the workloads share with the test.
struct Gates(TempDir);

impl Gates {
    fn new() -> Gates {
        Gates(tempfile::tempdir().unwrap())
    }

    fn dir(&self) -> &Path {
        self.0.path()
    }

    /// Lets the workload `request_id` end (exit code 0).
    fn release(&self, request_id: &str) {
        std::fs::write(self.dir().join(format!("go_{request_id}")), "").unwrap();
    }

    /// `(request_id, token)` of every run, in the order they started.
    fn runs(&self) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(self.dir().join("runs.txt")).unwrap_or_default();
        text.lines()
            .map(|l| {
                let (id, token) = l.split_once(' ').unwrap_or((l, ""));
                (id.to_owned(), token.to_owned())
            })
            .collect()
    }

    fn run_ids(&self) -> Vec<String> {
        self.runs().into_iter().map(|(id, _)| id).collect()
    }
}

/// A node with the test template, the gates' dir and a queue of `max_queued`.
fn configure(node: Node, gates: &Gates, max_queued: u32) -> Node {
    node.env_var("CYBERWAVE_TRAINING_CMD", TEMPLATE)
        .env_var("QUEUE_TEST_DIR", gates.dir().to_str().unwrap())
        .env_var("CYBERWAVE_MAX_QUEUED_WORKLOADS", max_queued.to_string())
}

fn start(gates: &Gates, max_queued: u32) -> Scenario {
    Scenario::start(|n| configure(n, gates, max_queued))
}

/// A second node on the first one's HOME (records, queue, outbox), ready.
fn restart(s: &Scenario, gates: &Gates, max_queued: u32) -> NodeProcess {
    let node = configure(again(s, TEMPLATE), gates, max_queued).spawn();
    assert!(
        node.wait_for_log(READY, WAIT),
        "the restarted node never became ready:\n{}",
        node.stderr()
    );
    node
}

fn queue_dir(s: &Scenario) -> PathBuf {
    logs_dir(s).join("queue")
}

fn queue_files(s: &Scenario) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(queue_dir(s)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// Every message on the response topic, in arrival order.
struct Seen<'a> {
    s: &'a Scenario,
    all: Vec<Value>,
}

impl<'a> Seen<'a> {
    fn new(s: &'a Scenario) -> Seen<'a> {
        Seen { s, all: Vec::new() }
    }

    /// The first message from index `from` on for which `pred` holds, and
    /// its index; panics with `node`'s log after [`WAIT`].
    fn wait(
        &mut self,
        node: &NodeProcess,
        from: usize,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> (usize, Value) {
        let deadline = Instant::now() + WAIT;
        let mut at = from;
        loop {
            while at < self.all.len() {
                if pred(&self.all[at]) {
                    return (at, self.all[at].clone());
                }
                at += 1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((topic, payload)) = self.s.client.recv(left) else {
                panic!(
                    "no {what} within {WAIT:?}; seen:\n{:#?}\nnode log:\n{}",
                    self.all,
                    node.stderr()
                );
            };
            if topic != self.s.response_topic() {
                continue;
            }
            if let Ok(value) = serde_json::from_slice::<Value>(&payload) {
                self.all.push(value);
            }
        }
    }

    /// Sends a command and returns its one answer (not a terminal event).
    fn send(&mut self, node: &NodeProcess, command: Value) -> Value {
        let id = command["request_id"].clone();
        let from = self.all.len();
        self.s
            .client
            .publish_json(&self.s.topic(&self.s.uuid, "command"), &command);
        self.wait(node, from, &format!("answer to {command}"), |v| {
            v["request_id"] == id && !is_terminal(v) && v["event"] != "progress"
        })
        .1
    }

    fn training(&mut self, node: &NodeProcess, request_id: &str) -> Value {
        self.send(
            node,
            json!({"command": "training", "request_id": request_id}),
        )
    }

    fn status(&mut self, node: &NodeProcess) -> Value {
        let id = uuid::Uuid::new_v4().to_string();
        self.send(node, json!({"command": "status", "request_id": id}))["output"].clone()
    }

    /// The index of `event` of `request_id` (searched from the start).
    fn event(&mut self, node: &NodeProcess, request_id: &str, event: &str) -> usize {
        let what = format!("{event} event of {request_id}");
        self.wait(node, 0, &what, |v| {
            v["request_id"] == request_id && v["event"] == event
        })
        .0
    }

    /// How many `event`s of `request_id` arrived so far.
    fn count(&self, request_id: &str, event: &str) -> usize {
        self.all
            .iter()
            .filter(|v| v["request_id"] == request_id && v["event"] == event)
            .count()
    }
}

fn assert_queued(reply: &Value, request_id: &str, position: u64, queued: u64) {
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["event"], "queued", "{reply}");
    let out = &reply["output"];
    assert_eq!(out["position"], position, "{reply}");
    assert_eq!(out["queued"], queued, "{reply}");
    assert_eq!(out["workload_request_id"], request_id);
    assert_eq!(out["workload_type"], "training");
    assert!(
        out["message"]
            .as_str()
            .unwrap()
            .contains(&format!("position {position}")),
        "{reply}"
    );
}

/// `(request_id, position)` of the status's `queued_workloads`.
fn queued_list(status: &Value) -> Vec<(String, u64)> {
    status["queued_workloads"]
        .as_array()
        .unwrap_or_else(|| panic!("no queued_workloads: {status}"))
        .iter()
        .map(|q| {
            assert_eq!(q["type"], "training", "{q}");
            assert!(q["queued_for_seconds"].as_u64().is_some(), "{q}");
            (
                q["request_id"].as_str().unwrap().to_owned(),
                q["position"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Releases `request_id` and waits for its `completed` event.
fn finish(seen: &mut Seen, node: &NodeProcess, gates: &Gates, request_id: &str) -> usize {
    gates.release(request_id);
    seen.event(node, request_id, "completed")
}

// ---------------------------------------------------------------------------

#[test]
fn queued_in_order_with_positions_and_started_as_soon_as_a_slot_frees() {
    let gates = Gates::new();
    let s = start(&gates, 3);
    let _reaper = Reaper::new(&s);
    let mut seen = Seen::new(&s);

    assert_eq!(seen.training(&s.node, "q1")["event"], "started");
    assert_queued(&seen.training(&s.node, "q2"), "q2", 1, 1);
    let with_token = json!({"command": "training", "request_id": "q3",
                            "params": {"cyberwave_workload_token": "wt-3", "n": 3}});
    assert_queued(&seen.send(&s.node, with_token), "q3", 2, 2);

    // On disk before the reply, without the workload's token.
    let files = queue_files(&s);
    assert_eq!(files.len(), 2, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(!text.contains("wt-3"), "the token reached the disk: {text}");
    }
    let status = seen.status(&s.node);
    assert_eq!(queued_list(&status), [("q2".into(), 1), ("q3".into(), 2)]);
    assert_eq!(status["is_busy"], true);
    assert_eq!(status["max_queued_workloads"], 3);
    assert_eq!(status["active_workloads"][0]["request_id"], "q1");

    let q1_done = finish(&mut seen, &s.node, &gates, "q1");
    let q2_started = seen.event(&s.node, "q2", "started");
    assert!(q2_started > q1_done, "q2 started before q1 ended");
    let started = &seen.all[q2_started];
    assert_eq!(started["status"], "ok");
    assert!(started["output"]["pid"].as_i64().unwrap() > 0, "{started}");
    assert_eq!(started["output"]["workload_request_id"], "q2");
    let status = seen.status(&s.node);
    assert_eq!(queued_list(&status), [("q3".into(), 1)]);

    let q2_done = finish(&mut seen, &s.node, &gates, "q2");
    assert!(seen.event(&s.node, "q3", "started") > q2_done);
    finish(&mut seen, &s.node, &gates, "q3");

    let runs = gates.runs();
    assert_eq!(gates.run_ids(), ids(&["q1", "q2", "q3"]));
    assert_eq!(runs[2].1, "wt-3", "the queued workload lost its own token");
    assert_eq!(
        runs[1].1, TOKEN,
        "a workload without a token gets the node's"
    );
    for id in ["q1", "q2", "q3"] {
        assert_eq!(seen.count(id, "started"), 1, "{id}");
    }
    assert!(queue_files(&s).is_empty(), "{:?}", queue_files(&s));
    assert!(queued_list(&seen.status(&s.node)).is_empty());
}

#[test]
fn cancel_while_queued_removes_it_without_a_process_and_the_next_one_still_starts() {
    let gates = Gates::new();
    let s = start(&gates, 3);
    let _reaper = Reaper::new(&s);
    let mut seen = Seen::new(&s);
    seen.training(&s.node, "c1");
    assert_queued(&seen.training(&s.node, "c2"), "c2", 1, 1);
    assert_queued(&seen.training(&s.node, "c3"), "c3", 2, 2);

    let cancel = seen.send(
        &s.node,
        json!({"command": "cancel", "request_id": "x-c2", "params": {"workload_request_id": "c2"}}),
    );
    assert_eq!(cancel["status"], "ok", "{cancel}");
    let out = &cancel["output"];
    assert!(
        out["message"]
            .as_str()
            .unwrap()
            .contains("removed from the queue"),
        "{cancel}"
    );
    assert_eq!(out["position"], 1, "{cancel}");
    assert_eq!(out["pid"], Value::Null);
    assert_eq!(out["workload_request_id"], "c2");

    let at = seen.event(&s.node, "c2", "cancelled");
    let cancelled = seen.all[at].clone();
    assert_eq!(cancelled["status"], "error", "{cancelled}");
    assert!(
        cancelled["error"]
            .as_str()
            .unwrap()
            .contains("never started"),
        "{cancelled}"
    );
    assert_eq!(cancelled["output"]["exit_code"], Value::Null, "{cancelled}");
    assert_eq!(cancelled["output"]["pid"], Value::Null, "{cancelled}");
    assert!(
        cancelled["output"]["message"]
            .as_str()
            .unwrap()
            .contains("no process was started"),
        "{cancelled}"
    );
    assert_eq!(queued_list(&seen.status(&s.node)), [("c3".into(), 1)]);
    assert_eq!(queue_files(&s).len(), 1);

    finish(&mut seen, &s.node, &gates, "c1");
    seen.event(&s.node, "c3", "started");
    finish(&mut seen, &s.node, &gates, "c3");
    assert_eq!(
        gates.run_ids(),
        ids(&["c1", "c3"]),
        "a cancelled request ran"
    );
    assert_eq!(seen.count("c2", "started"), 0);
    assert_eq!(seen.count("c2", "cancelled"), 1);
}

#[test]
fn a_full_queue_is_refused_naming_both_limits() {
    let gates = Gates::new();
    let s = start(&gates, 1);
    let _reaper = Reaper::new(&s);
    let mut seen = Seen::new(&s);
    seen.training(&s.node, "f1");
    assert_queued(&seen.training(&s.node, "f2"), "f2", 1, 1);
    let full = seen.training(&s.node, "f3");
    assert_eq!(full["status"], "error", "{full}");
    let error = full["error"].as_str().unwrap();
    for part in [
        "the node is busy",
        "1 of 1 workloads running (max_concurrent_workloads)",
        "1 of 1 waiting (max_queued_workloads)",
    ] {
        assert!(error.contains(part), "{part:?} missing: {error}");
    }
    assert_eq!(queue_files(&s).len(), 1);

    // Room again once the queue moves on.
    finish(&mut seen, &s.node, &gates, "f1");
    seen.event(&s.node, "f2", "started");
    assert_queued(&seen.training(&s.node, "f3"), "f3", 1, 1);
    finish(&mut seen, &s.node, &gates, "f2");
    finish(&mut seen, &s.node, &gates, "f3");
    assert_eq!(gates.run_ids(), ids(&["f1", "f2", "f3"]));
}

#[test]
fn a_redelivered_request_id_while_queued_is_refused_with_its_position() {
    let gates = Gates::new();
    let s = start(&gates, 3);
    let _reaper = Reaper::new(&s);
    let mut seen = Seen::new(&s);
    seen.training(&s.node, "d1");
    seen.training(&s.node, "d2");
    seen.training(&s.node, "d3");
    let again = seen.training(&s.node, "d3");
    assert_eq!(again["status"], "error", "{again}");
    let error = again["error"].as_str().unwrap();
    assert!(error.contains("already queued"), "{again}");
    assert!(error.contains("position 2 of 2"), "{again}");
    assert_eq!(again["output"]["state"], "queued", "{again}");
    assert_eq!(again["output"]["position"], 2, "{again}");
    assert_eq!(queue_files(&s).len(), 2);
    assert_eq!(
        queued_list(&seen.status(&s.node)),
        [("d2".into(), 1), ("d3".into(), 2)]
    );
    for id in ["d1", "d2", "d3"] {
        finish(&mut seen, &s.node, &gates, id);
    }
    assert_eq!(gates.run_ids(), ids(&["d1", "d2", "d3"]));
    assert_eq!(seen.count("d3", "started"), 1);
}

#[test]
fn the_queue_survives_a_graceful_restart_in_order_and_nothing_runs_twice() {
    let gates = Gates::new();
    let s = start(&gates, 5);
    let _reaper = Reaper::new(&s);
    let mut seen = Seen::new(&s);
    seen.training(&s.node, "g1");
    for (n, id) in ["g2", "g3", "g4"].into_iter().enumerate() {
        assert_queued(&seen.training(&s.node, id), id, n as u64 + 1, n as u64 + 1);
    }
    stop_gracefully(&s);

    let node = restart(&s, &gates, 5);
    let status = seen.status(&node);
    assert_eq!(
        status["active_workloads"][0]["request_id"], "g1",
        "{status}"
    );
    assert_eq!(
        queued_list(&status),
        [("g2".into(), 1), ("g3".into(), 2), ("g4".into(), 3)]
    );
    for (id, next) in [
        ("g1", Some("g2")),
        ("g2", Some("g3")),
        ("g3", Some("g4")),
        ("g4", None),
    ] {
        let done = finish(&mut seen, &node, &gates, id);
        if let Some(next) = next {
            assert!(
                seen.event(&node, next, "started") > done,
                "{next} before {id} ended"
            );
        }
    }
    assert_eq!(gates.run_ids(), ids(&["g1", "g2", "g3", "g4"]));
    for id in ["g2", "g3", "g4"] {
        assert_eq!(seen.count(id, "started"), 1, "{id}");
        assert_eq!(seen.count(id, "completed"), 1, "{id}");
    }
    assert!(queue_files(&s).is_empty());
}

/// The running workload ends while no node runs: the next node reports it
/// and starts the queue's head at once.
#[test]
fn the_queue_survives_kill_9_in_order_and_nothing_runs_twice() {
    let gates = Gates::new();
    let s = start(&gates, 5);
    let _reaper = Reaper::new(&s);
    let mut seen = Seen::new(&s);
    seen.training(&s.node, "k1");
    seen.training(&s.node, "k2");
    seen.training(&s.node, "k3");
    s.node.kill9();
    gates.release("k1");
    assert!(
        wait_until(WAIT, || logs_dir(&s).join("training_k1.exit.json").exists()),
        "k1 did not end"
    );

    let node = restart(&s, &gates, 5);
    let k1_done = seen.event(&node, "k1", "completed");
    assert!(seen.event(&node, "k2", "started") > k1_done);
    assert_eq!(queued_list(&seen.status(&node)), [("k3".into(), 1)]);
    let k2_done = finish(&mut seen, &node, &gates, "k2");
    assert!(seen.event(&node, "k3", "started") > k2_done);
    finish(&mut seen, &node, &gates, "k3");
    assert_eq!(gates.run_ids(), ids(&["k1", "k2", "k3"]));
    for id in ["k2", "k3"] {
        assert_eq!(seen.count(id, "started"), 1, "{id}");
    }
    assert!(queue_files(&s).is_empty());
}

/// What a crash can leave: the queue file of a workload that had already
/// started (the node died before removing it), and a cancelled one whose
/// `cancelled` event was not yet recorded. Neither runs; the cancel is
/// reported.
#[test]
fn crash_leftovers_in_the_queue_never_run_twice_and_a_cancel_is_still_reported() {
    let gates = Gates::new();
    let s = start(&gates, 5);
    let _reaper = Reaper::new(&s);
    let mut seen = Seen::new(&s);
    seen.training(&s.node, "l1");
    seen.training(&s.node, "l2");
    let [file] = queue_files(&s).try_into().unwrap();
    let l2_file = std::fs::read(&file).unwrap();
    finish(&mut seen, &s.node, &gates, "l1");
    seen.event(&s.node, "l2", "started");
    assert!(!file.exists(), "the queue file outlived the start");
    s.node.kill9();

    std::fs::write(&file, &l2_file).unwrap();
    let mut cancelled: Value = serde_json::from_slice(&l2_file).unwrap();
    cancelled["seq"] = json!(99);
    cancelled["request_id"] = json!("l9");
    cancelled["ended"] = json!({"event": "cancelled", "at_unix_ms": 1});
    let l9 = queue_dir(&s).join("000000000099_l9.json");
    std::fs::write(&l9, serde_json::to_vec(&cancelled).unwrap()).unwrap();

    let node = restart(&s, &gates, 5);
    let at = seen.event(&node, "l9", "cancelled");
    assert!(
        seen.all[at]["error"]
            .as_str()
            .unwrap()
            .contains("never started"),
        "{}",
        seen.all[at]
    );
    let status = seen.status(&node);
    assert!(queued_list(&status).is_empty(), "{status}");
    assert_eq!(
        status["active_workloads"][0]["request_id"], "l2",
        "{status}"
    );
    assert!(
        wait_until(WAIT, || queue_files(&s).is_empty()),
        "{:?}",
        queue_files(&s)
    );
    finish(&mut seen, &node, &gates, "l2");
    assert_eq!(gates.run_ids(), ids(&["l1", "l2"]));
    assert_eq!(seen.count("l2", "started"), 1);
    assert_eq!(seen.count("l9", "started"), 0);
}

/// A queued workload whose turn comes after a restart that removed its
/// template: a `failed` event through the outbox, nothing run, the queue
/// file gone.
#[test]
fn a_queued_workload_that_cannot_start_when_its_turn_comes_fails_without_running() {
    let gates = Gates::new();
    let s = start(&gates, 5);
    let _reaper = Reaper::new(&s);
    let mut seen = Seen::new(&s);
    seen.training(&s.node, "t1");
    seen.training(&s.node, "t2");
    stop_gracefully(&s);

    // Empty counts as unset: no training template on the next node.
    let node = configure(again(&s, TEMPLATE), &gates, 5)
        .env_var("CYBERWAVE_TRAINING_CMD", "")
        .spawn();
    assert!(node.wait_for_log(READY, WAIT), "{}", node.stderr());
    finish(&mut seen, &node, &gates, "t1");
    let at = seen.event(&node, "t2", "failed");
    let failed = &seen.all[at];
    assert_eq!(failed["status"], "error", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("could not be started"), "{failed}");
    assert!(
        error.contains("no training command is configured"),
        "{failed}"
    );
    assert_eq!(failed["output"]["exit_code"], Value::Null, "{failed}");
    assert_eq!(failed["output"]["pid"], Value::Null, "{failed}");
    assert_eq!(seen.count("t2", "started"), 0);
    assert_eq!(gates.run_ids(), ids(&["t1"]));
    assert!(
        wait_until(WAIT, || queue_files(&s).is_empty()),
        "{:?}",
        queue_files(&s)
    );
    assert!(queued_list(&seen.status(&node)).is_empty());
}
