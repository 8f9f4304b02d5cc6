//! `cyberwave.yml`: the repository's own settings for the node.
//!
//! The file is read into plain strings keyed by setting, with the line each
//! came from, so every later error can say "file, line, key". Values are
//! parsed into types by the same code that parses environment variables
//! (see `parse.rs`), which keeps the two sources from drifting apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::ConfigError;

/// The section names the node reads, newest last. `cyberwave-cloud-node:` wins
/// when both are present, because it is the more specific of the two.
const SECTIONS: [&str; 2] = ["cyberwave-cloud-node", "cyberwave"];

/// Every key the node understands inside its section.
pub const KNOWN_KEYS: &[&str] = &[
    "install_script",
    "inference",
    "training",
    "simulate",
    "profile_slug",
    "heartbeat_interval",
    "mqtt_host",
    "mqtt_port",
    "mqtt_use_tls",
    "mqtt_tls_ca_certs",
    "mqtt_username",
    "mqtt_password",
    "mqtt_max_packet_bytes",
    "max_concurrent_workloads",
    "gpus",
    "gpus_per_workload",
    "max_queued_workloads",
    "log_retention_days",
    "max_result_bytes",
    "metrics_interval",
    "model_roots",
    "onnxruntime_path",
    "terminal.enabled",
    "terminal.shell",
    "terminal.max_sessions",
    "terminal.idle_timeout_seconds",
];

/// Keys that look like a place for the API token, which must never live in a
/// file that is usually committed to git.
const TOKEN_LIKE_KEYS: &[&str] = &["api_token", "token", "api_key", "cyberwave_api_token"];

/// One value from the file, as text, with where it was found.
#[derive(Debug, Clone)]
pub struct YamlEntry {
    pub text: String,
    pub line: Option<usize>,
}

/// The node's section of a `cyberwave.yml`.
#[derive(Debug, Clone, Default)]
pub struct YamlFile {
    pub path: PathBuf,
    pub entries: BTreeMap<&'static str, YamlEntry>,
    pub warnings: Vec<String>,
}

impl YamlFile {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<YamlFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses the text of a file; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<YamlFile, ConfigError> {
        let mut file = YamlFile {
            path: path.to_owned(),
            ..YamlFile::default()
        };
        let root: Value = serde_yaml::from_str(text).map_err(|e| ConfigError::Yaml {
            path: path.to_owned(),
            line: e.location().map(|l| l.line()),
            message: strip_location(&e.to_string()),
        })?;
        let root = match root {
            Value::Null => return Ok(file.with_missing_section_warning()),
            Value::Mapping(map) => map,
            other => {
                return Err(ConfigError::Yaml {
                    path: path.to_owned(),
                    line: Some(1),
                    message: format!(
                        "the top level must be a mapping with a `cyberwave-cloud-node:` section, found {}",
                        kind_of(&other)
                    ),
                })
            }
        };
        let present: Vec<&str> = SECTIONS
            .iter()
            .copied()
            .filter(|s| root.contains_key(*s))
            .collect();
        let Some(&section_name) = present.first() else {
            return Ok(file.with_missing_section_warning());
        };
        if present.len() > 1 {
            file.warnings.push(format!(
                "{}: both `cyberwave-cloud-node:` and `cyberwave:` sections are present; using `cyberwave-cloud-node:` and ignoring `cyberwave:`",
                path.display()
            ));
        }
        let header_line = find_line(text, section_name, None);
        let section = match &root[section_name] {
            Value::Mapping(map) => map.clone(),
            Value::Null => Default::default(),
            other => {
                return Err(ConfigError::Yaml {
                    path: path.to_owned(),
                    line: header_line,
                    message: format!(
                        "`{section_name}:` must hold a mapping of settings, found {}",
                        kind_of(other)
                    ),
                })
            }
        };
        for (key, value) in &section {
            let Some(key) = key.as_str() else {
                file.warnings.push(format!(
                    "{}: ignoring a non-text key in `{section_name}:`",
                    path.display()
                ));
                continue;
            };
            let line = find_line(text, key, header_line);
            file.add(key, value, line)?;
        }
        Ok(file)
    }

    fn add(&mut self, key: &str, value: &Value, line: Option<usize>) -> Result<(), ConfigError> {
        // `terminal:` is the one nested section: its keys become
        // `terminal.<key>`.
        if let ("terminal", Value::Mapping(section)) = (key, value) {
            for (inner, inner_value) in section {
                let inner = inner.as_str().unwrap_or_default();
                self.add(&format!("terminal.{inner}"), inner_value, line)?;
            }
            return Ok(());
        }
        let canonical = match key {
            "install" => {
                if self.entries.contains_key("install_script") {
                    self.warnings.push(format!(
                        "{}{}: `install` is an alias of `install_script`, which is also set; ignoring `install`",
                        self.path.display(),
                        line_suffix(line)
                    ));
                    return Ok(());
                }
                "install_script"
            }
            _ => match KNOWN_KEYS.iter().find(|k| **k == key) {
                Some(known) => *known,
                None => {
                    self.warnings.push(self.unknown_key_warning(key, line));
                    return Ok(());
                }
            },
        };
        // Lists are written the way the environment variable would be.
        let separator = match canonical {
            "model_roots" => ":",
            "gpus" => ",",
            _ => "",
        };
        let listed = match value {
            Value::Sequence(items) if !separator.is_empty() => {
                Some(items.iter().map(scalar_text).collect::<Result<Vec<_>, _>>())
            }
            _ => None,
        };
        if let Some(Ok(items)) = listed {
            let text = items
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(separator);
            self.entries.insert(canonical, YamlEntry { text, line });
            return Ok(());
        }
        let Some(text) = scalar_text(value).map_err(|found| ConfigError::Yaml {
            path: self.path.clone(),
            line,
            message: format!("`{key}` must be a single value, found {found}"),
        })?
        else {
            return Ok(());
        };
        self.entries.insert(canonical, YamlEntry { text, line });
        Ok(())
    }

    fn unknown_key_warning(&self, key: &str, line: Option<usize>) -> String {
        let at = format!("{}{}", self.path.display(), line_suffix(line));
        if TOKEN_LIKE_KEYS.contains(&key.to_ascii_lowercase().as_str()) {
            return format!(
                "{at}: `{key}` is ignored: the API token is never read from cyberwave.yml (it is usually committed); set CYBERWAVE_API_TOKEN in the environment or in .env"
            );
        }
        format!(
            "{at}: unknown key `{key}` is ignored (known keys: {}, install)",
            KNOWN_KEYS.join(", ")
        )
    }

    fn with_missing_section_warning(mut self) -> YamlFile {
        self.warnings.push(format!(
            "{}: no `cyberwave-cloud-node:` section found; the file contributes no settings",
            self.path.display()
        ));
        self
    }
}

/// The text of a scalar; `Ok(None)` for an explicit null (an unset key).
fn scalar_text(value: &Value) -> Result<Option<String>, &'static str> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Tagged(tagged) => scalar_text(&tagged.value),
        Value::Sequence(_) => Err("a list"),
        Value::Mapping(_) => Err("a mapping"),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// 1-based line of the first `key:` after `after` (the section header), found
/// by scanning the text because serde_yaml does not expose spans.
fn find_line(text: &str, key: &str, after: Option<usize>) -> Option<usize> {
    let skip = after.unwrap_or(0);
    text.lines()
        .enumerate()
        .skip(skip)
        .find(|(_, line)| {
            let trimmed = line.trim_start();
            let indented = trimmed.len() != line.len();
            if after.is_some() != indented {
                return false;
            }
            let unquoted = trimmed.trim_start_matches(['"', '\'']);
            unquoted
                .strip_prefix(key)
                .map(|rest| {
                    rest.trim_start_matches(['"', '\''])
                        .trim_start()
                        .starts_with(':')
                })
                .unwrap_or(false)
        })
        .map(|(index, _)| index + 1)
}

pub(crate) fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(" line {l}")).unwrap_or_default()
}

/// serde_yaml appends "at line X column Y" to its messages; the node reports
/// the line itself, so the duplicate is dropped.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<YamlFile, ConfigError> {
        YamlFile::parse(Path::new("/repo/cyberwave.yml"), text)
    }

    #[test]
    fn reads_the_section_with_lines() {
        let file = parse(
            "other: 1\ncyberwave-cloud-node:\n  training: python train.py {body}\n  mqtt_port: 1884\n  install: ./install.sh\n",
        )
        .unwrap();
        assert_eq!(file.entries["training"].text, "python train.py {body}");
        assert_eq!(file.entries["training"].line, Some(3));
        assert_eq!(file.entries["mqtt_port"].text, "1884");
        assert_eq!(file.entries["install_script"].text, "./install.sh");
        assert!(file.warnings.is_empty(), "{:?}", file.warnings);
    }

    #[test]
    fn newer_section_name_is_accepted() {
        let file = parse("cyberwave:\n  profile_slug: gpu\n").unwrap();
        assert_eq!(file.entries["profile_slug"].text, "gpu");
    }

    #[test]
    fn unknown_key_is_a_warning_naming_it() {
        let file = parse("cyberwave-cloud-node:\n  trainig: x\n").unwrap();
        assert_eq!(file.warnings.len(), 1);
        assert!(
            file.warnings[0].contains("`trainig`"),
            "{}",
            file.warnings[0]
        );
        assert!(file.warnings[0].contains("line 2"), "{}", file.warnings[0]);
    }

    #[test]
    fn token_in_yaml_is_refused_with_advice() {
        let file = parse("cyberwave-cloud-node:\n  api_token: secret\n").unwrap();
        assert!(file.warnings[0].contains("never read from cyberwave.yml"));
        assert!(!file.entries.contains_key("api_token"));
    }

    #[test]
    fn malformed_yaml_names_file_and_line() {
        let err =
            parse("cyberwave-cloud-node:\n  training: [unclosed\n  mqtt_port: 1\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/repo/cyberwave.yml"), "{text}");
        assert!(text.contains("line "), "{text}");
    }

    #[test]
    fn list_value_is_an_error_with_line() {
        let err = parse("cyberwave-cloud-node:\n  mqtt_host:\n    - a\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("line 2") && text.contains("mqtt_host"),
            "{text}"
        );
    }

    #[test]
    fn gpus_as_a_list_or_a_scalar() {
        let file = parse("cyberwave:\n  gpus: [0, GPU-ab12]\n  gpus_per_workload: 1\n").unwrap();
        assert_eq!(file.entries["gpus"].text, "0,GPU-ab12");
        assert_eq!(file.entries["gpus"].line, Some(2));
        assert_eq!(file.entries["gpus_per_workload"].text, "1");
        let file = parse("cyberwave:\n  gpus: 0,2\n").unwrap();
        assert_eq!(file.entries["gpus"].text, "0,2");
        let file = parse("cyberwave:\n  gpus: 3\n").unwrap();
        assert_eq!(file.entries["gpus"].text, "3");
    }

    #[test]
    fn install_script_beats_install_alias() {
        let file = parse("cyberwave:\n  install_script: a\n  install: b\n").unwrap();
        assert_eq!(file.entries["install_script"].text, "a");
        assert_eq!(file.warnings.len(), 1);
    }

    #[test]
    fn missing_section_warns() {
        let file = parse("something_else: 1\n").unwrap();
        assert!(file.entries.is_empty());
        assert!(file.warnings[0].contains("no `cyberwave-cloud-node:` section"));
    }
}
