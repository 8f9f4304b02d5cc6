//! The node's side of workloads: commands in, events and live output out,
//! each cut to the broker's packet limit on its way ([`RunningNode::fit`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::running::RunningNode;
use super::NodeError;
use crate::config::{GpusPerWorkload, Settings};
use crate::mqtt::OutboxEntry;
use crate::mqtt::Tracked;
use crate::protocol::fit::{fit, Fitted};
use crate::protocol::{Event, Outgoing, Response, WorkloadKind};
use crate::workload::tail::TailMessage;
use crate::workload::template::WITHHELD_VARS;
use crate::workload::{Handled, Terminal, WorkloadConfig, WorkloadEvent};

/// Output polls without news before polling slows to once a second.
const QUIET_AFTER: u32 = 4;

/// A terminal event stored in the outbox and not yet published: it waits
/// for its workload's last output.
pub(super) struct HeldEvent {
    /// `None` when the outbox could not store it.
    id: Option<u64>,
    topic: String,
    payload: Vec<u8>,
}

/// The workload settings, and what a workload may inherit.
pub(super) fn workload_config(settings: &Settings, shim: &Path) -> WorkloadConfig {
    let templates: HashMap<WorkloadKind, String> = WorkloadKind::ALL
        .into_iter()
        .filter_map(|kind| Some((kind, settings.template(kind)?.value.clone())))
        .collect();
    WorkloadConfig {
        logs_dir: crate::workload::paths::logs_dir(&settings.config_dir.value),
        working_dir: settings.working_dir.clone(),
        templates,
        max_concurrent: settings.max_concurrent_workloads.value as usize,
        max_queued: settings.max_queued_workloads.value as usize,
        base_env: inherited_env(settings),
        api_token: settings
            .api_token
            .as_ref()
            .map(|t| t.value.expose().to_owned()),
        shim: shim.to_owned(),
        retention: settings.log_retention.value,
        max_result_bytes: settings.max_result_bytes.value,
        gpus_per_workload: match settings.gpus_per_workload.value {
            GpusPerWorkload::All => None,
            GpusPerWorkload::Count(n) => Some(n as usize),
        },
    }
}

/// The shim beside the node's executable. A node without one still runs
/// (status, terminal, everything but processes): each launch then fails
/// with the path it tried, and the start-up log says how to fix it.
pub(super) fn shim_path() -> Result<PathBuf, NodeError> {
    let exe = std::env::current_exe().map_err(NodeError::OwnExecutable)?;
    Ok(crate::supervised::find_shim(&exe).unwrap_or_else(|| {
        let beside = exe.with_file_name(crate::supervised::handoff::SHIM_NAME);
        tracing::warn!(
            "no {} beside {} or on PATH: workloads and model servers cannot start; install it next to the node (the Debian package and `cargo build` do)",
            crate::supervised::handoff::SHIM_NAME,
            exe.display()
        );
        beside
    }))
}

/// What the node's children start from: its environment and the `.env`
/// variables, without the secrets.
pub(super) fn inherited_env(settings: &Settings) -> Vec<(String, String)> {
    let mut base_env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| !WITHHELD_VARS.contains(&k.as_str()))
        .collect();
    for (key, value) in &settings.dotenv_vars {
        if !WITHHELD_VARS.contains(&key.as_str()) && !base_env.iter().any(|(k, _)| k == key) {
            base_env.push((key.clone(), value.clone()));
        }
    }
    base_env
}

impl RunningNode {
    pub(super) async fn on_workload(&mut self, event: WorkloadEvent) {
        let handled = self.workloads.handle(event);
        // A slot may have freed (or the queue was loaded): what waits starts
        // now, its launch running while this event's end is reported. Its
        // `started` comes back as an event, so after that report is out.
        let unstarted = self.workloads.start_queued();
        match handled {
            Some(Handled::Out(outgoing)) => self.send_outgoing(outgoing).await,
            Some(Handled::Ended(terminal)) => self.report(terminal).await,
            None => {}
        }
        for terminal in unstarted {
            self.report(terminal).await;
        }
    }

    /// Publishes what an owner (workloads, deployments) answered, the way
    /// it asked.
    pub(super) async fn send_outgoing(&mut self, outgoing: Outgoing) {
        match outgoing {
            Outgoing::Launched(answer) => {
                let request_id = answer.request_id.clone();
                self.respond(Response::answer(&self.node, answer)).await;
                if let Some(seq) = self.unacked_starts.remove(&request_id) {
                    self.mqtt.ack(seq);
                }
            }
            Outgoing::Reply(answer) => self.respond(Response::answer(&self.node, answer)).await,
            Outgoing::Durable {
                outbox_name,
                answer,
            } => {
                let response = Response::answer(&self.node, answer);
                self.publish_event(&outbox_name, response).await;
            }
        }
    }

    /// Publishes a workload's last output, then its terminal event through
    /// the outbox: on disk first, removed when the broker acknowledges it.
    /// When the MQTT link cannot take all the output now (an outage), the
    /// event is stored and held until the output has followed.
    pub(super) async fn report(&mut self, terminal: Terminal) {
        let request_id = terminal.request_id.clone();
        let drained = self.drain_output(&request_id, terminal.messages);
        let ending = &terminal.ending;
        let mut response = match &ending.error {
            None => Response::ok(&self.node, &request_id, terminal.output),
            Some(error) => {
                let mut response = Response::error(&self.node, Some(&request_id), error.clone());
                response.output = Some(terminal.output);
                response
            }
        };
        response.event = Some(ending.event());
        // Into the outbox before the record says the workload ended, so a
        // crash in between loses nothing; the next run then finds the
        // event stored already, and publishes that copy only.
        if self.outbox.left_by_earlier_run(&terminal.outbox_name) {
            tracing::info!(
                request_id,
                "the {} event was stored by an earlier run that stopped before recording it; that copy goes out",
                ending.event().name()
            );
            self.workloads.reported(&request_id, ending);
            self.workloads.end_output(&request_id);
            return;
        }
        let held = self.store_event(&terminal.outbox_name, response);
        self.workloads.reported(&request_id, ending);
        if drained {
            self.workloads.end_output(&request_id);
            self.send_event(held);
        } else {
            tracing::debug!(
                request_id,
                "the terminal event waits for the last live output"
            );
            self.held_events.insert(request_id, held);
        }
    }

    /// A message for `topic`, cut to what the broker takes (see
    /// `protocol::fit`); a cut is logged once, here, with what was cut.
    pub(super) fn fit(&self, topic: &str, payload: serde_json::Value) -> Fitted {
        let budget = self.mqtt.payload_budget(topic);
        let fitted = fit(payload, budget);
        if !fitted.cut.is_empty() {
            tracing::warn!(
                request_id = fitted.value["request_id"].as_str().unwrap_or_default(),
                event = fitted.value["event"].as_str().unwrap_or_default(),
                "a message for {topic} was over the broker's limit (mqtt_max_packet_bytes, {budget} bytes of payload); sending it without: {}",
                fitted.describe_cut()
            );
        }
        fitted
    }

    /// Publishes an event that must not be lost: into the outbox first,
    /// removed when the broker acknowledges it. What is stored is already
    /// cut to fit, so the outbox never holds a message that cannot leave.
    pub(super) async fn publish_event(&mut self, outbox_name: &str, response: Response) {
        let held = self.store_event(outbox_name, response);
        self.send_event(held);
    }

    fn store_event(&mut self, outbox_name: &str, response: Response) -> HeldEvent {
        let request_id = response.request_id.clone();
        let event = response.event.map_or("event", Event::name);
        let topic = self.topics.response(&self.node.uuid);
        let fitted = self.fit(
            &topic,
            serde_json::to_value(&response).expect("responses serialize"),
        );
        let entry = OutboxEntry {
            topic,
            payload: fitted.value,
        };
        let id = match self.outbox.add(outbox_name, &entry) {
            Ok(id) => {
                if let Some(queued) = self.outbox_queued.as_mut() {
                    queued.insert(id);
                }
                Some(id)
            }
            Err(e) => {
                tracing::error!(request_id, "cannot store the {event} event in the outbox ({e}); publishing it without a safety net");
                None
            }
        };
        HeldEvent {
            id,
            topic: entry.topic,
            payload: fitted.bytes,
        }
    }

    fn send_event(&mut self, held: HeldEvent) {
        match held.id {
            Some(id) => self.mqtt.publish_tracked(&held.topic, held.payload, id),
            None => self.mqtt.publish(&held.topic, held.payload, false),
        }
    }

    /// Publishes an ended workload's output, starting with `messages`, as
    /// far as the MQTT link takes it; `true` once all of it is out.
    fn drain_output(&mut self, request_id: &str, mut messages: Vec<TailMessage>) -> bool {
        loop {
            if messages.is_empty() {
                return true;
            }
            let unsent = self.publish_messages(messages);
            if !unsent.is_empty() {
                self.workloads.commit_output(unsent);
                return false;
            }
            messages = self.workloads.poll_ended(request_id);
        }
    }

    /// Live output of the running workloads. After a second of silence the
    /// files are checked once a second instead of four times, which keeps a
    /// node with many quiet workloads idle; `quiet_polls` counts the silence.
    /// Nothing is read while the MQTT link takes no bulk (an outage): the
    /// bytes wait on disk. Held terminal events go once their workload's
    /// last output has.
    pub(super) async fn publish_output(&mut self, quiet_polls: u32) -> u32 {
        if !self.mqtt.bulk_ready() {
            return quiet_polls;
        }
        self.drain_held();
        if quiet_polls >= QUIET_AFTER && quiet_polls % QUIET_AFTER != 0 {
            return quiet_polls + 1;
        }
        let messages = self.workloads.poll_output();
        let quiet = messages.is_empty();
        let unsent = self.publish_messages(messages);
        self.workloads.commit_output(unsent);
        if quiet {
            quiet_polls + 1
        } else {
            0
        }
    }

    fn drain_held(&mut self) {
        let waiting: Vec<String> = self.held_events.keys().cloned().collect();
        for request_id in waiting {
            let rest = self.workloads.poll_ended(&request_id);
            if self.drain_output(&request_id, rest) {
                self.workloads.end_output(&request_id);
                if let Some(held) = self.held_events.remove(&request_id) {
                    self.send_event(held);
                }
            }
        }
    }

    /// Publishes live output and progress while the MQTT link takes them;
    /// returns what it did not take (from the first refusal on), for the
    /// tails to read again later.
    fn publish_messages(&self, messages: Vec<TailMessage>) -> Vec<TailMessage> {
        let logs = self.topics.logs(&self.node.uuid);
        let response_topic = self.topics.response(&self.node.uuid);
        let mut messages = messages.into_iter();
        while let Some(message) = messages.next() {
            let sent = match &message {
                TailMessage::Log(value) => {
                    let tracked = match message.position() {
                        Some((request_id, stream, offset)) => Tracked::Output {
                            request_id: request_id.to_owned(),
                            stream,
                            offset,
                        },
                        None => Tracked::Untracked,
                    };
                    let payload = self.fit(&logs, value.clone()).bytes;
                    self.mqtt.try_publish_bulk(&logs, payload, tracked).is_ok()
                }
                TailMessage::Progress { request_id, value } => {
                    let mut response = Response::ok(&self.node, request_id, value.clone());
                    response.event = Some(Event::Progress);
                    let value = serde_json::to_value(&response).expect("responses serialize");
                    let payload = self.fit(&response_topic, value).bytes;
                    self.mqtt
                        .try_publish_bulk(&response_topic, payload, Tracked::Untracked)
                        .is_ok()
                }
            };
            if !sent {
                return std::iter::once(message).chain(messages).collect();
            }
        }
        Vec::new()
    }

    /// What a fresh broker session dropped: live output goes on again from
    /// the dropped chunk, outbox events are published again.
    pub(super) async fn on_dropped(&mut self, dropped: Vec<Tracked>) {
        let mut events = Vec::new();
        for tracked in dropped {
            match tracked {
                Tracked::Outbox(id) => events.push(id),
                Tracked::Output {
                    request_id,
                    stream,
                    offset,
                } => self.workloads.rewind_output(&request_id, stream, offset),
                Tracked::Untracked => {}
            }
        }
        self.resend_outbox(&events);
    }

    /// Publishes stored events again: on a link's first connect every one
    /// it has not queued itself (left by an earlier run or link), later the
    /// ones a fresh broker session dropped. They are removed once acked.
    /// An entry too big for the broker (left by a version without the cap,
    /// or a lowered `mqtt_max_packet_bytes`) is cut and stored cut.
    fn resend_outbox(&mut self, dropped: &[u64]) {
        let first_connect = self.outbox_queued.take();
        if first_connect.is_none() && dropped.is_empty() {
            return;
        }
        for (id, entry) in self.outbox.pending() {
            let resend = match &first_connect {
                Some(queued) => !queued.contains(&id),
                None => dropped.contains(&id),
            };
            if !resend {
                continue;
            }
            let fitted = self.fit(&entry.topic, entry.payload);
            if !fitted.cut.is_empty() {
                let cut = OutboxEntry {
                    topic: entry.topic.clone(),
                    payload: fitted.value,
                };
                self.outbox.replace(id, &cut);
            }
            self.mqtt.publish_tracked(&entry.topic, fitted.bytes, id);
        }
    }
}
