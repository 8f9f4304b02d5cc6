//! `send status` for a person: a few lines out of the node's `status`
//! answer (`--json` prints the answer itself), and the number formatting
//! the rest of `send`'s human output shares.

use serde_json::Value;

/// The node's `status` output as a short summary.
pub fn status_summary(status: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    let mut out = format!(
        "node {} ({}), version {}, up {}, {}\n",
        text(&status["slug"]),
        text(&status["instance_uuid"]),
        text(&status["version"]),
        human_seconds(status["uptime_seconds"].as_f64().unwrap_or(0.0)),
        match status["accepting_commands"].as_bool() {
            Some(false) => "stopping: takes no new commands",
            _ => "accepting commands",
        }
    );
    let templates: Vec<&str> = ["training", "inference", "simulate"]
        .into_iter()
        .filter(|t| status[format!("has_{t}")] == true)
        .collect();
    let active = status["active_workloads"].as_array().map_or(&[][..], |a| a);
    let queued = status["queued_workloads"].as_array().map_or(&[][..], |a| a);
    let queue = match status["max_queued_workloads"].as_u64() {
        Some(0) | None => "no queue".to_owned(),
        Some(room) => format!("{} queued (room for {room})", queued.len()),
    };
    out.push_str(&format!(
        "workloads: {} running of {} at a time, {queue}; commands: {}\n",
        active.len(),
        status["max_concurrent_workloads"],
        match templates.is_empty() {
            true => "none configured".to_owned(),
            false => templates.join(", "),
        }
    ));
    for w in active {
        out.push_str(&format!(
            "  {:<10} {:<36} running {:>8}  pid {}\n",
            text(&w["type"]),
            text(&w["request_id"]),
            human_seconds(w["running_for_seconds"].as_f64().unwrap_or(0.0)),
            w["pid"].as_i64().map_or("-".to_owned(), |p| p.to_string()),
        ));
    }
    for q in queued {
        out.push_str(&format!(
            "  {:<10} {:<36} queued  {:>8}  position {}\n",
            text(&q["type"]),
            text(&q["request_id"]),
            human_seconds(q["queued_for_seconds"].as_f64().unwrap_or(0.0)),
            q["position"],
        ));
    }
    let deployments = status["deployments"].as_array().map_or(&[][..], |a| a);
    if !deployments.is_empty() {
        out.push_str(&format!("deployments: {}\n", deployments.len()));
        for d in deployments {
            out.push_str(&format!(
                "  {:<20} {:<10} {:<12} {}\n",
                text(&d["deployment_id"]),
                text(&d["state"]),
                text(&d["format"]),
                text(&d["model"]),
            ));
        }
    }
    let gpus = status["gpus"].as_array().map_or(&[][..], |a| a);
    if !gpus.is_empty() {
        let held = gpus.iter().filter(|g| !g["held_by"].is_null()).count();
        out.push_str(&format!("GPUs: {}, {held} held\n", gpus.len()));
    }
    out
}

/// `42s`, `3m05s`, `2h10m`, `3d04h`.
pub fn human_seconds(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// `value` with every fractional number rounded for reading: three
/// decimals, or three significant digits below 0.01 (`--json` keeps them
/// exact).
pub fn rounded(value: &Value) -> Value {
    match value {
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or_default();
            let places = match x.abs() {
                a if a == 0.0 || a >= 0.01 => 3,
                a => 2 - a.log10().floor() as i32,
            };
            let scale = 10f64.powi(places);
            serde_json::Number::from_f64((x * scale).round() / scale)
                .map_or_else(|| value.clone(), Value::Number)
        }
        Value::Array(items) => Value::Array(items.iter().map(rounded).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), rounded(v))).collect())
        }
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_are_rounded_for_people() {
        let v = rounded(
            &json!({"load_ms": 455.68897499999997, "lr": 0.000123456, "n": 3,
                                "l": [0.1234567]}),
        );
        assert_eq!(
            v,
            json!({"load_ms": 455.689, "lr": 0.000123, "n": 3, "l": [0.123]})
        );
    }

    #[test]
    fn the_summary_names_node_and_workloads() {
        let status = json!({"slug": "lab", "instance_uuid": "u-1", "version": "0.1.0",
            "uptime_seconds": 75, "accepting_commands": true, "max_concurrent_workloads": 2,
            "max_queued_workloads": 0, "has_training": true, "has_inference": false,
            "active_workloads": [{"type": "training", "request_id": "r-1", "pid": 42,
                                  "running_for_seconds": 12.0}],
            "queued_workloads": [], "deployments": [], "gpus": []});
        let text = status_summary(&status);
        assert!(
            text.starts_with("node lab (u-1), version 0.1.0, up 1m15s"),
            "{text}"
        );
        assert!(
            text.contains("1 running of 2") && text.contains("commands: training"),
            "{text}"
        );
        assert!(text.contains("r-1") && text.contains("pid 42"), "{text}");
        assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");
    }
}
