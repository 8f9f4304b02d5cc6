//! `cyberwave-cloud-node terminal`: an interactive client for the node's
//! remote terminal (docs/protocol.md, "Remote terminal"), used like `ssh`.
//!
//! The local terminal goes into raw mode, so every key (Ctrl-C, arrows,
//! tab) travels to the remote shell as bytes on `.../terminal/{id}/in`;
//! what comes back on `.../out` goes to stdout as it is. The window size
//! goes with `terminal_open` and again on every SIGWINCH. `~.` at the start
//! of a line ends the session (as in ssh), and so does the remote shell's
//! exit, whose status becomes the client's. The local terminal is restored
//! on every way out ([`tty`]).
//!
//! Without a terminal on stdin the bytes are piped as they come, with a
//! Ctrl-D after the end of the input, so `printf 'ls\nexit 3\n' | ...
//! terminal` runs in the remote shell; escapes are off then, as in ssh.

mod escape;
mod tty;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, QoS};
use serde_json::{json, Value};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cli::address::{broker_hint, client_options, resolve_target, TargetError};
use crate::config::{ConfigError, Environment, Settings};
use crate::mqtt::Topics;
use escape::Escapes;

/// How long the node has to answer `terminal_open`.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing session waits for the node's `closed`.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// The exit code after `~.` or a lost session, as ssh's.
const EXIT_DISCONNECTED: u8 = 255;

pub(super) const TERMINAL_HELP: &str = "\
ESCAPES (at the start of a line, when stdin is a terminal)
  ~.  end the session      ~?  list the escapes      ~~  send a ~

EXIT CODES
  N    the remote shell's exit status (128+signal when it was killed)
  1    the node refused the session (e.g. terminal disabled), or bad arguments
  2    no answer (or no broker) within 10 s
  255  ended with ~. or by a signal, or the link to the broker was lost

Without a terminal on stdin the input is piped to the shell as it comes,
then a Ctrl-D ends it: printf 'uname -a\\nexit\\n' | cyberwave-cloud-node terminal

EXAMPLES
  cyberwave-cloud-node terminal
  cyberwave-cloud-node terminal --node gpu1
  cyberwave-cloud-node terminal --mqtt-port 18931";

/// `terminal`'s flags: which node, through which broker.
#[derive(Debug, clap::Args)]
pub(super) struct TerminalArgs {
    /// The node's uuid or slug [default: the node whose identity is in the config dir]
    #[arg(long, value_name = "UUID|SLUG")]
    node: Option<String>,
    #[command(flatten)]
    broker: super::BrokerArgs,
}

/// Why a terminal session could not run.
#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    NoNode(#[from] TargetError),
    #[error(transparent)]
    Mqtt(#[from] crate::mqtt::MqttError),
    #[error("cannot reach the MQTT broker at {broker}: {reason}\n{hint}")]
    Unreachable {
        broker: String,
        reason: String,
        /// Where host and port came from and how to find the right ones,
        /// as `send` says it ([`crate::cli::address::broker_hint`]).
        hint: String,
    },
    #[error("node {node} refused the terminal: {error}")]
    Refused { node: String, error: String },
    #[error("no answer from node {node} within {}s: is it running and connected to the broker at {broker}?", OPEN_TIMEOUT.as_secs())]
    NoAnswer { node: String, broker: String },
    #[error("cannot put the terminal into raw mode: {0}")]
    RawMode(nix::Error),
    #[error("cannot write the terminal's output: {0}")]
    Stdout(std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } | ClientError::NoAnswer { .. } => 2,
            ClientError::Config(_)
            | ClientError::NoNode(_)
            | ClientError::Mqtt(_)
            | ClientError::Refused { .. }
            | ClientError::RawMode(_)
            | ClientError::Stdout(_)
            | ClientError::Io(_) => 1,
        }
    }
}

impl ClientError {
    /// The next step, where there is an obvious one.
    fn hint(&self) -> Option<&'static str> {
        match self {
            ClientError::Refused { error, .. } if error == crate::terminal::DISABLED => Some(
                "the node's operator enables it with `terminal: {enabled: true}` in the node's \
                 cyberwave.yml (or CYBERWAVE_TERMINAL_ENABLED=true), then restarts the node",
            ),
            _ => None,
        }
    }
}

/// `terminal` from the command line; the exit code is the remote shell's.
pub(super) fn run(args: &TerminalArgs) -> ExitCode {
    match open_and_run(args) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            let code = error.exit_code();
            let hint = error.hint();
            let error = anyhow::Error::from(error);
            match hint {
                Some(hint) => super::output::fatal(&super::output::with_hint(error, hint)),
                None => super::output::fatal(&error),
            }
            ExitCode::from(code)
        }
    }
}

fn open_and_run(args: &TerminalArgs) -> Result<u8, ClientError> {
    let settings = Settings::load(&args.broker.overrides(), &Environment::from_process())?;
    let target = resolve_target(&settings, args.node.as_deref())?;
    let hint = broker_hint(&target);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let session = Session::connect(&target.settings, target.node, hint)?;
        session.run().await
    })
}

/// The signals that end a session; Ctrl-C in raw mode is a key, not one.
struct Quit {
    term: Signal,
    hup: Signal,
    int: Signal,
}

impl Quit {
    fn listen() -> std::io::Result<Quit> {
        Ok(Quit {
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The name of the signal that came.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Where the session stands.
enum Phase {
    /// `terminal_open` is sent (or about to be) and not answered yet.
    Opening { deadline: Instant },
    /// The shell runs; typed bytes go to `input`.
    Open { input: String },
    /// The session is being ended from here; `code` once the node confirms
    /// (or after [`CLOSE_WAIT`]).
    Closing { code: u8, deadline: Instant },
}

struct Session {
    client: AsyncClient,
    /// The MQTT event loop runs in a task of its own, so a publish that
    /// waits for room never stalls it.
    events: mpsc::Receiver<Result<Event, rumqttc::ConnectionError>>,
    topics: Topics,
    node: String,
    broker: String,
    /// How to find the right broker, for a first connection that fails.
    hint: String,
    session_id: String,
    request_id: String,
    phase: Phase,
    /// Connected now, and ever: before the first connection a failure is
    /// final; later the link comes back by itself.
    connected: bool,
    ever_connected: bool,
    open_sent: bool,
    interactive: bool,
    /// Raw mode while the session is open; it ends with the session, so
    /// before any error is printed.
    raw: Option<tty::RawMode>,
    escapes: Escapes,
    typed: Option<mpsc::Receiver<Vec<u8>>>,
}

impl Session {
    fn connect(settings: &Settings, node: String, hint: String) -> Result<Session, ClientError> {
        let (client, mut eventloop) = AsyncClient::new(
            client_options(settings, &node, "cyberwave-terminal", false, 1024 * 1024)?,
            64,
        );
        let (events_tx, events) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let failed = event.is_err();
                if events_tx.send(event).await.is_err() {
                    return;
                }
                if failed {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
        let interactive = std::io::stdin().is_terminal();
        Ok(Session {
            client,
            events,
            topics: Topics::new(&settings.topic_prefix.value),
            broker: format!("{}:{}", settings.mqtt_host.value, settings.mqtt_port.value),
            hint,
            node,
            session_id: uuid::Uuid::new_v4().to_string(),
            request_id: uuid::Uuid::new_v4().to_string(),
            phase: Phase::Opening {
                deadline: Instant::now() + OPEN_TIMEOUT,
            },
            connected: false,
            ever_connected: false,
            open_sent: false,
            interactive,
            raw: None,
            escapes: Escapes::new(interactive),
            typed: None,
        })
    }

    /// Runs the session to its end; the exit code.
    async fn run(mut self) -> Result<u8, ClientError> {
        let mut quit = Quit::listen()?;
        let mut winch = signal(SignalKind::window_change())?;
        loop {
            let deadline = match self.phase {
                Phase::Opening { deadline } | Phase::Closing { deadline, .. } => Some(deadline),
                Phase::Open { .. } => None,
            };
            let step = tokio::select! {
                event = self.events.recv() => match event {
                    Some(Ok(event)) => self.on_event(event).await?,
                    Some(Err(error)) => self.on_link_error(error)?,
                    None => Some(EXIT_DISCONNECTED),
                },
                typed = recv_typed(&mut self.typed) => self.on_typed(typed).await?,
                _ = winch.recv() => {
                    self.resize().await?;
                    None
                }
                name = quit.recv() => {
                    self.note(&format!("{name}: closing the session on {}", self.node));
                    self.close(EXIT_DISCONNECTED).await?
                }
                _ = sleep_until(deadline) => match self.phase {
                    Phase::Closing { code, .. } => Some(code),
                    Phase::Opening { .. } | Phase::Open { .. } => {
                        return Err(ClientError::NoAnswer { node: self.node.clone(), broker: self.broker.clone() });
                    }
                },
            };
            if let Some(code) = step {
                let _ = self.client.disconnect().await;
                return Ok(code);
            }
        }
    }

    async fn on_event(&mut self, event: Event) -> Result<Option<u8>, ClientError> {
        match event {
            Event::Incoming(Incoming::ConnAck(_)) => {
                if self.ever_connected {
                    self.note(&format!("back on the broker at {}", self.broker));
                }
                self.connected = true;
                self.ever_connected = true;
                // A clean session each time: subscribe again after every
                // reconnect.
                let filters = [
                    self.topics.response("+"),
                    self.topics.terminal_out("+", &self.session_id),
                ];
                self.client
                    .subscribe_many(
                        filters.map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce)),
                    )
                    .await
                    .map_err(|_| crate::mqtt::MqttError::Closed)?;
            }
            Event::Incoming(Incoming::SubAck(_)) if !self.open_sent => {
                self.open_sent = true;
                let (cols, rows) = tty::window_size();
                let command = json!({
                    "command": "terminal_open",
                    "request_id": self.request_id,
                    "params": {"cols": cols, "rows": rows, "session_id": self.session_id},
                });
                self.publish(self.topics.command(&self.node), command.to_string())
                    .await?;
            }
            Event::Incoming(Incoming::Publish(publish)) => {
                if publish.topic.ends_with("/out") {
                    if let Phase::Closing { .. } = self.phase {
                        return Ok(None); // ended here: the shell's last words are not wanted
                    }
                    let mut stdout = std::io::stdout().lock();
                    stdout
                        .write_all(&publish.payload)
                        .and_then(|()| stdout.flush())
                        .map_err(ClientError::Stdout)?;
                    return Ok(None);
                }
                if let Ok(message) = serde_json::from_slice::<Value>(&publish.payload) {
                    return self.on_response(&message);
                }
            }
            _ => {}
        }
        Ok(None)
    }

    /// The answers to this session's `terminal_open`: opened, refused, or
    /// (later) `closed` with the shell's exit status.
    fn on_response(&mut self, message: &Value) -> Result<Option<u8>, ClientError> {
        if message["request_id"] != self.request_id.as_str() {
            return Ok(None);
        }
        if message["event"] == "closed" {
            return Ok(Some(match self.phase {
                Phase::Closing { code, .. } => code,
                Phase::Opening { .. } | Phase::Open { .. } => exit_status(&message["output"]),
            }));
        }
        if message["status"] == "error" {
            return Err(ClientError::Refused {
                node: self.node.clone(),
                error: message["error"]
                    .as_str()
                    .unwrap_or("(no reason given)")
                    .into(),
            });
        }
        if let Phase::Opening { .. } = self.phase {
            let uuid = message["instance_uuid"].as_str().unwrap_or(&self.node);
            self.phase = Phase::Open {
                input: self.topics.terminal_in(uuid, &self.session_id),
            };
            if self.interactive {
                self.raw = Some(tty::RawMode::enter().map_err(ClientError::RawMode)?);
            }
            self.typed = Some(read_stdin());
        }
        Ok(None)
    }

    /// Before the first connection a failure is final (a wrong port is
    /// known at once); later rumqttc reconnects, and the session goes on.
    fn on_link_error(
        &mut self,
        error: rumqttc::ConnectionError,
    ) -> Result<Option<u8>, ClientError> {
        if !self.ever_connected {
            return Err(ClientError::Unreachable {
                broker: self.broker.clone(),
                reason: error.to_string(),
                hint: self.hint.clone(),
            });
        }
        if self.connected {
            self.connected = false;
            self.note(&format!(
                "lost the broker at {} ({error}); reconnecting",
                self.broker
            ));
        }
        Ok(None)
    }

    async fn on_typed(&mut self, typed: Option<Vec<u8>>) -> Result<Option<u8>, ClientError> {
        let Phase::Open { input } = &self.phase else {
            return Ok(None);
        };
        let input = input.clone();
        let Some(bytes) = typed else {
            // The end of piped input: Ctrl-D, as if typed at the prompt.
            self.typed = None;
            self.publish(input, vec![0x04]).await?;
            return Ok(None);
        };
        let typed = self.escapes.feed(&bytes);
        if !typed.bytes.is_empty() {
            self.publish(input, typed.bytes).await?;
        }
        if typed.help {
            self.note(escape::HELP.trim_end());
        }
        if typed.disconnect {
            self.note(&format!("session on {} closed (~.)", self.node));
            return self.close(EXIT_DISCONNECTED).await;
        }
        Ok(None)
    }

    async fn resize(&mut self) -> Result<(), ClientError> {
        if let Phase::Open { .. } = self.phase {
            let (cols, rows) = tty::window_size();
            let command = json!({
                "command": "terminal_resize",
                "params": {"session_id": self.session_id, "cols": cols, "rows": rows},
            });
            self.publish(self.topics.command(&self.node), command.to_string())
                .await?;
        }
        Ok(())
    }

    /// Ends the session from this side: `terminal_close`, then `code` once
    /// the node says `closed`, or after [`CLOSE_WAIT`].
    async fn close(&mut self, code: u8) -> Result<Option<u8>, ClientError> {
        match self.phase {
            Phase::Open { .. } => {
                let command = json!({
                    "command": "terminal_close",
                    "params": {"session_id": self.session_id},
                });
                self.publish(self.topics.command(&self.node), command.to_string())
                    .await?;
                self.typed = None;
                self.phase = Phase::Closing {
                    code,
                    deadline: Instant::now() + CLOSE_WAIT,
                };
                Ok(None)
            }
            Phase::Opening { .. } | Phase::Closing { .. } => Ok(Some(code)),
        }
    }

    async fn publish(&self, topic: String, payload: impl Into<Vec<u8>>) -> Result<(), ClientError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .map_err(|_| crate::mqtt::MqttError::Closed.into())
    }

    /// A line from the client itself, readable in raw mode too.
    fn note(&self, text: &str) {
        let text = text.replace('\n', "\r\n");
        eprint!("\r\n[{text}]\r\n");
    }
}

/// The next read of typed bytes; `None` at the end of the input; never
/// ready while nothing is read.
async fn recv_typed(typed: &mut Option<mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match typed {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Reads stdin in a thread of its own (a blocking read); the bounded
/// channel stops it while the broker does not take the bytes.
fn read_stdin() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// The shell's exit code, or 128 + the signal's number when a signal ended
/// it (the node names the signal as the C library describes it, e.g.
/// `Hangup`), as shells report it.
fn exit_status(output: &Value) -> u8 {
    if let Some(code) = output["exit_code"].as_i64() {
        return u8::try_from(code).unwrap_or(1);
    }
    output["signal"]
        .as_str()
        .and_then(signal_number)
        .map(|n| 128u8.saturating_add(n))
        .unwrap_or(1)
}

fn signal_number(text: &str) -> Option<u8> {
    use nix::sys::signal::Signal;
    if let Ok(signal) = text.parse::<Signal>() {
        return u8::try_from(signal as i32).ok();
    }
    Signal::iterator().find_map(|signal| {
        // SAFETY: strsignal returns a string that stays valid until the
        // next strsignal call on this thread; it is copied out at once.
        let description = unsafe { std::ffi::CStr::from_ptr(libc::strsignal(signal as i32)) };
        (description.to_string_lossy() == text)
            .then(|| u8::try_from(signal as i32).ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_follows_the_shell() {
        assert_eq!(exit_status(&json!({"exit_code": 3, "signal": null})), 3);
        assert_eq!(
            exit_status(&json!({"exit_code": null, "signal": "Hangup"})),
            129
        );
        assert_eq!(
            exit_status(&json!({"exit_code": null, "signal": "SIGKILL"})),
            137
        );
        assert_eq!(exit_status(&json!({"exit_code": null, "signal": null})), 1);
    }
}
