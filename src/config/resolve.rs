//! The walk through the layers, one setting at a time.

use std::path::{Path, PathBuf};

use super::parse;
use super::*;

type Parser<T> = fn(&str) -> Result<T, String>;

/// A command-line value with its flag name, for [`Layers::get`].
fn flag<'a>(value: &'a Option<String>, name: &'static str) -> Option<(&'a str, &'static str)> {
    value.as_deref().map(|v| (v, name))
}

// Where each setting is looked for, as in PROTOCOL.md's table.
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
const MAX_WORKLOADS: Spec = spec(
    "max concurrent workloads",
    &["CYBERWAVE_MAX_CONCURRENT_WORKLOADS"],
    Some("max_concurrent_workloads"),
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

    /// Resolves `spec` through `parse`, with `flag` on top when given.
    fn get<T>(
        &self,
        spec: &Spec,
        flag: Option<(&str, &'static str)>,
        parse: Parser<T>,
    ) -> Result<Option<Sourced<T>>, ConfigError> {
        let raw = match flag {
            Some((text, name)) => Some((text.to_owned(), Origin::Flag(name))),
            None => self.raw(spec),
        };
        let Some((text, origin)) = raw else {
            return Ok(None);
        };
        match parse(&text) {
            Ok(value) => Ok(Some(Sourced::new(value, origin))),
            Err(problem) => Err(ConfigError::Invalid {
                setting: spec.name,
                value: text,
                origin: Box::new(origin),
                problem,
            }),
        }
    }

    fn get_or<T>(
        &self,
        spec: &Spec,
        flag: Option<(&str, &'static str)>,
        parse: Parser<T>,
        default: T,
    ) -> Result<Sourced<T>, ConfigError> {
        Ok(self
            .get(spec, flag, parse)?
            .unwrap_or_else(|| Sourced::new(default, Origin::Default)))
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

    fn workspace_slug(&self) -> Result<Option<Sourced<String>>, ConfigError> {
        let found = self.get(&WORKSPACE, None, parse::nonempty)?;
        if found.is_some() {
            return Ok(found);
        }
        Ok(self.credentials.as_ref().and_then(|c| {
            let slug = c.workspace_slug.clone()?;
            let origin = Origin::Credentials {
                path: c.path.clone(),
                key: "workspace_slug",
            };
            Some(Sourced::new(slug, origin))
        }))
    }

    /// Builds the whole [`Settings`]; `working_dir`, `config_file` and
    /// `identity` are filled in by the caller.
    pub(super) fn resolve(
        &self,
        overrides: &Overrides,
        config_dir: Sourced<PathBuf>,
        identity: Option<&Identity>,
        identity_path: &Path,
    ) -> Result<Settings, ConfigError> {
        let from_identity = |value: &str| {
            let path = identity_path.to_owned();
            Sourced::new(value.to_owned(), Origin::Identity { path })
        };
        let port_text = overrides.mqtt_port.map(|p| p.to_string());
        let mqtt_port = self.get_or(
            &MQTT_PORT,
            flag(&port_text, "--mqtt-port"),
            parse::port,
            DEFAULT_MQTT_PORT,
        )?;
        let mqtt_use_tls = self
            .get(&MQTT_USE_TLS, None, parse::boolean)?
            .unwrap_or_else(|| {
                let on = mqtt_port.value == TLS_PORT;
                let why = if on {
                    "on because the port is 8883"
                } else {
                    "off because the port is not 8883"
                };
                Sourced::new(on, Origin::Derived(why))
            });
        let secret = |s: Sourced<String>| Sourced::new(Secret::new(s.value), s.origin);
        let relative_to_cwd =
            |s: Sourced<String>| Sourced::new(self.env.cwd.join(s.value), s.origin);
        Ok(Settings {
            config_dir,
            working_dir: PathBuf::new(),
            config_file: None,
            api_token: self.api_token(),
            api_url: self.get_or(&API_URL, None, parse::http_url, DEFAULT_API_URL.to_owned())?,
            workspace_slug: self.workspace_slug()?,
            instance_slug: self
                .get(
                    &INSTANCE_SLUG,
                    flag(&overrides.slug, "--slug"),
                    parse::topic_segment,
                )?
                .or_else(|| identity.map(|i| from_identity(&i.slug))),
            instance_uuid: self
                .get(&INSTANCE_UUID, None, parse::instance_uuid)?
                // A standalone uuid was never registered: the backend would
                // only answer 404.
                .or_else(|| {
                    identity
                        .filter(|i| !i.standalone)
                        .map(|i| from_identity(&i.uuid))
                }),
            mqtt_host: self.get_or(
                &MQTT_HOST,
                flag(&overrides.mqtt_host, "--mqtt-host"),
                parse::nonempty,
                DEFAULT_MQTT_HOST.to_owned(),
            )?,
            mqtt_port,
            mqtt_use_tls,
            mqtt_tls_ca_certs: self
                .get(&MQTT_CA, None, parse::nonempty)?
                .map(relative_to_cwd),
            mqtt_username: self.get(&MQTT_USERNAME, None, parse::nonempty)?,
            mqtt_password: self.get(&MQTT_PASSWORD, None, parse::verbatim)?.map(secret),
            mqtt_max_packet_bytes: self.get_or(
                &MQTT_MAX_PACKET,
                None,
                parse::packet_bytes,
                DEFAULT_MQTT_MAX_PACKET_BYTES,
            )?,
            topic_prefix: self.get_or(&TOPIC_PREFIX, None, parse::topic_prefix, String::new())?,
            install_script: self.get(&INSTALL_SCRIPT, None, parse::verbatim)?,
            inference_cmd: self.get(&INFERENCE, None, parse::verbatim)?,
            training_cmd: self.get(&TRAINING, None, parse::verbatim)?,
            simulate_cmd: self.get(&SIMULATE, None, parse::verbatim)?,
            profile_slug: self.get_or(
                &PROFILE,
                flag(&overrides.profile, "--profile"),
                parse::nonempty,
                "default".to_owned(),
            )?,
            heartbeat_interval: self.get_or(
                &HEARTBEAT,
                None,
                parse::interval,
                Duration::from_secs(30),
            )?,
            max_concurrent_workloads: self.get_or(
                &MAX_WORKLOADS,
                None,
                parse::positive_count,
                1,
            )?,
            terminal_enabled: self.get_or(&TERMINAL_ENABLED, None, parse::boolean, false)?,
            terminal_shell: self.get(&TERMINAL_SHELL, None, parse::nonempty)?,
            terminal_max_sessions: self.get_or(
                &TERMINAL_SESSIONS,
                None,
                parse::positive_count,
                2,
            )?,
            terminal_idle_timeout: self.get_or(
                &TERMINAL_IDLE,
                None,
                parse::interval,
                Duration::from_secs(900),
            )?,
            metrics_interval: self.get_or(
                &METRICS,
                None,
                parse::metrics_interval,
                Duration::from_secs(10),
            )?,
            log_retention: self.get_or(
                &RETENTION,
                None,
                parse::days,
                Duration::from_secs(7 * 86_400),
            )?,
            max_result_bytes: self.get_or(
                &MAX_RESULT,
                None,
                parse::result_bytes,
                DEFAULT_MAX_RESULT_BYTES,
            )?,
            model_roots: self.get(&MODEL_ROOTS, None, parse::path_list)?,
            onnxruntime_path: self
                .get(&ONNXRUNTIME_PATH, None, parse::nonempty)?
                .map(|p| p.map(PathBuf::from)),
            dotenv_vars: self.dotenv_vars(),
            identity: None,
            warnings: Vec::new(),
            retry_unit: Default::default(),
            standalone: false,
        })
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
