//! Settings that teach: every problem of a run at once with its file and
//! line, "did you mean" for a misspelt key, a wrong type named as such,
//! `config show --standalone` and `--json`, and a standalone start with
//! nothing to run saying what to set.

mod common;

use std::time::Duration;

use common::broker::free_port;
use common::Node;
use serde_json::Value;

fn start_fails(node: Node) -> String {
    let (status, _out, err) = node
        .args([
            "start",
            "--standalone",
            "--mqtt-port",
            &free_port().to_string(),
        ])
        .run_to_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{err}");
    err
}

#[test]
fn every_problem_of_a_run_at_once_with_file_and_line() {
    let err = start_fails(
        Node::new()
            .cwd_file(
                "cyberwave.yml",
                "cyberwave-cloud-node:\n  training: {epochs: 3}\n  heartbeat_interval: 0\n  mqtt_max_packet_bytes: lots\n",
            )
            .cwd_file(".env", "# settings\nCYBERWAVE_GPUS=0,gpu1\nnot an assignment\n")
            .env_var("CYBERWAVE_METRICS_INTERVAL", "soon"),
    );
    assert!(err.contains("6 problems in the settings"), "{err}");
    for needle in [
        "cyberwave.yml line 2: `training` must be a string (a command template), found a mapping",
        "cyberwave.yml line 3 (heartbeat_interval)",
        "cyberwave.yml line 4 (mqtt_max_packet_bytes)",
        ".env line 2 (CYBERWAVE_GPUS)",
        ".env line 3: cannot parse `not an assignment`",
        "environment variable CYBERWAVE_METRICS_INTERVAL",
    ] {
        assert!(err.contains(needle), "{needle:?} missing:\n{err}");
    }
}

#[test]
fn a_wrong_type_is_named_not_called_malformed() {
    let err = start_fails(Node::new().cwd_file(
        "cyberwave.yml",
        "cyberwave-cloud-node:\n  training: {epochs: 3}\n",
    ));
    assert!(
        err.contains("`training` must be a string (a command template), found a mapping"),
        "{err}"
    );
    assert!(!err.contains("malformed YAML"), "{err}");
}

#[test]
fn a_syntax_error_in_a_three_line_file_points_inside_it() {
    let err = start_fails(Node::new().cwd_file(
        "cyberwave.yml",
        "cyberwave-cloud-node:\n  training: ok\n  inference: [broken\n",
    ));
    assert!(err.contains("cyberwave.yml line 3:"), "{err}");
    assert!(!err.contains("line 4"), "{err}");
}

#[test]
fn unknown_keys_get_a_did_you_mean() {
    let (status, out, err) = Node::new()
        .args(["config", "show"])
        .cwd_file(
            "cyberwave.yml",
            "cyberwave-cloud-node:\n  trainig: python train.py\n  terminal:\n    enabeld: true\n",
        )
        .run_to_exit(Duration::from_secs(10));
    assert!(status.success(), "{err}");
    assert!(
        out.contains(
            "cyberwave.yml line 2: unknown key `trainig` is ignored; did you mean `training`?"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "line 4: unknown key `terminal.enabeld` is ignored; did you mean `terminal.enabled`?"
        ),
        "{out}"
    );
}

#[test]
fn config_show_standalone_shows_what_a_standalone_node_uses() {
    let show = |node: Node, extra: &[&str]| {
        let (status, out, err) = node
            .args(["config", "show", "--standalone", "--mqtt-port", "18830"])
            .args(extra.iter().copied())
            .env_var("CYBERWAVE_API_TOKEN", "tok-secret-1234")
            .run_to_exit(Duration::from_secs(10));
        assert!(status.success(), "{err}");
        out
    };
    let row = |out: &str, name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} row in:\n{out}"))
            .to_owned()
    };
    let out = show(Node::new(), &["--slug", "lab"]);
    for absent in [
        "api_token",
        "1234",
        "mqtt.cyberwave.com",
        "assigned by the backend",
        "api_url",
    ] {
        assert!(!out.contains(absent), "{absent:?} shown:\n{out}");
    }
    assert!(out.contains("mode:         standalone"), "{out}");
    assert!(row(&out, "mqtt_host").contains("127.0.0.1"), "{out}");
    assert!(row(&out, "mqtt_port").contains("18830"), "{out}");
    assert!(row(&out, "mqtt_use_tls").contains("false"), "{out}");
    assert!(row(&out, "instance_slug").contains("lab"), "{out}");
    assert!(
        row(&out, "instance_uuid").contains("made at the first standalone start"),
        "{out}"
    );

    // Once a standalone node has made its identity, that is what shows.
    let identity = r#"{"uuid":"6f1c0d5e-6a57-4f0e-9a1e-2b3c4d5e6f70","slug":"bench","registered_at":"2026-01-01T00:00:00Z","standalone":true}"#;
    let out = show(
        Node::new().home_file(".cyberwave/instance_identity.json", identity),
        &[],
    );
    assert!(
        row(&out, "instance_uuid").contains("6f1c0d5e-6a57-4f0e-9a1e-2b3c4d5e6f70")
            && row(&out, "instance_uuid").contains("instance_identity.json"),
        "{out}"
    );
    assert!(row(&out, "instance_slug").contains("bench"), "{out}");
}

#[test]
fn config_show_json_parses_with_sources() {
    let (status, out, err) = Node::new()
        .args(["config", "show", "--json"])
        .cwd_file(
            "cyberwave.yml",
            "cyberwave:\n  mqtt_port: 1999\n  colour: blue\n",
        )
        .run_to_exit(Duration::from_secs(10));
    assert!(status.success(), "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}:\n{out}"));
    let setting = |name: &str| {
        shown["settings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["setting"] == name)
            .unwrap_or_else(|| panic!("no {name} in {shown}"))
            .clone()
    };
    assert_eq!(setting("mqtt_port")["value"], "1999");
    assert!(setting("mqtt_port")["source"]
        .as_str()
        .unwrap()
        .contains("cyberwave.yml line 2 (mqtt_port)"));
    assert_eq!(setting("api_token")["value"], Value::Null);
    assert_eq!(shown["standalone"], false);
    assert!(shown["config_file"]
        .as_str()
        .unwrap()
        .ends_with("cyberwave.yml"));
    let warnings = shown["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("unknown key `colour`")),
        "{shown}"
    );
}

#[test]
fn a_standalone_start_without_templates_says_which_keys_to_set() {
    let node = Node::new()
        .args([
            "start",
            "--standalone",
            "--mqtt-port",
            &free_port().to_string(),
        ])
        .spawn();
    assert!(
        node.wait_for_log("ready: listening", Duration::from_secs(15)),
        "{}",
        node.stderr()
    );
    let err = node.stderr();
    let warning = err
        .lines()
        .find(|l| l.contains("no workload templates"))
        .unwrap_or_else(|| panic!("no warning about templates:\n{err}"));
    let looked_at = node.workdir().join("cyberwave.yml");
    assert!(
        warning.contains(&format!("looked for {} (not found)", looked_at.display())),
        "{warning}"
    );
    for key in ["inference", "training", "simulate"] {
        assert!(warning.contains(key), "{key} missing: {warning}");
    }
}
