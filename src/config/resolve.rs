//! The walk through the layers, one setting at a time.

use std::path::{Path, PathBuf};

use super::parse::{self, ValueError};
use super::*;

type Parser<T> = fn(&str) -> Result<T, ValueError>;

/// A command-line value with its flag name, for [`Layers::get`].
fn flag<'a>(value: &'a Option<String>, name: &'static str) -> Option<(&'a str, &'static str)> {
    value.as_deref().map(|v| (v, name))
}

// Where each setting is looked for, as in docs/protocol.md's table.
const API_URL: Spec = spec(
    "API URL",
    &["CYBERWAVE_API_URL", "CYBERWAVE_BASE_URL"],
    None,
);
const WORKSPACE: Spec = spec("workspace slug", &["CYBERWAVE_WORKSPACE_SLUG"], None);
const INSTANCE_SLUG: Spec = spec("instance slug", &["CYBERWAVE_INSTANCE_SLUG"], None);
const INSTANCE_UUID: Spec = spec(
    "instance uuid",
    &["CYBERWAVE_CLOUD_NODE_INSTANCE_UUID"],
    None,
);
const MQTT_HOST: Spec = spec("MQTT host", &["CYBERWAVE_MQTT_HOST"], Some("mqtt_host"));
const MQTT_PORT: Spec = spec("MQTT port", &["CYBERWAVE_MQTT_PORT"], Some("mqtt_port"));
const MQTT_USE_TLS: Spec = spec(
    "MQTT TLS switch",
    &["CYBERWAVE_MQTT_USE_TLS"],
    Some("mqtt_use_tls"),
);
const MQTT_CA: Spec = spec(
    "MQTT CA certificate file",
    &["CYBERWAVE_MQTT_TLS_CA_CERTS"],
    Some("mqtt_tls_ca_certs"),
);
const MQTT_USERNAME: Spec = spec(
    "MQTT username",
    &["CYBERWAVE_MQTT_USERNAME"],
    Some("mqtt_username"),
);
const MQTT_PASSWORD: Spec = spec(
    "MQTT password",
    &["CYBERWAVE_MQTT_PASSWORD"],
    Some("mqtt_password"),
);
const MQTT_MAX_PACKET: Spec = spec(
    "MQTT maximum packet size",
    &["CYBERWAVE_MQTT_MAX_PACKET_BYTES"],
    Some("mqtt_max_packet_bytes"),
);
const TOPIC_PREFIX: Spec = spec(
    "topic prefix",
    &["CYBERWAVE_MQTT_TOPIC_PREFIX", "CYBERWAVE_ENVIRONMENT"],
    None,
);
const INSTALL_SCRIPT: Spec = spec(
    "install script",
    &["CYBERWAVE_INSTALL_SCRIPT"],
    Some("install_script"),
);
const INFERENCE: Spec = spec(
    "inference template",
    &["CYBERWAVE_INFERENCE_CMD"],
    Some("inference"),
);
const TRAINING: Spec = spec(
    "training template",
    &["CYBERWAVE_TRAINING_CMD"],
    Some("training"),
);
const SIMULATE: Spec = spec(
    "simulate template",
    &["CYBERWAVE_SIMULATE_CMD"],
    Some("simulate"),
);
const PROFILE: Spec = spec("profile", &["CYBERWAVE_PROFILE_SLUG"], Some("profile_slug"));
const HEARTBEAT: Spec = spec(
    "heartbeat interval",
    &["CYBERWAVE_HEARTBEAT_INTERVAL"],
    Some("heartbeat_interval"),
);
const TERMINAL_ENABLED: Spec = spec(
    "terminal switch",
    &["CYBERWAVE_TERMINAL_ENABLED"],
    Some("terminal.enabled"),
);
const TERMINAL_SHELL: Spec = spec(
    "terminal shell",
    &["CYBERWAVE_TERMINAL_SHELL"],
    Some("terminal.shell"),
);
const TERMINAL_SESSIONS: Spec = spec(
    "terminal session limit",
    &["CYBERWAVE_TERMINAL_MAX_SESSIONS"],
    Some("terminal.max_sessions"),
);
const TERMINAL_IDLE: Spec = spec(
    "terminal idle timeout",
    &["CYBERWAVE_TERMINAL_IDLE_TIMEOUT_SECONDS"],
    Some("terminal.idle_timeout_seconds"),
);
const METRICS: Spec = spec(
    "metrics interval",
    &["CYBERWAVE_METRICS_INTERVAL"],
    Some("metrics_interval"),
);
const RETENTION: Spec = spec(
    "log retention (days)",
    &["CYBERWAVE_LOG_RETENTION_DAYS"],
    Some("log_retention_days"),
);
const MAX_RESULT: Spec = spec(
    "max result bytes",
    &["CYBERWAVE_MAX_RESULT_BYTES"],
    Some("max_result_bytes"),
);
const MODEL_ROOTS: Spec = spec(
    "model roots",
    &["CYBERWAVE_MODEL_ROOTS"],
    Some("model_roots"),
);
const ONNXRUNTIME_PATH: Spec = spec(
    "ONNX Runtime library path",
    &["CYBERWAVE_ONNXRUNTIME_PATH"],
    Some("onnxruntime_path"),
);
const GPUS: Spec = spec("gpus", &["CYBERWAVE_GPUS"], Some("gpus"));
const GPUS_PER_WORKLOAD: Spec = spec(
    "gpus per workload",
    &["CYBERWAVE_GPUS_PER_WORKLOAD"],
    Some("gpus_per_workload"),
);
const MAX_WORKLOADS: Spec = spec(
    "max concurrent workloads",
    &["CYBERWAVE_MAX_CONCURRENT_WORKLOADS"],
    Some("max_concurrent_workloads"),
);
const MAX_QUEUED: Spec = spec(
    "max queued workloads",
    &["CYBERWAVE_MAX_QUEUED_WORKLOADS"],
    Some("max_queued_workloads"),
);

impl Layers<'_> {
    /// The highest-precedence raw text for `spec`, with its origin.
    fn raw(&self, spec: &Spec) -> Option<(String, Origin)> {
        for var in spec.vars {
            if let Some(value) = self.env.get(var) {
                return Some((value.to_owned(), Origin::Env(var)));
            }
        }
        for file in &self.dotenvs {
            for var in spec.vars {
                if let Some((value, line)) = file.get(var) {
                    let origin = Origin::DotEnv {
                        path: file.path.clone(),
                        var,
                        line,
                    };
                    return Some((value.to_owned(), origin));
                }
            }
        }
        if let (Some(key), Some(file)) = (spec.yaml, &self.yaml) {
            if let Some(entry) = file.entries.get(key) {
                let origin = Origin::Yaml {
                    path: file.path.clone(),
                    key,
                    line: entry.line,
                };
                return Some((entry.text.clone(), origin));
            }
        }
        let credentials = self.credentials.as_ref()?;
        spec.vars.iter().find_map(|var| {
            let value = credentials.envs.get(*var)?;
            let origin = Origin::Credentials {
                path: credentials.path.clone(),
                key: var,
            };
            Some((value.clone(), origin))
        })
    }

    /// Resolves `spec` through `parse`, with `flag` on top when given. A
    /// value that does not parse is recorded as a problem and left unset.
    fn get<T>(
        &self,
        spec: &Spec,
        flag: Option<(&str, &'static str)>,
        parse: Parser<T>,
    ) -> Option<Sourced<T>> {
        let (text, origin) = match flag {
            Some((text, name)) => (text.to_owned(), Origin::Flag(name)),
            None => self.raw(spec)?,
        };
        match parse(&text) {
            Ok(value) => Some(Sourced::new(value, origin)),
            Err(problem) => {
                self.problems.borrow_mut().push(ConfigError::Invalid {
                    setting: spec.name,
                    value: text,
                    origin: Box::new(origin),
                    problem,
                });
                None
            }
        }
    }

    fn get_or<T>(
        &self,
        spec: &Spec,
        flag: Option<(&str, &'static str)>,
        parse: Parser<T>,
        default: T,
    ) -> Sourced<T> {
        self.get(spec, flag, parse)
            .unwrap_or_else(|| Sourced::new(default, Origin::Default))
    }

    fn api_token(&self) -> Option<Sourced<Secret>> {
        let spec = spec(
            "API token",
            &["CYBERWAVE_API_TOKEN", "CYBERWAVE_API_KEY"],
            None,
        );
        if let Some((text, origin)) = self.raw(&spec) {
            return Some(Sourced::new(Secret::new(text.trim()), origin));
        }
        let credentials = self.credentials.as_ref()?;
        let token = credentials.token.as_ref()?;
        let origin = Origin::Credentials {
            path: credentials.path.clone(),
            key: "token",
        };
        Some(Sourced::new(Secret::new(token.trim()), origin))
    }

    fn workspace_slug(&self) -> Option<Sourced<String>> {
        let found = self.get(&WORKSPACE, None, parse::nonempty);
        if found.is_some() {
            return found;
        }
        self.credentials.as_ref().and_then(|c| {
            let slug = c.workspace_slug.clone()?;
            let origin = Origin::Credentials {
                path: c.path.clone(),
                key: "workspace_slug",
            };
            Some(Sourced::new(slug, origin))
        })
    }

    /// Builds the whole [`Settings`]; `working_dir`, `config_file` and
    /// `identity` are filled in by the caller. Settings are read in a fixed
    /// order, so of several invalid ones the same is always reported.
    pub(super) fn resolve(
        &self,
        overrides: &Overrides,
        config_dir: Sourced<PathBuf>,
        identity: Option<&Identity>,
        identity_path: &Path,
    ) -> Settings {
        let (mqtt_port, mqtt_use_tls) = self.mqtt_port_and_tls(overrides);
        let api_url = self.get_or(&API_URL, None, parse::http_url, DEFAULT_API_URL.to_owned());
        let workspace_slug = self.workspace_slug();
        let instance_slug = self.instance_slug(overrides, identity, identity_path);
        let instance_uuid = self.instance_uuid(identity, identity_path);
        let mqtt = self.mqtt(overrides);
        let topic_prefix = self.get_or(&TOPIC_PREFIX, None, parse::topic_prefix, String::new());
        let install_script = self.get(&INSTALL_SCRIPT, None, parse::verbatim);
        let inference_cmd = self.get(&INFERENCE, None, parse::verbatim);
        let training_cmd = self.get(&TRAINING, None, parse::verbatim);
        let simulate_cmd = self.get(&SIMULATE, None, parse::verbatim);
        let profile = flag(&overrides.profile, "--profile");
        let profile_slug = self.get_or(&PROFILE, profile, parse::nonempty, "default".to_owned());
        let limits = self.limits();
        Settings {
            config_dir,
            working_dir: PathBuf::new(),
            config_file: None,
            api_token: self.api_token(),
            api_url,
            workspace_slug,
            instance_slug,
            instance_uuid,
            mqtt_host: mqtt.host,
            mqtt_port,
            mqtt_use_tls,
            mqtt_tls_ca_certs: mqtt.ca_certs,
            mqtt_username: mqtt.username,
            mqtt_password: mqtt.password,
            mqtt_max_packet_bytes: mqtt.max_packet_bytes,
            topic_prefix,
            install_script,
            inference_cmd,
            training_cmd,
            simulate_cmd,
            profile_slug,
            heartbeat_interval: limits.heartbeat_interval,
            max_concurrent_workloads: limits.max_concurrent_workloads,
            gpus: limits.gpus,
            gpus_per_workload: limits.gpus_per_workload,
            max_queued_workloads: limits.max_queued_workloads,
            terminal_enabled: limits.terminal.enabled,
            terminal_shell: limits.terminal.shell,
            terminal_max_sessions: limits.terminal.max_sessions,
            terminal_idle_timeout: limits.terminal.idle_timeout,
            metrics_interval: limits.metrics_interval,
            log_retention: limits.log_retention,
            max_result_bytes: limits.max_result_bytes,
            model_roots: self.get(&MODEL_ROOTS, None, parse::path_list),
            onnxruntime_path: self
                .get(&ONNXRUNTIME_PATH, None, parse::nonempty)
                .map(|p| p.map(PathBuf::from)),
            dotenv_vars: self.dotenv_vars(),
            identity: None,
            warnings: Vec::new(),
            retry_unit: Default::default(),
            standalone: false,
        }
    }

    /// The slug: `--slug`, a layer, then the identity file's.
    fn instance_slug(
        &self,
        overrides: &Overrides,
        identity: Option<&Identity>,
        identity_path: &Path,
    ) -> Option<Sourced<String>> {
        self.get(
            &INSTANCE_SLUG,
            flag(&overrides.slug, "--slug"),
            parse::topic_segment,
        )
        .or_else(|| identity.map(|i| from_identity(&i.slug, identity_path)))
    }

    /// The uuid to register: a layer's, then the identity file's.
    fn instance_uuid(
        &self,
        identity: Option<&Identity>,
        identity_path: &Path,
    ) -> Option<Sourced<String>> {
        self.get(&INSTANCE_UUID, None, parse::instance_uuid)
            // A standalone uuid was never registered: the backend would
            // only answer 404.
            .or_else(|| {
                identity
                    .filter(|i| !i.standalone)
                    .map(|i| from_identity(&i.uuid, identity_path))
            })
    }

    /// The port, and TLS, which defaults from the port.
    fn mqtt_port_and_tls(&self, overrides: &Overrides) -> (Sourced<u16>, Sourced<bool>) {
        let port_text = overrides.mqtt_port.map(|p| p.to_string());
        let port = self.get_or(
            &MQTT_PORT,
            flag(&port_text, "--mqtt-port"),
            parse::port,
            DEFAULT_MQTT_PORT,
        );
        let use_tls = self
            .get(&MQTT_USE_TLS, None, parse::boolean)
            .unwrap_or_else(|| {
                let on = port.value == TLS_PORT;
                let why = if on {
                    "on because the port is 8883"
                } else {
                    "off because the port is not 8883"
                };
                Sourced::new(on, Origin::Derived(why))
            });
        (port, use_tls)
    }

    /// The rest of the broker settings.
    fn mqtt(&self, overrides: &Overrides) -> MqttSettings {
        let secret = |s: Sourced<String>| Sourced::new(Secret::new(s.value), s.origin);
        let relative_to_cwd =
            |s: Sourced<String>| Sourced::new(self.env.cwd.join(s.value), s.origin);
        MqttSettings {
            host: self.get_or(
                &MQTT_HOST,
                flag(&overrides.mqtt_host, "--mqtt-host"),
                parse::nonempty,
                DEFAULT_MQTT_HOST.to_owned(),
            ),
            ca_certs: self
                .get(&MQTT_CA, None, parse::nonempty)
                .map(relative_to_cwd),
            username: self.get(&MQTT_USERNAME, None, parse::nonempty),
            password: self.get(&MQTT_PASSWORD, None, parse::verbatim).map(secret),
            max_packet_bytes: self.get_or(
                &MQTT_MAX_PACKET,
                None,
                parse::packet_bytes,
                DEFAULT_MQTT_MAX_PACKET_BYTES,
            ),
        }
    }

    /// Intervals and limits of the node's own work, the terminal's among them.
    fn limits(&self) -> Limits {
        Limits {
            heartbeat_interval: self.get_or(
                &HEARTBEAT,
                None,
                parse::interval,
                Duration::from_secs(30),
            ),
            max_concurrent_workloads: self.get_or(&MAX_WORKLOADS, None, parse::positive_count, 1),
            gpus: self.get_or(&GPUS, None, parse::gpu_selection, GpuSelection::Detected),
            gpus_per_workload: self.get_or(
                &GPUS_PER_WORKLOAD,
                None,
                parse::gpus_per_workload,
                GpusPerWorkload::All,
            ),
            max_queued_workloads: self.get_or(&MAX_QUEUED, None, parse::queue_length, 0),
            terminal: self.terminal(),
            metrics_interval: self.get_or(
                &METRICS,
                None,
                parse::metrics_interval,
                Duration::from_secs(10),
            ),
            log_retention: self.get_or(
                &RETENTION,
                None,
                parse::days,
                Duration::from_secs(7 * 86_400),
            ),
            max_result_bytes: self.get_or(
                &MAX_RESULT,
                None,
                parse::result_bytes,
                DEFAULT_MAX_RESULT_BYTES,
            ),
        }
    }

    /// The remote terminal's settings (`terminal:` in cyberwave.yml).
    fn terminal(&self) -> TerminalSettings {
        TerminalSettings {
            enabled: self.get_or(&TERMINAL_ENABLED, None, parse::boolean, false),
            shell: self.get(&TERMINAL_SHELL, None, parse::nonempty),
            max_sessions: self.get_or(&TERMINAL_SESSIONS, None, parse::positive_count, 2),
            idle_timeout: self.get_or(
                &TERMINAL_IDLE,
                None,
                parse::interval,
                Duration::from_secs(900),
            ),
        }
    }

    /// `.env` variables that the process environment does not already set,
    /// the working directory's file winning over the config dir's.
    fn dotenv_vars(&self) -> Vec<(String, String)> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for file in &self.dotenvs {
            for (key, value) in file.vars() {
                if !self.env.vars.contains_key(key) && seen.insert(key.to_owned()) {
                    out.push((key.to_owned(), value.to_owned()));
                }
            }
        }
        out.sort();
        out
    }
}

/// A value the identity file gave.
fn from_identity(value: &str, identity_path: &Path) -> Sourced<String> {
    let path = identity_path.to_owned();
    Sourced::new(value.to_owned(), Origin::Identity { path })
}

/// The `mqtt_*` settings but the port and TLS (see [`Layers::mqtt`]).
struct MqttSettings {
    host: Sourced<String>,
    ca_certs: Option<Sourced<PathBuf>>,
    username: Option<Sourced<String>>,
    password: Option<Sourced<Secret>>,
    max_packet_bytes: Sourced<usize>,
}

/// See [`Layers::limits`].
struct Limits {
    heartbeat_interval: Sourced<Duration>,
    max_concurrent_workloads: Sourced<u32>,
    gpus: Sourced<GpuSelection>,
    gpus_per_workload: Sourced<GpusPerWorkload>,
    max_queued_workloads: Sourced<u32>,
    terminal: TerminalSettings,
    metrics_interval: Sourced<Duration>,
    log_retention: Sourced<Duration>,
    max_result_bytes: Sourced<u64>,
}

/// See [`Layers::terminal`].
struct TerminalSettings {
    enabled: Sourced<bool>,
    shell: Option<Sourced<String>>,
    max_sessions: Sourced<u32>,
    idle_timeout: Sourced<Duration>,
}
