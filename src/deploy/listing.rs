//! The rows of `deployments` and `status`: the node's record of each
//! deployment joined with what its model server reports.

use serde_json::{json, Value};

use super::files::DeploymentRecord;

/// One row of `deployments`.
pub fn listing(record: &DeploymentRecord, info: Option<&Value>) -> Value {
    let loaded = info.or(record.loaded.as_ref());
    let field = |key: &str| loaded.map_or(Value::Null, |l| l[key].clone());
    let stats = info.map_or(Value::Null, |i| i["stats"].clone());
    let stat = |key: &str| {
        if stats.is_null() {
            Value::Null
        } else {
            stats[key].clone()
        }
    };
    json!({
        "deployment_id": record.deployment_id,
        "model": record.model,
        "format": format_of(record),
        "state": record.state.name(),
        "pid": record.pid,
        "loaded_at": field("loaded_at"),
        "input_specs": field("input_specs"),
        "output_specs": field("output_specs"),
        "memory_bytes": field("memory_bytes"),
        "rss_bytes": field("rss_bytes"),
        "request_count": stat("request_count"),
        "error_count": stat("error_count"),
        "avg_latency_ms": stat("avg_latency_ms"),
        "p50_latency_ms": stat("p50_latency_ms"),
        "p95_latency_ms": stat("p95_latency_ms"),
        "requests_per_second": stat("requests_per_second"),
        "error": record.error,
    })
}

pub fn format_of(record: &DeploymentRecord) -> Value {
    match (&record.loaded, &record.format) {
        (Some(loaded), _) => loaded["format"].clone(),
        (None, Some(format)) => json!(format),
        (None, None) => Value::Null,
    }
}
