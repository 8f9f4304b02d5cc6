//! A broker outage while workloads chatter: the node's event loop must keep
//! running (cancel deadlines, SIGTERM) however much it has to publish, and
//! once the broker is back it answers, reports each ending exactly once,
//! and live output resumes where it stopped, without a gap.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::restart::Reaper;
use common::scenario::Scenario;
use common::TestClient;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// Prints "ready", waits for `go` in its working dir, then writes a line
/// to stdout, stderr and the progress file every 20 ms for CHAT seconds,
/// then goes quiet. It ignores SIGTERM, so a cancel needs its deadline.
const CHATTY: &str = r#"
import json, os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
chat = float(os.environ.get("CHAT", "30"))
progress = open(os.environ["CYBERWAVE_PROGRESS_FILE"], "a")
end, i = time.time() + chat, 0
while time.time() < end:
    i += 1
    print(f"out {i}", flush=True)
    print(f"err {i}", file=sys.stderr, flush=True)
    progress.write(json.dumps({"step": i}) + "\n"); progress.flush()
    time.sleep(0.02)
print("quiet", flush=True)
while True:
    time.sleep(1)
"#;
/// Enough chatter to fill rumqttc's 1024-request queue in ~15 s.
const WORKLOADS: usize = 6;

/// The scenario, and a client that watches the logs topic (apart from the
/// scenario's, whose `request` discards what it does not wait for).
fn chatty(chat_seconds: u32) -> (Scenario, TestClient, Reaper) {
    let s = Scenario::start(|n| {
        n.cwd_file("chat.py", CHATTY)
            .env_var("CYBERWAVE_TRAINING_CMD", "python3 chat.py")
            .env_var("CYBERWAVE_MAX_CONCURRENT_WORKLOADS", "8")
            .env_var("CYBERWAVE_METRICS_INTERVAL", "1")
            .env_var("CHAT", chat_seconds.to_string())
    });
    let watcher = TestClient::connect(s.broker.port());
    watcher.subscribe(&s.topic(&s.uuid, "logs"));
    // The workloads outlive a node that stops (by design): the reaper ends
    // them, and their shims, when the test does.
    let reaper = Reaper::new(&s);
    for i in 1..=WORKLOADS {
        let started = s.request(json!({"command": "training", "request_id": format!("chat-{i}")}));
        if let Some(pid) = started["output"]["pid"].as_i64() {
            reaper.add(pid as i32);
        }
        assert_eq!(started["event"], "started", "{started}");
    }
    (s, watcher, reaper)
}

/// Waits until every workload has said "ready" (it ignores SIGTERM from
/// then on) and returns the messages seen meanwhile.
fn wait_ready(watcher: &TestClient) -> Vec<Value> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = |seen: &[Value], i: usize| {
        seen.iter()
            .any(|m| m["request_id"] == format!("chat-{i}").as_str() && m["data"] == "ready\n")
    };
    while !(1..=WORKLOADS).all(|i| ready(&seen, i)) {
        assert!(Instant::now() < deadline, "the workloads never said ready");
        seen.extend(collect(watcher, Duration::from_millis(200)));
    }
    seen
}

fn pid_alive(pid: i64) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .unwrap_or("")
                .trim()
                .starts_with('Z')
        })
}

/// Stdout chunks (offset → bytes) of workload `request_id` among `messages`.
fn stdout_chunks(request_id: &str, messages: &[Value], into: &mut BTreeMap<u64, String>) {
    for m in messages {
        if m["request_id"] == request_id && m["stream"] == "stdout" {
            let offset = m["offset"].as_u64().unwrap();
            let data = m["data"].as_str().unwrap().to_owned();
            if let Some(before) = into.get(&offset) {
                assert!(
                    before.starts_with(&data) || data.starts_with(before.as_str()),
                    "offset {offset} came twice with different bytes"
                );
                if before.len() >= data.len() {
                    continue;
                }
            }
            into.insert(offset, data);
        }
    }
}

/// Places chunks by offset; `None` when there is a gap.
fn assemble(chunks: &BTreeMap<u64, String>) -> Option<String> {
    let mut out = String::new();
    for (offset, data) in chunks {
        let at = *offset as usize;
        if at > out.len() {
            return None;
        }
        if at + data.len() > out.len() {
            out.push_str(&data[out.len() - at..]);
        }
    }
    Some(out)
}

/// The JSON messages the client receives until `quiet` passes without one
/// (2 s at most).
fn collect(client: &TestClient, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let Some((_, payload)) = client.recv(quiet) else {
            break;
        };
        if let Ok(value) = serde_json::from_slice::<Value>(&payload) {
            out.push(value);
        }
    }
    out
}

#[test]
fn a_broker_outage_does_not_freeze_the_node() {
    let (mut s, watcher, _reaper) = chatty(45);
    let logs = s.topic(&s.uuid, "logs");
    let stdout_file = s
        .node
        .config_dir()
        .join("workload_logs/training_chat-2.stdout.log");
    let mut before = wait_ready(&watcher);
    // Grace 25 s: the deadline falls in the middle of the outage.
    let cancel = s.request(json!({"command": "cancel", "params": {"workload_request_id": "chat-1", "signal": "SIGTERM", "grace_seconds": 25}}));
    assert_eq!(cancel["status"], "ok", "{cancel}");
    let victim = cancel["output"]["pid"].as_i64().unwrap();
    before.extend(collect(&watcher, Duration::from_millis(300)));
    let mut chunks = BTreeMap::new();
    stdout_chunks("chat-2", &before, &mut chunks);
    assert_eq!(
        assemble(&chunks).as_deref(),
        Some("ready\n"),
        "the first line arrives before the outage"
    );

    let cancelled_at = Instant::now();
    s.broker.stop();
    std::fs::write(s.node.workdir().join("go"), "").unwrap();
    // The node's loop sends a heartbeat every second: the longest silence
    // during the outage is how long the loop was frozen.
    let heartbeats = format!("/{}/heartbeat", s.uuid);
    let count = || s.backend.requests_matching("POST", &heartbeats).len();
    let outage = Duration::from_secs(40);
    let (mut last_count, mut last_change, mut frozen) = (count(), Instant::now(), Duration::ZERO);
    while cancelled_at.elapsed() < outage {
        std::thread::sleep(Duration::from_millis(100));
        if count() != last_count {
            (last_count, last_change) = (count(), Instant::now());
        }
        frozen = frozen.max(last_change.elapsed());
    }
    let victim_gone = !pid_alive(victim);

    // The receiver must be subscribed before the node reconnects: the
    // restarted broker has no sessions. The node is paused meanwhile.
    s.node.signal(Signal::SIGSTOP);
    s.broker.restart();
    let restarted = Instant::now();
    let late = TestClient::connect(s.broker.port());
    late.subscribe(&logs);
    late.subscribe(&s.response_topic());
    late.subscribe(&s.topic(&s.uuid, "presence"));
    s.node.signal(Signal::SIGCONT);
    let mut after = Vec::new();
    while !after.iter().any(|v: &Value| v["state"] == "online") {
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "the node did not come back online within 10 s of the broker"
        );
        after.extend(collect(&late, Duration::from_millis(100)));
    }
    // A client of its own: `request` discards what it is not waiting for.
    let asker = TestClient::connect(s.broker.port());
    asker.subscribe(&s.response_topic());
    let asked = Instant::now();
    let answered = asker
        .request(
            &s.topic(&s.uuid, "command"),
            &s.response_topic(),
            &json!({"command": "status"}),
        )
        .map(|status| (asked.elapsed(), status));
    eprintln!(
        "longest heartbeat silence during the outage: {:.1}s; status answered {:?} after the node was back",
        frozen.as_secs_f64(),
        answered.as_ref().map(|a| a.0)
    );
    assert!(
        frozen < Duration::from_secs(3),
        "the event loop was frozen for {:.1}s of the outage (no heartbeat)",
        frozen.as_secs_f64()
    );
    assert!(
        victim_gone,
        "the cancel deadline SIGKILLed the workload during the outage"
    );
    let (took, status) = answered.expect("status answered once the node is back");
    assert_eq!(status["status"], "ok", "{status}");
    assert!(
        took < Duration::from_secs(1),
        "status took {took:?} once the node was back"
    );

    // The rest of chat-2's output, quiet again after 45 s of chatter.
    let file_quiet = |path: &std::path::Path| {
        std::fs::read_to_string(path).is_ok_and(|text| text.ends_with("quiet\n"))
    };
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        after.extend(collect(&late, Duration::from_millis(300)));
        stdout_chunks("chat-2", &after, &mut chunks);
        let file = std::fs::read_to_string(&stdout_file).unwrap();
        if file_quiet(&stdout_file) && assemble(&chunks).is_some_and(|a| a.len() >= file.len()) {
            break;
        }
    }
    let file = std::fs::read_to_string(&stdout_file).unwrap();
    let assembled = assemble(&chunks).unwrap_or_else(|| {
        let offsets: Vec<(u64, usize)> = chunks.iter().map(|(o, d)| (*o, d.len())).collect();
        panic!("live output has a gap after the outage: (offset, length) {offsets:?}")
    });
    assert_eq!(assembled.len(), file.len(), "all of stdout arrived");
    assert!(assembled == file, "live output matches the file");

    for i in 2..=WORKLOADS {
        let r = s.request_on(
            &s.uuid.clone(),
            json!({"command": "cancel", "params": {"workload_request_id": format!("chat-{i}"), "signal": "SIGKILL"}}),
        );
        assert_eq!(r["status"], "ok", "{r}");
    }
    let ending = |v: &Value| {
        ["completed", "failed", "cancelled"].contains(&v["event"].as_str().unwrap_or(""))
    };
    let until = Instant::now() + Duration::from_secs(20);
    while after.iter().filter(|v| ending(v)).count() < WORKLOADS && Instant::now() < until {
        after.extend(collect(&late, Duration::from_millis(300)));
    }
    after.extend(collect(&late, Duration::from_secs(1))); // any duplicate
    for i in 1..=WORKLOADS {
        let id = format!("chat-{i}");
        let endings: Vec<&Value> = after
            .iter()
            .filter(|v| v["request_id"] == id.as_str() && ending(v))
            .collect();
        assert_eq!(
            endings.len(),
            1,
            "{id}: exactly one terminal event: {endings:?}"
        );
        assert_eq!(endings[0]["event"], "cancelled", "{}", endings[0]);
    }
}

#[test]
fn sigterm_during_an_outage_stops_the_node_promptly() {
    let (mut s, watcher, _reaper) = chatty(40);
    wait_ready(&watcher);
    s.broker.stop();
    std::fs::write(s.node.workdir().join("go"), "").unwrap();
    // Long enough for the chatter to fill rumqttc's request queue.
    std::thread::sleep(Duration::from_secs(20));
    let sent = Instant::now();
    s.node.signal(Signal::SIGTERM);
    let exited = s.node.wait_exit(Duration::from_secs(5));
    let mut took = sent.elapsed();
    if exited.is_none() {
        s.broker.restart();
        s.node.wait_exit(Duration::from_secs(20));
        took = sent.elapsed();
    }
    eprintln!("SIGTERM to exit: {:.2}s", took.as_secs_f64());
    let status = exited.unwrap_or_else(|| {
        panic!(
            "the node ignored SIGTERM during the outage ({:.1}s until it exited, after the broker came back)",
            took.as_secs_f64()
        )
    });
    assert!(status.success(), "{status:?}");
}
