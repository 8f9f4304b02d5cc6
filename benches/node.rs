//! `cargo bench --bench node`: the node's start-up, idle cost and command
//! throughput against a local Mosquitto and the fake backend of the tests.
//! It prints figures next to the targets of issue 2; it asserts nothing, so a
//! slow machine gives slow numbers rather than a failure.
//!
//! `BENCH_IDLE_SECONDS` (default 30) shortens the idle-CPU window.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::scenario::{Scenario, TOKEN};
use common::{standard_env, Broker, FakeBackend, Node, NodeProcess};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::json;

fn main() {
    println!(
        "cyberwave-cloud-node benchmark (binary: {})",
        common::node::NODE_BIN
    );
    start_to_first_status();
    let s = Scenario::start(|n| n.env_var("CYBERWAVE_HEARTBEAT_INTERVAL", "30"));
    idle_footprint(&s.node);
    status_latency(&s);
    status_throughput(&s);
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Spawn → the first `status` answered, for a first start (create) and a
/// restart (saved identity), 10 runs each.
fn start_to_first_status() {
    let broker = Broker::start();
    let backend = FakeBackend::start();
    let watcher = raw_client(broker.port(), "bench-start");
    let (responses, _guard) = responses_of(watcher, "cyberwave/cloud-node/+/response");
    let mut first = Vec::new();
    let mut restart = Vec::new();
    for run in 0..10 {
        let slug = format!("bench-{run}");
        let home = tempfile::tempdir().unwrap();
        for kind in [&mut first, &mut restart] {
            let publisher = raw_client(broker.port(), &format!("bench-pub-{run}-{}", kind.len()));
            let started = Instant::now();
            let node = spawn_node(&broker, &backend, home.path(), &slug);
            kind.push(wait_first_answer(
                &publisher.0,
                &responses,
                &slug,
                started,
                &node,
            ));
            node.signal(nix::sys::signal::Signal::SIGTERM);
            node.wait_exit(Duration::from_secs(5));
        }
    }
    for (name, mut runs) in [
        ("first start (create+register)", first),
        ("restart (saved identity)", restart),
    ] {
        runs.sort();
        println!(
            "start -> first status answered, {name}: p50 {:.1} ms, max {:.1} ms (target <= 300 ms)",
            ms(percentile(&runs, 0.5)),
            ms(*runs.last().unwrap())
        );
    }
}

fn spawn_node(
    broker: &Broker,
    backend: &FakeBackend,
    home: &std::path::Path,
    slug: &str,
) -> NodeProcess {
    Node::new()
        .args(["start", "--slug", slug])
        .envs(standard_env(broker.port(), &backend.url(), TOKEN))
        .env_var("HOME", home.to_str().unwrap())
        .spawn()
}

fn wait_first_answer(
    publisher: &Client,
    responses: &mpsc::Receiver<serde_json::Value>,
    slug: &str,
    started: Instant,
    node: &NodeProcess,
) -> Duration {
    let topic = format!("cyberwave/cloud-node/{slug}/command");
    let request_id = uuid::Uuid::new_v4().to_string();
    let payload = json!({"command": "status", "request_id": request_id}).to_string();
    let deadline = started + Duration::from_secs(10);
    while Instant::now() < deadline {
        publisher
            .publish(&topic, QoS::AtMostOnce, false, payload.clone())
            .unwrap();
        if let Ok(answer) = responses.recv_timeout(Duration::from_millis(2)) {
            if answer["request_id"] == request_id.as_str() {
                let elapsed = started.elapsed();
                while responses.try_recv().is_ok() {}
                return elapsed;
            }
        }
    }
    panic!("node never answered:\n{}", node.stderr());
}

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    let line = text.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn idle_footprint(node: &NodeProcess) {
    thread::sleep(Duration::from_secs(10));
    let pid = node.pid();
    println!(
        "idle RSS after 10 s: {:.1} MiB (peak {:.1} MiB) (target <= 15 MiB)",
        proc_field(pid, "status", "VmRSS:") as f64 / 1024.0,
        proc_field(pid, "status", "VmHWM:") as f64 / 1024.0
    );
    let window: u64 = std::env::var("BENCH_IDLE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    let before = cpu_ticks(pid);
    thread::sleep(Duration::from_secs(window));
    let used = (cpu_ticks(pid) - before) as f64 / ticks_per_second;
    println!(
        "idle CPU over {window} s: {:.3} s = {:.3} % of one core (target <= 0.2 %)",
        used,
        used / window as f64 * 100.0
    );
}

fn status_latency(s: &Scenario) {
    let command_topic = s.topic(&s.uuid, "command");
    for _ in 0..50 {
        s.client.request(
            &command_topic,
            &s.response_topic(),
            &json!({"command": "status"}),
        );
    }
    let (publisher, _pub_guard) = raw_client(s.broker.port(), "bench-lat-pub");
    let (subscriber, _sub_guard) = raw_client(s.broker.port(), "bench-lat-sub");
    let (responses, _guard) = responses_of((subscriber, _sub_guard), &s.response_topic());
    let mut samples = Vec::with_capacity(2000);
    for i in 0..2000 {
        let payload = json!({"command": "status", "request_id": format!("lat-{i}")}).to_string();
        let started = Instant::now();
        publisher
            .publish(&command_topic, QoS::AtLeastOnce, false, payload)
            .unwrap();
        loop {
            let answer = responses
                .recv_timeout(Duration::from_secs(5))
                .expect("answer");
            if answer["request_id"] == format!("lat-{i}") {
                break;
            }
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    println!(
        "status round trip over {} requests: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms (target p50 <= 2 ms)",
        samples.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.95)),
        ms(percentile(&samples, 0.99))
    );
}

fn status_throughput(s: &Scenario) {
    const COUNT: usize = 20_000;
    let command_topic = s.topic(&s.uuid, "command");
    let (subscriber, sub_guard) = raw_client(s.broker.port(), "bench-tp-sub");
    let (responses, _guard) = responses_of((subscriber, sub_guard), &s.response_topic());
    let (publisher, _pub_guard) = raw_client(s.broker.port(), "bench-tp-pub");
    // A window of unanswered commands, as a real backend would keep: an
    // unbounded flood only measures Mosquitto's queue limit (1000 per client).
    const WINDOW: usize = 500;
    let started = Instant::now();
    let (mut sent, mut received) = (0, 0);
    while received < COUNT {
        while sent < COUNT && sent - received < WINDOW {
            let payload =
                json!({"command": "status", "request_id": format!("tp-{sent}")}).to_string();
            publisher
                .publish(&command_topic, QoS::AtLeastOnce, false, payload)
                .unwrap();
            sent += 1;
        }
        match responses.recv_timeout(Duration::from_secs(5)) {
            Ok(_) => received += 1,
            Err(_) => break,
        }
    }
    let elapsed = started.elapsed();
    println!(
        "status throughput: {received}/{COUNT} answered in {:.2} s = {:.0} status/s (target >= 5000/s)",
        elapsed.as_secs_f64(),
        received as f64 / elapsed.as_secs_f64()
    );
}

/// A rumqttc client whose connection is driven by a thread; the guard
/// carries incoming publishes.
type RawClient = (Client, mpsc::Receiver<rumqttc::Publish>);

fn raw_client(port: u16, id: &str) -> RawClient {
    let mut options = MqttOptions::new(format!("{id}-{}", std::process::id()), "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(1000);
    let (client, mut connection) = Client::new(options, 100_000);
    let mut network = connection.eventloop.network_options();
    network.set_tcp_nodelay(true);
    connection.eventloop.set_network_options(network);
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("bench client connects");
    (client, rx)
}

/// Subscribes `client` to `filter` and turns its publishes into JSON values.
fn responses_of(client: RawClient, filter: &str) -> (mpsc::Receiver<serde_json::Value>, Client) {
    let (client, publishes) = client;
    client.subscribe(filter, QoS::AtLeastOnce).unwrap();
    thread::sleep(Duration::from_millis(200));
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for p in publishes {
            if let Ok(v) = serde_json::from_slice(&p.payload) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    (rx, client)
}
