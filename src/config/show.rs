//! `cyberwave-cloud-node config show`: every effective setting and its origin.

use std::fmt::Write;
use std::path::PathBuf;

use super::{GpuSelection, GpusPerWorkload, Settings, Sourced};

/// One printable row: name, value, origin.
type Row = (&'static str, String, String);

fn row<T>(name: &'static str, item: &Sourced<T>, show: impl Fn(&T) -> String) -> Row {
    (name, show(&item.value), item.origin.to_string())
}

fn optional<T>(
    name: &'static str,
    item: &Option<Sourced<T>>,
    show: impl Fn(&T) -> String,
    when_unset: &str,
) -> Row {
    match item {
        Some(item) => row(name, item, show),
        None => (name, "(not set)".to_owned(), when_unset.to_owned()),
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

fn broker_rows(s: &Settings) -> Vec<Row> {
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
                path_list(&s.model_roots()),
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

/// The text `config show` prints.
pub fn render_table(settings: &Settings) -> String {
    let rows = rows(settings);
    let name_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let value_width = rows
        .iter()
        .map(|r| r.1.chars().count().min(48))
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    let config_file = settings
        .config_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(none found; settings come from the environment)".into());
    let _ = writeln!(out, "config file:  {config_file}");
    let _ = writeln!(out, "working dir:  {}", settings.working_dir.display());
    let _ = writeln!(
        out,
        "precedence:   flag > environment > ./.env > <config dir>/.env > cyberwave.yml > credentials.json > default\n"
    );
    let _ = writeln!(
        out,
        "{:name_width$}  {:value_width$}  SOURCE",
        "SETTING", "VALUE"
    );
    for (name, value, origin) in rows {
        let value = value.replace('\n', "\\n");
        let _ = writeln!(out, "{name:name_width$}  {value:value_width$}  {origin}");
    }
    if !settings.dotenv_vars.is_empty() {
        let names: Vec<&str> = settings
            .dotenv_vars
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
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
