//! `cyberwave-cloud-node` turns a computer into a compute node of the
//! Cyberwave platform: it registers with the backend over REST, connects out
//! to an MQTT broker (no open ports) and answers the commands the backend
//! publishes. The wire contract is `docs/protocol.md`, the architecture and
//! its reasons `docs/design.md`; the README says how to run it.
//!
//! # Layout
//!
//! Layers point one way, from the top down; no module imports one above it
//! and there is no import cycle (`docs/design.md`, "Layers"):
//!
//! - `cli`: clap definitions, dispatch, and one file per command (`start`,
//!   `send`, `terminal`, `run-model`, `status`/`logs`, `doctor`, `man`), and
//!   `cli::address`, which finds the node and broker for the clients;
//!   `main.rs` only calls it.
//!   `logging` sets up `tracing` for it and for the model server.
//! - `node`: start-up, the event loop that owns the node's state, one
//!   exhaustive match over the commands (`node/commands.rs`), the heartbeat
//!   policy, registration, the graceful stop. It only publishes what the
//!   owners below return.
//! - The owners of work, each handling its own events:
//!   - `workload`: what a workload means (templates, its files and record,
//!     live output, the terminal event, retention);
//!   - `deploy`: resident models, one model server each (its socket, infer
//!     routing, listings); the server mode itself;
//!   - `terminal`: PTY sessions over MQTT.
//! - `supervised`: the one supervised-process core both owners use: the
//!   shim handoff, launch, process identity, exit watching, containment
//!   (cgroup v2 or process tree), the one stop (grace, then SIGKILL),
//!   adoption after a restart, the exit status.
//! - `gpus`, beside it: the node's GPUs (NVML, restricted or declared by the
//!   `gpus` setting) and the pool that says which workload or deployment
//!   holds which.
//! - Below them: `config` (every setting with its origin), `identity`,
//!   `backend` (REST), `mqtt` (the link, its queue and acks, topics, the
//!   outbox, the one-shot probe `doctor` connects with), `protocol`
//!   (commands in, answers and events out), `runners` (ONNX, GGUF,
//!   TorchScript), `telemetry`, `standalone`, `install`,
//!   `lock`, `shutdown`, `backoff`, `secret`, `systemd` (sd_notify readiness,
//!   the journal as stderr), and `fsutil` (atomic writes, bounded reads,
//!   JSON state files, file names from ids).
//!
//! The shim is a binary of its own (`src/shim/main.rs`), which compiles
//! `supervised/handoff.rs`, `supervised/procfs.rs` and `fsutil/atomic.rs`
//! and nothing else of the library.
//!
//! # Embedding
//!
//! The public API is what this page re-exports. A program that embeds the
//! node ships `cyberwave-cloud-node-shim` beside its executable and calls
//! [`run_model_server_if_asked`] first thing in `main`.
//!
//! ```no_run
//! use cyberwave_cloud_node::{Environment, Overrides, Settings, Shutdown};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = Settings::load(&Overrides::default(), &Environment::from_process())?;
//! let shutdown = Shutdown::new();
//! shutdown.listen_for_signals()?;
//! cyberwave_cloud_node::run(settings, shutdown).await?;
//! # Ok(()) }
//! ```

mod backend;
mod backoff;
mod cli;
mod config;
mod deploy;
mod fsutil;
mod gpus;
mod identity;
mod install;
mod lock;
mod logging;
mod mqtt;
mod node;
mod protocol;
mod runners;
mod secret;
mod shutdown;
mod standalone;
mod supervised;
mod systemd;
mod telemetry;
mod terminal;
mod workload;

pub use cli::main as run_cli;
pub use config::{ConfigError, Environment, Overrides, Settings};
pub use node::{run, NodeError};
pub use shutdown::Shutdown;
/// The metrics sampler, for `benches/telemetry.rs`; not an embedding API.
#[doc(hidden)]
pub use telemetry::{NodeFigures, Sampler};

/// Models are served by the node's own executable in a hidden mode (the
/// runners are in it). A program that embeds the node must call this first
/// thing in `main` and return the exit code it gives, if any; it must also
/// ship the shim (`cyberwave-cloud-node-shim`) beside its executable.
pub fn run_model_server_if_asked() -> Option<std::process::ExitCode> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mode = args.get(1)?;
    if mode == deploy::server::MODE {
        return Some(deploy::server::main(&args[2..]));
    }
    None
}

/// Picks ring as rustls' crypto provider, once, before any TLS is used.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
