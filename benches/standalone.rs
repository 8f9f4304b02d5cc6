//! `cargo bench --bench standalone`: the newcomer's path. Time from
//! `start --standalone` to the first answered `send status`, and a trivial
//! `send training --wait done` end to end (both including the `send`
//! process's own start). Prints figures; asserts nothing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::free_port;
use common::Node;

fn send(home: &Path, args: &[&str]) -> bool {
    Command::new(common::node::NODE_BIN)
        .arg("send")
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn report(name: &str, mut samples: Vec<f64>, target: &str) {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{name} over {} runs: p50 {:.1} ms, max {:.1} ms ({target})",
        samples.len(),
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    );
}

fn main() {
    println!(
        "cyberwave-cloud-node standalone benchmark (binary: {})",
        common::node::NODE_BIN
    );
    let mut start_samples = Vec::new();
    let mut job_samples = Vec::new();
    for _ in 0..10 {
        let port = free_port().to_string();
        let started = Instant::now();
        let node = Node::new()
            .args(["start", "--standalone", "--mqtt-port", &port])
            .env_var("CYBERWAVE_TRAINING_CMD", "true")
            .spawn();
        let home = node.home().to_owned();
        while !send(&home, &["status", "--mqtt-port", &port, "--timeout", "0.5"]) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never answered:\n{}",
                node.stderr()
            );
        }
        start_samples.push(started.elapsed().as_secs_f64() * 1000.0);
        for _ in 0..5 {
            let began = Instant::now();
            assert!(send(
                &home,
                &["training", "--wait", "done", "--mqtt-port", &port]
            ));
            job_samples.push(began.elapsed().as_secs_f64() * 1000.0);
        }
        node.signal(nix::sys::signal::Signal::SIGTERM);
        node.wait_exit(Duration::from_secs(5));
    }
    report(
        "start --standalone -> first answered `send status`",
        start_samples,
        "target <= 300 ms",
    );
    report(
        "`send training --wait done` of a trivial job, end to end",
        job_samples,
        "target <= 100 ms",
    );
}
