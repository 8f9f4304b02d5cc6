//! The places a setting can come from, below the command line: the process
//! environment, two `.env` files and `credentials.json` (`cyberwave.yml` has
//! its own module).
//!
//! `.env` files are read into maps, never into the process environment: the
//! node's environment stays what the operator gave it, and precedence is
//! decided in one place ([`super::Layers`]) instead of by load order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::ConfigError;

/// The process environment plus the directories it implies. Built from the
/// real process by [`Environment::from_process`]; embedders and unit tests can
/// build one by hand.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub vars: HashMap<String, String>,
    pub cwd: PathBuf,
    pub home: Option<PathBuf>,
}

impl Environment {
    pub fn from_process() -> Environment {
        Environment {
            vars: std::env::vars().collect(),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            home: dirs::home_dir(),
        }
    }

    /// A variable's value; an empty value counts as unset, so a `.env`
    /// template with `CYBERWAVE_API_TOKEN=` does not hide credentials.json.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// A parsed `.env` file.
#[derive(Debug)]
pub struct DotEnvFile {
    pub path: PathBuf,
    vars: HashMap<String, (String, Option<usize>)>,
    /// Lines that are not assignments, each reported; the others count.
    pub problems: Vec<ConfigError>,
}

impl DotEnvFile {
    /// Reads `path`; `Ok(None)` when there is no such file.
    pub fn load(path: &Path) -> Result<Option<DotEnvFile>, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let mut vars = HashMap::new();
        let mut problems = Vec::new();
        for item in dotenvy::from_read_iter(text.as_bytes()) {
            match item {
                Ok((key, value)) => {
                    let line = line_of_assignment(&text, &key);
                    vars.insert(key, (value, line));
                }
                Err(error) => problems.push(ConfigError::DotEnv {
                    path: path.to_owned(),
                    line: line_of_error(&text, &error),
                    message: describe_dotenv_error(&error),
                }),
            }
        }
        Ok(Some(DotEnvFile {
            path: path.to_owned(),
            vars,
            problems,
        }))
    }

    /// A variable's value and 1-based line; empty values count as unset.
    pub fn get(&self, name: &str) -> Option<(&str, Option<usize>)> {
        self.vars
            .get(name)
            .filter(|(v, _)| !v.is_empty())
            .map(|(v, line)| (v.as_str(), *line))
    }

    /// Every variable in the file, for handing on to child processes.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, (v, _))| (k.as_str(), v.as_str()))
    }
}

fn describe_dotenv_error(error: &dotenvy::Error) -> String {
    match error {
        dotenvy::Error::LineParse(line, index) => {
            format!("cannot parse `{line}` (at character {index}); expected KEY=VALUE")
        }
        other => other.to_string(),
    }
}

/// The 1-based line where the text dotenvy could not parse begins.
fn line_of_error(text: &str, error: &dotenvy::Error) -> Option<usize> {
    let dotenvy::Error::LineParse(line, _) = error else {
        return None;
    };
    let start = text.find(line.as_str())?;
    Some(text[..start].matches('\n').count() + 1)
}

fn line_of_assignment(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
            line.strip_prefix(key)
                .map(|rest| rest.trim_start().starts_with('='))
                .unwrap_or(false)
        })
        .map(|i| i + 1)
}

/// Why `credentials.json` was ignored: a warning, not a stop.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {path}: {source}; ignoring it")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON ({source}); ignoring it. Run `cyberwave-cli login` again to rewrite it")]
    NotJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} must hold a JSON object; ignoring it. Run `cyberwave-cli login` again to rewrite it")]
    NotObject { path: PathBuf },
}

/// `credentials.json`, written by `cyberwave-cli login`.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub path: PathBuf,
    pub token: Option<String>,
    pub workspace_slug: Option<String>,
    /// `envs` merged with the same keys found flat at the top level (`envs`
    /// wins): older CLI versions wrote them flat.
    pub envs: HashMap<String, String>,
}

impl Credentials {
    /// Reads `path`. A missing file is `Ok(None)`; a corrupt one is reported
    /// through `Err(warning)` and the caller goes on as if it were absent.
    pub fn load(path: &Path) -> Result<Option<Credentials>, CredentialsError> {
        let path_buf = || path.to_owned();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CredentialsError::Read {
                    path: path_buf(),
                    source,
                })
            }
        };
        let root: Value =
            serde_json::from_str(&text).map_err(|source| CredentialsError::NotJson {
                path: path_buf(),
                source,
            })?;
        let Value::Object(root) = root else {
            return Err(CredentialsError::NotObject { path: path_buf() });
        };
        let mut envs: HashMap<String, String> = root
            .iter()
            .filter(|(k, _)| k.starts_with("CYBERWAVE_"))
            .filter_map(|(k, v)| Some((k.clone(), scalar_text(v)?)))
            .collect();
        if let Some(Value::Object(nested)) = root.get("envs") {
            for (key, value) in nested {
                if let Some(text) = scalar_text(value) {
                    envs.insert(key.clone(), text);
                }
            }
        }
        Ok(Some(Credentials {
            path: path.to_owned(),
            token: root.get("token").and_then(scalar_text),
            workspace_slug: root.get("workspace_slug").and_then(scalar_text),
            envs,
        }))
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_values_and_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, "# c\nA=1\nexport B=\"two words\"\nEMPTY=\n").unwrap();
        let file = DotEnvFile::load(&path).unwrap().unwrap();
        assert_eq!(file.get("A"), Some(("1", Some(2))));
        assert_eq!(file.get("B"), Some(("two words", Some(3))));
        assert_eq!(file.get("EMPTY"), None);
    }

    #[test]
    fn malformed_dotenv_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(
            &path,
            "GOOD=1\nthis is not an assignment\nALSO=2\nnor this\n",
        )
        .unwrap();
        let file = DotEnvFile::load(&path).unwrap().unwrap();
        let problems: Vec<String> = file.problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains(".env line 2:"), "{problems:?}");
        assert!(problems[1].contains(".env line 4:"), "{problems:?}");
        assert_eq!(file.get("ALSO"), Some(("2", Some(3))));
    }

    #[test]
    fn credentials_nested_and_flat_envs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.json");
        std::fs::write(
            &path,
            r#"{"token":"t","workspace_slug":"ws","CYBERWAVE_MQTT_HOST":"flat","envs":{"CYBERWAVE_MQTT_PORT":8883,"CYBERWAVE_BASE_URL":"https://x"}}"#,
        )
        .unwrap();
        let creds = Credentials::load(&path).unwrap().unwrap();
        assert_eq!(creds.token.as_deref(), Some("t"));
        assert_eq!(creds.workspace_slug.as_deref(), Some("ws"));
        assert_eq!(creds.envs["CYBERWAVE_MQTT_HOST"], "flat");
        assert_eq!(creds.envs["CYBERWAVE_MQTT_PORT"], "8883");
        assert_eq!(creds.envs["CYBERWAVE_BASE_URL"], "https://x");
    }

    #[test]
    fn corrupt_credentials_is_a_warning_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.json");
        std::fs::write(&path, "{not json").unwrap();
        let warning = Credentials::load(&path).unwrap_err().to_string();
        assert!(warning.contains("credentials.json"), "{warning}");
    }
}
