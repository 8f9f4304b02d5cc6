//! `cyberwave-cloud-node config show`: every effective setting and its
//! origin, as a table or as JSON. A standalone node's settings show what it
//! uses instead: its local identity and broker, no token or backend.

use std::fmt::Write;
use std::path::PathBuf;

use serde_json::{json, Value};

use super::{GpuSelection, GpusPerWorkload, Origin, Settings, Sourced};

/// One printable row: name, value (`None`: not set), origin.
type Row = (&'static str, Option<String>, String);

fn row<T>(name: &'static str, item: &Sourced<T>, show: impl Fn(&T) -> String) -> Row {
    (name, Some(show(&item.value)), item.origin.to_string())
}

fn optional<T>(
    name: &'static str,
    item: &Option<Sourced<T>>,
    show: impl Fn(&T) -> String,
    when_unset: &str,
) -> Row {
    match item {
        Some(item) => row(name, item, show),
        None => (name, None, when_unset.to_owned()),
    }
}

#[allow(clippy::ptr_arg)] // used as `impl Fn(&String)` for `Sourced<String>`
fn text(value: &String) -> String {
    value.to_owned()
}

/// Every row, in the order `config show` prints them.
fn rows(s: &Settings) -> Vec<Row> {
    [
        account_rows(s),
        broker_rows(s),
        workload_rows(s),
        terminal_rows(s),
        runtime_rows(s),
    ]
    .concat()
}

/// Who the node is: the token, the backend, the instance.
fn account_rows(s: &Settings) -> Vec<Row> {
    if s.standalone {
        return standalone_account_rows(s);
    }
    vec![
        optional(
            "api_token",
            &s.api_token,
            |t| t.masked(),
            "missing: set CYBERWAVE_API_TOKEN",
        ),
        row("api_url", &s.api_url, text),
        optional("workspace_slug", &s.workspace_slug, text, "none"),
        optional(
            "instance_uuid",
            &s.instance_uuid,
            text,
            "assigned by the backend at registration",
        ),
        optional(
            "instance_slug",
            &s.instance_slug,
            text,
            "assigned by the backend at registration",
        ),
        row("profile_slug", &s.profile_slug, text),
    ]
}

/// A standalone node's identity: the saved local one, or the one it will
/// make (see `crate::standalone::local_identity`); no token, no backend.
fn standalone_account_rows(s: &Settings) -> Vec<Row> {
    let path = crate::identity::identity_path(&s.config_dir.value);
    let saved = s.identity.as_ref().filter(|i| i.standalone);
    let from_file = |value: &str| {
        let origin = Origin::Identity { path: path.clone() };
        (Some(value.to_owned()), origin.to_string())
    };
    let slug_hint = s
        .instance_slug
        .as_ref()
        .filter(|slug| !matches!(slug.origin, Origin::Identity { .. }));
    let (slug, slug_origin) = match (slug_hint, saved) {
        (Some(hint), _) => (Some(hint.value.clone()), hint.origin.to_string()),
        (None, Some(identity)) => from_file(&identity.slug),
        (None, None) => (
            Some(crate::standalone::host_slug()),
            "default: the host name".to_owned(),
        ),
    };
    // A slug other than the saved identity's makes a new identity.
    let (uuid, uuid_origin) = match saved.filter(|i| slug_hint.is_none_or(|h| h.value == i.slug)) {
        Some(identity) => from_file(&identity.uuid),
        None if s.identity.is_some() && saved.is_none() => (
            None,
            format!(
                "refused: {} holds a registered instance's identity; give the standalone node its own CYBERWAVE_CONFIG_DIR",
                path.display()
            ),
        ),
        None => (
            None,
            format!(
                "made at the first standalone start, saved in {}",
                path.display()
            ),
        ),
    };
    vec![
        ("instance_uuid", uuid, uuid_origin),
        ("instance_slug", slug, slug_origin),
        row("profile_slug", &s.profile_slug, text),
    ]
}

fn broker_rows(s: &Settings) -> Vec<Row> {
    if s.uses_embedded_broker() {
        let not_used = |name| {
            (
                name,
                None,
                "not used: the embedded broker takes any client".to_owned(),
            )
        };
        return vec![
            row("mqtt_host", &s.mqtt_host, text),
            row("mqtt_port", &s.mqtt_port, u16::to_string),
            row("mqtt_use_tls", &s.mqtt_use_tls, bool::to_string),
            not_used("mqtt_username"),
            not_used("mqtt_password"),
            row(
                "mqtt_max_packet_bytes",
                &s.mqtt_max_packet_bytes,
                usize::to_string,
            ),
            row("topic_prefix", &s.topic_prefix, |p| format!("{p:?}")),
        ];
    }
    vec![
        row("mqtt_host", &s.mqtt_host, text),
        row("mqtt_port", &s.mqtt_port, u16::to_string),
        row("mqtt_use_tls", &s.mqtt_use_tls, bool::to_string),
        optional(
            "mqtt_tls_ca_certs",
            &s.mqtt_tls_ca_certs,
            |p| p.display().to_string(),
            "system roots",
        ),
        optional(
            "mqtt_username",
            &s.mqtt_username,
            text,
            "default: the instance uuid",
        ),
        optional(
            "mqtt_password",
            &s.mqtt_password,
            |p| p.masked(),
            "default: the API token",
        ),
        row(
            "mqtt_max_packet_bytes",
            &s.mqtt_max_packet_bytes,
            usize::to_string,
        ),
        row("topic_prefix", &s.topic_prefix, |p| format!("{p:?}")),
    ]
}

fn workload_rows(s: &Settings) -> Vec<Row> {
    vec![
        optional("install_script", &s.install_script, text, "none"),
        optional("inference", &s.inference_cmd, text, "none"),
        optional("training", &s.training_cmd, text, "none"),
        optional("simulate", &s.simulate_cmd, text, "none"),
        row("heartbeat_interval", &s.heartbeat_interval, |d| {
            format!("{}s", d.as_secs())
        }),
        row(
            "max_concurrent_workloads",
            &s.max_concurrent_workloads,
            u32::to_string,
        ),
        row("gpus", &s.gpus, |g| match g {
            GpuSelection::Detected => "all (every GPU NVML reports)".to_owned(),
            GpuSelection::Off | GpuSelection::Only(_) => g.to_string(),
        }),
        row(
            "gpus_per_workload",
            &s.gpus_per_workload,
            GpusPerWorkload::to_string,
        ),
        row(
            "max_queued_workloads",
            &s.max_queued_workloads,
            u32::to_string,
        ),
    ]
}

fn terminal_rows(s: &Settings) -> Vec<Row> {
    vec![
        row("terminal.enabled", &s.terminal_enabled, bool::to_string),
        optional("terminal.shell", &s.terminal_shell, text, "the login shell"),
        row(
            "terminal.max_sessions",
            &s.terminal_max_sessions,
            u32::to_string,
        ),
        row(
            "terminal.idle_timeout_seconds",
            &s.terminal_idle_timeout,
            |d| format!("{}s", d.as_secs()),
        ),
    ]
}

/// Metrics, retention, results, models, and where the settings live.
fn runtime_rows(s: &Settings) -> Vec<Row> {
    vec![
        row("metrics_interval", &s.metrics_interval, |d| {
            format!("{}s", d.as_secs())
        }),
        row("log_retention_days", &s.log_retention, |d| {
            (d.as_secs() / 86_400).to_string()
        }),
        row("max_result_bytes", &s.max_result_bytes, u64::to_string),
        match &s.model_roots {
            Some(roots) => row("model_roots", roots, |r| path_list(r)),
            None => (
                "model_roots",
                Some(path_list(&s.model_roots())),
                "default".to_owned(),
            ),
        },
        optional(
            "onnxruntime_path",
            &s.onnxruntime_path,
            |p| p.display().to_string(),
            "ORT_DYLIB_PATH, then Python's onnxruntime",
        ),
        row("config_dir", &s.config_dir, |p| p.display().to_string()),
    ]
}

/// `a:b`, as `model_roots` is written.
fn path_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// What the settings are for, above the table.
fn header(settings: &Settings) -> Vec<(&'static str, String)> {
    let config_file = settings
        .config_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(none found; settings come from the environment)".into());
    let mut lines = vec![
        ("config file", config_file),
        ("working dir", settings.working_dir.display().to_string()),
    ];
    if settings.standalone {
        let broker = if settings.uses_embedded_broker() {
            "an embedded MQTT broker on 127.0.0.1"
        } else {
            "the MQTT broker --mqtt-host names"
        };
        lines.push((
            "mode",
            format!("standalone: {broker}, a local identity, no Cyberwave account or backend"),
        ));
    }
    lines.push((
        "precedence",
        "flag > environment > ./.env > <config dir>/.env > cyberwave.yml > credentials.json > default".into(),
    ));
    lines
}

/// The text `config show` prints.
pub fn render_table(settings: &Settings) -> String {
    let rows = rows(settings);
    let shown =
        |value: &Option<String>| value.as_deref().unwrap_or("(not set)").replace('\n', "\\n");
    let name_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let value_width = rows
        .iter()
        .map(|r| shown(&r.1).chars().count().min(48))
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (name, text) in header(settings) {
        let _ = writeln!(out, "{:13} {text}", format!("{name}:"));
    }
    let _ = writeln!(
        out,
        "\n{:name_width$}  {:value_width$}  SOURCE",
        "SETTING", "VALUE"
    );
    for (name, value, origin) in &rows {
        let value = shown(value);
        let _ = writeln!(out, "{name:name_width$}  {value:value_width$}  {origin}");
    }
    let names = dotenv_names(settings);
    if !names.is_empty() {
        let _ = writeln!(
            out,
            "\n.env variables passed to child processes: {}",
            names.join(", ")
        );
    }
    for warning in &settings.warnings {
        let _ = writeln!(out, "\nwarning: {warning}");
    }
    out
}

/// `config show --json`: the same facts for a program.
pub fn render_json(settings: &Settings) -> Value {
    let rows: Vec<Value> = rows(settings)
        .into_iter()
        .map(|(name, value, source)| json!({"setting": name, "value": value, "source": source}))
        .collect();
    json!({
        "config_file": settings.config_file,
        "working_dir": settings.working_dir,
        "standalone": settings.standalone,
        "settings": rows,
        "dotenv_variables": dotenv_names(settings),
        "warnings": settings.warnings,
    })
}

fn dotenv_names(settings: &Settings) -> Vec<&str> {
    settings
        .dotenv_vars
        .iter()
        .map(|(k, _)| k.as_str())
        .collect()
}
