//! Workloads across node restarts, crashes and broker outages: adoption of
//! running workloads, exit codes that arrive while nobody listens, cancel of
//! an adopted workload, the on-disk outbox, live output that resumes where
//! it stopped, and pids that now belong to someone else.
//!
//! Every process a test leaves running (workloads, their supervisors, the
//! strangers some tests start) is SIGKILLed by process group when the test
//! ends, pass or fail: see [`Reaper`].

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::scenario::{Scenario, READY, TOKEN};
use common::{standard_env, Broker, FakeBackend, Node, NodeProcess, TestClient};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Cleanup

/// SIGKILLs, when dropped, the process group of every pid it was given and
/// of every workload and supervisor named by the records in `logs_dir`, so
/// nothing a test started outlives it, even when it panics.
struct Reaper {
    logs_dir: PathBuf,
    groups: Mutex<Vec<i32>>,
}

impl Reaper {
    fn new(s: &Scenario) -> Reaper {
        Reaper {
            logs_dir: logs_dir(s),
            groups: Mutex::new(Vec::new()),
        }
    }

    fn add(&self, pgid: i32) {
        assert!(pgid > 1, "refusing to track process group {pgid}");
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pgid);
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let mut groups = self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Records, and the supervisors' started files for a launch the
        // record does not show yet.
        for record in json_files(&self.logs_dir, ".record.json")
            .into_iter()
            .chain(json_files(&self.logs_dir, ".started.json"))
        {
            // The workload's group first: a supervisor killed first would
            // leave its workload running, reparented.
            for key in ["pid", "supervisor_pid"] {
                if let Some(pid) = record[key].as_i64() {
                    groups.push(pid as i32);
                }
            }
        }
        for pgid in groups.into_iter().filter(|p| *p > 1) {
            let _ = kill(Pid::from_raw(-pgid), Signal::SIGKILL);
        }
    }
}

/// A process of our own in a process group of its own: a stranger to the
/// node. Killed (group and all) and reaped when dropped.
struct Stranger(Child);

impl Stranger {
    fn spawn() -> Stranger {
        Stranger(
            Command::new("sleep")
                .arg("30")
                .process_group(0)
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep"),
        )
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Still running (not merely an unreaped zombie of ours).
    fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(-self.pid()), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn training(template: &str) -> Scenario {
    Scenario::start(|n| n.env_var("CYBERWAVE_TRAINING_CMD", template))
}

fn logs_dir(s: &Scenario) -> PathBuf {
    s.node.config_dir().join("workload_logs")
}

fn outbox_dir(s: &Scenario) -> PathBuf {
    s.node.config_dir().join("outbox")
}

/// Every `*<suffix>` file in `dir`, parsed as JSON.
fn json_files(dir: &Path, suffix: &str) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}

fn record_path(s: &Scenario, request_id: &str) -> PathBuf {
    logs_dir(s).join(format!("training_{request_id}.record.json"))
}

fn read_record(s: &Scenario, request_id: &str) -> Value {
    let path = record_path(s, request_id);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

/// The `.json` files of the outbox (temp files start with a dot).
fn outbox_files(s: &Scenario) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(outbox_dir(s)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `kill(pid, 0)` succeeds.
fn alive(pid: i32) -> bool {
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// `kill(-pgid, 0)` succeeds: some process is left in the group.
fn group_alive(pgid: i32) -> bool {
    !matches!(kill(Pid::from_raw(-pgid), None), Err(Errno::ESRCH))
}

fn is_terminal(v: &Value) -> bool {
    matches!(
        v["event"].as_str(),
        Some("completed" | "failed" | "cancelled")
    )
}

/// How long a command may take to be answered. Longer than the harness's
/// 5 s: a launch writes (and fsyncs) several files, which a busy disk can
/// slow down a lot.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `command` (which needs a `request_id`) on the node's uuid topic
/// and returns the response; panics with `node`'s log (the node answering
/// now) if none comes.
fn request(s: &Scenario, node: &NodeProcess, command: Value) -> Value {
    let id = command["request_id"].clone();
    assert!(id.is_string(), "{command} needs a request_id");
    s.client
        .publish_json(&s.topic(&s.uuid, "command"), &command);
    s.client
        .recv_json_where(ANSWER_TIMEOUT, |topic, v| {
            topic == s.response_topic() && v["request_id"] == id && !is_terminal(v)
        })
        .unwrap_or_else(|| panic!("no response to {command}; node log:\n{}", node.stderr()))
}

fn ask_status(s: &Scenario, node: &NodeProcess) -> Value {
    let id = uuid::Uuid::new_v4().to_string();
    request(s, node, json!({"command": "status", "request_id": id}))
}

/// Starts a training workload and returns the `started` output; its pid
/// goes to the reaper before anything else can fail.
fn start_workload(s: &Scenario, reaper: &Reaper, request_id: &str) -> Value {
    let started = request(
        s,
        &s.node,
        json!({"command": "training", "request_id": request_id}),
    );
    if let Some(pid) = started["output"]["pid"].as_i64() {
        reaper.add(pid as i32);
    }
    assert_eq!(started["status"], "ok", "{started}");
    assert_eq!(started["event"], "started", "{started}");
    started["output"].clone()
}

/// The first terminal event of `request_id`; panics with `node`'s log.
fn terminal(client: &TestClient, node: &NodeProcess, request_id: &str, timeout: Duration) -> Value {
    client
        .recv_json_where(timeout, |_, v| {
            v["request_id"] == request_id && is_terminal(v)
        })
        .unwrap_or_else(|| {
            panic!(
                "no terminal event for {request_id} within {timeout:?}; node log:\n{}",
                node.stderr()
            )
        })
}

/// Every terminal event of `request_id` received within `window`.
fn more_terminals(client: &TestClient, request_id: &str, window: Duration) -> Vec<Value> {
    let deadline = Instant::now() + window;
    let mut found = Vec::new();
    while let Some(v) = client.recv_json_where(
        deadline.saturating_duration_since(Instant::now()),
        |_, v| v["request_id"] == request_id && is_terminal(v),
    ) {
        found.push(v);
    }
    found
}

/// SIGTERMs the scenario's node and checks that it stops gracefully.
fn stop_gracefully(s: &Scenario) {
    s.node.signal(Signal::SIGTERM);
    let status = s.node.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some_and(|st| st.success()),
        "graceful stop: {status:?}\n{}",
        s.node.stderr()
    );
}

/// A new node with the scenario node's HOME (so its config dir, identity,
/// records and outbox), the same broker, backend and template; not started.
fn again(s: &Scenario, template: &str) -> Node {
    Node::new()
        .arg("start")
        .envs(standard_env(s.broker.port(), &s.backend.url(), TOKEN))
        .env_var("HOME", s.node.home().to_str().unwrap())
        .env_var("CYBERWAVE_TRAINING_CMD", template)
}

/// [`again`], started.
fn spawn_again(s: &Scenario, template: &str) -> NodeProcess {
    again(s, template).spawn()
}

/// [`spawn_again`], then waits until the new node listens for commands.
fn restart(s: &Scenario, template: &str) -> NodeProcess {
    let node = spawn_again(s, template);
    assert!(
        node.wait_for_log(READY, Duration::from_secs(10)),
        "the restarted node never became ready:\n{}",
        node.stderr()
    );
    node
}

/// The entries of a status output's `active_workloads`.
fn active(status: &Value) -> Vec<Value> {
    status["output"]["active_workloads"]
        .as_array()
        .unwrap_or_else(|| panic!("no active_workloads: {status}"))
        .clone()
}

/// After a broker restart: waits until the test client is connected again
/// and subscribed to the response topic (its SUBACK seen).
fn client_back(s: &Scenario, connections_before: usize) {
    assert!(
        s.client
            .wait_connections(connections_before + 1, Duration::from_secs(10)),
        "the test client did not reconnect:\n{}",
        s.broker.log()
    );
    s.client.subscribe(&s.response_topic());
}

// ---------------------------------------------------------------------------
// A TCP gate in front of the broker, for the node only

/// Forwards TCP connections to the broker while open; while closed it cuts
/// the current ones and refuses new ones (accepts and drops them). Lets a
/// test keep the node off a restarted broker until the test's own client
/// has subscribed again: otherwise the node may re-send its outbox to a
/// broker nobody listens on yet, and the event is (correctly) acknowledged
/// and gone before the test can see it.
struct Gate {
    port: u16,
    open: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Gate {
    fn start(upstream: u16) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the gate");
        let port = listener.local_addr().unwrap().port();
        let gate = Gate {
            port,
            open: Arc::new(AtomicBool::new(true)),
            stop: Arc::new(AtomicBool::new(false)),
            streams: Arc::default(),
        };
        let (open, stop, streams) = (gate.open.clone(), gate.stop.clone(), gate.streams.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if !open.load(Ordering::SeqCst) {
                    continue; // dropped: the node sees the connection fail
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut list = streams.lock().unwrap_or_else(|e| e.into_inner());
                    list.extend(client.try_clone().ok());
                    list.extend(server.try_clone().ok());
                }
                pipe(&client, &server);
                pipe(&server, &client);
            }
        });
        gate
    }

    fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        for stream in self
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.close();
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes accept()
    }
}

/// Copies `from` to `to` in a thread; when either side ends, both do.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

// ---------------------------------------------------------------------------
// Adoption after a stop or a crash

/// Starts `sleep 3; exit 4`, takes the node down with `down`, and checks
/// that the next node adopts the workload and reports its true exit code
/// exactly once.
fn adopted_workload_reports_its_exit_code(down: impl FnOnce(&Scenario)) {
    const TEMPLATE: &str = "sleep 3; exit 4";
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
    const TEMPLATE: &str = "sleep 1; exit 0";
    let s = training(TEMPLATE);
    let reaper = Reaper::new(&s);
    let pid = start_workload(&s, &reaper, "down-1")["pid"]
        .as_i64()
        .unwrap() as i32;
    stop_gracefully(&s);
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
    const TEMPLATE: &str = "sleep 1; exit 0";
    let s = training(TEMPLATE);
    let reaper = Reaper::new(&s);
    let pid = start_workload(&s, &reaper, "once-1")["pid"]
        .as_i64()
        .unwrap() as i32;
    stop_gracefully(&s);
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));

    let gate = Gate::start(s.broker.port());
    gate.close();
    let node = again(&s, TEMPLATE)
        .env_var("CYBERWAVE_MQTT_PORT", gate.port.to_string())
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
// The outbox: broker outages and crashes

#[test]
fn event_of_a_workload_ending_while_the_broker_is_down_arrives_after_it_returns() {
    let broker = Broker::start();
    let gate = Gate::start(broker.port());
    let mut s = Scenario::start_with(broker, FakeBackend::start(), |n| {
        n.env_var("CYBERWAVE_TRAINING_CMD", "sleep 1.5; exit 0")
            .env_var("CYBERWAVE_MQTT_PORT", gate.port.to_string())
    });
    let reaper = Reaper::new(&s);
    let began = Instant::now();
    let pid = start_workload(&s, &reaper, "out-1")["pid"]
        .as_i64()
        .unwrap() as i32;
    let connections = s.client.connections();

    gate.close();
    s.broker.stop();
    thread::sleep(Duration::from_millis(2500).saturating_sub(began.elapsed()));
    assert!(
        wait_until(Duration::from_secs(3), || !alive(pid)),
        "the workload did not end"
    );
    assert!(
        wait_until(Duration::from_secs(3), || outbox_files(&s).len() == 1),
        "the outbox holds {:?}; node log:\n{}",
        outbox_files(&s),
        s.node.stderr()
    );
    assert!(s.node.try_status().is_none(), "the node must keep running");

    s.broker.restart();
    client_back(&s, connections);
    gate.open();
    let completed = terminal(&s.client, &s.node, "out-1", Duration::from_secs(10));
    assert_eq!(completed["event"], "completed", "{completed}");
    assert_eq!(completed["output"]["exit_code"], 0);
    assert!(
        wait_until(Duration::from_secs(3), || outbox_files(&s).is_empty()),
        "the outbox was not emptied after the PUBACK: {:?}",
        outbox_files(&s)
    );
}

#[test]
fn undelivered_event_survives_a_node_crash() {
    const TEMPLATE: &str = "sleep 1; exit 5";
    let mut s = training(TEMPLATE);
    let reaper = Reaper::new(&s);
    let pid = start_workload(&s, &reaper, "crash-1")["pid"]
        .as_i64()
        .unwrap() as i32;
    let connections = s.client.connections();
    s.broker.stop();
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
    assert!(
        wait_until(Duration::from_secs(3), || outbox_files(&s).len() == 1),
        "the outbox holds {:?}; node log:\n{}",
        outbox_files(&s),
        s.node.stderr()
    );
    s.node.kill9();

    s.broker.restart();
    client_back(&s, connections);
    let node = spawn_again(&s, TEMPLATE);
    let failed = terminal(&s.client, &node, "crash-1", Duration::from_secs(10));
    assert_eq!(failed["event"], "failed", "{failed}");
    assert_eq!(failed["output"]["exit_code"], 5, "{failed}");
    assert_eq!(failed["output"]["pid"], pid);
    let extra = more_terminals(&s.client, "crash-1", Duration::from_secs(1));
    assert!(extra.is_empty(), "a second terminal event: {extra:?}");
    assert!(
        wait_until(Duration::from_secs(3), || outbox_files(&s).is_empty()),
        "the outbox was not emptied after the PUBACK: {:?}",
        outbox_files(&s)
    );
}

// ---------------------------------------------------------------------------
// Live output across a restart

/// Collected `stdout` chunks (offset, data) of `request_id`, until its
/// terminal event (returned as well, if seen) or `until`.
fn collect_stdout(
    s: &Scenario,
    request_id: &str,
    until: Instant,
    chunks: &mut Vec<(u64, String)>,
) -> Option<Value> {
    let logs = s.topic(&s.uuid, "logs");
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let (topic, payload) = s.client.recv(left)?;
        let Ok(v) = serde_json::from_slice::<Value>(&payload) else {
            continue;
        };
        if v["request_id"] != request_id {
            continue;
        }
        if topic == logs && v["stream"] == "stdout" {
            assert!(v.get("encoding").is_none(), "text output: {v}");
            chunks.push((
                v["offset"].as_u64().expect("offset"),
                v["data"].as_str().expect("data").to_owned(),
            ));
        } else if is_terminal(&v) {
            return Some(v);
        }
    }
}

/// Assembles `chunks` by offset. `strict`: each chunk must start exactly
/// where the previous one ended (no gap, no overlap). Otherwise overlaps
/// are allowed as long as the repeated bytes are the ones already placed
/// (a receiver that places chunks by offset gets the file either way);
/// gaps never are. Returns a description of the first problem.
fn assemble(chunks: &[(u64, String)], expected: &str, strict: bool) -> Result<(), String> {
    let mut sorted = chunks.to_vec();
    sorted.sort_by_key(|(offset, _)| *offset);
    let mut assembled = String::new();
    for (offset, data) in &sorted {
        let at = assembled.len() as u64;
        let offset_usize = *offset as usize;
        if *offset > at {
            return Err(format!("gap: bytes {at}..{offset} were never sent"));
        }
        if *offset < at {
            let repeated = (at - offset) as usize;
            if strict {
                return Err(format!(
                    "overlap: a chunk at offset {offset} ({} bytes) repeats bytes {offset}..{at}",
                    data.len()
                ));
            }
            let overlap = repeated.min(data.len());
            if data.as_bytes()[..overlap]
                != assembled.as_bytes()[offset_usize..offset_usize + overlap]
            {
                return Err(format!(
                    "a repeated chunk at offset {offset} disagrees with the bytes sent before"
                ));
            }
            assembled.push_str(&data[overlap..]);
            continue;
        }
        assembled.push_str(data);
    }
    if assembled != expected {
        return Err(format!(
            "assembled {} bytes differ from the {}-byte log file",
            assembled.len(),
            expected.len()
        ));
    }
    Ok(())
}

/// Runs a workload printing 30 numbered lines over ~3 s, restarts the node
/// (SIGTERM, new process) `restart_after` into it, and returns the stdout
/// chunks received from both nodes (arrival order) and the log file.
fn live_output_across_a_restart(restart_after: Duration) -> (Vec<(u64, String)>, String) {
    const TEMPLATE: &str = "for i in $(seq 1 30); do echo line-$i; sleep 0.1; done";
    let s = training(TEMPLATE);
    s.client.subscribe(&s.topic(&s.uuid, "logs"));
    let reaper = Reaper::new(&s);
    start_workload(&s, &reaper, "live-1");

    let mut chunks = Vec::new();
    let early = collect_stdout(&s, "live-1", Instant::now() + restart_after, &mut chunks);
    assert!(early.is_none(), "ended too soon: {early:?}");
    let before_restart = chunks.len();
    assert!(before_restart > 0, "no live output before the restart");
    stop_gracefully(&s);
    let node = restart(&s, TEMPLATE);

    let done = collect_stdout(
        &s,
        "live-1",
        Instant::now() + Duration::from_secs(10),
        &mut chunks,
    )
    .unwrap_or_else(|| panic!("no terminal event; node log:\n{}", node.stderr()));
    assert_eq!(done["event"], "completed", "{done}");
    // Anything published just before the terminal event but delivered after.
    collect_stdout(
        &s,
        "live-1",
        Instant::now() + Duration::from_millis(500),
        &mut chunks,
    );
    assert!(
        chunks.len() > before_restart,
        "the restarted node published no live output"
    );

    let file = std::fs::read_to_string(logs_dir(&s).join("training_live-1.stdout.log")).unwrap();
    let expected: String = (1..=30).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(file, expected);
    (chunks, file)
}

#[test]
fn live_output_survives_a_restart_without_gaps() {
    let (chunks, file) = live_output_across_a_restart(Duration::from_millis(1200));
    if let Err(problem) = assemble(&chunks, &file, false) {
        panic!("{problem}\nchunks in arrival order: {chunks:?}");
    }
}

/// The restart comes 0.8 s in: before the first node's first save of its
/// offsets (at most one a second), so only a save at the graceful stop can
/// keep the next node from sending the same bytes again.
#[test]

fn live_output_resumes_after_a_restart_without_gaps_or_repeats() {
    let (chunks, file) = live_output_across_a_restart(Duration::from_millis(800));
    if let Err(problem) = assemble(&chunks, &file, true) {
        panic!("{problem}\nchunks in arrival order: {chunks:?}");
    }
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
    kill(Pid::from_raw(-pid), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
    assert!(
        wait_until(Duration::from_secs(2), || logs_dir(&s)
            .join("training_gone-1.exit.json")
            .exists()),
        "the supervisor wrote no exit file"
    );

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

/// Makes the next process this test spawns get `pid` (needs the right to
/// write `/proc/sys/kernel/ns_last_pid`, i.e. root in this pid namespace).
/// Retries a few times: other tests fork too.
fn stranger_with_pid(pid: i32) -> Option<Stranger> {
    // Spawning may use up a pid or two before the child's (threads count):
    // learn how many and aim that much lower.
    let mut skew = 0;
    for _ in 0..20 {
        let last = pid - 1 - skew;
        std::fs::write("/proc/sys/kernel/ns_last_pid", last.to_string()).ok()?;
        let stranger = Stranger::spawn();
        if stranger.pid() == pid {
            return Some(stranger);
        }
        if (1..10).contains(&(stranger.pid() - last - 1)) {
            skew = stranger.pid() - last - 1;
        }
        drop(stranger);
        if alive(pid) {
            return None; // someone else took it
        }
    }
    None
}

#[test]
fn reused_pid_of_an_ended_workload_is_never_adopted_or_signalled() {
    const TEMPLATE: &str = "sleep 30";
    let s = training(TEMPLATE);
    let reaper = Reaper::new(&s);
    let pid = start_workload(&s, &reaper, "reuse-1")["pid"]
        .as_i64()
        .unwrap() as i32;
    stop_gracefully(&s);
    kill(Pid::from_raw(-pid), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
    assert!(wait_until(Duration::from_secs(2), || logs_dir(&s)
        .join("training_reuse-1.exit.json")
        .exists()));

    // Until its whole group is reaped, the number is still in use (as the
    // group's id) and cannot be handed out again.
    assert!(wait_until(Duration::from_secs(5), || !group_alive(pid)));
    // The same pid, now a stranger leading a process group of its own.
    let Some(mut stranger) = stranger_with_pid(pid) else {
        eprintln!("skipped: cannot make a process with pid {pid} (needs root for ns_last_pid)");
        return;
    };
    reaper.add(stranger.pid());

    let node = restart(&s, TEMPLATE);
    let failed = terminal(&s.client, &node, "reuse-1", Duration::from_secs(5));
    assert_eq!(failed["event"], "failed", "{failed}");
    assert_eq!(failed["output"]["signal"], "SIGKILL", "{failed}");
    let status = ask_status(&s, &node);
    assert!(active(&status).is_empty(), "{status}");

    for (n, params) in [
        json!({"pid": pid}),
        json!({"workload_request_id": "reuse-1"}),
    ]
    .into_iter()
    .enumerate()
    {
        let cancel = request(
            &s,
            &node,
            json!({"command": "cancel", "request_id": format!("cancel-{n}"), "params": params}),
        );
        assert_eq!(cancel["status"], "error", "{cancel}");
        assert!(
            cancel["error"]
                .as_str()
                .unwrap()
                .contains("nothing was signalled"),
            "{cancel}"
        );
    }
    thread::sleep(Duration::from_millis(200));
    assert!(
        stranger.alive(),
        "the stranger with the reused pid was signalled"
    );
}

/// The state a pid reuse leaves behind when it happens while the node still
/// counts the workload as running (its exit not yet processed): the record
/// names pid P with the workload's start time, and P now belongs to a
/// stranger that leads a process group of its own. To get there
/// deterministically the record of a running workload is edited while the
/// node is down (its supervisor stays alive, so the next node adopts the
/// entry as running). A cancel must then signal nothing: P is not the
/// process the node started.
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
    assert_eq!(cancel["status"], "error", "{cancel}");
}
