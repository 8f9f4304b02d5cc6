//! One `send` on the wire: connect, subscribe, publish, and follow the
//! request until its wait is over, whatever happens to the link meanwhile.
//!
//! How a wait survives restarts of the node and the broker:
//! - every CONNACK is followed by the subscriptions again (a broker that
//!   restarted without persistence forgot them);
//! - a long wait (`--wait done`, `send wait`) uses a persistent session
//!   with a client id of its own, so a broker that kept the session keeps
//!   what the node published meanwhile (the outbox re-sends the terminal
//!   event on the node's side); the session is dropped again when `send`
//!   ends;
//! - after a reconnect, and when attaching, `send` asks the node where the
//!   workload stands (`status` with `workload_request_id`), and again with
//!   a growing pause until the node answers: a terminal event published
//!   while `send` was away is learnt from that answer.
//!
//! A refused connection before the first CONNACK ends `send` at once with
//! the address and how to find the right one; a silent host meets the
//! timeout.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, QoS};
use serde_json::{json, Value};

use super::render::Renderer;
use super::session::Session;
use super::{Action, SendError, SendRequest, Wait, EXIT_INTERRUPTED, EXIT_OK};
use crate::cli::address::{broker_hint, Target};
use crate::config::Settings;
use crate::mqtt::Topics;

/// The first pause before asking the node again; it doubles to the cap.
const QUERY_RETRY: Duration = Duration::from_secs(2);
const QUERY_RETRY_CAP: Duration = Duration::from_secs(30);

/// One command (or attach) on its way: the MQTT link, what to send, and how
/// far it got.
pub struct Exchange {
    client: AsyncClient,
    eventloop: EventLoop,
    options: MqttOptions,
    persistent: bool,
    filters: Vec<String>,
    command_topic: String,
    action: Action,
    /// `host:port`, for messages.
    broker: String,
    hint: String,
    renderer: Renderer,
    session: Session,
    node: String,
    command_name: String,
    /// The request is a workload's: Ctrl-C leaves it running.
    watched: bool,
    follow_logs: bool,
    reattach_flags: String,
    link: LinkState,
}

/// What the link has been through.
#[derive(Default)]
struct LinkState {
    connected_once: bool,
    published: bool,
    /// Failed polls in a row, for the pause between reconnects.
    failures: u32,
    last_error: Option<String>,
    /// Ask the node where the workload stands once subscribed.
    catch_up: bool,
    queries: u32,
    /// When to ask again if no answer came.
    query_retry_at: Option<Instant>,
    /// Attaching: the node said where the workload stands.
    attached: bool,
    /// Attaching: this request's messages that came before that answer,
    /// shown after it (the story so far comes first).
    early: Vec<(String, Value)>,
}

impl Exchange {
    pub fn new(
        target: Target,
        action: Action,
        request: SendRequest,
        request_id: String,
        watched: bool,
    ) -> Result<Exchange, SendError> {
        let settings = &target.settings;
        let topics = Topics::new(&settings.topic_prefix.value);
        let attach = action == Action::Attach;
        let persistent = attach || request.wait == Wait::Done;
        let options = client_options(settings, &target.node, persistent)?;
        let (client, eventloop) = AsyncClient::new(options.clone(), 64);
        let mut filters = vec![topics.response("+")];
        if request.follow_logs {
            filters.push(topics.logs("+"));
        }
        let wait = if attach { Wait::Done } else { request.wait };
        let first_timeout = request.timeout.unwrap_or(super::DEFAULT_TIMEOUT);
        Ok(Exchange {
            client,
            eventloop,
            options,
            persistent,
            filters,
            command_topic: topics.command(&target.node),
            broker: format!("{}:{}", settings.mqtt_host.value, settings.mqtt_port.value),
            hint: broker_hint(&target),
            renderer: Renderer::new(&request, &request_id),
            session: Session {
                request_id,
                wait,
                first_deadline: Instant::now() + first_timeout,
                overall_deadline: request.timeout.map(|t| Instant::now() + t),
                answered: false,
                sent: attach,
            },
            node: target.node,
            command_name: request.command,
            watched,
            follow_logs: request.follow_logs,
            reattach_flags: request.reattach_flags,
            action,
            link: LinkState::default(),
        })
    }

    /// Follows the exchange to its end, then leaves the broker (and drops
    /// the persistent session); returns the exit code.
    pub async fn run(mut self) -> Result<u8, SendError> {
        let outcome = self.follow().await;
        self.leave().await;
        outcome
    }

    async fn follow(&mut self) -> Result<u8, SendError> {
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            let deadline = self.session.deadline();
            let retry = self.link.query_retry_at;
            let far = Instant::now() + Duration::from_secs(86_400);
            tokio::select! {
                _ = &mut ctrl_c => return Ok(self.interrupted()),
                _ = tokio::time::sleep_until(deadline.into()) => {
                    return Err(SendError::Timeout(self.timeout_message()))
                }
                _ = tokio::time::sleep_until(retry.unwrap_or(far).into()), if retry.is_some() => {
                    self.ask_node().await?;
                }
                polled = self.eventloop.poll() => match polled {
                    Err(error) => self.on_error(error).await?,
                    Ok(event) => {
                        if let Some(code) = self.on_event(event).await? {
                            return Ok(code);
                        }
                    }
                },
            }
        }
    }

    /// A failed poll: fatal before the first connection when the broker
    /// refused; otherwise a pause, and rumqttc reconnects on the next poll.
    async fn on_error(&mut self, error: ConnectionError) -> Result<(), SendError> {
        let refused = match &error {
            ConnectionError::Io(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
            ConnectionError::ConnectionRefused(_) => true,
            _ => false,
        };
        if refused && !self.link.connected_once {
            return Err(SendError::Unreachable {
                broker: self.broker.clone(),
                reason: error.to_string(),
                hint: self.hint.clone(),
            });
        }
        if self.link.connected_once && self.link.failures == 0 {
            self.renderer.note(&format!(
                "lost the MQTT broker at {} ({error}); reconnecting, still waiting for {}",
                self.broker, self.session.request_id
            ));
        }
        tracing::debug!("MQTT: {error}");
        self.link.last_error = Some(error.to_string());
        self.link.failures += 1;
        let pause = Duration::from_millis(100) * 2u32.pow(self.link.failures.min(4));
        tokio::time::sleep(pause).await;
        Ok(())
    }

    fn timeout_message(&self) -> String {
        let (node, broker) = (&self.node, &self.broker);
        if self.session.sent {
            let command_topic = &self.command_topic;
            format!("no answer from node {node} within the timeout: sent on {command_topic} via the broker at {broker}; is the node running and connected to that broker?")
        } else {
            let last = self
                .link
                .last_error
                .as_deref()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default();
            format!(
                "cannot reach the MQTT broker at {broker} within the timeout{last}\n{}",
                self.hint
            )
        }
    }

    /// Moves the exchange on by one event; `Some(code)` when it is over.
    async fn on_event(&mut self, event: Event) -> Result<Option<u8>, SendError> {
        match event {
            Event::Incoming(Incoming::ConnAck(_)) => {
                if self.link.connected_once {
                    self.renderer.note(&format!(
                        "reconnected to the MQTT broker at {}",
                        self.broker
                    ));
                    self.link.catch_up = self.watched && self.session.sent;
                }
                self.link.connected_once = true;
                self.link.failures = 0;
                let subscriptions = self
                    .filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                self.client
                    .subscribe_many(subscriptions)
                    .await
                    .map_err(|_| crate::mqtt::MqttError::Closed)?;
            }
            Event::Incoming(Incoming::SubAck(_)) => self.on_subscribed().await?,
            Event::Incoming(Incoming::PubAck(_)) if !self.session.sent && self.link.published => {
                self.session.sent = true;
                if self.session.wait == Wait::None {
                    self.renderer.note(&format!(
                        "sent {} to {} (request_id {})",
                        self.command_name, self.node, self.session.request_id
                    ));
                    return Ok(Some(EXIT_OK));
                }
            }
            Event::Incoming(Incoming::Publish(publish)) => {
                let Ok(message) = serde_json::from_slice::<Value>(&publish.payload) else {
                    return Ok(None);
                };
                if message["request_id"] == self.session.request_id.as_str() {
                    if self.action == Action::Attach && !self.link.attached {
                        self.link.early.push((publish.topic.to_string(), message));
                        return Ok(None);
                    }
                    return Ok(self.on_request_message(&publish.topic, &message));
                }
                if self.is_our_query(&message) {
                    return self.on_node_answer(&message);
                }
            }
            _ => {}
        }
        Ok(None)
    }

    /// A message on this request's own request_id.
    fn on_request_message(&mut self, topic: &str, message: &Value) -> Option<u8> {
        if topic.ends_with("/logs") {
            self.renderer.log(message);
            return None;
        }
        self.session.on_message(&mut self.renderer, message)
    }

    /// Subscribed (again): publish the command the first time; ask the
    /// node where the workload stands when attaching or after a reconnect.
    async fn on_subscribed(&mut self) -> Result<(), SendError> {
        let mut ask = std::mem::take(&mut self.link.catch_up);
        match &self.action {
            Action::Command(command) if !self.link.published => {
                let payload = command.to_string();
                self.client
                    .publish(&self.command_topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .map_err(|_| crate::mqtt::MqttError::Closed)?;
                self.link.published = true;
            }
            Action::Attach if !self.link.attached => ask = true,
            Action::Command(_) | Action::Attach => {}
        }
        if ask {
            self.ask_node().await?;
        }
        Ok(())
    }

    fn query_prefix(&self) -> String {
        format!("{}-q", self.options.client_id())
    }

    fn is_our_query(&self, message: &Value) -> bool {
        message["request_id"]
            .as_str()
            .is_some_and(|id| id.starts_with(&self.query_prefix()))
    }

    /// `status` with `workload_request_id`; asked again, later and later,
    /// until the node answers.
    async fn ask_node(&mut self) -> Result<(), SendError> {
        self.link.queries += 1;
        let query = json!({
            "command": "status",
            "request_id": format!("{}{}", self.query_prefix(), self.link.queries),
            "params": {"workload_request_id": self.session.request_id},
        });
        self.client
            .publish(
                &self.command_topic,
                QoS::AtLeastOnce,
                false,
                query.to_string(),
            )
            .await
            .map_err(|_| crate::mqtt::MqttError::Closed)?;
        let pause = QUERY_RETRY
            .saturating_mul(2u32.saturating_pow(self.link.queries.saturating_sub(1)))
            .min(QUERY_RETRY_CAP);
        self.link.query_retry_at = Some(Instant::now() + pause);
        Ok(())
    }

    /// The node's answer to [`Exchange::ask_node`]: the end `send` missed,
    /// or (attaching) the story so far.
    fn on_node_answer(&mut self, answer: &Value) -> Result<Option<u8>, SendError> {
        if answer["status"] != "ok" {
            return Ok(None); // stopping, say: ask again later
        }
        self.link.query_retry_at = None;
        let view = &answer["output"]["workload"];
        let attaching = self.action == Action::Attach && !self.link.attached;
        if view.is_null() {
            return match attaching {
                true => Err(SendError::UnknownWorkload {
                    node: self.node.clone(),
                    request_id: self.session.request_id.clone(),
                }),
                // Not there yet (the command waits in the broker): go on.
                false => Ok(None),
            };
        }
        match (attaching, self.follow_logs) {
            (true, _) => self.renderer.attached(view, self.follow_logs),
            (false, true) => self.renderer.missed_output(view),
            (false, false) => {}
        }
        self.session.answered = true;
        self.link.attached = true;
        if view["event"].is_null() {
            for (topic, message) in std::mem::take(&mut self.link.early) {
                if let Some(code) = self.on_request_message(&topic, &message) {
                    return Ok(Some(code));
                }
            }
            return Ok(None);
        }
        let mut event = json!({
            "status": if view["event"] == "completed" { "ok" } else { "error" },
            "request_id": self.session.request_id,
            "event": view["event"],
            "output": view["output"],
        });
        if let Some(error) = view.get("error") {
            event["error"] = error.clone();
        }
        Ok(self.session.on_message(&mut self.renderer, &event))
    }

    /// Ctrl-C: say what keeps running and how to come back to it.
    fn interrupted(&mut self) -> u8 {
        let id = &self.session.request_id;
        let flags = &self.reattach_flags;
        let exe = "cyberwave-cloud-node";
        let text = match (self.watched, self.session.sent) {
            (_, false) => "interrupted before the broker had the command; nothing was sent".to_owned(),
            (false, true) => format!("interrupted; the command {id} was sent to node {}", self.node),
            (true, true) => format!(
                "interrupted: workload {id} {} on node {}\n  follow it again: {exe} send wait {id} --follow-logs{flags}\n  stop it:         {exe} send cancel {id}{flags}",
                match self.session.answered {
                    true => "keeps running",
                    false => "was sent and may start",
                },
                self.node
            ),
        };
        self.renderer.interrupted(&text);
        EXIT_INTERRUPTED
    }

    /// Disconnects; a persistent session is then dropped at the broker by
    /// a clean-session connect with the same client id, so no broker keeps
    /// queueing messages for a `send` that is gone. Bounded: one second.
    async fn leave(&mut self) {
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(300), async {
            while let Ok(event) = self.eventloop.poll().await {
                if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
        if !(self.persistent && self.link.connected_once) {
            return;
        }
        let mut options = self.options.clone();
        options.set_clean_session(true);
        let (client, mut eventloop) = AsyncClient::new(options, 4);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        let _ = client.try_disconnect();
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

/// A client id of this invocation's own (stable across its reconnects);
/// a persistent session for long waits.
fn client_options(
    settings: &Settings,
    node: &str,
    persistent: bool,
) -> Result<MqttOptions, SendError> {
    let options = crate::cli::address::client_options(
        settings,
        node,
        "cyberwave-send",
        persistent,
        32 * 1024 * 1024,
    )?;
    Ok(options)
}
