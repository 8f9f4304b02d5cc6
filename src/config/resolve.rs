//! The walk through the layers, one setting at a time.

use std::path::{Path, PathBuf};

use super::parse;
use super::*;

type Parser<T> = fn(&str) -> Result<T, String>;

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
        let found = self.get(
            &spec("workspace slug", &["CYBERWAVE_WORKSPACE_SLUG"], None),
            None,
            parse::nonempty,
        )?;
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
            Sourced::new(
                value.to_owned(),
                Origin::Identity {
                    path: identity_path.to_owned(),
                },
            )
        };
        let slug_flag = overrides.slug.as_deref().map(|s| (s, "--slug"));
        let instance_slug = self
            .get(
                &spec("instance slug", &["CYBERWAVE_INSTANCE_SLUG"], None),
                slug_flag,
                parse::topic_segment,
            )?
            .or_else(|| identity.map(|i| from_identity(&i.slug)));
        let instance_uuid = self
            .get(
                &spec(
                    "instance uuid",
                    &["CYBERWAVE_CLOUD_NODE_INSTANCE_UUID"],
                    None,
                ),
                None,
                parse::instance_uuid,
            )?
            .or_else(|| identity.map(|i| from_identity(&i.uuid)));

        let host_flag = overrides.mqtt_host.as_deref().map(|h| (h, "--mqtt-host"));
        let port_text = overrides.mqtt_port.map(|p| p.to_string());
        let port_flag = port_text.as_deref().map(|p| (p, "--mqtt-port"));
        let mqtt_port = self.get_or(
            &spec("MQTT port", &["CYBERWAVE_MQTT_PORT"], Some("mqtt_port")),
            port_flag,
            parse::port,
            DEFAULT_MQTT_PORT,
        )?;
        let mqtt_use_tls = self
            .get(
                &spec(
                    "MQTT TLS switch",
                    &["CYBERWAVE_MQTT_USE_TLS"],
                    Some("mqtt_use_tls"),
                ),
                None,
                parse::boolean,
            )?
            .unwrap_or_else(|| {
                if mqtt_port.value == TLS_PORT {
                    Sourced::new(true, Origin::Derived("on because the port is 8883"))
                } else {
                    Sourced::new(false, Origin::Derived("off because the port is not 8883"))
                }
            });
        let profile_flag = overrides.profile.as_deref().map(|p| (p, "--profile"));

        Ok(Settings {
            config_dir,
            working_dir: PathBuf::new(),
            config_file: None,
            api_token: self.api_token(),
            api_url: self.get_or(
                &spec(
                    "API URL",
                    &["CYBERWAVE_API_URL", "CYBERWAVE_BASE_URL"],
                    None,
                ),
                None,
                parse::http_url,
                DEFAULT_API_URL.to_owned(),
            )?,
            workspace_slug: self.workspace_slug()?,
            instance_slug,
            instance_uuid,
            mqtt_host: self.get_or(
                &spec("MQTT host", &["CYBERWAVE_MQTT_HOST"], Some("mqtt_host")),
                host_flag,
                parse::nonempty,
                DEFAULT_MQTT_HOST.to_owned(),
            )?,
            mqtt_port,
            mqtt_use_tls,
            mqtt_tls_ca_certs: self
                .get(
                    &spec(
                        "MQTT CA certificate file",
                        &["CYBERWAVE_MQTT_TLS_CA_CERTS"],
                        Some("mqtt_tls_ca_certs"),
                    ),
                    None,
                    parse::nonempty,
                )?
                .map(|s| Sourced::new(self.env.cwd.join(s.value), s.origin)),
            mqtt_username: self.get(
                &spec(
                    "MQTT username",
                    &["CYBERWAVE_MQTT_USERNAME"],
                    Some("mqtt_username"),
                ),
                None,
                parse::nonempty,
            )?,
            mqtt_password: self
                .get(
                    &spec(
                        "MQTT password",
                        &["CYBERWAVE_MQTT_PASSWORD"],
                        Some("mqtt_password"),
                    ),
                    None,
                    parse::verbatim,
                )?
                .map(|s| Sourced::new(Secret::new(s.value), s.origin)),
            topic_prefix: self.get_or(
                &spec(
                    "topic prefix",
                    &["CYBERWAVE_MQTT_TOPIC_PREFIX", "CYBERWAVE_ENVIRONMENT"],
                    None,
                ),
                None,
                parse::topic_prefix,
                String::new(),
            )?,
            install_script: self.get(
                &spec(
                    "install script",
                    &["CYBERWAVE_INSTALL_SCRIPT"],
                    Some("install_script"),
                ),
                None,
                parse::verbatim,
            )?,
            inference_cmd: self.get(
                &spec(
                    "inference template",
                    &["CYBERWAVE_INFERENCE_CMD"],
                    Some("inference"),
                ),
                None,
                parse::verbatim,
            )?,
            training_cmd: self.get(
                &spec(
                    "training template",
                    &["CYBERWAVE_TRAINING_CMD"],
                    Some("training"),
                ),
                None,
                parse::verbatim,
            )?,
            simulate_cmd: self.get(
                &spec(
                    "simulate template",
                    &["CYBERWAVE_SIMULATE_CMD"],
                    Some("simulate"),
                ),
                None,
                parse::verbatim,
            )?,
            profile_slug: self.get_or(
                &spec("profile", &["CYBERWAVE_PROFILE_SLUG"], Some("profile_slug")),
                profile_flag,
                parse::nonempty,
                "default".to_owned(),
            )?,
            heartbeat_interval: self.get_or(
                &spec(
                    "heartbeat interval",
                    &["CYBERWAVE_HEARTBEAT_INTERVAL"],
                    Some("heartbeat_interval"),
                ),
                None,
                parse::interval,
                Duration::from_secs(30),
            )?,
            max_concurrent_workloads: self.get_or(
                &spec(
                    "max concurrent workloads",
                    &["CYBERWAVE_MAX_CONCURRENT_WORKLOADS"],
                    Some("max_concurrent_workloads"),
                ),
                None,
                parse::positive_count,
                1,
            )?,
            dotenv_vars: self.dotenv_vars(),
            identity: None,
            warnings: Vec::new(),
            retry_unit: Default::default(),
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
