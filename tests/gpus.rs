//! The node's GPUs as the operator sees them: declared by `CYBERWAVE_GPUS`
//! on this GPU-less machine, shown by `status`, the heartbeat, `info` and
//! `config show`; a bad `gpus` setting stops the start with its reason.

mod common;

use std::time::Duration;

use common::scenario::Scenario;
use common::{FakeBackend, Node};
use serde_json::{json, Value};

/// NVML needs the driver; where it is present, a list restricts rather than
/// declares, and the declared-GPU tests do not apply.
fn has_nvidia_driver() -> bool {
    std::path::Path::new("/dev/nvidiactl").exists()
}

#[test]
fn declared_gpus_are_listed_by_status_and_summarised_by_the_heartbeat() {
    if has_nvidia_driver() {
        eprintln!("skipped: this machine has an NVIDIA driver, so CYBERWAVE_GPUS restricts");
        return;
    }
    let s = Scenario::start(|n| n.env_var("CYBERWAVE_GPUS", "0,1,2,3"));
    assert!(
        s.node
            .stderr()
            .contains("GPUs declared by the gpus setting"),
        "{}",
        s.node.stderr()
    );
    let status = s.status();
    let gpus = status["output"]["gpus"].as_array().expect("gpus in status");
    assert_eq!(gpus.len(), 4, "{status}");
    for (index, gpu) in gpus.iter().enumerate() {
        assert_eq!(gpu["index"], index, "{gpu}");
        assert_eq!(gpu["uuid"], Value::Null, "{gpu}");
        assert_eq!(gpu["held_by"], Value::Null, "{gpu}");
        assert_eq!(gpu["declared"], true, "{gpu}");
        assert!(gpu["name"].is_string() && gpu["memory_total_bytes"].is_u64());
    }
    let heartbeat = s
        .backend
        .wait_for_request("POST", "/heartbeat", Duration::from_secs(5))
        .expect("a heartbeat");
    assert_eq!(heartbeat.body["gpus"], json!({"count": 4, "held": 0}));
}

#[test]
fn no_gpu_setting_means_an_empty_list() {
    let s = Scenario::start(|n| n.env_var("CYBERWAVE_GPUS", "none"));
    let status = s.status();
    assert_eq!(status["output"]["gpus"], json!([]), "{status}");
}

#[test]
fn a_bad_gpus_entry_stops_the_start_and_names_it() {
    let (status, _out, err) = Node::new()
        .arg("start")
        .env_var("CYBERWAVE_API_TOKEN", "t")
        .env_var("CYBERWAVE_GPUS", "0,gpu1")
        .run_to_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("environment variable CYBERWAVE_GPUS")
            && err.contains("\"gpu1\" is neither a GPU index"),
        "{err}"
    );
    let (status, _out, err) = Node::new()
        .arg("start")
        .env_var("CYBERWAVE_API_TOKEN", "t")
        .cwd_file("cyberwave.yml", "cyberwave:\n  gpus_per_workload: some\n")
        .run_to_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("cyberwave.yml line 2 (gpus_per_workload)")
            && err.contains("all or a whole number"),
        "{err}"
    );
}

/// Runs only where NVML is: a GPU the machine lacks stops the start, with
/// what NVML reports.
#[test]
fn a_gpu_nvml_does_not_report_stops_the_start() {
    if !has_nvidia_driver() {
        eprintln!("skipped: no NVIDIA driver here, so CYBERWAVE_GPUS declares");
        return;
    }
    let backend = FakeBackend::start();
    let (status, _out, err) = Node::new()
        .arg("start")
        .env_var("CYBERWAVE_API_TOKEN", "t")
        .env_var("CYBERWAVE_API_URL", backend.url())
        .env_var("CYBERWAVE_MQTT_HOST", "127.0.0.1")
        .env_var("CYBERWAVE_MQTT_PORT", "1")
        .env_var("CYBERWAVE_GPUS", "63")
        .run_to_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("CYBERWAVE_GPUS names GPU 63, but NVML reports 0"),
        "{err}"
    );
}

#[test]
fn info_and_config_show_use_the_setting() {
    let (status, out, err) = Node::new()
        .args(["config", "show"])
        .env_var("CYBERWAVE_GPUS", "0,2")
        .cwd_file("cyberwave.yml", "cyberwave:\n  gpus_per_workload: 1\n")
        .run_to_exit(Duration::from_secs(5));
    assert!(status.success(), "{err}");
    let row = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} row in:\n{out}"))
            .to_owned()
    };
    assert!(
        row("gpus").contains("0,2") && row("gpus").contains("environment variable CYBERWAVE_GPUS"),
        "{out}"
    );
    assert!(
        row("gpus_per_workload").contains("1")
            && row("gpus_per_workload").contains("cyberwave.yml line 2 (gpus_per_workload)"),
        "{out}"
    );
    if has_nvidia_driver() {
        return;
    }
    let (status, out, err) = Node::new()
        .args(["info", "--json"])
        .env_var("CYBERWAVE_GPUS", "0,GPU-8f3e")
        .run_to_exit(Duration::from_secs(10));
    assert!(status.success(), "{err}");
    let info: Value = serde_json::from_str(&out).unwrap();
    let gpus = info["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 2, "{info}");
    assert_eq!(gpus[1]["uuid"], "GPU-8f3e");
    assert!(gpus.iter().all(|g| g["declared"] == true), "{info}");
    let (_, text, _) = Node::new()
        .arg("info")
        .env_var("CYBERWAVE_GPUS", "3")
        .run_to_exit(Duration::from_secs(10));
    assert!(
        text.contains("gpu 3     declared by the gpus setting"),
        "{text}"
    );
}
