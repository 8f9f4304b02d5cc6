//! Precedence and parsing, checked on real files in a temp dir.

use super::*;
use std::collections::HashMap;

struct Fixture {
    _dir: tempfile::TempDir,
    env: Environment,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let cwd = dir.path().join("repo");
        std::fs::create_dir_all(home.join(".cyberwave")).unwrap();
        std::fs::create_dir_all(&cwd).unwrap();
        Fixture {
            env: Environment {
                vars: HashMap::new(),
                cwd,
                home: Some(home),
            },
            _dir: dir,
        }
    }

    fn var(mut self, key: &str, value: &str) -> Self {
        self.env.vars.insert(key.into(), value.into());
        self
    }

    fn cwd_file(self, name: &str, text: &str) -> Self {
        std::fs::write(self.env.cwd.join(name), text).unwrap();
        self
    }

    fn config_file(self, name: &str, text: &str) -> Self {
        let dir = self.env.home.as_ref().unwrap().join(".cyberwave");
        std::fs::write(dir.join(name), text).unwrap();
        self
    }

    fn load(&self) -> Result<Settings, ConfigError> {
        Settings::load(&Overrides::default(), &self.env)
    }
}

#[test]
fn defaults_without_any_source() {
    let s = Fixture::new().load().unwrap();
    assert!(s.api_token.is_none());
    assert_eq!(s.api_url.value, DEFAULT_API_URL);
    assert_eq!(s.mqtt_host.value, DEFAULT_MQTT_HOST);
    assert_eq!(s.mqtt_port, Sourced::new(1883, Origin::Default));
    assert!(!s.mqtt_use_tls.value);
    assert_eq!(s.profile_slug.value, "default");
    assert_eq!(s.heartbeat_interval.value, Duration::from_secs(30));
    assert_eq!(s.max_concurrent_workloads.value, 1);
    assert_eq!(s.max_queued_workloads.value, 0);
    assert_eq!(s.topic_prefix.value, "");
    assert_eq!(
        s.mqtt_max_packet_bytes,
        Sourced::new(256 * 1024, Origin::Default)
    );
    assert!(s
        .require_token()
        .unwrap_err()
        .to_string()
        .contains("credentials.json"));
}

#[test]
fn token_precedence_env_then_dotenvs_then_credentials() {
    let base = || {
        Fixture::new()
            .config_file("credentials.json", r#"{"token":"from-credentials"}"#)
            .config_file(".env", "CYBERWAVE_API_TOKEN=from-config-env\n")
            .cwd_file(".env", "CYBERWAVE_API_TOKEN=from-cwd-env\n")
    };
    let token = |f: Fixture| {
        f.load()
            .unwrap()
            .api_token
            .unwrap()
            .value
            .expose()
            .to_owned()
    };
    assert_eq!(
        token(base().var("CYBERWAVE_API_TOKEN", "from-env")),
        "from-env"
    );
    assert_eq!(token(base()), "from-cwd-env");
    let f = Fixture::new()
        .config_file("credentials.json", r#"{"token":"from-credentials"}"#)
        .config_file(".env", "CYBERWAVE_API_TOKEN=from-config-env\n");
    assert_eq!(token(f), "from-config-env");
    let f = Fixture::new().config_file("credentials.json", r#"{"token":"from-credentials"}"#);
    assert_eq!(token(f), "from-credentials");
}

#[test]
fn api_key_alias_is_accepted_but_primary_wins_in_a_layer() {
    let f = Fixture::new().var("CYBERWAVE_API_KEY", "alias");
    assert_eq!(f.load().unwrap().api_token.unwrap().value.expose(), "alias");
    let f = Fixture::new()
        .var("CYBERWAVE_API_KEY", "alias")
        .var("CYBERWAVE_API_TOKEN", "primary");
    assert_eq!(
        f.load().unwrap().api_token.unwrap().value.expose(),
        "primary"
    );
}

#[test]
fn yaml_below_env_above_credentials() {
    let f = Fixture::new()
        .cwd_file("cyberwave.yml", "cyberwave-cloud-node:\n  mqtt_host: yaml-host\n  mqtt_port: 1999\n")
        .config_file("credentials.json", r#"{"token":"t","envs":{"CYBERWAVE_MQTT_HOST":"cred-host","CYBERWAVE_BASE_URL":"https://cred.example"}}"#);
    let s = f.load().unwrap();
    assert_eq!(s.mqtt_host.value, "yaml-host");
    assert_eq!(s.mqtt_port.value, 1999);
    assert!(matches!(
        s.mqtt_host.origin,
        Origin::Yaml { line: Some(2), .. }
    ));
    assert_eq!(s.api_url.value, "https://cred.example");
    let s = f.var("CYBERWAVE_MQTT_HOST", "env-host").load().unwrap();
    assert_eq!(
        s.mqtt_host,
        Sourced::new("env-host".into(), Origin::Env("CYBERWAVE_MQTT_HOST"))
    );
}

#[test]
fn flags_beat_everything() {
    let f = Fixture::new()
        .var("CYBERWAVE_MQTT_PORT", "1000")
        .var("CYBERWAVE_PROFILE_SLUG", "env-profile");
    let overrides = Overrides {
        mqtt_port: Some(2000),
        profile: Some("flag-profile".into()),
        slug: Some("flag-slug".into()),
        ..Overrides::default()
    };
    let s = Settings::load(&overrides, &f.env).unwrap();
    assert_eq!(s.mqtt_port, Sourced::new(2000, Origin::Flag("--mqtt-port")));
    assert_eq!(s.profile_slug.value, "flag-profile");
    assert_eq!(s.instance_slug.unwrap().value, "flag-slug");
}

#[test]
fn dotenv_never_overrides_the_environment() {
    let f = Fixture::new()
        .var("CYBERWAVE_TRAINING_CMD", "env-cmd")
        .cwd_file(".env", "CYBERWAVE_TRAINING_CMD=dotenv-cmd\nOTHER=1\n");
    let s = f.load().unwrap();
    assert_eq!(s.training_cmd.unwrap().value, "env-cmd");
    assert_eq!(s.dotenv_vars, vec![("OTHER".to_owned(), "1".to_owned())]);
}

#[test]
fn tls_defaults_on_for_8883_and_can_be_forced() {
    let s = Fixture::new()
        .var("CYBERWAVE_MQTT_PORT", "8883")
        .load()
        .unwrap();
    assert!(s.mqtt_use_tls.value);
    let s = Fixture::new()
        .var("CYBERWAVE_MQTT_PORT", "8883")
        .var("CYBERWAVE_MQTT_USE_TLS", "false")
        .load()
        .unwrap();
    assert!(!s.mqtt_use_tls.value);
}

#[test]
fn topic_prefix_from_environment_name() {
    let s = Fixture::new()
        .var("CYBERWAVE_ENVIRONMENT", "dev")
        .load()
        .unwrap();
    assert_eq!(s.topic_prefix.value, "dev");
    let s = Fixture::new()
        .var("CYBERWAVE_ENVIRONMENT", "production")
        .load()
        .unwrap();
    assert_eq!(s.topic_prefix.value, "");
    let s = Fixture::new()
        .var("CYBERWAVE_ENVIRONMENT", "dev")
        .var("CYBERWAVE_MQTT_TOPIC_PREFIX", "custom/")
        .load()
        .unwrap();
    assert_eq!(s.topic_prefix.value, "custom/");
}

#[test]
fn bad_port_names_the_source_and_line() {
    let err = Fixture::new()
        .cwd_file(
            "cyberwave.yml",
            "cyberwave-cloud-node:\n  training: x\n  mqtt_port: abc\n",
        )
        .load()
        .unwrap_err()
        .to_string();
    assert!(err.contains("cyberwave.yml line 3"), "{err}");
    assert!(err.contains("not a number"), "{err}");
    let err = Fixture::new()
        .var("CYBERWAVE_MQTT_PORT", "x1")
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("environment variable CYBERWAVE_MQTT_PORT"),
        "{err}"
    );
}

#[test]
fn zero_heartbeat_is_an_error() {
    let err = Fixture::new()
        .cwd_file(".env", "A=1\nCYBERWAVE_HEARTBEAT_INTERVAL=0\n")
        .load()
        .unwrap_err()
        .to_string();
    assert!(err.contains(".env line 2"), "{err}");
    assert!(err.contains("at least 1 second"), "{err}");
}

#[test]
fn max_result_bytes_from_yaml_env_and_default() {
    let s = Fixture::new().load().unwrap();
    assert_eq!(
        s.max_result_bytes,
        Sourced::new(DEFAULT_MAX_RESULT_BYTES, Origin::Default)
    );
    let f = Fixture::new().cwd_file("cyberwave.yml", "cyberwave:\n  max_result_bytes: 4096\n");
    assert_eq!(f.load().unwrap().max_result_bytes.value, 4096);
    let f = f.var("CYBERWAVE_MAX_RESULT_BYTES", "0");
    let err = f.load().unwrap_err().to_string();
    assert!(
        err.contains("max result bytes") && err.contains("at least 1"),
        "{err}"
    );
    let f = Fixture::new().var("CYBERWAVE_MAX_RESULT_BYTES", "268435456");
    assert!(f.load().unwrap_err().to_string().contains("MQTT"));
}

#[test]
fn max_queued_workloads_from_yaml_or_env() {
    let f = Fixture::new().cwd_file(
        "cyberwave.yml",
        "cyberwave-cloud-node:\n  max_queued_workloads: 5\n",
    );
    assert_eq!(f.load().unwrap().max_queued_workloads.value, 5);
    let f = f.var("CYBERWAVE_MAX_QUEUED_WORKLOADS", "7");
    assert_eq!(f.load().unwrap().max_queued_workloads.value, 7);
    let err = Fixture::new()
        .var("CYBERWAVE_MAX_QUEUED_WORKLOADS", "lots")
        .load()
        .unwrap_err()
        .to_string();
    assert!(err.contains("max queued workloads"), "{err}");
}

#[test]
fn max_packet_bytes_from_yaml_or_env_within_mqtt_limits() {
    let yaml = "cyberwave-cloud-node:\n  mqtt_max_packet_bytes: 1048576\n";
    let s = Fixture::new()
        .cwd_file("cyberwave.yml", yaml)
        .load()
        .unwrap();
    assert_eq!(s.mqtt_max_packet_bytes.value, 1 << 20);
    let s = Fixture::new()
        .cwd_file("cyberwave.yml", yaml)
        .var("CYBERWAVE_MQTT_MAX_PACKET_BYTES", "65536")
        .load()
        .unwrap();
    assert_eq!(s.mqtt_max_packet_bytes.value, 65536);
    for bad in ["1000", "300000000", "256KiB"] {
        let err = Fixture::new()
            .var("CYBERWAVE_MQTT_MAX_PACKET_BYTES", bad)
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains("from 16384 to 268435460"), "{bad}: {err}");
    }
}

#[test]
fn config_flag_moves_the_working_directory() {
    let f = Fixture::new();
    let sub = f.env.cwd.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join("cyberwave.yml"), "cyberwave:\n  training: t\n").unwrap();
    std::fs::write(sub.join(".env"), "CYBERWAVE_API_TOKEN=sub-token\n").unwrap();
    let overrides = Overrides {
        config: Some("sub/cyberwave.yml".into()),
        ..Overrides::default()
    };
    let s = Settings::load(&overrides, &f.env).unwrap();
    assert_eq!(s.working_dir, sub);
    assert_eq!(s.api_token.unwrap().value.expose(), "sub-token");
    let missing = Overrides {
        config: Some("nope.yml".into()),
        ..Overrides::default()
    };
    assert!(matches!(
        Settings::load(&missing, &f.env),
        Err(ConfigError::MissingConfigFile { .. })
    ));
}

#[test]
fn corrupt_identity_and_credentials_are_warnings() {
    let s = Fixture::new()
        .config_file("credentials.json", "garbage")
        .config_file("instance_identity.json", "{")
        .load()
        .unwrap();
    assert!(s.api_token.is_none());
    assert!(s.identity.is_none());
    let all = s.warnings.join("\n");
    assert!(
        all.contains("credentials.json") && all.contains("instance_identity.json"),
        "{all}"
    );
}

#[test]
fn identity_file_supplies_uuid_and_slug_below_env() {
    let f = Fixture::new().config_file(
        "instance_identity.json",
        r#"{"uuid":"11111111-2222-4333-8444-555555555555","slug":"saved"}"#,
    );
    let s = f.load().unwrap();
    assert_eq!(
        s.instance_uuid.unwrap().value,
        "11111111-2222-4333-8444-555555555555"
    );
    assert_eq!(s.instance_slug.unwrap().value, "saved");
    let s = f.var("CYBERWAVE_INSTANCE_SLUG", "hint").load().unwrap();
    assert_eq!(s.instance_slug.unwrap().value, "hint");
}

#[test]
fn secrets_are_masked_in_debug_output() {
    let s = Fixture::new()
        .var("CYBERWAVE_API_TOKEN", "super-secret-token-123")
        .load()
        .unwrap();
    let debug = format!("{s:?}");
    assert!(!debug.contains("super-secret-token-123"));
    assert!(render_table(&s).contains("****-123"));
}

#[test]
fn model_roots_from_a_yaml_list_or_the_environment() {
    let f = Fixture::new().cwd_file(
        "cyberwave.yml",
        "cyberwave-cloud-node:\n  model_roots:\n    - ./models\n    - /data/models\n  onnxruntime_path: lib/libonnxruntime.so\n",
    );
    let s = f.load().unwrap();
    let cwd = f.env.cwd.clone();
    assert_eq!(
        s.model_roots(),
        vec![cwd.join("models"), PathBuf::from("/data/models")]
    );
    assert_eq!(
        s.onnxruntime_path.unwrap().value,
        cwd.join("lib/libonnxruntime.so")
    );

    let s = f.var("CYBERWAVE_MODEL_ROOTS", "/a:/b").load().unwrap();
    assert_eq!(
        s.model_roots(),
        vec![PathBuf::from("/a"), PathBuf::from("/b")]
    );
    assert!(matches!(
        s.model_roots.unwrap().origin,
        Origin::Env("CYBERWAVE_MODEL_ROOTS")
    ));

    let none = Fixture::new().load().unwrap();
    let config_dir = none.config_dir.value.clone();
    assert_eq!(
        none.model_roots(),
        vec![none.working_dir.clone(), config_dir.join("models")]
    );
}

#[test]
fn gpus_default_to_every_detected_gpu_and_all_per_workload() {
    let s = Fixture::new().load().unwrap();
    assert_eq!(
        s.gpus,
        Sourced::new(GpuSelection::Detected, Origin::Default)
    );
    assert_eq!(
        s.gpus_per_workload,
        Sourced::new(GpusPerWorkload::All, Origin::Default)
    );
    let table = render_table(&s);
    assert!(table.contains("every GPU NVML reports"), "{table}");
}

#[test]
fn gpus_from_yaml_below_the_environment() {
    let f = Fixture::new().cwd_file(
        "cyberwave.yml",
        "cyberwave:\n  gpus: [0, 2]\n  gpus_per_workload: 1\n",
    );
    let s = f.load().unwrap();
    assert_eq!(
        s.gpus.value,
        GpuSelection::Only(vec![GpuRef::Index(0), GpuRef::Index(2)])
    );
    assert!(matches!(s.gpus.origin, Origin::Yaml { line: Some(2), .. }));
    assert_eq!(s.gpus_per_workload.value, GpusPerWorkload::Count(1));
    let s = f
        .var("CYBERWAVE_GPUS", "none")
        .var("CYBERWAVE_GPUS_PER_WORKLOAD", "all")
        .load()
        .unwrap();
    assert_eq!(
        s.gpus,
        Sourced::new(GpuSelection::Off, Origin::Env("CYBERWAVE_GPUS"))
    );
    assert_eq!(s.gpus_per_workload.value, GpusPerWorkload::All);
    let table = render_table(&s);
    let row = table.lines().find(|l| l.starts_with("gpus ")).unwrap();
    assert!(
        row.contains("none") && row.contains("environment variable CYBERWAVE_GPUS"),
        "{row}"
    );
}

#[test]
fn a_bad_gpus_entry_is_named_with_its_source() {
    let err = Fixture::new()
        .var("CYBERWAVE_GPUS", "0,first")
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("environment variable CYBERWAVE_GPUS") && err.contains("\"first\""),
        "{err}"
    );
    let err = Fixture::new()
        .cwd_file("cyberwave.yml", "cyberwave:\n  gpus_per_workload: 65\n")
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 2 (gpus_per_workload)") && err.contains("from 0 to 64"),
        "{err}"
    );
}

#[test]
fn every_problem_of_a_load_is_reported_together() {
    let err = Fixture::new()
        .var("CYBERWAVE_MQTT_PORT", "abc")
        .var("CYBERWAVE_HEARTBEAT_INTERVAL", "0")
        .cwd_file(
            "cyberwave.yml",
            "cyberwave:\n  training: [a, b]\n  trainig: x\n",
        )
        .cwd_file(".env", "not an assignment\n")
        .load()
        .unwrap_err();
    let problems: Vec<String> = err.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 4, "{problems:?}");
    assert!(problems[0].contains(".env line 1:"), "{problems:?}");
    assert!(
        problems[1].contains("line 2: `training` must be"),
        "{problems:?}"
    );
    assert!(problems[2].contains("CYBERWAVE_MQTT_PORT"), "{problems:?}");
    assert!(
        problems[3].contains("CYBERWAVE_HEARTBEAT_INTERVAL"),
        "{problems:?}"
    );
    assert!(err.warnings()[0].contains("did you mean `training`?"));
    let text = err.to_string();
    assert!(text.starts_with("4 problems in the settings:"), "{text}");
    assert!(text.contains("\nwarnings:\n  - "), "{text}");
}
