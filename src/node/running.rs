//! The registered, connected node: one task that owns all state.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::time::sleep_until;

use std::collections::{HashMap, HashSet};

use super::commands::Reply;
use super::deployments::deploy_config;
use super::registration::{register_with_retry, RegistrationError, RegistrationRequest};
use super::report::{self, CommandContext};
use super::terminal::terminal_config;
use super::workloads::{shim_path, workload_config, HeldEvent};
use super::*;
use crate::deploy::{DeployEvent, Deployments};
use crate::gpus::{GpuPool, Inventory, SharedPool};
use crate::mqtt::Outbox;
use crate::mqtt::Seq;
use crate::protocol::WorkloadKind;
use crate::telemetry::Sampler;
use crate::terminal::{TerminalEvent, Terminals};
use crate::workload::{WorkloadEvent, Workloads};

/// How often running workloads' output is checked ("within about a second").
const OUTPUT_POLL: Duration = Duration::from_millis(250);
/// How often old workload files are swept (docs/protocol.md retention: daily).
const RETENTION_SWEEP: Duration = Duration::from_secs(24 * 3600);
/// Terminal output batches waiting for the node; a full channel stops the
/// PTY readers (src/terminal.rs), so a flood costs no memory.
const TERMINAL_EVENTS: usize = 8;

/// Results of work the node spawned.
enum Background {
    Heartbeat(Result<(), BackendError>),
    Reregistered(Result<Registration, RegistrationError>),
}

/// How the serve loop ended.
enum Exit {
    Graceful,
    Fatal(NodeError),
}

/// Where the heartbeat schedule stands.
struct Heartbeat {
    due: Instant,
    /// A heartbeat call or a re-registration is under way.
    busy: bool,
    rejected_in_a_row: u32,
}

pub(super) struct RunningNode {
    pub(super) settings: Settings,
    /// `None` in standalone mode: no REST at all.
    backend: Option<Backend>,
    identity: Identity,
    pub(super) node: NodeRef,
    pub(super) topics: Topics,
    pub(super) mqtt: MqttLink,
    mqtt_events: mpsc::UnboundedReceiver<MqttEvent>,
    background_tx: mpsc::UnboundedSender<Background>,
    background_rx: mpsc::UnboundedReceiver<Background>,
    shutdown: Shutdown,
    pub(super) started: Instant,
    pub(super) accepting: bool,
    ready: bool,
    heartbeat: Heartbeat,
    pub(super) workloads: Workloads,
    workload_events: mpsc::UnboundedReceiver<WorkloadEvent>,
    pub(super) outbox: Outbox,
    /// Commands whose MQTT ack waits for their workload's launch.
    pub(super) unacked_starts: HashMap<String, Seq>,
    /// Terminal events of ended workloads whose last output is not all out
    /// yet (the MQTT link refused some): they follow it.
    pub(super) held_events: HashMap<String, HeldEvent>,
    /// Terminal bytes the MQTT link refused, sent again on `Room`; while
    /// they wait no more PTY output is read.
    pub(super) held_terminal: Option<(String, Vec<u8>)>,
    /// The latest metrics sample did not go out: it goes on `Room`.
    pub(super) metrics_unsent: bool,
    /// Outbox ids this MQTT link has queued: the first connect re-sends the
    /// others (left by an earlier run), never these a second time.
    pub(super) outbox_queued: Option<HashSet<u64>>,
    /// `None` when metrics are off (`metrics_interval: 0`).
    pub(super) sampler: Option<Sampler>,
    /// The latest metrics sample, for `status` and the heartbeat.
    pub(super) metrics: Option<serde_json::Value>,
    pub(super) terminals: Terminals,
    terminal_events: mpsc::Receiver<TerminalEvent>,
    pub(super) deployments: Deployments,
    deploy_events: mpsc::UnboundedReceiver<DeployEvent>,
    /// The node's GPUs and who holds them.
    pub(super) gpus: SharedPool,
}

impl RunningNode {
    pub(super) fn start(
        settings: Settings,
        backend: Option<Backend>,
        identity: Identity,
        shutdown: Shutdown,
    ) -> Result<RunningNode, NodeError> {
        let inventory = Inventory::detect(&settings.gpus)?;
        tracing::info!("{}", inventory.describe_line());
        let topics = Topics::new(&settings.topic_prefix.value);
        let (mqtt, mqtt_events) = MqttLink::start(mqtt_config(&settings, &identity, &topics))?;
        let (background_tx, background_rx) = mpsc::unbounded_channel();
        let node = NodeRef {
            uuid: identity.uuid.clone(),
            slug: identity.slug.clone(),
        };
        let due = Instant::now() + settings.heartbeat_interval.value;
        let outbox_dir = settings.config_dir.value.join("outbox");
        let outbox = Outbox::open(&outbox_dir).map_err(|source| NodeError::Outbox {
            path: outbox_dir,
            source,
        })?;
        let (workload_tx, workload_events) = mpsc::unbounded_channel();
        let shim = shim_path()?;
        let gpus = SharedPool::new(GpuPool::new(inventory));
        let workloads =
            Workloads::open(workload_config(&settings, &shim), workload_tx, gpus.clone());
        let (terminal_tx, terminal_events) = mpsc::channel(TERMINAL_EVENTS);
        let terminals = Terminals::new(terminal_config(&settings), terminal_tx);
        let (deploy_tx, deploy_events) = mpsc::unbounded_channel();
        let deployments =
            Deployments::open(deploy_config(&settings, &shim)?, deploy_tx, gpus.clone());
        Ok(RunningNode {
            settings,
            backend,
            identity,
            node,
            topics,
            mqtt,
            mqtt_events,
            background_tx,
            background_rx,
            shutdown,
            started: Instant::now(),
            accepting: true,
            ready: false,
            heartbeat: Heartbeat {
                due,
                busy: false,
                rejected_in_a_row: 0,
            },
            workloads,
            workload_events,
            outbox,
            unacked_starts: HashMap::new(),
            held_events: HashMap::new(),
            held_terminal: None,
            metrics_unsent: false,
            outbox_queued: Some(HashSet::new()),
            sampler: None,
            metrics: None,
            terminals,
            terminal_events,
            deployments,
            deploy_events,
            gpus,
        }
        .with_metrics())
    }

    fn with_metrics(mut self) -> RunningNode {
        if !self.settings.metrics_interval.value.is_zero() {
            self.sampler = Sampler::new();
        }
        self
    }

    /// The event loop, then the stop.
    pub(super) async fn serve(mut self) -> Result<(), NodeError> {
        let shutdown = self.shutdown.clone();
        let heartbeat_timer = sleep_until(self.heartbeat.due.into());
        tokio::pin!(heartbeat_timer);
        let mut output_timer = tokio::time::interval(OUTPUT_POLL);
        output_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut quiet_polls: u32 = 0;
        let mut idle_timer = tokio::time::interval(Duration::from_secs(1));
        let metrics_every = self
            .settings
            .metrics_interval
            .value
            .max(Duration::from_secs(1));
        let mut metrics_timer =
            tokio::time::interval_at(tokio::time::Instant::now() + metrics_every, metrics_every);
        metrics_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retention_timer = tokio::time::interval(RETENTION_SWEEP);
        retention_timer.tick().await;
        let exit = loop {
            if heartbeat_timer.deadline() != self.heartbeat.due.into() {
                heartbeat_timer.as_mut().reset(self.heartbeat.due.into());
            }
            tokio::select! {
                _ = shutdown.wait() => break Exit::Graceful,
                event = self.mqtt_events.recv() => match event {
                    Some(event) => self.on_mqtt(event).await,
                    None => break Exit::Fatal(MqttError::Closed.into()),
                },
                _ = &mut heartbeat_timer, if !self.heartbeat.busy && self.backend.is_some() => {
                    self.send_heartbeat();
                }
                Some(event) = self.workload_events.recv() => self.on_workload(event).await,
                _ = output_timer.tick(), if self.workloads.active_count() > 0 || !self.held_events.is_empty() => {
                    quiet_polls = self.publish_output(quiet_polls).await;
                }
                _ = retention_timer.tick() => self.workloads.prune(),
                _ = metrics_timer.tick(), if self.sampler.is_some() => self.publish_metrics(),
                Some(event) = self.terminal_events.recv(), if self.held_terminal.is_none() => {
                    self.on_terminal(event).await;
                }
                Some(event) = self.deploy_events.recv() => self.on_deploy_event(event).await,
                _ = idle_timer.tick(), if !self.terminals.is_empty() => self.terminals.reap_idle(),
                Some(done) = self.background_rx.recv() => {
                    if let Err(fatal) = self.on_background(done).await {
                        break Exit::Fatal(fatal);
                    }
                }
            }
        };
        self.stop(exit).await
    }

    /// The exact `send` command that talks to this standalone node.
    fn send_hint(&self) -> String {
        let mut flags = String::new();
        if self.settings.mqtt_port.value != crate::config::DEFAULT_MQTT_PORT {
            flags.push_str(&format!(" --mqtt-port {}", self.settings.mqtt_port.value));
        }
        if self.settings.mqtt_host.origin == crate::config::Origin::Flag("--mqtt-host") {
            flags.push_str(&format!(" --mqtt-host {}", self.settings.mqtt_host.value));
        }
        let exe = "cyberwave-cloud-node";
        let preferred = [
            WorkloadKind::Training,
            WorkloadKind::Inference,
            WorkloadKind::Simulate,
        ];
        match preferred
            .into_iter()
            .find(|k| self.settings.template(*k).is_some())
        {
            Some(kind) => format!(
                "{exe} send {kind} --params '{{\"epochs\": 3}}' --wait done --follow-logs{flags}   (or: {exe} send status{flags})"
            ),
            None => format!("{exe} send status{flags}"),
        }
    }

    pub(super) fn context(&self) -> CommandContext<'_> {
        CommandContext {
            settings: &self.settings,
            node: &self.node,
            started: self.started,
            accepting: self.accepting,
            workloads: &self.workloads,
            deployments: &self.deployments,
            gpus: &self.gpus,
            metrics: self.metrics.as_ref(),
        }
    }

    async fn on_mqtt(&mut self, event: MqttEvent) {
        match event {
            MqttEvent::Connected {
                session_present,
                dropped,
            } => {
                tracing::info!(
                    session_present,
                    "connected to the MQTT broker at {}:{}",
                    self.settings.mqtt_host.value,
                    self.settings.mqtt_port.value
                );
                self.on_dropped(dropped).await;
                self.on_room();
            }
            MqttEvent::Room => self.on_room(),
            MqttEvent::Delivered(id) => self.outbox.delivered(id),
            MqttEvent::Subscribed if !self.ready => {
                self.ready = true;
                tracing::info!(
                    uuid = %self.node.uuid,
                    slug = %self.node.slug,
                    "ready: listening on {} and {}",
                    self.topics.command(&self.node.uuid),
                    self.topics.command(&self.node.slug)
                );
                if self.identity.standalone {
                    tracing::info!("try it from another terminal: {}", self.send_hint());
                }
                crate::systemd::notify(crate::systemd::Notify::Ready, "connected and subscribed");
            }
            MqttEvent::Subscribed => tracing::debug!("subscriptions renewed"),
            MqttEvent::Message { seq, publish } => self.on_message(seq, publish).await,
            MqttEvent::ConnectionLost { error, retry_in } => tracing::warn!(
                "MQTT: {error}; reconnecting in {:.1}s",
                retry_in.as_secs_f64()
            ),
        }
    }

    /// Answers one command, then acknowledges it to the broker; a workload
    /// command is acknowledged once its launch has been answered.
    async fn on_message(&mut self, seq: Seq, publish: rumqttc::Publish) {
        if let Some(session) = self
            .topics
            .terminal_session(&self.node.uuid, &publish.topic)
        {
            let session = session.to_owned();
            self.terminals.input(&session, &publish.payload);
            self.mqtt.ack(seq);
            return;
        }
        let incoming =
            protocol::parse_command(&publish.payload, || uuid::Uuid::new_v4().to_string());
        let response = match incoming {
            Incoming::Echo => None,
            Incoming::Invalid { request_id, error } => {
                tracing::warn!(topic = %publish.topic, request_id = request_id.as_deref(), "refused a command: {error}");
                Some(Response::error(&self.node, request_id.as_deref(), error))
            }
            Incoming::Command(command) => {
                tracing::debug!(command = command.kind.name(), request_id = %command.request_id, "command");
                match self.on_command(command) {
                    Reply::Now(response) => Some(response),
                    Reply::AfterLaunch(request_id) => {
                        self.unacked_starts.insert(request_id, seq);
                        return;
                    }
                    Reply::Later => None,
                }
            }
        };
        if let Some(response) = response {
            self.respond(response).await;
        }
        self.mqtt.ack(seq);
    }

    /// Responses are never dropped: without room in the request queue they
    /// wait in the link's backlog, in order (src/mqtt/queue.rs).
    pub(super) async fn respond(&self, response: Response) {
        let topic = self.topics.response(&self.node.uuid);
        let value = serde_json::to_value(&response).expect("responses serialize");
        let payload = self.fit(&topic, value).bytes;
        self.mqtt.publish(&topic, payload, false);
    }

    fn send_heartbeat(&mut self) {
        let Some(backend) = self.backend.clone() else {
            return;
        };
        self.heartbeat.busy = true;
        let uuid = self.node.uuid.clone();
        let summary = report::heartbeat_summary(&self.context());
        let done = self.background_tx.clone();
        tokio::spawn(async move {
            let outcome = backend.heartbeat(&uuid, summary).await;
            let _ = done.send(Background::Heartbeat(outcome));
        });
    }

    /// Applies the heartbeat policy of docs/protocol.md; `Err` is fatal.
    async fn on_background(&mut self, done: Background) -> Result<(), NodeError> {
        let interval = self.settings.heartbeat_interval.value;
        match done {
            Background::Heartbeat(Ok(())) => {
                tracing::debug!("heartbeat accepted");
                self.heartbeat.rejected_in_a_row = 0;
                self.schedule_heartbeat(interval);
            }
            Background::Heartbeat(Err(error @ BackendError::Rejected { .. })) => {
                self.heartbeat.rejected_in_a_row += 1;
                let tries = self.heartbeat.rejected_in_a_row;
                if tries >= HEARTBEAT_AUTH_TRIES {
                    return Err(NodeError::HeartbeatRejected(error));
                }
                let delay = self.settings.retry_unit.backend().delay(tries);
                tracing::warn!(
                    "heartbeat rejected ({tries}/{HEARTBEAT_AUTH_TRIES}): {error}; retrying in {:.1}s",
                    delay.as_secs_f64()
                );
                self.schedule_heartbeat(delay);
            }
            Background::Heartbeat(Err(BackendError::NotFound { .. })) => self.reregister(),
            Background::Heartbeat(Err(error)) => {
                tracing::warn!(
                    "heartbeat failed: {error}; next one in {}s",
                    interval.as_secs()
                );
                self.schedule_heartbeat(interval);
            }
            Background::Reregistered(outcome) => return self.on_reregistered(outcome).await,
        }
        Ok(())
    }

    fn schedule_heartbeat(&mut self, after: Duration) {
        self.heartbeat.busy = false;
        self.heartbeat.due = Instant::now() + after;
    }

    /// The backend reaped this instance: become a new one in the background,
    /// keeping the heartbeat paused until it is done.
    fn reregister(&mut self) {
        tracing::warn!(
            uuid = %self.node.uuid,
            "the backend no longer knows this instance (heartbeat answered 404): registering a new one; running workloads keep running"
        );
        let Some(backend) = self.backend.clone() else {
            return;
        };
        let slug_hint = self.node.slug.clone();
        let profile = self.settings.profile_slug.value.clone();
        let retry = self.settings.retry_unit.backend();
        let shutdown = self.shutdown.clone();
        let done = self.background_tx.clone();
        tokio::spawn(async move {
            let request = RegistrationRequest {
                known_uuid: None,
                slug_hint: Some(&slug_hint),
                profile_slug: &profile,
                hardware: None,
            };
            let outcome = register_with_retry(&backend, request, retry, &shutdown).await;
            let _ = done.send(Background::Reregistered(outcome));
        });
    }

    /// Saves the new identity and moves the MQTT session to the new uuid.
    async fn on_reregistered(
        &mut self,
        outcome: Result<Registration, RegistrationError>,
    ) -> Result<(), NodeError> {
        let registration = match outcome {
            Ok(registration) => registration,
            Err(RegistrationError::Interrupted) => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        let identity = save_identity(&self.settings, &registration)?;
        tracing::info!(
            old_uuid = %self.identity.uuid,
            uuid = %identity.uuid,
            slug = %identity.slug,
            "registered as a new instance; moving the MQTT subscriptions"
        );
        let (mqtt, events) = MqttLink::start(mqtt_config(&self.settings, &identity, &self.topics))?;
        let old = std::mem::replace(&mut self.mqtt, mqtt);
        old.close(DISCONNECT_TIMEOUT).await;
        self.mqtt_events = events;
        self.node = NodeRef {
            uuid: identity.uuid.clone(),
            slug: identity.slug.clone(),
        };
        self.identity = identity;
        self.ready = false;
        self.outbox_queued = Some(HashSet::new());
        self.schedule_heartbeat(self.settings.heartbeat_interval.value);
        Ok(())
    }

    /// docs/protocol.md's graceful stop; for a fatal error the failed endpoint is
    /// called instead of terminated. Commands that arrive meanwhile are
    /// answered with "shutting down".
    async fn stop(mut self, exit: Exit) -> Result<(), NodeError> {
        crate::systemd::notify(crate::systemd::Notify::Stopping, "stopping");
        self.accepting = false;
        self.terminals.close_all();
        self.workloads.save_offsets();
        let running = self.workloads.describe_active();
        tracing::info!(
            "stopping: no new commands are accepted; {} workload(s) keep running",
            running.len()
        );
        for line in running {
            tracing::info!("{line}");
        }
        let queued = self.workloads.queued_count();
        if queued > 0 {
            tracing::info!("{queued} queued workload(s) wait on disk for the next start");
        }
        let backend = self.backend.clone();
        let (uuid, slug) = (self.node.uuid.clone(), self.node.slug.clone());
        let error_text = match &exit {
            Exit::Fatal(error) => Some(error.to_string()),
            Exit::Graceful => None,
        };
        let call = async move {
            let Some(backend) = backend else {
                return; // standalone: nobody to tell
            };
            match error_text {
                Some(text) => report_failed(&backend, &text, &uuid, &slug).await,
                None => {
                    match tokio::time::timeout(STOP_CALL_TIMEOUT, backend.terminated(&uuid, &slug))
                        .await
                    {
                        Ok(Ok(())) => tracing::info!("told the backend this node terminated"),
                        Ok(Err(e)) => {
                            tracing::warn!("could not tell the backend this node terminated: {e}")
                        }
                        Err(_) => {
                            tracing::warn!("telling the backend this node terminated timed out")
                        }
                    }
                }
            }
        };
        tokio::pin!(call);
        loop {
            tokio::select! {
                _ = &mut call => break,
                Some(event) = self.mqtt_events.recv() => self.on_mqtt(event).await,
            }
        }
        self.mqtt.close(DISCONNECT_TIMEOUT).await;
        tracing::info!("stopped");
        match exit {
            Exit::Graceful => Ok(()),
            Exit::Fatal(error) => Err(error),
        }
    }
}

fn mqtt_config(settings: &Settings, identity: &Identity, topics: &Topics) -> MqttConfig {
    let (username, password) = settings.mqtt_credentials(&identity.uuid);
    MqttConfig {
        host: settings.mqtt_host.value.clone(),
        port: settings.mqtt_port.value,
        use_tls: settings.mqtt_use_tls.value,
        ca_file: settings.mqtt_tls_ca_certs.as_ref().map(|c| c.value.clone()),
        username,
        password,
        client_id: format!("cloud-node-{}", identity.uuid),
        keep_alive: MQTT_KEEP_ALIVE,
        max_packet_bytes: settings.mqtt_max_packet_bytes.value,
        subscriptions: {
            let mut watched = vec![
                topics.command(&identity.uuid),
                topics.command(&identity.slug),
            ];
            if settings.terminal_enabled.value {
                watched.push(topics.terminal_in(&identity.uuid, "+"));
            }
            watched
        },
        presence_topic: topics.presence(&identity.uuid),
        node: NodeRef {
            uuid: identity.uuid.clone(),
            slug: identity.slug.clone(),
        },
        backoff: settings.retry_unit.broker(),
    }
}
