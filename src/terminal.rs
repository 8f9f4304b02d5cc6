//! Remote terminal sessions over the node's outbound MQTT connection: a real
//! PTY per session (portable-pty), input from `.../terminal/{id}/in`, output
//! batched onto `.../terminal/{id}/out`. Off unless cyberwave.yml says
//! `terminal: {enabled: true}`. Sessions are interactive: unlike workloads
//! they end with the node, and after `idle_timeout_seconds` without traffic.
//!
//! Output pushes back instead of piling up: the PTY reader hands its reads
//! over a small bounded channel (blocking when it is full), and the batches
//! go to the node over a bounded channel the node only reads while the MQTT
//! link takes terminal bytes. A shell that prints faster than the broker
//! takes it blocks in `write` like on a slow serial line, and the node's
//! memory stays flat whatever it prints.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use portable_pty::{native_pty_system, ChildKiller, CommandBuilder, MasterPty, PtySize};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::mqtt::topics::{parse_topic_segment, TopicSegmentError};
use crate::protocol::{quote, quote_json};

/// PTY output is published at most this often per session…
pub const BATCH_INTERVAL: Duration = Duration::from_millis(10);
/// …and at most this much per message.
pub const MAX_MESSAGE: usize = 32 * 1024;
/// PTY reads (at most [`MAX_MESSAGE`] each) waiting to be batched, per
/// session; past that the reader thread blocks.
const READS_IN_FLIGHT: usize = 4;
pub const DISABLED: &str = "terminal access is disabled on this node";

#[derive(Debug, Clone, PartialEq)]
pub struct TerminalConfig {
    pub enabled: bool,
    pub shell: String,
    pub max_sessions: usize,
    pub idle_timeout: Duration,
}

impl TerminalConfig {
    /// The login shell of the user the node runs as.
    pub fn default_shell() -> String {
        std::env::var("SHELL")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| {
                let user = nix::unistd::User::from_uid(nix::unistd::getuid()).ok()??;
                Some(user.shell.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "/bin/sh".into())
    }
}

/// What sessions report to the node.
#[derive(Debug)]
pub enum TerminalEvent {
    Output {
        session_id: String,
        bytes: Vec<u8>,
    },
    Closed {
        session_id: String,
        request_id: String,
        exit_code: Option<i32>,
        signal: Option<String>,
    },
}

struct Session {
    writer: Box<dyn Write + Send>,
    master: Box<dyn MasterPty + Send>,
    killer: Box<dyn ChildKiller + Send + Sync>,
    last_activity: Instant,
}

pub struct Terminals {
    config: TerminalConfig,
    sessions: HashMap<String, Session>,
    events: mpsc::Sender<TerminalEvent>,
}

/// Why a terminal command was refused or failed; the text is the
/// response's `error`.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    #[error("{DISABLED}")]
    Disabled,
    #[error("params.{0} is required")]
    Missing(&'static str),
    #[error("params.{name} must be a whole number from 1 to 1000, got {value}")]
    BadDimension { name: &'static str, value: String },
    #[error("params.session_id {} {source}", quote(.id))]
    BadSessionId {
        id: String,
        source: TopicSegmentError,
    },
    #[error("params.session_id must be a string, got {0}")]
    SessionIdNotString(String),
    #[error("terminal session {0} is already open")]
    AlreadyOpen(String),
    #[error("{0} terminal sessions are open, the most this node allows (terminal.max_sessions); close one first")]
    TooMany(usize),
    #[error("no open terminal session {0}")]
    NoSession(String),
    // portable-pty reports its failures as `anyhow::Error`.
    #[error("cannot open a PTY: {0}")]
    OpenPty(anyhow::Error),
    #[error("cannot start {shell}: {reason}")]
    Spawn {
        shell: String,
        reason: anyhow::Error,
    },
    #[error("cannot read the PTY: {0}")]
    Reader(anyhow::Error),
    #[error("cannot write the PTY: {0}")]
    Writer(anyhow::Error),
    #[error("cannot resize session {id}: {reason}")]
    Resize { id: String, reason: anyhow::Error },
}

fn dimension(params: &Map<String, Value>, name: &'static str) -> Result<u16, TerminalError> {
    let value = params.get(name).ok_or(TerminalError::Missing(name))?;
    match value.as_u64() {
        Some(n) if (1..=1000).contains(&n) => Ok(n as u16),
        _ => Err(TerminalError::BadDimension {
            name,
            value: quote_json(value),
        }),
    }
}

/// A session id names a topic: 1 to 128 plain characters, checked here so
/// that no message echoes more than a short quote of a refused one.
fn session_id(params: &Map<String, Value>) -> Result<String, TerminalError> {
    match params.get("session_id") {
        Some(Value::String(id)) => {
            parse_topic_segment(id).map_err(|source| TerminalError::BadSessionId {
                id: id.clone(),
                source,
            })
        }
        Some(other) => Err(TerminalError::SessionIdNotString(quote_json(other))),
        None => Err(TerminalError::Missing("session_id")),
    }
}

impl Terminals {
    pub fn new(config: TerminalConfig, events: mpsc::Sender<TerminalEvent>) -> Terminals {
        if config.enabled {
            tracing::info!(
                "remote terminal enabled: shell {}, at most {} session(s), each ended after {}s without traffic",
                config.shell,
                config.max_sessions,
                config.idle_timeout.as_secs()
            );
        }
        Terminals {
            config,
            sessions: HashMap::new(),
            events,
        }
    }

    pub fn open(
        &mut self,
        request_id: &str,
        params: &Map<String, Value>,
    ) -> Result<Value, TerminalError> {
        if !self.config.enabled {
            return Err(TerminalError::Disabled);
        }
        let size = PtySize {
            cols: dimension(params, "cols")?,
            rows: dimension(params, "rows")?,
            pixel_width: 0,
            pixel_height: 0,
        };
        let id = match params.get("session_id") {
            None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
            Some(_) => session_id(params)?,
        };
        if self.sessions.contains_key(&id) {
            return Err(TerminalError::AlreadyOpen(id));
        }
        if self.sessions.len() >= self.config.max_sessions {
            return Err(TerminalError::TooMany(self.sessions.len()));
        }
        let pair = native_pty_system()
            .openpty(size)
            .map_err(TerminalError::OpenPty)?;
        let mut command = CommandBuilder::new(&self.config.shell);
        command.env("TERM", "xterm-256color");
        if let Some(home) = dirs::home_dir() {
            command.cwd(home);
        }
        let mut child =
            pair.slave
                .spawn_command(command)
                .map_err(|reason| TerminalError::Spawn {
                    shell: self.config.shell.clone(),
                    reason,
                })?;
        drop(pair.slave);
        let pid = child.process_id();
        let reader = pair
            .master
            .try_clone_reader()
            .map_err(TerminalError::Reader)?;
        let writer = pair.master.take_writer().map_err(TerminalError::Writer)?;
        let killer = child.clone_killer();
        let (exit_tx, exit_rx) = oneshot::channel();
        std::thread::spawn(move || {
            let status = child.wait().ok();
            let _ = exit_tx.send(status);
        });
        spawn_output(
            id.clone(),
            request_id.to_owned(),
            reader,
            exit_rx,
            self.events.clone(),
        );
        self.sessions.insert(
            id.clone(),
            Session {
                writer,
                master: pair.master,
                killer,
                last_activity: Instant::now(),
            },
        );
        tracing::info!(session_id = %id, pid, "terminal session opened");
        Ok(json!({"session_id": id, "pid": pid}))
    }

    /// Bytes from the backend for session `id`; unknown sessions are dropped.
    pub fn input(&mut self, id: &str, bytes: &[u8]) {
        match self.sessions.get_mut(id) {
            Some(session) => {
                session.last_activity = Instant::now();
                if let Err(e) = session
                    .writer
                    .write_all(bytes)
                    .and_then(|()| session.writer.flush())
                {
                    tracing::debug!(session_id = id, "terminal input not written: {e}");
                }
            }
            None => tracing::warn!(
                session_id = id,
                "dropped {} bytes of input for an unknown terminal session",
                bytes.len()
            ),
        }
    }

    pub fn touch(&mut self, id: &str) {
        if let Some(session) = self.sessions.get_mut(id) {
            session.last_activity = Instant::now();
        }
    }

    pub fn resize(&mut self, params: &Map<String, Value>) -> Result<Value, TerminalError> {
        if !self.config.enabled {
            return Err(TerminalError::Disabled);
        }
        let id = session_id(params)?;
        let size = PtySize {
            cols: dimension(params, "cols")?,
            rows: dimension(params, "rows")?,
            pixel_width: 0,
            pixel_height: 0,
        };
        let session = self
            .sessions
            .get_mut(&id)
            .ok_or_else(|| TerminalError::NoSession(id.clone()))?;
        session
            .master
            .resize(size)
            .map_err(|reason| TerminalError::Resize {
                id: id.clone(),
                reason,
            })?;
        session.last_activity = Instant::now();
        Ok(json!({"session_id": id, "cols": size.cols, "rows": size.rows}))
    }

    pub fn close(&mut self, params: &Map<String, Value>) -> Result<Value, TerminalError> {
        if !self.config.enabled {
            return Err(TerminalError::Disabled);
        }
        let id = session_id(params)?;
        let session = self
            .sessions
            .get_mut(&id)
            .ok_or_else(|| TerminalError::NoSession(id.clone()))?;
        let _ = session.killer.kill();
        Ok(json!({"session_id": id, "message": "terminal session closing"}))
    }

    /// The shell is gone: forget the session.
    pub fn on_closed(&mut self, id: &str) {
        if self.sessions.remove(id).is_some() {
            tracing::info!(session_id = id, "terminal session closed");
        }
    }

    /// Ends sessions without traffic for longer than the idle timeout.
    pub fn reap_idle(&mut self) {
        let timeout = self.config.idle_timeout;
        for (id, session) in self
            .sessions
            .iter_mut()
            .filter(|(_, s)| s.last_activity.elapsed() > timeout)
        {
            tracing::info!(session_id = %id, "terminal session idle for {}s: ending it", timeout.as_secs());
            let _ = session.killer.kill();
        }
    }

    /// The node is stopping: sessions are interactive and end with it.
    pub fn close_all(&mut self) {
        for session in self.sessions.values_mut() {
            let _ = session.killer.kill();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

/// Reads the PTY in a thread and batches what it reads: at most one message
/// per [`BATCH_INTERVAL`], at most [`MAX_MESSAGE`] bytes. After the last
/// output, reports the shell's exit. Both hand-overs are bounded and wait
/// when full, so a flood stops at the PTY (see the module doc).
fn spawn_output(
    id: String,
    request_id: String,
    mut reader: Box<dyn Read + Send>,
    exit: oneshot::Receiver<Option<portable_pty::ExitStatus>>,
    events: mpsc::Sender<TerminalEvent>,
) {
    let (chunks_tx, mut chunks) = mpsc::channel::<Vec<u8>>(READS_IN_FLIGHT);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; MAX_MESSAGE];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || chunks_tx.blocking_send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        // The first output after a quiet spell goes out at once (an echo must
        // feel instant); a busy stream goes out at most every BATCH_INTERVAL.
        let mut last_sent = tokio::time::Instant::now() - BATCH_INTERVAL;
        while let Some(first) = chunks.recv().await {
            let mut batch = first;
            let deadline = last_sent + BATCH_INTERVAL;
            while batch.len() < MAX_MESSAGE {
                match chunks.try_recv() {
                    Ok(more) => {
                        batch.extend_from_slice(&more);
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::select! {
                    more = chunks.recv() => match more { Some(more) => batch.extend_from_slice(&more), None => break },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            for part in batch.chunks(MAX_MESSAGE) {
                let output = TerminalEvent::Output {
                    session_id: id.clone(),
                    bytes: part.to_vec(),
                };
                if events.send(output).await.is_err() {
                    return; // the node is gone
                }
            }
            last_sent = tokio::time::Instant::now();
        }
        let status = exit.await.ok().flatten();
        let (exit_code, signal) = match &status {
            Some(s) if s.signal().is_some() => (None, s.signal().map(str::to_owned)),
            Some(s) => (Some(s.exit_code() as i32), None),
            None => (None, None),
        };
        let closed = TerminalEvent::Closed {
            session_id: id,
            request_id,
            exit_code,
            signal,
        };
        let _ = events.send(closed).await;
    });
}
