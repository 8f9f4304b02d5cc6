//! `cyberwave-cloud-node` turns a computer into a compute node of the
//! Cyberwave platform: it registers with the backend over REST, connects out
//! to an MQTT broker (no open ports) and answers the commands the backend
//! publishes. The wire contract is PROTOCOL.md; the README says how to run it.
//!
//! # Layout
//!
//! A newcomer can read the modules in this order:
//!
//! - [`cli`]: clap definitions, dispatch and each command's body (`start`,
//!   `send`, `run-model`, `status`/`logs`, `man`); `main.rs` only calls it.
//!   [`logging`] sets up `tracing` for it and for the model server.
//! - [`config`]: every setting, from flags, the environment, `.env` files,
//!   `cyberwave.yml` and `credentials.json`, each value with its origin.
//! - [`identity`]: the config dir's `instance_identity.json`.
//! - [`backend`]: the REST client (validate, create, register, heartbeat,
//!   terminated, failed) with errors the node's policy can match on.
//! - [`mqtt`]: the broker connection (TLS, last will, reconnect, resubscribe)
//!   and topic names.
//! - [`protocol`]: command parsing and the response and presence payloads.
//! - [`node`]: start-up, the event loop that owns the node's state, the
//!   heartbeat policy, command handling and the graceful stop.
//! - [`install`]: the install script run before registration.
//! - [`shutdown`]: the one token every loop watches, and signal handling.
//! - [`workload`]: detached, supervised workloads and their one terminal event.
//! - [`runners`]: built-in model runners (ONNX) and the tensor JSON.
//! - [`deploy`]: resident models, one model-server process each.
//! - [`telemetry`]: hardware detection and the periodic metrics sample.
//! - [`backoff`], [`fsutil`]: capped exponential backoff; atomic file writes.
//!
//! # Embedding
//!
//! ```no_run
//! use cyberwave_cloud_node::{config::{Environment, Overrides, Settings}, node, shutdown::Shutdown};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = Settings::load(&Overrides::default(), &Environment::from_process())?;
//! let shutdown = Shutdown::new();
//! shutdown.listen_for_signals()?;
//! node::run(settings, shutdown).await?;
//! # Ok(()) }
//! ```

pub mod backend;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod fsutil;
pub mod identity;
pub mod install;
pub mod lock;
pub mod logging;
pub mod mqtt;
pub mod node;

pub mod protocol;
pub mod runners;
mod secret;
pub mod shutdown;
pub mod standalone;
pub mod supervised;
pub mod telemetry;
pub mod terminal;
pub mod workload;

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
