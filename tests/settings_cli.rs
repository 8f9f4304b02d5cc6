//! Where settings come from, as the operator sees it: which token reached the
//! backend, what `config show` prints, and how bad settings are reported.

mod common;

use std::time::Duration;

use common::{FakeBackend, Node};

/// Starts the node with `place` deciding where tokens live, and returns the
/// token the backend saw on the validation call.
fn token_seen(place: impl FnOnce(Node) -> Node) -> String {
    let backend = FakeBackend::start();
    let node = place(
        Node::new()
            .arg("start")
            .env_var("CYBERWAVE_API_URL", backend.url())
            .env_var("CYBERWAVE_MQTT_HOST", "127.0.0.1")
            .env_var("CYBERWAVE_MQTT_PORT", "1"),
    )
    .spawn();
    let request = backend
        .wait_for_request(
            "GET",
            "/api/v1/cloud-node/instances",
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("no validation call:\n{}", node.stderr()));
    request.headers["authorization"]
        .trim_start_matches("Token ")
        .to_owned()
}

const CREDENTIALS: &str =
    r#"{"token": "tok-credentials", "email": "a@b.c", "workspace_slug": "ws-1"}"#;

#[test]
fn token_from_each_source_in_precedence_order() {
    let all = |n: Node| {
        n.home_file(".cyberwave/credentials.json", CREDENTIALS)
            .home_file(".cyberwave/.env", "CYBERWAVE_API_TOKEN=tok-config-env\n")
            .cwd_file(".env", "CYBERWAVE_API_TOKEN=tok-cwd-env\n")
    };
    assert_eq!(
        token_seen(|n| all(n).env_var("CYBERWAVE_API_TOKEN", "tok-env")),
        "tok-env"
    );
    assert_eq!(token_seen(all), "tok-cwd-env");
    assert_eq!(
        token_seen(|n| {
            n.home_file(".cyberwave/credentials.json", CREDENTIALS)
                .home_file(".cyberwave/.env", "CYBERWAVE_API_TOKEN=tok-config-env\n")
        }),
        "tok-config-env"
    );
    assert_eq!(
        token_seen(|n| n.home_file(".cyberwave/credentials.json", CREDENTIALS)),
        "tok-credentials"
    );
}

#[test]
fn api_key_alias_and_custom_config_dir() {
    assert_eq!(
        token_seen(|n| n.env_var("CYBERWAVE_API_KEY", "tok-alias")),
        "tok-alias"
    );
    let seen = token_seen(|n| {
        let custom = n.home().join("elsewhere");
        std::fs::create_dir_all(&custom).unwrap();
        std::fs::write(
            custom.join("credentials.json"),
            r#"{"token":"tok-custom-dir"}"#,
        )
        .unwrap();
        n.env_var("CYBERWAVE_CONFIG_DIR", custom.to_str().unwrap())
    });
    assert_eq!(seen, "tok-custom-dir");
}

#[test]
fn workspace_slug_from_credentials_is_sent_as_query() {
    let backend = FakeBackend::start();
    let _node = Node::new()
        .arg("start")
        .home_file(".cyberwave/credentials.json", CREDENTIALS)
        .env_var("CYBERWAVE_API_URL", backend.url())
        .env_var("CYBERWAVE_MQTT_PORT", "1")
        .spawn();
    let request = backend
        .wait_for_request("POST", "/api/v1/cloud-node", Duration::from_secs(5))
        .expect("create call");
    assert_eq!(request.query, "workspace_slug=ws-1");
}

#[test]
fn no_token_anywhere_names_all_four_sources() {
    let (status, _out, err) = Node::new().arg("start").run_to_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1));
    for source in [
        "CYBERWAVE_API_TOKEN",
        ".env",
        ".cyberwave/.env",
        "credentials.json",
        "cyberwave-cli login",
    ] {
        assert!(err.contains(source), "missing {source:?} in:\n{err}");
    }
}

#[test]
fn corrupt_credentials_is_a_warning_and_the_env_token_still_works() {
    let seen = token_seen(|n| {
        n.home_file(".cyberwave/credentials.json", "{oops")
            .env_var("CYBERWAVE_API_TOKEN", "tok-env")
    });
    assert_eq!(seen, "tok-env");
    let (status, out, err) = Node::new()
        .args(["config", "show"])
        .home_file(".cyberwave/credentials.json", "{oops")
        .run_to_exit(Duration::from_secs(5));
    assert!(status.success(), "{err}");
    assert!(out.contains("credentials.json is not valid JSON"), "{out}");
}

#[test]
fn config_show_names_every_source_and_masks_the_token() {
    let yml = "cyberwave-cloud-node:\n  training: python train.py --params {body}\n  mqtt_port: 1999\n  heartbeat_interval: 15\n  colour: blue\n";
    let (status, out, err) = Node::new()
        .args(["config", "show", "--profile", "gpu-a100"])
        .env_var("CYBERWAVE_API_TOKEN", "abcdefghijklmnop-secret-9876")
        .env_var("CYBERWAVE_MQTT_HOST", "broker.example")
        .cwd_file("cyberwave.yml", yml)
        .cwd_file(".env", "CYBERWAVE_INFERENCE_CMD=\"python infer.py\"\n")
        .home_file(
            ".cyberwave/credentials.json",
            r#"{"token":"x","envs":{"CYBERWAVE_BASE_URL":"https://api.example"}}"#,
        )
        .run_to_exit(Duration::from_secs(5));
    assert!(status.success(), "{err}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} row in:\n{out}"))
            .to_owned()
    };
    assert!(
        !out.contains("abcdefghijklmnop-secret-9876"),
        "token printed:\n{out}"
    );
    assert!(line("api_token").contains("****9876"));
    assert!(line("api_token").contains("environment variable CYBERWAVE_API_TOKEN"));
    assert!(line("profile_slug").contains("flag --profile"));
    assert!(line("mqtt_host").contains("environment variable CYBERWAVE_MQTT_HOST"));
    assert!(line("mqtt_port").contains("cyberwave.yml line 3 (mqtt_port)"));
    assert!(line("heartbeat_interval").contains("15s"));
    assert!(line("inference").contains(".env line 1 (CYBERWAVE_INFERENCE_CMD)"));
    assert!(
        line("api_url").contains("https://api.example")
            && line("api_url").contains("credentials.json")
    );
    assert!(line("max_concurrent_workloads").contains("default"));
    assert!(line("mqtt_password").contains("the API token"));
    assert!(out.contains("unknown key `colour`"), "{out}");
}

fn start_error(yml: Option<&str>, env: &[(&str, &str)]) -> String {
    let mut node = Node::new().arg("start").env_var("CYBERWAVE_API_TOKEN", "t");
    if let Some(yml) = yml {
        node = node.cwd_file("cyberwave.yml", yml);
    }
    for (k, v) in env {
        node = node.env_var(*k, *v);
    }
    let (status, _out, err) = node.run_to_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "{err}");
    err
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let err = start_error(
        Some("cyberwave-cloud-node:\n  training: ok\n  inference: [broken\n"),
        &[],
    );
    assert!(
        err.contains("malformed YAML in") && err.contains("cyberwave.yml line"),
        "{err}"
    );
}

#[test]
fn non_numeric_port_and_zero_heartbeat_are_errors_with_their_source() {
    let err = start_error(Some("cyberwave:\n  mqtt_port: eighteen\n"), &[]);
    assert!(
        err.contains("cyberwave.yml line 2 (mqtt_port)") && err.contains("not a number"),
        "{err}"
    );
    let err = start_error(None, &[("CYBERWAVE_HEARTBEAT_INTERVAL", "0")]);
    assert!(
        err.contains("CYBERWAVE_HEARTBEAT_INTERVAL") && err.contains("at least 1 second"),
        "{err}"
    );
    let err = start_error(
        Some("cyberwave-cloud-node:\n  heartbeat_interval: 0\n"),
        &[],
    );
    assert!(err.contains("line 2 (heartbeat_interval)"), "{err}");
}

#[test]
fn bad_flag_values_are_refused_by_the_parser() {
    let (status, _out, err) = Node::new()
        .args(["start", "--mqtt-port", "abc"])
        .run_to_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("--mqtt-port"), "{err}");
    let err = start_error(None, &[("CYBERWAVE_INSTANCE_SLUG", "bad/slug")]);
    assert!(
        err.contains("instance slug") && err.contains("'/'"),
        "{err}"
    );
}

#[test]
fn missing_config_file_is_an_error() {
    let (status, _out, err) = Node::new()
        .args(["start", "--config", "nowhere/cyberwave.yml"])
        .env_var("CYBERWAVE_API_TOKEN", "t")
        .run_to_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1));
    assert!(
        err.contains("nowhere/cyberwave.yml does not exist"),
        "{err}"
    );
}

#[test]
fn help_explains_flags_and_token_sources() {
    let (status, out, _) = Node::new()
        .args(["start", "--help"])
        .run_to_exit(Duration::from_secs(5));
    assert!(status.success());
    for needle in [
        "--slug",
        "--config",
        "--profile",
        "--mqtt-host",
        "--mqtt-port",
        "--verbose",
        "credentials.json",
        "CYBERWAVE_API_TOKEN",
    ] {
        assert!(out.contains(needle), "help lacks {needle}:\n{out}");
    }
    let (status, out, _) = Node::new()
        .arg("--version")
        .run_to_exit(Duration::from_secs(5));
    assert!(status.success());
    assert_eq!(
        out.trim(),
        format!("cyberwave-cloud-node {}", env!("CARGO_PKG_VERSION"))
    );
}
