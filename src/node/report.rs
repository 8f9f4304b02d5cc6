//! What `status` and the heartbeat report: pure functions of the node's state.

use std::time::Instant;

use serde_json::{json, Value};

use crate::config::Settings;
use crate::protocol::{NodeRef, WorkloadKind};
use crate::workload::Workloads;

/// The state a report can see.
pub struct CommandContext<'a> {
    pub settings: &'a Settings,
    pub node: &'a NodeRef,
    pub started: Instant,
    pub accepting: bool,
    pub workloads: &'a Workloads,
    pub deployments: &'a crate::deploy::Deployments,
    pub gpus: &'a crate::gpus::SharedPool,
    /// The latest metrics sample, if metrics are on.
    pub metrics: Option<&'a Value>,
}

/// The `status` output of docs/protocol.md, every field.
pub fn status_output(ctx: &CommandContext<'_>) -> Value {
    let settings = ctx.settings;
    json!({
        "slug": ctx.node.slug,
        "instance_uuid": ctx.node.uuid,
        "profile_slug": settings.profile_slug.value,
        "version": env!("CARGO_PKG_VERSION"),
        "is_busy": ctx.workloads.is_busy(),
        "accepting_commands": ctx.accepting,
        "max_concurrent_workloads": settings.max_concurrent_workloads.value,
        "max_queued_workloads": settings.max_queued_workloads.value,
        "uptime_seconds": ctx.started.elapsed().as_secs(),
        "has_inference": settings.template(WorkloadKind::Inference).is_some(),
        "has_training": settings.template(WorkloadKind::Training).is_some(),
        "has_simulate": settings.template(WorkloadKind::Simulate).is_some(),
        "active_workloads": ctx.workloads.active_summaries(),
        "queued_workloads": ctx.workloads.queued_summaries(),
        "containment": ctx.workloads.containment(),
        "deployments": ctx.deployments.summary(),
        "gpus": ctx.gpus.lock().status(),
        "metrics": ctx.metrics,
    })
}

/// The heartbeat body: a short status summary (docs/protocol.md allows one).
pub fn heartbeat_summary(ctx: &CommandContext<'_>) -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "is_busy": ctx.workloads.is_busy(),
        "accepting_commands": ctx.accepting,
        "active_workloads": ctx.workloads.active_count(),
        "queued_workloads": ctx.workloads.queued_count(),
        "uptime_seconds": ctx.started.elapsed().as_secs(),
        "gpus": ctx.gpus.lock().summary(),
        "metrics": ctx.metrics.map(crate::telemetry::metrics::summary),
    })
}
