//! `status` and `logs`: what the node that would run here has on disk, read
//! without a broker: its workloads (and their queue) from the workload
//! records, its model deployments from `<config dir>/deployments/`.
//!
//! The table is made for a terminal: at most 100 columns, ids longer than
//! their column cut with an ellipsis (`--json` has them whole).

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::anyhow;
use serde_json::{json, Value};

use super::output::{out, outln, with_hint};
use crate::config::{Environment, Overrides, Settings};
use crate::deploy::files::{DeployPaths, DeploymentRecord};
use crate::fsutil::load_json;
use crate::supervised::{now_unix_ms, procfs, ExitFile};
use crate::workload::local::{LocalError, ENDED_UNREPORTED};

/// The widest the `status` table gets, in columns.
const MAX_WIDTH: usize = 100;
/// Every column of the table but the last (ID), with their separators.
const FIXED_WIDTH: usize = 60;

/// The config dir of the node that would run here.
fn local_config_dir() -> anyhow::Result<PathBuf> {
    let settings = Settings::load(&Overrides::default(), &Environment::from_process())?;
    Ok(settings.config_dir.value)
}

pub(super) fn status(json: bool) -> anyhow::Result<()> {
    let config_dir = local_config_dir()?;
    let now = now_unix_ms();
    let logs_dir = crate::workload::paths::logs_dir(&config_dir);
    let (mut rows, damaged) = crate::workload::local::status(&logs_dir, now);
    rows.extend(
        crate::deploy::files::scan(&config_dir)
            .iter()
            .map(|(paths, record)| deployment(paths, record, now)),
    );
    if json {
        outln!("{}", Value::Array(rows));
    } else {
        out!("{}", table(&rows, &damaged, &config_dir));
    }
    Ok(())
}

/// A deployment as `status --json` lists it: the keys of a workload's entry
/// (`type` is `deployment`, `request_id` the deploy command's), plus its id,
/// model and error.
fn deployment(paths: &DeployPaths, record: &DeploymentRecord, now_ms: u64) -> Value {
    let exit = load_json::<ExitFile>(&paths.supervised.exit())
        .ok()
        .flatten();
    let supervisor = record.supervisor_pid.zip(record.supervisor_start_time);
    let state = match supervisor {
        Some((pid, start)) if record.state.is_active() && !procfs::is_running(pid, start) => {
            ENDED_UNREPORTED
        }
        _ => record.state.name(),
    };
    let started = record.created_unix_ms;
    let ended = exit
        .as_ref()
        .map(|e| e.ended_unix_ms)
        .or(record.ended_unix_ms)
        .unwrap_or(now_ms);
    json!({
        "request_id": record.request_id,
        "deployment_id": record.deployment_id,
        "type": "deployment",
        "model": record.model,
        "state": state,
        "pid": record.pid,
        "exit_code": exit.as_ref().and_then(|e| e.exit_code),
        "signal": exit.as_ref().and_then(|e| e.signal.clone()),
        "started_unix_ms": started,
        "duration_seconds": ended.saturating_sub(started) as f64 / 1000.0,
        "age_seconds": (now_ms.saturating_sub(started) / 1000),
        "stdout_log": paths.supervised.stdout(),
        "stderr_log": paths.supervised.stderr(),
        "error": record.error,
    })
}

/// The `status` table of `rows` (as `--json` has them).
fn table(rows: &[Value], damaged: &[String], config_dir: &Path) -> String {
    let mut text = String::new();
    if rows.is_empty() {
        text.push_str(&format!(
            "no workloads or deployments recorded in {}\n",
            config_dir.display()
        ));
    } else {
        text.push_str(&line(
            "TYPE",
            "STATE",
            "PID",
            "EXIT",
            "DURATION",
            "STARTED UTC",
            "ID",
        ));
        for row in rows {
            text.push_str(&row_line(row));
        }
        if rows.iter().any(|r| r["state"] == ENDED_UNREPORTED) {
            text.push_str(
                "ended: its process has ended; the node reports how once it runs again\n",
            );
        }
        text.push_str(
            "ID: a workload's request_id or a deployment's id; `cyberwave-cloud-node logs ID` shows its output\n",
        );
    }
    for problem in damaged {
        text.push_str(problem);
        text.push('\n');
    }
    text
}

fn row_line(row: &Value) -> String {
    let state = match row["state"].as_str().unwrap_or("?") {
        "queued" => format!("queued #{}", row["position"]),
        ENDED_UNREPORTED => "ended".to_owned(),
        state => state.to_owned(),
    };
    let exit = match (row["exit_code"].as_i64(), row["signal"].as_str()) {
        (_, Some(signal)) => signal.to_owned(),
        (Some(code), None) => code.to_string(),
        (None, None) => "-".to_owned(),
    };
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
    let id = row["deployment_id"]
        .as_str()
        .or(row["request_id"].as_str())
        .unwrap_or("?");
    line(
        row["type"].as_str().unwrap_or("?"),
        &state,
        &or_dash(row["pid"].as_i64().map(|p| p.to_string())),
        &exit,
        &or_dash(row["duration_seconds"].as_f64().map(human_duration)),
        &or_dash(row["started_unix_ms"].as_u64().map(utc_minute)),
        &ellipsis(id, MAX_WIDTH - FIXED_WIDTH),
    )
}

/// One line of the table; the columns add up to [`FIXED_WIDTH`].
fn line(
    kind: &str,
    state: &str,
    pid: &str,
    exit: &str,
    duration: &str,
    started: &str,
    id: &str,
) -> String {
    format!("{kind:<10} {state:<9} {pid:>7} {exit:<7} {duration:>8}  {started:<11}  {id}\n")
}

/// `text` cut to `width` characters, the last one an ellipsis when cut.
fn ellipsis(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let kept: String = text.chars().take(width - 1).collect();
    format!("{kept}…")
}

/// `42s`, `3m07s`, `2h05m`, `3d04h`.
fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// `12-03 07:25`: month, day and minute in UTC.
fn utc_minute(unix_ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let rfc3339 = humantime::format_rfc3339_seconds(at).to_string();
    // 2026-12-03T07:25:34Z
    rfc3339
        .get(5..16)
        .map_or(rfc3339.clone(), |s| s.replacen('T', " ", 1))
}

/// `logs ID`: a workload's log by its request_id, else a model server's by
/// its deployment id (or the deploy's request_id).
pub(super) fn logs(id: &str, stderr: bool, follow: bool) -> anyhow::Result<()> {
    let config_dir = local_config_dir()?;
    let logs_dir = crate::workload::paths::logs_dir(&config_dir);
    let mut stdout = std::io::stdout().lock();
    match crate::workload::local::logs(&logs_dir, id, stderr, follow, &mut stdout) {
        Err(LocalError::UnknownRequest { .. }) => {}
        other => return Ok(other?),
    }
    let Some((paths, record)) = crate::deploy::files::scan(&config_dir)
        .into_iter()
        .find(|(_, r)| r.deployment_id == id || r.request_id == id)
    else {
        let error = anyhow!(
            "no workload with request_id {id:?} and no deployment with that id in {}",
            config_dir.display()
        );
        return Err(with_hint(
            error,
            "`cyberwave-cloud-node status` lists the known ones",
        ));
    };
    let path = if stderr {
        paths.supervised.stderr()
    } else {
        paths.supervised.stdout()
    };
    let exit_file = paths.supervised.exit();
    let supervisor = record.supervisor_pid.zip(record.supervisor_start_time);
    let running = || {
        follow
            && crate::workload::local::still_running(
                &exit_file,
                supervisor,
                record.state.is_active(),
            )
    };
    crate::workload::local::stream(&path, &running, &mut stdout)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_fit_in_100_columns() {
        let long = "a-request-id-much-longer-than-the-column-has-room-for-0123456789";
        let row = json!({
            "type": "inference", "state": ENDED_UNREPORTED, "pid": 4_194_304,
            "signal": "SIGKILL", "duration_seconds": 400_000.0,
            "started_unix_ms": 1_796_282_734_000u64, "request_id": long,
        });
        let text = row_line(&row);
        assert_eq!(text.trim_end().chars().count(), MAX_WIDTH, "{text}");
        assert!(
            text.contains("12-03 07:25") && text.contains("4d15h"),
            "{text}"
        );
        assert!(text.trim_end().ends_with('…'), "{text}");
        let short =
            json!({"type": "training", "state": "queued", "position": 2, "request_id": "q"});
        assert!(
            row_line(&short).contains("queued #2"),
            "{}",
            row_line(&short)
        );
    }
}
