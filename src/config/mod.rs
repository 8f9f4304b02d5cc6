//! Settings: what the node is told, and where each value came from.
//!
//! Precedence, highest first (docs/protocol.md): command-line flag, process
//! environment, `.env` in the working directory, `.env` in the config dir,
//! `cyberwave.yml`, `credentials.json`, built-in default. Each resolved value
//! is a [`Sourced`] so `config show` and every error can name its origin.
//!
//! Decisions where the contract is silent (also in the README):
//! - The working directory is the config file's directory when `--config` is
//!   given, else the current directory. Install scripts and workloads run there.
//! - An empty variable (`CYBERWAVE_API_TOKEN=`) counts as unset.
//! - Aliases are resolved layer by layer: in one layer the primary name wins,
//!   but a higher layer's alias beats a lower layer's primary name.
//! - The config dir itself comes from the process environment or the working
//!   directory's `.env` (the config dir's own `.env` cannot move it).
//! - A relative `mqtt_tls_ca_certs` path is relative to the working directory.
//! - Every problem of a load is reported at once ([`ConfigError::Several`],
//!   with the load's warnings): a value that does not parse is set aside and
//!   the walk goes on, so one run shows everything to fix.

mod parse;
mod show;
mod sources;
mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::secret::Secret;
pub use parse::{GpuRef, GpuSelection, GpusPerWorkload};
pub use show::{render_json, render_table};
pub use sources::{Credentials, DotEnvFile, Environment};
pub use yaml::YamlFile;

use crate::backoff::RetryUnit;
use crate::identity::{self, Identity};
use crate::protocol::WorkloadKind;

pub const DEFAULT_API_URL: &str = "https://api.cyberwave.com";
pub const DEFAULT_MQTT_HOST: &str = "mqtt.cyberwave.com";
pub const DEFAULT_MQTT_PORT: u16 = 1883;
pub const TLS_PORT: u16 = 8883;
/// The most of a workload's result file a terminal event carries.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 1024 * 1024;
/// `mqtt_max_packet_bytes` unless set: what hosted brokers commonly accept.
pub const DEFAULT_MQTT_MAX_PACKET_BYTES: usize = 256 * 1024;

/// Where a value came from, as a person would want to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag(&'static str),
    Env(&'static str),
    DotEnv {
        path: PathBuf,
        var: &'static str,
        line: Option<usize>,
    },
    Yaml {
        path: PathBuf,
        key: &'static str,
        line: Option<usize>,
    },
    Credentials {
        path: PathBuf,
        key: &'static str,
    },
    Identity {
        path: PathBuf,
    },
    Default,
    /// A default computed from another setting ("on because the port is 8883").
    Derived(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::DotEnv { path, var, line } => {
                write!(f, "{}{} ({var})", path.display(), yaml::line_suffix(*line))
            }
            Origin::Yaml { path, key, line } => {
                write!(f, "{}{} ({key})", path.display(), yaml::line_suffix(*line))
            }
            Origin::Credentials { path, key } => write!(f, "{} ({key})", path.display()),
            Origin::Identity { path } => write!(f, "{}", path.display()),
            Origin::Default => write!(f, "default"),
            Origin::Derived(why) => write!(f, "default: {why}"),
        }
    }
}

/// A value with its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Sourced<T> {
    pub fn new(value: T, origin: Origin) -> Self {
        Sourced { value, origin }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Sourced<U> {
        Sourced::new(f(self.value), self.origin)
    }
}

/// Everything that can be wrong with the settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} does not exist: check the --config path")]
    MissingConfigFile { path: PathBuf },
    #[error("malformed YAML in {path}{}: {message}", yaml::line_suffix(*.line))]
    Yaml {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("{path}{}: {what} must be {expected}, found {found}", yaml::line_suffix(*.line))]
    WrongType {
        path: PathBuf,
        line: Option<usize>,
        /// The key, quoted, or "the top level".
        what: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("malformed .env file {path}{}: {message}", yaml::line_suffix(*.line))]
    DotEnv {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("invalid {setting} {value:?} from {origin}: {problem}")]
    Invalid {
        setting: &'static str,
        value: String,
        origin: Box<Origin>,
        #[source]
        problem: parse::ValueError,
    },
    /// Every problem of one load, so one run shows them all, with the
    /// load's warnings (a misspelt key often explains a problem).
    #[error("{}", describe_several(problems, warnings))]
    Several {
        problems: Vec<ConfigError>,
        warnings: Vec<String>,
    },
    #[error(
        "no API token found. Provide one in any of: the environment (export CYBERWAVE_API_TOKEN=...), \
         {workdir_env} (CYBERWAVE_API_TOKEN=...), {config_env}, or {credentials} (written by `cyberwave-cli login`)"
    )]
    NoToken {
        workdir_env: PathBuf,
        config_env: PathBuf,
        credentials: PathBuf,
    },
}

fn describe_several(problems: &[ConfigError], warnings: &[String]) -> String {
    let mut text = match problems {
        [one] => format!("a problem in the settings:\n  - {one}"),
        _ => format!("{} problems in the settings:", problems.len()),
    };
    if problems.len() > 1 {
        text.extend(problems.iter().map(|p| format!("\n  - {p}")));
    }
    if !warnings.is_empty() {
        text.push_str("\nwarnings:");
        text.extend(warnings.iter().map(|w| format!("\n  - {w}")));
    }
    text
}

impl ConfigError {
    /// One error for what a load found: the problem itself when there is
    /// one, [`ConfigError::Several`] when there are more.
    fn from_problems(mut problems: Vec<ConfigError>, warnings: Vec<String>) -> Option<ConfigError> {
        match problems.len() {
            0 => None,
            1 if warnings.is_empty() => problems.pop(),
            _ => Some(ConfigError::Several { problems, warnings }),
        }
    }

    /// The single problems this error stands for (itself, unless it is
    /// [`ConfigError::Several`]).
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several { problems, .. } => problems.iter().collect(),
            ConfigError::Read { .. }
            | ConfigError::MissingConfigFile { .. }
            | ConfigError::Yaml { .. }
            | ConfigError::WrongType { .. }
            | ConfigError::DotEnv { .. }
            | ConfigError::Invalid { .. }
            | ConfigError::NoToken { .. } => vec![self],
        }
    }

    /// The warnings of the load that failed.
    pub fn warnings(&self) -> &[String] {
        match self {
            ConfigError::Several { warnings, .. } => warnings,
            ConfigError::Read { .. }
            | ConfigError::MissingConfigFile { .. }
            | ConfigError::Yaml { .. }
            | ConfigError::WrongType { .. }
            | ConfigError::DotEnv { .. }
            | ConfigError::Invalid { .. }
            | ConfigError::NoToken { .. } => &[],
        }
    }
}

/// Values given on the command line; they beat every other source.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub slug: Option<String>,
    pub config: Option<PathBuf>,
    pub profile: Option<String>,
    pub mqtt_host: Option<String>,
    pub mqtt_port: Option<u16>,
    /// `--standalone`: embedded broker, local identity, no REST.
    pub standalone: bool,
}

/// The node's effective settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_dir: Sourced<PathBuf>,
    pub working_dir: PathBuf,
    pub config_file: Option<PathBuf>,
    pub api_token: Option<Sourced<Secret>>,
    pub api_url: Sourced<String>,
    pub workspace_slug: Option<Sourced<String>>,
    /// The slug hint for the backend, or the saved slug.
    pub instance_slug: Option<Sourced<String>>,
    /// A uuid to register, from the environment or the identity file.
    pub instance_uuid: Option<Sourced<String>>,
    pub mqtt_host: Sourced<String>,
    pub mqtt_port: Sourced<u16>,
    pub mqtt_use_tls: Sourced<bool>,
    pub mqtt_tls_ca_certs: Option<Sourced<PathBuf>>,
    /// `None` means "the instance uuid" (docs/protocol.md default).
    pub mqtt_username: Option<Sourced<String>>,
    /// `None` means "the API token".
    pub mqtt_password: Option<Sourced<Secret>>,
    /// The biggest MQTT packet the broker accepts; every message the node
    /// publishes is cut to fit (MQTT 3.1.1 has no CONNACK to learn it from).
    pub mqtt_max_packet_bytes: Sourced<usize>,
    pub topic_prefix: Sourced<String>,
    pub install_script: Option<Sourced<String>>,
    pub inference_cmd: Option<Sourced<String>>,
    pub training_cmd: Option<Sourced<String>>,
    pub simulate_cmd: Option<Sourced<String>>,
    pub profile_slug: Sourced<String>,
    pub heartbeat_interval: Sourced<Duration>,
    pub max_concurrent_workloads: Sourced<u32>,
    /// Which GPUs the node hands out (`gpus`); see `crate::gpus`.
    pub gpus: Sourced<GpuSelection>,
    /// How many GPUs a workload gets unless its request says.
    pub gpus_per_workload: Sourced<GpusPerWorkload>,
    /// How many workload commands may wait on disk for a free slot; 0
    /// refuses them as busy.
    pub max_queued_workloads: Sourced<u32>,
    /// Seconds between metrics samples; zero turns them off.
    pub metrics_interval: Sourced<Duration>,
    /// The remote terminal (`terminal:` in cyberwave.yml); off by default.
    pub terminal_enabled: Sourced<bool>,
    pub terminal_shell: Option<Sourced<String>>,
    pub terminal_max_sessions: Sourced<u32>,
    pub terminal_idle_timeout: Sourced<Duration>,
    /// How long finished workloads' files (and their request_ids) are kept.
    pub log_retention: Sourced<Duration>,
    /// The most of a result file the terminal event carries; a bigger one
    /// is reported as truncated and left on disk.
    pub max_result_bytes: Sourced<u64>,
    /// Where models may be loaded from; `None` means the working directory
    /// and `<config dir>/models` (see [`Settings::model_roots`]).
    pub model_roots: Option<Sourced<Vec<PathBuf>>>,
    /// ONNX Runtime's library, or a directory holding it.
    pub onnxruntime_path: Option<Sourced<PathBuf>>,
    /// The `.env` variables, for child processes (install script, workloads),
    /// which see them the way the Python node's `load_dotenv` made them visible.
    pub dotenv_vars: Vec<(String, String)>,
    /// The identity file as found at load time (`None` when absent or corrupt).
    pub identity: Option<Identity>,
    /// Problems worth telling the operator that do not stop the node.
    pub warnings: Vec<String>,
    /// The unit of every retry delay (see [`RetryUnit`]).
    pub retry_unit: RetryUnit,
    /// Run without the Cyberwave backend (see `crate::standalone`).
    pub standalone: bool,
}

impl Settings {
    /// Resolves every setting from `overrides` and the sources `env` points to.
    /// Every problem found is reported at once ([`ConfigError::Several`]):
    /// a value that does not parse is set aside and the walk goes on.
    pub fn load(overrides: &Overrides, env: &Environment) -> Result<Settings, ConfigError> {
        let (config_file, working_dir) = locate_config_file(overrides, env)?;
        let mut problems = Vec::new();
        let mut dotenv = |path: PathBuf| match DotEnvFile::load(&path) {
            Ok(file) => file.map(|mut file| {
                problems.append(&mut file.problems);
                file
            }),
            Err(error) => {
                problems.push(error);
                None
            }
        };
        let dotenv_workdir = dotenv(working_dir.join(".env"));
        let config_dir = resolve_config_dir(env, dotenv_workdir.as_ref());
        let dotenv_config = dotenv(config_dir.value.join(".env"));
        let mut yaml = match config_file.as_deref().map(YamlFile::load).transpose() {
            Ok(yaml) => yaml,
            Err(error) => {
                problems.push(error);
                None
            }
        };
        let mut warnings = Vec::new();
        if let Some(yaml) = &mut yaml {
            warnings.extend(yaml.warnings.iter().cloned());
            problems.append(&mut yaml.problems);
        }
        let credentials_path = config_dir.value.join("credentials.json");
        let credentials = Credentials::load(&credentials_path).unwrap_or_else(|warning| {
            warnings.push(warning.to_string());
            None
        });
        let identity_path = identity::identity_path(&config_dir.value);
        let identity = identity::load(&identity_path).unwrap_or_else(|e| {
            warnings.push(format!("{e}; the node will register a new instance"));
            None
        });
        let layers = Layers {
            env,
            dotenvs: [dotenv_workdir, dotenv_config]
                .into_iter()
                .flatten()
                .collect(),
            yaml,
            credentials,
            problems: Default::default(),
        };
        let mut settings = layers.resolve(overrides, config_dir, identity.as_ref(), &identity_path);
        problems.append(&mut layers.problems.into_inner());
        if let Some(error) = ConfigError::from_problems(problems, warnings.clone()) {
            return Err(error);
        }
        // A relative CA path means the same thing as a relative install script:
        // relative to the repository (working directory).
        if let Some(ca) = &mut settings.mqtt_tls_ca_certs {
            ca.value = working_dir.join(&ca.value);
        }
        if let Some(roots) = &mut settings.model_roots {
            roots.value = roots.value.iter().map(|r| working_dir.join(r)).collect();
        }
        if let Some(path) = &mut settings.onnxruntime_path {
            path.value = working_dir.join(&path.value);
        }
        settings.working_dir = working_dir;
        settings.config_file = config_file;
        settings.identity = identity;
        settings.retry_unit = RetryUnit::from_env(env.get("CYBERWAVE_RETRY_BASE_MS"));
        settings.standalone = overrides.standalone;
        settings.warnings.splice(0..0, warnings);
        if settings.standalone {
            if let Some(warning) = settings.no_templates_warning() {
                settings.warnings.push(warning);
            }
        }
        Ok(settings)
    }

    /// Which keys to set, and where, when no workload template is set: a
    /// standalone node started in the wrong directory would otherwise run
    /// and refuse every workload without a word at start.
    pub fn no_templates_warning(&self) -> Option<String> {
        if WorkloadKind::ALL
            .iter()
            .any(|k| self.template(*k).is_some())
        {
            return None;
        }
        let file = match &self.config_file {
            Some(path) => format!("{} sets none", path.display()),
            None => format!(
                "looked for {} (not found)",
                self.working_dir.join("cyberwave.yml").display()
            ),
        };
        Some(format!(
            "no workload templates: {file}. Set inference, training or simulate under \
             `cyberwave-cloud-node:` in that file (e.g. `training: python train.py --params {{body}}`), \
             or CYBERWAVE_TRAINING_CMD and the like, or pass --config; until then the node \
             runs no inference, training or simulate workload"
        ))
    }

    /// The MQTT user and password of the instance `uuid`: the settings',
    /// else the uuid and the API token (docs/protocol.md).
    pub fn mqtt_credentials(&self, uuid: &str) -> (String, Secret) {
        let user = self.mqtt_username.as_ref().map(|u| u.value.clone());
        let password = self.mqtt_password.as_ref().or(self.api_token.as_ref());
        (
            user.unwrap_or_else(|| uuid.to_owned()),
            password
                .map(|p| p.value.clone())
                .unwrap_or_else(|| Secret::new("")),
        )
    }

    /// Whether a standalone node embeds its broker: it does unless
    /// `--mqtt-host` names one (a host from the environment or
    /// credentials.json is the real platform's, which a standalone node
    /// must not talk to).
    pub fn uses_embedded_broker(&self) -> bool {
        self.standalone && self.mqtt_host.origin != Origin::Flag("--mqtt-host")
    }

    /// Points the broker settings at the embedded broker on 127.0.0.1, as
    /// a standalone node connects to it.
    pub fn point_at_embedded_broker(&mut self) {
        let origin = Origin::Derived("the embedded broker");
        self.mqtt_host = Sourced::new("127.0.0.1".into(), origin.clone());
        self.mqtt_use_tls = Sourced::new(false, origin);
    }

    /// The API token, or the error that lists every place to put one.
    pub fn require_token(&self) -> Result<&Sourced<Secret>, ConfigError> {
        self.api_token.as_ref().ok_or_else(|| ConfigError::NoToken {
            workdir_env: self.working_dir.join(".env"),
            config_env: self.config_dir.value.join(".env"),
            credentials: self.config_dir.value.join("credentials.json"),
        })
    }

    /// The directories models may be loaded from.
    pub fn model_roots(&self) -> Vec<PathBuf> {
        match &self.model_roots {
            Some(roots) => roots.value.clone(),
            None => vec![
                self.working_dir.clone(),
                self.config_dir.value.join("models"),
            ],
        }
    }

    /// The template configured for a workload kind.
    pub fn template(&self, kind: WorkloadKind) -> Option<&Sourced<String>> {
        match kind {
            WorkloadKind::Inference => self.inference_cmd.as_ref(),
            WorkloadKind::Training => self.training_cmd.as_ref(),
            WorkloadKind::Simulate => self.simulate_cmd.as_ref(),
        }
    }
}

fn locate_config_file(
    overrides: &Overrides,
    env: &Environment,
) -> Result<(Option<PathBuf>, PathBuf), ConfigError> {
    if let Some(given) = &overrides.config {
        let path = env.cwd.join(given);
        if !path.is_file() {
            return Err(ConfigError::MissingConfigFile { path });
        }
        let dir = path.parent().map(Path::to_owned).unwrap_or(env.cwd.clone());
        return Ok((Some(path), dir));
    }
    let found = ["cyberwave.yml", "cyberwave.yaml"]
        .iter()
        .map(|name| env.cwd.join(name))
        .find(|p| p.is_file());
    Ok((found, env.cwd.clone()))
}

fn resolve_config_dir(env: &Environment, workdir_env: Option<&DotEnvFile>) -> Sourced<PathBuf> {
    const VARS: [&str; 2] = ["CYBERWAVE_CONFIG_DIR", "CYBERWAVE_EDGE_CONFIG_DIR"];
    for var in VARS {
        if let Some(value) = env.get(var) {
            return Sourced::new(env.cwd.join(value), Origin::Env(var));
        }
    }
    if let Some(file) = workdir_env {
        for var in VARS {
            if let Some((value, line)) = file.get(var) {
                let origin = Origin::DotEnv {
                    path: file.path.clone(),
                    var,
                    line,
                };
                return Sourced::new(env.cwd.join(value), origin);
            }
        }
    }
    let home = env.home.clone().unwrap_or_else(|| PathBuf::from("/"));
    Sourced::new(home.join(".cyberwave"), Origin::Default)
}

/// Where to look for one setting below the command line.
struct Spec {
    name: &'static str,
    vars: &'static [&'static str],
    yaml: Option<&'static str>,
}

const fn spec(
    name: &'static str,
    vars: &'static [&'static str],
    yaml: Option<&'static str>,
) -> Spec {
    Spec { name, vars, yaml }
}

/// Every source below the command line, in precedence order.
struct Layers<'a> {
    env: &'a Environment,
    dotenvs: Vec<DotEnvFile>,
    yaml: Option<YamlFile>,
    credentials: Option<Credentials>,
    /// What did not parse, in the order met; see [`Settings::load`].
    problems: std::cell::RefCell<Vec<ConfigError>>,
}

mod resolve;

#[cfg(test)]
mod tests;
