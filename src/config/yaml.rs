//! `cyberwave.yml`: the repository's own settings for the node.
//!
//! The file is read into plain strings keyed by setting, with the line each
//! came from, so every later error can say "file, line, key". Values are
//! parsed into types by the same code that parses environment variables
//! (see `parse.rs`), which keeps the two sources from drifting apart.
//! A value of the wrong shape is a problem named with what the key takes,
//! and the rest of the file still counts; an unknown key is a warning with
//! the nearest known key.

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

/// Keys of the file that are not settings of their own: `install` is
/// `install_script`'s alias, `terminal:` holds the `terminal.*` keys.
const OTHER_KEYS: &[&str] = &["install", "terminal"];

/// One value from the file, as text, with where it was found.
#[derive(Debug, Clone)]
pub struct YamlEntry {
    pub text: String,
    pub line: Option<usize>,
}

/// The node's section of a `cyberwave.yml`.
#[derive(Debug, Default)]
pub struct YamlFile {
    pub path: PathBuf,
    pub entries: BTreeMap<&'static str, YamlEntry>,
    pub warnings: Vec<String>,
    /// Keys whose value has the wrong shape (a mapping for a template...):
    /// each is reported, the rest of the file still counts.
    pub problems: Vec<ConfigError>,
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
            line: error_line(text, &e),
            message: strip_location(&e.to_string()),
        })?;
        let root = match root {
            Value::Null => return Ok(file.with_missing_section_warning()),
            Value::Mapping(map) => map,
            other => {
                return Err(ConfigError::WrongType {
                    path: path.to_owned(),
                    line: Some(1),
                    what: "the top level".to_owned(),
                    expected: "a mapping with a `cyberwave-cloud-node:` section",
                    found: kind_of(&other),
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
                return Err(ConfigError::WrongType {
                    path: path.to_owned(),
                    line: header_line,
                    what: format!("`{section_name}:`"),
                    expected: "a mapping of settings",
                    found: kind_of(other),
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
            if key == "terminal" {
                file.add_terminal(text, value, line);
            } else {
                file.add(key, value, line);
            }
        }
        Ok(file)
    }

    /// `terminal:` is the one nested section: its keys become
    /// `terminal.<key>`, each with its own line.
    fn add_terminal(&mut self, text: &str, value: &Value, line: Option<usize>) {
        let section = match value {
            Value::Mapping(section) => section,
            Value::Null => return,
            other => {
                self.problems.push(self.wrong_type("terminal", line, other));
                return;
            }
        };
        for (inner, inner_value) in section {
            let inner = inner.as_str().unwrap_or_default();
            let inner_line = find_line(text, inner, line).or(line);
            self.add(&format!("terminal.{inner}"), inner_value, inner_line);
        }
    }

    fn wrong_type(&self, key: &str, line: Option<usize>, value: &Value) -> ConfigError {
        ConfigError::WrongType {
            path: self.path.clone(),
            line,
            what: format!("`{key}`"),
            expected: expected_shape(key),
            found: kind_of(value),
        }
    }

    fn add(&mut self, key: &str, value: &Value, line: Option<usize>) {
        let canonical = match key {
            "install" => {
                if self.entries.contains_key("install_script") {
                    self.warnings.push(format!(
                        "{}{}: `install` is an alias of `install_script`, which is also set; ignoring `install`",
                        self.path.display(),
                        line_suffix(line)
                    ));
                    return;
                }
                "install_script"
            }
            _ => match KNOWN_KEYS.iter().find(|k| **k == key) {
                Some(known) => *known,
                None => {
                    self.warnings.push(self.unknown_key_warning(key, line));
                    return;
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
            return;
        }
        match scalar_text(value) {
            Ok(Some(text)) => {
                self.entries.insert(canonical, YamlEntry { text, line });
            }
            Ok(None) => {}
            Err(()) => self.problems.push(self.wrong_type(key, line, value)),
        }
    }

    fn unknown_key_warning(&self, key: &str, line: Option<usize>) -> String {
        let at = format!("{}{}", self.path.display(), line_suffix(line));
        if TOKEN_LIKE_KEYS.contains(&key.to_ascii_lowercase().as_str()) {
            return format!(
                "{at}: `{key}` is ignored: the API token is never read from cyberwave.yml (it is usually committed); set CYBERWAVE_API_TOKEN in the environment or in .env"
            );
        }
        match closest_key(key) {
            Some(known) => format!("{at}: unknown key `{key}` is ignored; did you mean `{known}`?"),
            None => format!(
                "{at}: unknown key `{key}` is ignored (known keys: {}, install)",
                KNOWN_KEYS.join(", ")
            ),
        }
    }

    fn with_missing_section_warning(mut self) -> YamlFile {
        self.warnings.push(format!(
            "{}: no `cyberwave-cloud-node:` section found; the file contributes no settings",
            self.path.display()
        ));
        self
    }
}

/// The known key nearest to a misspelt one (edit distance, transpositions
/// counting once), when it is near enough to be the likely intent. A
/// `terminal.` key is compared with the `terminal.` keys only.
fn closest_key(key: &str) -> Option<&'static str> {
    let nested = key.contains('.');
    let typed = key.to_ascii_lowercase();
    let (distance, best) = KNOWN_KEYS
        .iter()
        .chain(OTHER_KEYS)
        .filter(|known| known.contains('.') == nested)
        .map(|known| (strsim::damerau_levenshtein(&typed, known), *known))
        .min()?;
    // Two edits catch typos and swapped letters; longer names get a third.
    let allowed = if typed.len() > 8 { 3 } else { 2 };
    (distance <= allowed).then_some(best)
}

/// What a key's value must look like, for a value of the wrong shape.
fn expected_shape(key: &str) -> &'static str {
    match key {
        "inference" | "training" | "simulate" => "a string (a command template)",
        "install" | "install_script" => "a string (a shell command)",
        "mqtt_port" => "a number (a port)",
        "mqtt_use_tls" | "terminal.enabled" => "true or false",
        "heartbeat_interval" | "metrics_interval" | "terminal.idle_timeout_seconds" => {
            "a number of seconds"
        }
        "log_retention_days" => "a number of days",
        "mqtt_max_packet_bytes" | "max_result_bytes" => "a number of bytes",
        "max_concurrent_workloads" | "max_queued_workloads" | "terminal.max_sessions" => {
            "a whole number"
        }
        "gpus" => "all, none, or a list of GPU indexes and UUIDs",
        "gpus_per_workload" => "all or a whole number",
        "model_roots" => "a directory or a list of directories",
        "terminal" => "a mapping (enabled, shell, max_sessions, idle_timeout_seconds)",
        _ => "a single value (text, a number or true/false)",
    }
}

/// The text of a scalar; `Ok(None)` for an explicit null (an unset key),
/// `Err` for a list or a mapping.
fn scalar_text(value: &Value) -> Result<Option<String>, ()> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Tagged(tagged) => scalar_text(&tagged.value),
        Value::Sequence(_) | Value::Mapping(_) => Err(()),
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

/// The line a YAML syntax error is about. serde_yaml reports where it gave
/// up, which for an unclosed `[` or `"` is the end of the file (one line
/// past the last of a file ending in a newline); its "while parsing ... at
/// line N" names the line where the unfinished thing began, which is the
/// one to fix.
fn error_line(text: &str, error: &serde_yaml::Error) -> Option<usize> {
    let message = error.to_string();
    let began = message
        .split("while parsing")
        .nth(1)
        .and_then(|rest| rest.split(" at line ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok());
    let last = text.lines().count().max(1);
    began
        .or_else(|| error.location().map(|l| l.line()))
        .map(|line| line.min(last))
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
    fn list_value_is_a_problem_with_line() {
        let file = parse("cyberwave-cloud-node:\n  mqtt_host:\n    - a\n").unwrap();
        let text = file.problems[0].to_string();
        assert!(
            text.contains("line 2")
                && text.contains("`mqtt_host` must be")
                && text.contains("a list"),
            "{text}"
        );
    }

    #[test]
    fn every_wrong_type_is_reported_and_the_rest_still_counts() {
        let file = parse(
            "cyberwave-cloud-node:\n  training: {epochs: 3}\n  mqtt_port: 1884\n  terminal: 5\n",
        )
        .unwrap();
        let problems: Vec<String> = file.problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].ends_with(
                "line 2: `training` must be a string (a command template), found a mapping"
            ),
            "{problems:?}"
        );
        assert!(problems[1].contains("line 4: `terminal` must be a mapping"));
        assert_eq!(file.entries["mqtt_port"].text, "1884");
    }

    #[test]
    fn unknown_keys_get_the_nearest_known_one() {
        let file = parse(
            "cyberwave:\n  trainig: x\n  mqtt_prot: 1\n  terminal:\n    enabeld: true\n  colour: blue\n",
        )
        .unwrap();
        let w = &file.warnings;
        assert!(
            w[0].contains("line 2") && w[0].ends_with("did you mean `training`?"),
            "{w:?}"
        );
        assert!(w[1].ends_with("did you mean `mqtt_port`?"), "{w:?}");
        assert!(
            w[2].contains("line 5") && w[2].ends_with("did you mean `terminal.enabled`?"),
            "{w:?}"
        );
        assert!(
            w[3].contains("unknown key `colour`") && w[3].contains("known keys"),
            "{w:?}"
        );
    }

    #[test]
    fn an_unclosed_list_points_at_its_own_line() {
        let err =
            parse("cyberwave-cloud-node:\n  training: ok\n  inference: [broken\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("cyberwave.yml line 3:"), "{text}");
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
