//! `cyberwave-cloud-node __serve-model <spec.json>`: the model server.
//!
//! One process per deployment (docs/design.md "Built-in runners"): it loads the
//! model once, writes `ready` (or `failed`) to its state file, and answers
//! requests on its Unix socket until `shutdown` or SIGTERM. It runs under a
//! workload supervisor, so it outlives the node and its exit status is kept;
//! a runtime that crashes takes this process down, never the node.
//!
//! Up to `max_concurrency` requests run at once, each on a blocking thread;
//! up to `max_queue` more wait, and beyond that requests are refused as
//! overloaded at once rather than piling up.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, Semaphore};

use super::files::{DeploySpec, ServerState};
use super::stats::Stats;
use super::wire;
use crate::fsutil::{load_json, now_unix_ms, write_json};
use crate::runners::{self, Model, RunnerError, RuntimePaths};

/// The hidden subcommand's name.
pub const MODE: &str = "__serve-model";
/// Exit code when the model does not load (the state file says why).
pub const LOAD_FAILED: u8 = 3;
/// The deployment options the server itself reads; the rest go to the runner.
pub const SERVER_OPTIONS: &[&str] = &["max_concurrency", "max_queue"];

const DEFAULT_MAX_QUEUE: usize = 64;

struct Server {
    model: Arc<Model>,
    permits: Semaphore,
    waiting: AtomicUsize,
    max_queue: usize,
    stats: Mutex<Stats>,
    /// What `info` and the state file say about the model.
    loaded: Value,
    stop: Notify,
}

/// Entry point; `args` are the process arguments after the mode name.
pub fn main(args: &[OsString]) -> ExitCode {
    let [spec_path] = args else {
        eprintln!("usage: cyberwave-cloud-node {MODE} <spec.json> (internal)");
        return ExitCode::from(2);
    };
    crate::logging::init_server_logging();
    let spec = match load_json::<DeploySpec>(Path::new(spec_path)) {
        Ok(Some(spec)) => spec,
        Ok(None) => {
            return fail_early(&format!("the deployment spec {spec_path:?} does not exist"))
        }
        Err(problem) => return fail_early(&problem),
    };
    match load(&spec) {
        Ok((server, listener)) => {
            let ready = ServerState::Ready {
                model: server.loaded.clone(),
            };
            if let Err(e) = write_json(&spec.state_file, &ready) {
                // The node would wait for `ready` for ever: fail instead,
                // and say why in the log the `failed` event points to.
                tracing::error!(deployment_id = %spec.deployment_id, "cannot write the state file {}: {e}; the node cannot learn that the model is ready, so this server stops", spec.state_file.display());
                let _ = std::fs::remove_file(&spec.socket);
                return ExitCode::from(LOAD_FAILED);
            }
            tracing::info!(deployment_id = %spec.deployment_id, "model loaded; serving on {}", spec.socket.display());
            serve(server, listener);
            let _ = std::fs::remove_file(&spec.socket);
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(deployment_id = %spec.deployment_id, "{error}");
            // The state file is how the node learns why: its text is the
            // `failed` event's error.
            let error = error.to_string();
            if let Err(e) = write_json(&spec.state_file, &ServerState::Failed { error }) {
                tracing::error!(deployment_id = %spec.deployment_id, "cannot write the state file {}: {e}", spec.state_file.display());
            }
            ExitCode::from(LOAD_FAILED)
        }
    }
}

fn fail_early(problem: &dyn std::fmt::Display) -> ExitCode {
    tracing::error!("{problem}");
    ExitCode::from(LOAD_FAILED)
}

/// Why a model server could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The options or the model, as the runners judge them.
    #[error(transparent)]
    Runner(#[from] RunnerError),
    #[error("bad options: \"max_concurrency\" must be at least 1")]
    NoConcurrency,
    #[error("cannot listen on {}: {source}", socket.display())]
    Listen {
        socket: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Loads the model and binds the socket (before `ready` is written, so the
/// node can connect as soon as it reads it).
fn load(spec: &DeploySpec) -> Result<(Arc<Server>, std::os::unix::net::UnixListener), LoadError> {
    let max_concurrency = option(&spec.options, "max_concurrency", 1)?;
    let max_queue = option(&spec.options, "max_queue", DEFAULT_MAX_QUEUE)?;
    if max_concurrency == 0 {
        return Err(LoadError::NoConcurrency);
    }
    let runtimes = RuntimePaths {
        onnxruntime: spec.onnxruntime_path.clone(),
    };
    let model = runners::load(
        &spec.model,
        spec.format.as_deref(),
        &spec.options,
        SERVER_OPTIONS,
        &runtimes,
    )?;
    let _ = std::fs::remove_file(&spec.socket);
    let listener = std::os::unix::net::UnixListener::bind(&spec.socket).map_err(|source| {
        LoadError::Listen {
            socket: spec.socket.clone(),
            source,
        }
    })?;
    let _ = std::fs::set_permissions(&spec.socket, std::fs::Permissions::from_mode(0o600));
    let mut loaded = model.describe();
    loaded["deployment_id"] = json!(spec.deployment_id);
    loaded["pid"] = json!(std::process::id());
    loaded["loaded_at"] = json!(crate::protocol::rfc3339_from_unix_ms(now_unix_ms()));
    loaded["max_concurrency"] = json!(max_concurrency);
    loaded["max_queue"] = json!(max_queue);
    let server = Server {
        model: Arc::new(model),
        permits: Semaphore::new(max_concurrency),
        waiting: AtomicUsize::new(0),
        max_queue,
        stats: Mutex::new(Stats::new()),
        loaded,
        stop: Notify::new(),
    };
    Ok((Arc::new(server), listener))
}

fn option(options: &Map<String, Value>, key: &str, default: usize) -> Result<usize, LoadError> {
    Ok(runners::usize_option(options, key)?.unwrap_or(default))
}

fn serve(server: Arc<Server>, listener: std::os::unix::net::UnixListener) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let _ = listener.set_nonblocking(true);
        let listener = UnixListener::from_std(listener).expect("a tokio listener");
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("a SIGTERM handler");
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => { tokio::spawn(connection(server.clone(), stream)); }
                    Err(e) => tracing::warn!("accept failed: {e}"),
                },
                _ = terminate.recv() => { tracing::info!("SIGTERM: stopping"); break; }
                _ = server.stop.notified() => { tracing::info!("shutdown asked: stopping"); break; }
            }
        }
    });
    // Requests still running on blocking threads are abandoned with the
    // process: the node answers them with an error when the socket closes.
    runtime.shutdown_background();
}

async fn connection(server: Arc<Server>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(wire::READ_BUFFER, read);
    loop {
        let reply = match wire::read_line(&mut reader).await {
            Ok(None) => return,
            Ok(Some(request)) => handle(&server, request, &mut write).await,
            Err(problem) => {
                json!({"ok": false, "kind": "bad_request", "error": problem.to_string()})
            }
        };
        if write_line(&mut write, &reply).await.is_err() {
            return;
        }
    }
}

async fn write_line(write: &mut OwnedWriteHalf, value: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    write.write_all(&line).await
}

async fn handle(server: &Arc<Server>, request: Value, write: &mut OwnedWriteHalf) -> Value {
    match request.get("op").and_then(Value::as_str) {
        Some("infer") => {
            let request = match request.get("request") {
                Some(Value::Object(request)) => request.clone(),
                _ => Map::new(),
            };
            infer(server, request, write).await
        }
        Some("info") => {
            let mut info = server.loaded.clone();
            info["rss_bytes"] = json!(runners::resident_bytes());
            info["stats"] = server
                .stats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .to_json();
            json!({"ok": true, "info": info})
        }
        Some("shutdown") => {
            server.stop.notify_one();
            json!({"ok": true})
        }
        _ => {
            json!({"ok": false, "kind": "bad_request", "error": "unknown op; use infer, info or shutdown"})
        }
    }
}

/// Runs one request; its streamed events are written as they come.
async fn infer(
    server: &Arc<Server>,
    request: Map<String, Value>,
    write: &mut OwnedWriteHalf,
) -> Value {
    let received = Instant::now();
    let queued = server.waiting.fetch_add(1, Ordering::SeqCst);
    if server.permits.available_permits() == 0 && queued >= server.max_queue {
        server.waiting.fetch_sub(1, Ordering::SeqCst);
        server
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(0.0, false);
        return json!({
            "ok": false,
            "kind": "overloaded",
            "error": format!("deployment overloaded: {queued} requests already wait (max_queue {}); retry later", server.max_queue),
        });
    }
    let permit = server.permits.acquire().await;
    server.waiting.fetch_sub(1, Ordering::SeqCst);
    let model = server.model.clone();
    let (events, mut streamed) = tokio::sync::mpsc::unbounded_channel();
    let mut run = tokio::task::spawn_blocking(move || {
        model.runner.infer(&request, &mut |event| {
            let _ = events.send(event);
        })
    });
    let outcome = loop {
        tokio::select! {
            Some(event) = streamed.recv() => {
                // A client that hung up still lets the run finish (and count).
                let _ = write_line(write, &json!({"event": event})).await;
            }
            done = &mut run => break done,
        }
    };
    while let Ok(event) = streamed.try_recv() {
        let _ = write_line(write, &json!({"event": event})).await;
    }
    let outcome = outcome
        .unwrap_or_else(|e| Err(RunnerError::Inference(format!("the runner panicked: {e}"))));
    drop(permit);
    let latency_ms = crate::protocol::round::millis(received.elapsed().as_secs_f64() * 1000.0);
    server
        .stats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .record(latency_ms, outcome.is_ok());
    match outcome {
        Ok(mut output) => {
            output["latency_ms"] = json!(latency_ms);
            json!({"ok": true, "output": output})
        }
        Err(error) => {
            let kind = if error.is_bad_request() {
                "bad_request"
            } else {
                "inference"
            };
            json!({"ok": false, "kind": kind, "error": error.to_string()})
        }
    }
}
