//! A terminal that prints as fast as it can, to a broker that stalls now
//! and then: the node pushes back on the PTY instead of buffering, so its
//! memory stays flat, `status` stays prompt, and every byte still reaches a
//! live reader.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::scenario::Scenario;
use common::TestClient;
use serde_json::json;

const CONFIG: &str = "cyberwave-cloud-node:\n  terminal:\n    enabled: true\n    shell: /bin/sh\n    idle_timeout_seconds: 120\n";
const FLOOD_BYTES: u64 = 100_000_000;
/// The broker stalls twice for this long during the flood.
const STALL: Duration = Duration::from_secs(8);

fn rss_kib(pid: u32) -> u64 {
    common::node::rss_kib(pid).unwrap_or(0)
}

#[test]
fn a_terminal_flood_keeps_the_node_small_and_responsive() {
    let s = Scenario::start(|n| n.cwd_file("cyberwave.yml", CONFIG));
    let rss_limit_kib = common::node::flood_rss_limit_kib(rss_kib(s.node.pid()));
    let opened =
        s.request(json!({"command": "terminal_open", "params": {"cols": 200, "rows": 50}}));
    let session = opened["output"]["session_id"].as_str().unwrap().to_owned();

    // The live reader counts bytes until the end marker shows up. It, and
    // the client asking for `status`, keep their connections through the
    // broker's stalls.
    let patient = Duration::from_secs(60);
    let reader = TestClient::connect_with_keep_alive(s.broker.port(), patient);
    reader.subscribe(&s.topic(&s.uuid, &format!("terminal/{session}/out")));
    let asker = TestClient::connect_with_keep_alive(s.broker.port(), patient);
    asker.subscribe(&s.response_topic());
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let counting = {
        let (received, done) = (received.clone(), done.clone());
        std::thread::spawn(move || {
            let mut tail = String::new();
            let until = Instant::now() + Duration::from_secs(120);
            while Instant::now() < until {
                let Some((_, bytes)) = reader.recv(Duration::from_millis(500)) else {
                    continue;
                };
                received.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                tail.push_str(&String::from_utf8_lossy(&bytes));
                if tail.contains("FLOOD-DONE") {
                    done.store(true, Ordering::Relaxed);
                    return;
                }
                let keep = tail.len().saturating_sub(32);
                tail = tail[tail.floor_char_boundary(keep)..].to_owned();
            }
        })
    };

    let input = s.topic(&s.uuid, &format!("terminal/{session}/in"));
    s.client.publish(
        &input,
        format!("yes | head -c {FLOOD_BYTES}; echo FLOOD-''DONE\n"),
    );
    let started = Instant::now();
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (peak, done, pid) = (peak.clone(), done.clone(), s.node.pid());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let (mut slowest, mut unanswered) = (Duration::ZERO, 0);
    let mut last_status = Instant::now();
    let (mut stalled_at, mut stalls) = (None::<Instant>, 0u64);
    while !done.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(110) {
        match stalled_at {
            None if stalls < 2 && started.elapsed() > Duration::from_secs(1 + 10 * stalls) => {
                s.broker.pause();
                (stalled_at, stalls) = (Some(Instant::now()), stalls + 1);
            }
            Some(at) if at.elapsed() >= STALL => {
                s.broker.resume();
                stalled_at = None;
            }
            _ => {}
        }
        if stalled_at.is_none() && last_status.elapsed() >= Duration::from_secs(1) {
            let asked = Instant::now();
            let status = asker.request(
                &s.topic(&s.uuid, "command"),
                &s.response_topic(),
                &json!({"command": "status"}),
            );
            match status {
                Some(status) => assert_eq!(status["status"], "ok"),
                None => unanswered += 1,
            }
            slowest = slowest.max(asked.elapsed());
            last_status = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    s.broker.resume();
    counting.join().unwrap();
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    let got = received.load(Ordering::Relaxed);
    eprintln!(
        "flood: {got} bytes in {:.1}s ({stalls} broker stalls), node peak RSS {} MiB, slowest status {slowest:?}, {unanswered} unanswered",
        started.elapsed().as_secs_f64(),
        peak / 1024
    );
    assert!(
        done.load(Ordering::Relaxed),
        "the end marker never arrived ({got} bytes)"
    );
    assert!(
        got >= FLOOD_BYTES,
        "only {got} of {FLOOD_BYTES} bytes arrived"
    );
    assert!(
        peak < rss_limit_kib,
        "node RSS peaked at {} MiB (limit {} MiB)",
        peak / 1024,
        rss_limit_kib / 1024
    );
    assert_eq!(unanswered, 0, "status went unanswered {unanswered} times");
    assert!(slowest < Duration::from_secs(1), "status took {slowest:?}");
}
