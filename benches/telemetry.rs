//! `cargo bench --bench telemetry`: what one metrics sample costs, and the
//! remote terminal's echo round trip and throughput over MQTT. Prints
//! figures; asserts nothing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::scenario::Scenario;
use cyberwave_cloud_node::{NodeFigures, Sampler};
use serde_json::json;

fn cpu_time() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a plain getrusage on this thread's own figures.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

fn main() {
    println!(
        "cyberwave-cloud-node telemetry benchmark (binary: {})",
        common::node::NODE_BIN
    );
    let mut sampler = Sampler::new().expect("system figures");
    sampler.sample(&NodeFigures::default());
    let runs = 200;
    let before = cpu_time();
    for _ in 0..runs {
        std::hint::black_box(sampler.sample(&NodeFigures::default()));
    }
    let per_sample = (cpu_time() - before) / runs;
    println!(
        "one metrics sample: {:.3} ms of CPU (target <= 2 ms)",
        per_sample.as_secs_f64() * 1000.0
    );

    let s = Scenario::start(|n| {
        n.cwd_file(
            "cyberwave.yml",
            "cyberwave-cloud-node:\n  terminal:\n    enabled: true\n    shell: /bin/sh\n",
        )
    });
    let out = s.topic(&s.uuid, "terminal/+/out");
    s.client.subscribe(&out);
    let opened =
        s.request(json!({"command": "terminal_open", "params": {"cols": 200, "rows": 50}}));
    let session = opened["output"]["session_id"].as_str().unwrap().to_owned();
    let input = s.topic(&s.uuid, &format!("terminal/{session}/in"));
    // Raw mode off, no echo: each keystroke's echo comes back from the tty.
    std::thread::sleep(Duration::from_millis(300));
    while s.client.recv(Duration::from_millis(100)).is_some() {}
    let mut samples = Vec::new();
    for i in 0..200 {
        let key = [b'a' + (i % 26) as u8];
        // Output is published at most every 10 ms per session: type like a
        // fast typist (one key per 15 ms), not faster than that limit.
        std::thread::sleep(Duration::from_millis(15));
        let began = Instant::now();
        s.client.publish(&input, key.to_vec());
        loop {
            let (_, payload) = s.client.recv(Duration::from_secs(5)).expect("echo");
            if payload.contains(&key[0]) {
                break;
            }
        }
        samples.push(began.elapsed().as_secs_f64() * 1000.0);
    }
    s.client.publish(&input, b"\x15".to_vec()); // clear the line
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "terminal echo round trip over MQTT: p50 {:.2} ms, p95 {:.2} ms (target p50 <= 5 ms)",
        samples[samples.len() / 2],
        samples[samples.len() * 95 / 100]
    );
    std::thread::sleep(Duration::from_millis(200));
    while s.client.recv(Duration::from_millis(100)).is_some() {}

    let file = s.node.workdir().join("big.txt");
    let line =
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\n";
    std::fs::write(&file, line.repeat(50 * 1024 * 1024 / line.len())).unwrap();
    let size = std::fs::metadata(&file).unwrap().len() as usize;
    let began = Instant::now();
    s.client.publish(
        &input,
        format!("cat {} ; echo END-OF-CAT\n", file.display()).into_bytes(),
    );
    let mut received = 0usize;
    let mut tail = Vec::new();
    while began.elapsed() < Duration::from_secs(120) {
        let Some((_, payload)) = s.client.recv(Duration::from_secs(5)) else {
            break;
        };
        received += payload.len();
        tail.extend_from_slice(&payload);
        if tail.len() > 64 {
            tail.drain(..tail.len() - 64);
        }
        if String::from_utf8_lossy(&tail).contains("\nEND-OF-CAT\r\n") {
            break;
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    println!(
        "terminal throughput: {:.1} MB through the PTY to the out topic in {seconds:.2} s = {:.1} MB/s ({} MB file)",
        received as f64 / 1e6,
        received as f64 / 1e6 / seconds,
        size / 1_000_000
    );
}
