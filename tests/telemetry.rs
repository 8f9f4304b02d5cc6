//! Hardware detection and metrics, on this machine (which has no GPU: the
//! GPU list must be empty, not an error).

mod common;

use std::time::{Duration, Instant};

use common::scenario::Scenario;
use serde_json::{json, Value};

#[test]
fn info_json_has_sane_figures_and_no_gpus_here() {
    let out = std::process::Command::new(common::node::NODE_BIN)
        .args(["info", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cores = info["logical_cores"].as_u64().unwrap();
    assert!((1..=4096).contains(&cores));
    assert!(info["memory_total_bytes"].as_u64().unwrap() > 256 << 20);
    assert!(!info["kernel"].as_str().unwrap().is_empty());
    assert!(info["disks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["mount"] == "/"));
    if !std::path::Path::new("/dev/nvidiactl").exists() {
        assert_eq!(info["gpus"], json!([]));
    }
    let text = std::process::Command::new(common::node::NODE_BIN)
        .arg("info")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("memory"));
}

#[test]
fn metrics_arrive_at_the_interval_and_status_shows_the_latest() {
    let s = Scenario::start(|n| n.env_var("CYBERWAVE_METRICS_INTERVAL", "1"));
    let topic = s.topic(&s.uuid, "metrics");
    s.client.subscribe(&topic);
    let mut arrivals = Vec::new();
    let mut last = Value::Null;
    while arrivals.len() < 5 {
        let sample = s
            .client
            .recv_json_where(Duration::from_secs(3), |t, _| t == topic)
            .expect("a metrics sample every second");
        arrivals.push(Instant::now());
        last = sample;
    }
    // Three intervals, not one: a single sample delayed on a busy machine
    // moves one arrival, not the pace.
    let span = arrivals[4].duration_since(arrivals[1]);
    assert!(
        span > Duration::from_millis(2200) && span < Duration::from_millis(3800),
        "three samples took {span:?}"
    );
    let percent = last["cpu"]["percent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&percent));
    assert!(last["memory"]["used_bytes"].as_u64().unwrap() > 0);
    assert!(last["load_average"].as_array().unwrap().len() == 3);
    assert_eq!(last["gpus"].as_array().unwrap().len(), 0);
    assert!(last["node"]["uptime_seconds"].as_u64().unwrap() >= 1);
    let status = s.status();
    assert!(
        status["output"]["metrics"]["cpu"]["percent"].is_number(),
        "{status}"
    );
}

#[test]
fn interval_zero_turns_metrics_off() {
    let s = Scenario::start(|n| n.env_var("CYBERWAVE_METRICS_INTERVAL", "0"));
    let topic = s.topic(&s.uuid, "metrics");
    s.client.subscribe(&topic);
    assert!(s
        .client
        .recv_json_where(Duration::from_millis(2500), |t, _| t == topic)
        .is_none());
    assert_eq!(s.status()["output"]["metrics"], Value::Null);
}

#[test]
fn a_workload_reports_its_cpu_time_and_peak_memory() {
    let burn = r#"python3 -c "
import time
block = bytearray(200 * 1024 * 1024)
for i in range(0, len(block), 4096): block[i] = 1
end = time.process_time() + 1.0
while time.process_time() < end: pass
""#;
    let s = Scenario::start(|n| {
        n.env_var("CYBERWAVE_TRAINING_CMD", burn)
            .env_var("CYBERWAVE_METRICS_INTERVAL", "1")
    });
    s.request(json!({"command": "training", "request_id": "burn"}));
    let done = s
        .client
        .recv_json_where(Duration::from_secs(20), |_, v| {
            v["request_id"] == "burn" && v["event"] == "completed"
        })
        .unwrap_or_else(|| panic!("no completed event:\n{}", s.node.stderr()));
    let resources = &done["output"]["resources"];
    assert!(
        resources["cpu_seconds"].as_f64().unwrap() >= 0.8,
        "{resources}"
    );
    assert!(
        resources["max_rss_bytes"].as_u64().unwrap() >= 200 * 1024 * 1024,
        "{resources}"
    );
    let topic = s.topic(&s.uuid, "metrics");
    s.client.subscribe(&topic);
    let sample = s
        .client
        .recv_json_where(Duration::from_secs(3), |t, v| {
            t == topic && v["node"]["workloads_completed"] == 1
        })
        .expect("the metrics count the finished workload");
    assert_eq!(sample["node"]["workloads_started"], 1);
    assert!(sample["node"]["workload_seconds"].as_f64().unwrap() >= 1.0);
}
