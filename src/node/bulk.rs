//! What the node publishes as bulk besides live output: metrics, and what
//! waits for the MQTT link to have room again (docs/design.md, "Nothing the event
//! loop publishes may block it").

use super::running::RunningNode;
use crate::mqtt::Tracked;
use crate::telemetry::NodeFigures;

impl RunningNode {
    /// Samples the machine and publishes it on the metrics topic.
    pub(super) fn publish_metrics(&mut self) {
        let Some(sampler) = self.sampler.as_mut() else {
            return;
        };
        let stats = self.workloads.stats;
        let figures = NodeFigures {
            uptime_seconds: self.started.elapsed().as_secs(),
            workloads_started: stats.started,
            workloads_completed: stats.completed,
            workloads_failed: stats.failed,
            workloads_cancelled: stats.cancelled,
            workload_seconds: stats.seconds,
        };
        let sample = sampler.sample(&figures);
        let gpu_memory = sampler.gpu_memory_by_pid();
        if !gpu_memory.is_empty() {
            self.workloads.note_gpu_memory(&gpu_memory);
        }
        self.metrics = Some(sample);
        self.send_metrics();
    }

    /// Metrics are bulk: without room the sample waits for `Room`, and a
    /// newer one replaces it.
    fn send_metrics(&mut self) {
        let Some(sample) = &self.metrics else {
            return;
        };
        let topic = self.topics.metrics(&self.node.uuid);
        let payload = sample.to_string().into_bytes();
        self.metrics_unsent = self
            .mqtt
            .try_publish_bulk(&topic, payload, Tracked::Untracked)
            .is_err();
    }

    /// The MQTT link has room again: what waited for it goes now.
    pub(super) fn on_room(&mut self) {
        if let Some((session_id, bytes)) = self.held_terminal.take() {
            self.publish_terminal(session_id, bytes);
        }
        if self.metrics_unsent {
            self.send_metrics();
        }
    }
}
