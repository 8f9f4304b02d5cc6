//! Helpers shared by the tests that take a node down and bring it back
//! (`workloads_restart`, `workloads_outbox`): a guard that kills whatever a
//! test left running, strangers holding pids, a TCP gate that keeps the
//! node off the broker, nodes restarted with the same HOME, and the
//! requests, polls and event collection those tests repeat.
//!
//! Every process a test leaves running (workloads, their supervisors, the
//! strangers some tests start) is SIGKILLed by process group when the test
//! ends, pass or fail: see [`Reaper`].

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use super::scenario::{Scenario, READY, TOKEN};
use super::{standard_env, Node, NodeProcess, TestClient};

// ---------------------------------------------------------------------------
// Cleanup

/// SIGKILLs, when dropped, the process group of every pid it was given and
/// of every workload and supervisor named by the records in `logs_dir`, so
/// nothing a test started outlives it, even when it panics.
pub struct Reaper {
    logs_dir: PathBuf,
    groups: Mutex<Vec<i32>>,
}

impl Reaper {
    /// A reaper for `s`'s node: it reads the records in that node's
    /// workload log dir when dropped.
    pub fn new(s: &Scenario) -> Reaper {
        Reaper {
            logs_dir: logs_dir(s),
            groups: Mutex::new(Vec::new()),
        }
    }

    /// Adds a process group to kill, as soon as its leader's pid is known
    /// (before a record may name it).
    pub fn add(&self, pgid: i32) {
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
pub struct Stranger(Child);

impl Stranger {
    /// `sleep 30`, leading a process group of its own.
    pub fn spawn() -> Stranger {
        Stranger(
            Command::new("sleep")
                .arg("30")
                .process_group(0)
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep"),
        )
    }

    /// Its pid, which is also its process group id.
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Still running (not merely an unreaped zombie of ours).
    pub fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(-self.pid()), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// A [`Stranger`] that has `pid`, for tests of pid reuse: makes the next
/// process spawned get it (needs the right to write
/// `/proc/sys/kernel/ns_last_pid`, i.e. root in this pid namespace).
/// Retries a few times: other tests fork too. `None` where it cannot.
pub fn stranger_with_pid(pid: i32) -> Option<Stranger> {
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

// ---------------------------------------------------------------------------
// Helpers

/// A scenario whose node runs `template` for `training` commands.
pub fn training(template: &str) -> Scenario {
    Scenario::start(|n| n.env_var("CYBERWAVE_TRAINING_CMD", template))
}

/// Lets workloads that wait with `while [ ! -e go ]; ...` (in the node's
/// directory) go on: they end when the test says so, not after a sleep that
/// a slow machine may outlast.
pub fn go(s: &Scenario) {
    std::fs::write(s.node.workdir().join("go"), "").unwrap();
}

/// SIGKILLs the training workload `request_id` (process group `pid`) while
/// no node runs, and waits until it is gone and its supervisor has written
/// the exit file.
pub fn kill_while_the_node_is_down(s: &Scenario, pid: i32, request_id: &str) {
    kill(Pid::from_raw(-pid), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
    let exit_file = logs_dir(s).join(format!("training_{request_id}.exit.json"));
    assert!(
        wait_until(Duration::from_secs(2), || exit_file.exists()),
        "the supervisor wrote no exit file"
    );
}

/// Where the node keeps workload records, exit files and output logs.
pub fn logs_dir(s: &Scenario) -> PathBuf {
    s.node.config_dir().join("workload_logs")
}

/// Where the node keeps events not yet acknowledged by the broker.
pub fn outbox_dir(s: &Scenario) -> PathBuf {
    s.node.config_dir().join("outbox")
}

/// Every `*<suffix>` file in `dir`, parsed as JSON.
pub fn json_files(dir: &Path, suffix: &str) -> Vec<Value> {
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

/// The on-disk record of the training workload `request_id`, which the
/// next node reads to adopt it.
pub fn record_path(s: &Scenario, request_id: &str) -> PathBuf {
    logs_dir(s).join(format!("training_{request_id}.record.json"))
}

/// [`record_path`], parsed; panics if it is missing.
pub fn read_record(s: &Scenario, request_id: &str) -> Value {
    let path = record_path(s, request_id);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

/// The `.json` files of the outbox (temp files start with a dot).
pub fn outbox_files(s: &Scenario) -> Vec<PathBuf> {
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
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
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
pub fn alive(pid: i32) -> bool {
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// `kill(-pgid, 0)` succeeds: some process is left in the group.
pub fn group_alive(pgid: i32) -> bool {
    !matches!(kill(Pid::from_raw(-pgid), None), Err(Errno::ESRCH))
}

/// The event ends its workload: exactly one of these must be published.
pub fn is_terminal(v: &Value) -> bool {
    matches!(
        v["event"].as_str(),
        Some("completed" | "failed" | "cancelled")
    )
}

/// How long a command may take to be answered. Longer than the harness's
/// 5 s: a launch writes (and fsyncs) several files, which a busy disk can
/// slow down a lot.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `command` (which needs a `request_id`) on the node's uuid topic
/// and returns the response; panics with `node`'s log (the node answering
/// now) if none comes.
pub fn request(s: &Scenario, node: &NodeProcess, command: Value) -> Value {
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

/// Sends `command` as `request_id` and returns its one answer (or its
/// `started` event), never a later event; panics with `node`'s log.
pub fn answer(s: &Scenario, node: &NodeProcess, request_id: &str, mut command: Value) -> Value {
    command["request_id"] = json!(request_id);
    s.client
        .publish_json(&s.topic(&s.uuid, "command"), &command);
    s.client
        .recv_json_where(ANSWER_TIMEOUT, |topic, v| {
            topic == s.response_topic()
                && v["request_id"] == request_id
                && (v.get("event").is_none() || v["event"] == "started")
        })
        .unwrap_or_else(|| panic!("no response to {command}; node log:\n{}", node.stderr()))
}

/// The answer to a `status` command: what `node` counts as running.
pub fn ask_status(s: &Scenario, node: &NodeProcess) -> Value {
    let id = uuid::Uuid::new_v4().to_string();
    request(s, node, json!({"command": "status", "request_id": id}))
}

/// Starts a training workload and returns the `started` output; its pid
/// goes to the reaper before anything else can fail.
pub fn start_workload(s: &Scenario, reaper: &Reaper, request_id: &str) -> Value {
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
pub fn terminal(
    client: &TestClient,
    node: &NodeProcess,
    request_id: &str,
    timeout: Duration,
) -> Value {
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
pub fn more_terminals(client: &TestClient, request_id: &str, window: Duration) -> Vec<Value> {
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
pub fn stop_gracefully(s: &Scenario) {
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
pub fn again(s: &Scenario, template: &str) -> Node {
    Node::new()
        .arg("start")
        .envs(standard_env(s.broker.port(), &s.backend.url(), TOKEN))
        .env_var("HOME", s.node.home().to_str().unwrap())
        .env_var("CYBERWAVE_TRAINING_CMD", template)
}

/// [`again`], started.
pub fn spawn_again(s: &Scenario, template: &str) -> NodeProcess {
    again(s, template).spawn()
}

/// [`spawn_again`], then waits until the new node listens for commands.
pub fn restart(s: &Scenario, template: &str) -> NodeProcess {
    let node = spawn_again(s, template);
    assert!(
        node.wait_for_log(READY, Duration::from_secs(10)),
        "the restarted node never became ready:\n{}",
        node.stderr()
    );
    node
}

/// The entries of a status output's `active_workloads`.
pub fn active(status: &Value) -> Vec<Value> {
    status["output"]["active_workloads"]
        .as_array()
        .unwrap_or_else(|| panic!("no active_workloads: {status}"))
        .clone()
}

/// After a broker restart: waits until the test client is connected again
/// and subscribed to the response topic (its SUBACK seen).
pub fn client_back(s: &Scenario, connections_before: usize) {
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
pub struct Gate {
    port: u16,
    open: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Gate {
    /// A gate, open, on a free local port, forwarding to `upstream`.
    pub fn start(upstream: u16) -> Gate {
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

    /// The port to give the node instead of the broker's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts the connections through the gate and refuses new ones.
    pub fn close(&self) {
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

    /// Lets new connections through again.
    pub fn open(&self) {
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
// Live output

/// Collected `stdout` chunks (offset, data) of `request_id`, until its
/// terminal event (returned as well, if seen) or `until`.
pub fn collect_stdout(
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
