//! `cyberwave-cloud-node send`: a command-line stand-in for the backend.
//!
//! It publishes one command to a node and shows what comes back: the
//! response, and with `--wait done` every later event of that request until
//! the terminal one, the workload's live output with `--follow-logs`, and
//! progress as a bar on a terminal. It reads the same settings as `start`
//! (broker, credentials, topic prefix) and by default talks to the node whose
//! identity is in the local config dir.

mod render;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS, Transport};
use serde_json::{Map, Value};

use crate::config::{Environment, Origin, Overrides, Settings, Sourced};
use crate::identity;
use crate::mqtt::Topics;
use render::Renderer;

/// How long `send` waits for the first answer unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit codes (the workload's own code passes through for `failed`).
pub const EXIT_OK: u8 = 0;
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_TIMEOUT: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Wait {
    /// Return once the broker has the command
    None,
    /// Wait for the immediate response
    Started,
    /// Wait for the terminal event of a workload
    Done,
}

/// What to send and how to wait.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub command: String,
    /// `--params`: JSON text, or `@path` to a file holding it.
    pub params: Option<String>,
    pub request_id: Option<String>,
    pub node: Option<String>,
    pub wait: Wait,
    pub follow_logs: bool,
    pub json: bool,
    pub timeout: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("invalid --params: {0}")]
    Params(String),
    #[error("no --node given and no node identity in {0}; start a node first or pass --node <uuid|slug>")]
    NoNode(PathBuf),
    #[error(transparent)]
    Mqtt(#[from] crate::mqtt::MqttError),
    #[error("{0}")]
    Timeout(String),
}

impl SendError {
    pub fn exit_code(&self) -> u8 {
        match self {
            SendError::Timeout(_) => EXIT_TIMEOUT,
            _ => EXIT_ERROR,
        }
    }
}

/// Parses `--params` (inline JSON or `@file`) into an object, before
/// anything is sent.
pub fn parse_params(text: &str) -> Result<Map<String, Value>, SendError> {
    let (json, origin) = match text.strip_prefix('@') {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| SendError::Params(format!("cannot read {path}: {e}")))?,
            format!("in {path} "),
        ),
        None => (text.to_owned(), String::new()),
    };
    match serde_json::from_str::<Value>(&json) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(SendError::Params(format!(
            "{origin}must be a JSON object like '{{\"epochs\": 3}}', got {}",
            crate::protocol::json_kind(&other)
        ))),
        Err(e) => {
            // serde_json's message ends with its own "at line 2 column 8".
            let message = e.to_string();
            let message = message
                .rsplit_once(" at line ")
                .map_or(&*message, |(m, _)| m);
            Err(SendError::Params(format!(
                "{origin}is not valid JSON: {message} (line {}, column {})",
                e.line(),
                e.column()
            )))
        }
    }
}

/// Sends and waits; returns the exit code.
pub async fn send(settings: &Settings, request: SendRequest) -> Result<u8, SendError> {
    let params = request.params.as_deref().map(parse_params).transpose()?;
    let (node, settings) = target(settings, request.node.as_deref())?;
    let request_id = request
        .request_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut command = serde_json::json!({"command": request.command, "request_id": request_id});
    if let Some(params) = params {
        command["params"] = Value::Object(params);
    }
    let topics = Topics::new(&settings.topic_prefix.value);
    let (client, eventloop) = AsyncClient::new(client_options(&settings, &node)?, 64);
    let mut filters = vec![topics.response("+")];
    if request.follow_logs {
        filters.push(topics.logs("+"));
    }
    let exchange = Exchange {
        client,
        eventloop,
        filters,
        command_topic: topics.command(&node),
        command,
        broker: format!("{}:{}", settings.mqtt_host.value, settings.mqtt_port.value),
        renderer: Renderer::new(request.json, &request_id),
        session: Session {
            request_id: &request_id,
            wait: request.wait,
            first_deadline: Instant::now() + request.timeout.unwrap_or(DEFAULT_TIMEOUT),
            overall_deadline: request.timeout.map(|t| Instant::now() + t),
            answered: false,
            sent: false,
        },
        node: &node,
        command_name: &request.command,
    };
    exchange.run().await
}

/// The node to send to (`--node`, else the local identity's), and the
/// settings to reach it with.
fn target(settings: &Settings, node: Option<&str>) -> Result<(String, Settings), SendError> {
    let local = identity::load(&identity::identity_path(&settings.config_dir.value))
        .ok()
        .flatten();
    let node = match (node, &local) {
        (Some(node), _) => node.to_owned(),
        (None, Some(local)) => local.uuid.clone(),
        (None, None) => return Err(SendError::NoNode(settings.config_dir.value.clone())),
    };
    // The local node is standalone: its broker is the embedded one on this
    // machine, whatever the platform's broker settings say.
    let mut settings = settings.clone();
    let to_local_standalone = local
        .as_ref()
        .is_some_and(|l| l.standalone && (l.uuid == node || l.slug == node));
    if to_local_standalone && settings.mqtt_host.origin != Origin::Flag("--mqtt-host") {
        settings.mqtt_host = Sourced::new(
            "127.0.0.1".into(),
            Origin::Derived("the local standalone node"),
        );
        settings.mqtt_use_tls = Sourced::new(false, Origin::Derived("the local standalone node"));
    }
    Ok((node, settings))
}

/// One command on its way: the MQTT link, what to send, and how far it got.
struct Exchange<'a> {
    client: AsyncClient,
    eventloop: EventLoop,
    filters: Vec<String>,
    command_topic: String,
    command: Value,
    /// `host:port`, for error messages.
    broker: String,
    renderer: Renderer,
    session: Session<'a>,
    node: &'a str,
    command_name: &'a str,
}

impl Exchange<'_> {
    /// Subscribes, publishes, and shows what comes back until the wait is
    /// over; returns the exit code.
    async fn run(mut self) -> Result<u8, SendError> {
        loop {
            let event = match self.next_event().await? {
                Some(event) => event,
                None => continue,
            };
            if let Some(code) = self.on_event(event).await? {
                return Ok(code);
            }
        }
    }

    /// The next event before the deadline; `None` after a connection error
    /// (rumqttc reconnects on the next poll).
    async fn next_event(&mut self) -> Result<Option<Event>, SendError> {
        let deadline = self.session.deadline();
        match tokio::time::timeout_at(deadline.into(), self.eventloop.poll()).await {
            Err(_) => Err(SendError::Timeout(self.timeout_message())),
            Ok(Err(e)) => {
                tracing::debug!("MQTT: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(None)
            }
            Ok(Ok(event)) => Ok(Some(event)),
        }
    }

    fn timeout_message(&self) -> String {
        let (node, broker) = (self.node, &self.broker);
        if self.session.sent {
            let command_topic = &self.command_topic;
            format!("no answer from node {node} within the timeout: sent on {command_topic} via the broker at {broker}; is the node running and connected to that broker?")
        } else {
            format!("cannot reach the MQTT broker at {broker} within the timeout")
        }
    }

    /// Moves the exchange on by one event; `Some(code)` when it is over.
    async fn on_event(&mut self, event: Event) -> Result<Option<u8>, SendError> {
        match event {
            Event::Incoming(Incoming::ConnAck(_)) if !self.session.sent => {
                let subscriptions = self
                    .filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                self.client
                    .subscribe_many(subscriptions)
                    .await
                    .map_err(|_| crate::mqtt::MqttError::Closed)?;
            }
            Event::Incoming(Incoming::SubAck(_)) if !self.session.sent => {
                let payload = self.command.to_string();
                self.client
                    .publish(&self.command_topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .map_err(|_| crate::mqtt::MqttError::Closed)?;
            }
            Event::Incoming(Incoming::PubAck(_)) if !self.session.sent => {
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
                if message["request_id"] != self.session.request_id {
                    return Ok(None);
                }
                let done = self
                    .session
                    .on_message(&mut self.renderer, &publish.topic, &message);
                if let Some(code) = done {
                    let _ = self.client.disconnect().await;
                    return Ok(Some(code));
                }
            }
            _ => {}
        }
        Ok(None)
    }
}

/// `send` from the command line: settings, flags, then [`send`]; the exit
/// code is the answer's.
pub(super) fn run(args: &super::SendArgs) -> ExitCode {
    let overrides = Overrides {
        config: args.config.clone(),
        mqtt_host: args.mqtt_host.clone(),
        mqtt_port: args.mqtt_port,
        ..Overrides::default()
    };
    let settings = match Settings::load(&overrides, &Environment::from_process()) {
        Ok(settings) => settings,
        Err(error) => return super::output::fail(&error.into()),
    };
    let timeout = match args.timeout {
        Some(t) if !(t > 0.0 && t.is_finite()) => {
            let error = anyhow::anyhow!("--timeout must be a positive number of seconds, got {t}");
            return super::output::fail(&error);
        }
        t => t.map(std::time::Duration::from_secs_f64),
    };
    let request = SendRequest {
        command: args.command.clone(),
        params: args.params.clone(),
        request_id: args.request_id.clone(),
        node: args.node.clone(),
        wait: args.wait,
        follow_logs: args.follow_logs,
        json: args.json,
        timeout,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return super::output::fail(&error.into()),
    };
    match runtime.block_on(send(&settings, request)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            let code = error.exit_code();
            super::output::fatal(&error.into());
            ExitCode::from(code)
        }
    }
}

/// Where a `send` stands.
struct Session<'a> {
    request_id: &'a str,
    wait: Wait,
    first_deadline: Instant,
    overall_deadline: Option<Instant>,
    answered: bool,
    sent: bool,
}

impl Session<'_> {
    /// Before the first answer the timeout (default 10 s) applies; after a
    /// `started`, a long training run is waited for unless --timeout was given.
    fn deadline(&self) -> Instant {
        match (self.answered, self.overall_deadline) {
            (false, _) => self.first_deadline,
            (true, Some(deadline)) => deadline,
            (true, None) => Instant::now() + Duration::from_secs(365 * 86_400),
        }
    }

    /// Shows one message; `Some(code)` when the wait is over.
    fn on_message(&mut self, renderer: &mut Renderer, topic: &str, message: &Value) -> Option<u8> {
        debug_assert_eq!(message["request_id"], self.request_id);
        if topic.ends_with("/logs") {
            renderer.log(message);
            return None;
        }
        self.answered = true;
        let event = message["event"].as_str().unwrap_or("");
        renderer.response(message);
        let terminal = matches!(event, "completed" | "failed" | "cancelled");
        if terminal {
            return Some(terminal_exit_code(message));
        }
        if event == "progress" {
            return None;
        }
        let error = message["status"] == "error";
        // A queued workload's `started` (and its end) come later.
        let wait_more = self.wait == Wait::Done && matches!(event, "started" | "queued");
        match (error, wait_more) {
            (true, _) => Some(EXIT_ERROR),
            (false, true) => None,
            (false, false) => Some(EXIT_OK),
        }
    }
}

/// 0 for `completed`, the workload's own code for `failed` (128 + the
/// signal's number when it was killed, as shells do), 1 otherwise.
fn terminal_exit_code(message: &Value) -> u8 {
    let output = &message["output"];
    match message["event"].as_str() {
        Some("completed") => EXIT_OK,
        Some("failed") => match (output["exit_code"].as_i64(), output["signal"].as_str()) {
            (Some(code), _) => u8::try_from(code).unwrap_or(EXIT_ERROR),
            (None, Some(signal)) => signal
                .parse::<nix::sys::signal::Signal>()
                .map(|s| 128u8.saturating_add(s as u8))
                .unwrap_or(EXIT_ERROR),
            _ => EXIT_ERROR,
        },
        _ => EXIT_ERROR,
    }
}

fn client_options(settings: &Settings, node: &str) -> Result<MqttOptions, SendError> {
    let id = format!("cyberwave-send-{}", uuid::Uuid::new_v4().simple());
    let mut options = MqttOptions::new(id, &settings.mqtt_host.value, settings.mqtt_port.value);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true);
    let username = settings
        .mqtt_username
        .as_ref()
        .map(|u| u.value.clone())
        .unwrap_or_else(|| node.to_owned());
    let password = settings
        .mqtt_password
        .as_ref()
        .or(settings.api_token.as_ref())
        .map(|p| p.value.expose().to_owned())
        .unwrap_or_default();
    options.set_credentials(username, password);
    options.set_max_packet_size(32 * 1024 * 1024, 32 * 1024 * 1024);
    if settings.mqtt_use_tls.value {
        crate::install_crypto_provider();
        let ca = settings.mqtt_tls_ca_certs.as_ref().map(|c| c.value.clone());
        options.set_transport(Transport::tls_with_config(crate::mqtt::tls_config(
            ca.as_ref(),
        )?));
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_errors_name_the_position() {
        let err = parse_params("{\"epochs\": 3,\n \"lr\": }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("column"), "{err}");
        assert_eq!(err.matches("line").count(), 1, "the position once: {err}");
        assert!(parse_params("[1]")
            .unwrap_err()
            .to_string()
            .contains("JSON object"));
        assert_eq!(parse_params("{\"a\": 1}").unwrap()["a"], 1);
        assert!(parse_params("@/nonexistent.json")
            .unwrap_err()
            .to_string()
            .contains("/nonexistent.json"));
    }

    #[test]
    fn exit_codes_follow_the_workload() {
        assert_eq!(terminal_exit_code(&json!({"event": "completed"})), 0);
        assert_eq!(
            terminal_exit_code(&json!({"event": "failed", "output": {"exit_code": 3}})),
            3
        );
        assert_eq!(
            terminal_exit_code(
                &json!({"event": "failed", "output": {"exit_code": null, "signal": "SIGKILL"}})
            ),
            137
        );
        assert_eq!(
            terminal_exit_code(&json!({"event": "cancelled", "output": {}})),
            1
        );
    }
}
