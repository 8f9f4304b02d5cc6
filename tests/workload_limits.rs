//! Files a workload leaves for the node to read, made hostile: a result file
//! that never ends (`/dev/zero`), one that blocks (a FIFO), one far over
//! `max_result_bytes`, a progress line over a megabyte, and a workload
//! record that is empty or torn. Each time the node must stay small and
//! responsive, report exactly one terminal event with the true exit code,
//! and say what it did not read.
//!
//! Node memory is watched from a thread every 20 ms; past [`RSS_KILL`] the
//! node is SIGKILLed before it can eat the machine (the unfixed node grew
//! about 550 MiB/s on `/dev/zero`).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::node::rss_kib;
use common::restart::{
    logs_dir, record_path, restart, stop_gracefully, terminal, training, wait_until, Reaper,
};
use common::scenario::Scenario;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// Where the watchdog stops a runaway node.
const RSS_KILL: u64 = 1024 * 1024;
/// How long a `status` may take.
const STATUS_LIMIT: Duration = Duration::from_secs(1);

/// Samples the node's RSS every 20 ms, keeps the peak, and SIGKILLs the
/// node when it passes [`RSS_KILL`].
struct RssWatch {
    /// The node's RSS when the watch started.
    baseline_kib: u64,
    peak: Arc<AtomicU64>,
    killed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let peak = Arc::new(AtomicU64::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, k, s) = (peak.clone(), killed.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Some(rss) = rss_kib(pid) else { return };
                p.fetch_max(rss, Ordering::SeqCst);
                if rss > RSS_KILL {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    k.store(true, Ordering::SeqCst);
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
        RssWatch {
            baseline_kib: rss_kib(pid).unwrap_or(0),
            peak,
            killed,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns (peak KiB, whether the node was killed).
    fn finish(mut self) -> (u64, bool) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.peak.load(Ordering::SeqCst),
            self.killed.load(Ordering::SeqCst),
        )
    }
}

/// What the cloud saw of one workload while `status` was asked again and
/// again.
#[derive(Debug, Default)]
struct Observed {
    terminals: Vec<Value>,
    progress: Vec<Value>,
    slowest_status: Duration,
    unanswered_status: u32,
    peak_rss_kib: u64,
    /// [`common::node::flood_rss_limit_kib`] of the RSS before the command.
    rss_limit_kib: u64,
    killed_for_rss: bool,
}

/// Asks `status` in a loop (each answer awaited for at most a second)
/// while collecting `request_id`'s events, until a terminal event has been
/// seen and `settle` has passed after it (to catch a second one), or
/// `timeout`.
fn observe(
    s: &Scenario,
    watch: RssWatch,
    request_id: &str,
    timeout: Duration,
    settle: Duration,
) -> Observed {
    let mut seen = Observed {
        rss_limit_kib: common::node::flood_rss_limit_kib(watch.baseline_kib),
        ..Observed::default()
    };
    let deadline = Instant::now() + timeout;
    let mut ended_at: Option<Instant> = None;
    while Instant::now() < deadline && ended_at.is_none_or(|t| t.elapsed() < settle) {
        if watch.killed.load(Ordering::SeqCst) || s.node.try_status().is_some() {
            break;
        }
        let probe = uuid::Uuid::new_v4().to_string();
        s.client.publish_json(
            &s.topic(&s.uuid, "command"),
            &json!({"command": "status", "request_id": probe}),
        );
        let asked = Instant::now();
        let mut answered = false;
        while asked.elapsed() < STATUS_LIMIT {
            let left = STATUS_LIMIT.saturating_sub(asked.elapsed());
            let Some(v) = s.client.recv_json_where(left, |_, _| true) else {
                break;
            };
            if v["request_id"] == probe.as_str() {
                seen.slowest_status = seen.slowest_status.max(asked.elapsed());
                answered = true;
                break;
            }
            if v["request_id"] != request_id {
                continue;
            }
            match v["event"].as_str() {
                Some("completed" | "failed" | "cancelled") => {
                    ended_at.get_or_insert_with(Instant::now);
                    seen.terminals.push(v);
                }
                Some("progress") => seen.progress.push(v),
                _ => {}
            }
        }
        if !answered {
            seen.unanswered_status += 1;
            seen.slowest_status = seen.slowest_status.max(asked.elapsed());
        }
        thread::sleep(Duration::from_millis(50));
    }
    (seen.peak_rss_kib, seen.killed_for_rss) = watch.finish();
    eprintln!(
        "{request_id}: node RSS peak {} KiB, slowest status {:?}, {} terminal event(s)",
        seen.peak_rss_kib,
        seen.slowest_status,
        seen.terminals.len()
    );
    seen
}

/// The checks every hostile-file test shares: the node stayed small and
/// answered, and reported the workload exactly once.
fn assert_healthy(s: &Scenario, seen: &Observed) -> Value {
    let log = || s.node.stderr();
    assert!(
        !seen.killed_for_rss,
        "the node passed {} MiB and was killed; {seen:?}",
        RSS_KILL / 1024
    );
    assert!(
        seen.peak_rss_kib < seen.rss_limit_kib,
        "node RSS peaked at {} KiB (limit {} KiB); {seen:?}",
        seen.peak_rss_kib,
        seen.rss_limit_kib
    );
    assert_eq!(
        seen.unanswered_status,
        0,
        "status went unanswered; {seen:?}\n{}",
        log()
    );
    assert!(
        seen.slowest_status < STATUS_LIMIT,
        "status took {:?}",
        seen.slowest_status
    );
    assert_eq!(
        seen.terminals.len(),
        1,
        "exactly one terminal event; {seen:?}\n{}",
        log()
    );
    seen.terminals[0].clone()
}

/// Starts training `request_id` with the node's memory watched from
/// before the command, and observes it to its end.
fn run(s: &Scenario, reaper: &Reaper, request_id: &str) -> Observed {
    let watch = RssWatch::start(s.node.pid());
    let answer = s.client.request(
        &s.topic(&s.uuid, "command"),
        &s.response_topic(),
        &json!({"command": "training", "request_id": request_id}),
    );
    let Some(started) = answer else {
        let (peak, killed) = watch.finish();
        panic!(
            "no answer to the start (node RSS peak {peak} KiB, killed for RSS: {killed}):\n{}",
            s.node.stderr()
        )
    };
    assert_eq!(started["event"], "started", "{started}");
    if let Some(pid) = started["output"]["pid"].as_i64() {
        reaper.add(pid as i32);
    }
    observe(
        s,
        watch,
        request_id,
        Duration::from_secs(20),
        Duration::from_secs(1),
    )
}

// ---------------------------------------------------------------------------
// Result files

#[test]
fn result_linked_to_dev_zero_is_not_read() {
    let s = training(r#"sleep 0.3; ln -sf /dev/zero "$CYBERWAVE_RESULT_FILE"; exit 3"#);
    let reaper = Reaper::new(&s);
    let seen = run(&s, &reaper, "zero");
    let failed = assert_healthy(&s, &seen);
    assert_eq!(failed["event"], "failed", "{failed}");
    let out = &failed["output"];
    assert_eq!(out["exit_code"], 3, "{failed}");
    assert_eq!(out["result"], Value::Null);
    let error = out["result_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("not a regular file") && error.contains("training_zero.result.json"),
        "{failed}"
    );
}

#[test]
fn result_fifo_does_not_hang_the_node() {
    let s = training(r#"sleep 0.3; mkfifo "$CYBERWAVE_RESULT_FILE"; exit 0"#);
    let reaper = Reaper::new(&s);
    let seen = run(&s, &reaper, "fifo");
    let done = assert_healthy(&s, &seen);
    assert_eq!(done["event"], "completed", "{done}");
    let out = &done["output"];
    assert_eq!(out["exit_code"], 0);
    assert_eq!(out["result"], Value::Null);
    let error = out["result_error"].as_str().unwrap_or_default();
    assert!(error.contains("FIFO"), "{done}");
}

#[test]
fn a_500_mb_result_is_not_read_whole() {
    // Sparse: 500 MB on paper, nothing on disk, instant to make.
    let s = training(r#"sleep 0.3; truncate -s 500000000 "$CYBERWAVE_RESULT_FILE"; exit 0"#);
    let reaper = Reaper::new(&s);
    let seen = run(&s, &reaper, "huge");
    let done = assert_healthy(&s, &seen);
    assert_eq!(done["event"], "completed", "{done}");
    let out = &done["output"];
    assert_eq!(out["exit_code"], 0);
    assert_eq!(out["result"], Value::Null, "a cut JSON is no JSON");
    assert_eq!(out["result_truncated"], true, "{done}");
    assert_eq!(out["result_size_bytes"], 500_000_000u64, "{done}");
    let error = out["result_error"].as_str().unwrap_or_default();
    assert!(error.contains("max_result_bytes"), "{done}");
    let file = logs_dir(&s).join("training_huge.result.json");
    assert_eq!(
        std::fs::metadata(&file).map(|m| m.len()).ok(),
        Some(500_000_000),
        "the result file stays on disk for the operator"
    );
}

#[test]
fn max_result_bytes_is_a_setting() {
    let small = r#"{"a": 1}"#;
    let big = format!(r#"{{"data": "{}"}}"#, "x".repeat(300));
    let template = format!(
        r#"if [ "$CYBERWAVE_REQUEST_ID" = small ]; then echo '{small}'; else echo '{big}'; fi > "$CYBERWAVE_RESULT_FILE""#
    );
    let s = Scenario::start(|n| {
        n.env_var("CYBERWAVE_TRAINING_CMD", &template)
            .env_var("CYBERWAVE_MAX_RESULT_BYTES", "256")
    });
    let reaper = Reaper::new(&s);
    let seen = run(&s, &reaper, "small");
    let done = assert_healthy(&s, &seen);
    assert_eq!(done["output"]["result"], json!({"a": 1}), "{done}");
    assert!(done["output"].get("result_truncated").is_none(), "{done}");

    let seen = run(&s, &reaper, "big");
    let done = assert_healthy(&s, &seen);
    let out = &done["output"];
    assert_eq!(out["result"], Value::Null, "{done}");
    assert_eq!(out["result_truncated"], true, "{done}");
    assert_eq!(out["result_size_bytes"], big.len() as u64 + 1, "{done}");
    assert!(
        out["result_error"].as_str().unwrap().contains("256"),
        "{done}"
    );
}

// ---------------------------------------------------------------------------
// Progress

/// A progress line of 1.5 MB (no newline inside any read window), written
/// in three parts so it spans several polls, then ordinary lines.
#[test]
fn an_overlong_progress_line_is_skipped_and_later_lines_arrive() {
    let script = r#"
import os, time
p = open(os.environ["CYBERWAVE_PROGRESS_FILE"], "a")
def put(text):
    p.write(text); p.flush()
put('{"step": 1}\n')
time.sleep(0.4)
for part in range(3):
    put('{"blob": "' if part == 0 else "")
    put("x" * 500_000)
    time.sleep(0.4)
put('"}\n')
for step in (2, 3):
    time.sleep(1.2)  # > the 1 s poll of a quiet workload: one event each
    put('{"step": %d}\n' % step)
time.sleep(0.6)
"#;
    let s = Scenario::start(|n| {
        n.cwd_file("progress.py", script)
            .env_var("CYBERWAVE_TRAINING_CMD", "python3 progress.py")
    });
    let reaper = Reaper::new(&s);
    let seen = run(&s, &reaper, "long-line");
    let done = assert_healthy(&s, &seen);
    assert_eq!(done["event"], "completed", "{done}");
    let steps: Vec<Value> = seen
        .progress
        .iter()
        .map(|p| p["output"]["step"].clone())
        .collect();
    assert!(
        seen.progress
            .iter()
            .all(|p| p["output"].get("blob").is_none()),
        "the long line is never delivered"
    );
    assert!(
        steps.contains(&json!(2)) && steps.contains(&json!(3)),
        "progress after the long line must arrive: {steps:?}\n{}",
        s.node.stderr()
    );
    let warnings = s.node.stderr().matches("progress line over").count();
    assert_eq!(
        warnings,
        1,
        "one warning for the long line:\n{}",
        s.node.stderr()
    );
}

// ---------------------------------------------------------------------------
// Damaged records

/// A finished workload whose record is then emptied or torn keeps its
/// request_id: a redelivered command is refused, naming the damaged file,
/// and nothing runs again. One request_id is plain, one is stored under its
/// sanitized-plus-hash name.
#[test]
fn a_damaged_record_keeps_its_request_id() {
    const TEMPLATE: &str = "echo run >> runs.txt; exit 2";
    let s = training(TEMPLATE);
    let reaper = Reaper::new(&s);
    let ids = ["plain-1", "job 7/with spaces"];
    for id in ids {
        let seen = run(&s, &reaper, id);
        assert_eq!(assert_healthy(&s, &seen)["output"]["exit_code"], 2);
    }
    stop_gracefully(&s);
    let records: Vec<_> = std::fs::read_dir(logs_dir(&s))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".record.json"))
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    let plain = record_path(&s, "plain-1");
    std::fs::write(&plain, "").unwrap(); // empty
    let hashed = records.iter().find(|p| **p != plain).unwrap().clone();
    let text = std::fs::read_to_string(&hashed).unwrap();
    std::fs::write(&hashed, &text[..text.len() / 2]).unwrap(); // torn

    let node = restart(&s, TEMPLATE);
    for (id, file) in [(ids[0], &plain), (ids[1], &hashed)] {
        let again = common::restart::answer(&s, &node, id, json!({"command": "training"}));
        assert_eq!(again["status"], "error", "{again}");
        let error = again["error"].as_str().unwrap();
        assert!(
            error.contains(&file.display().to_string()) && error.contains("not started again"),
            "the refusal names the damaged file {}: {again}",
            file.display()
        );
    }
    thread::sleep(Duration::from_millis(500));
    assert!(
        !node.workdir().join("runs.txt").exists(),
        "a damaged record's request_id ran again"
    );
    assert_eq!(
        std::fs::read_to_string(s.node.workdir().join("runs.txt")).unwrap(),
        "run\nrun\n"
    );
    assert_eq!(
        std::fs::read(&plain).unwrap(),
        b"",
        "the damaged file is kept"
    );
}

/// A running workload whose record is torn while no node runs is rebuilt
/// from its started file and still reported, with its true exit code.
#[test]
fn a_running_workload_with_an_empty_record_is_still_reported() {
    const TEMPLATE: &str = "sleep 2; exit 5";
    let s = training(TEMPLATE);
    let reaper = Reaper::new(&s);
    let started = s.request(json!({"command": "training", "request_id": "torn-run"}));
    let pid = started["output"]["pid"].as_i64().unwrap();
    reaper.add(pid as i32);
    s.node.kill9();
    std::fs::write(record_path(&s, "torn-run"), "").unwrap();
    let node = restart(&s, TEMPLATE);
    let failed = terminal(&s.client, &node, "torn-run", Duration::from_secs(8));
    assert_eq!(failed["event"], "failed", "{failed}");
    assert_eq!(failed["output"]["exit_code"], 5, "{failed}");
    assert_eq!(failed["output"]["pid"], pid, "{failed}");
    let extra = common::restart::more_terminals(&s.client, "torn-run", Duration::from_secs(1));
    assert!(extra.is_empty(), "a second terminal event: {extra:?}");
    assert!(wait_until(Duration::from_secs(2), || {
        std::fs::read(record_path(&s, "torn-run")).is_ok_and(|b| !b.is_empty())
    }));
}
