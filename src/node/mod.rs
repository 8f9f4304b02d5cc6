//! The node: start-up, the event loop that owns all state, and the stop.
//!
//! Start-up is a straight line (docs/protocol.md): validate the token, register,
//! save the identity, run the install script, connect to the broker. Then
//! one task owns everything and reacts to messages: MQTT events, heartbeat
//! deadlines, results of background REST calls, and the shutdown token. Slow
//! work (every REST call) runs in spawned tasks that report back, so a hung
//! backend never delays a `status` answer.

mod commands;
mod deployments;
mod registration;
mod report;

use std::time::Duration;

use crate::backend::{Backend, BackendError, Registration};
use crate::config::{ConfigError, Settings};
use crate::fsutil;
use crate::identity::{self, Identity, IdentityError};
use crate::install::{self, InstallError};
use crate::lock::ConfigDirLock;
use crate::mqtt::{MqttConfig, MqttError, MqttEvent, MqttLink, Topics};
use crate::protocol::{self, Incoming, NodeRef, Response};
use crate::shutdown::Shutdown;

pub use registration::{register_with_retry, RegistrationError, RegistrationRequest};

/// Consecutive rejected heartbeats after which the node gives up.
pub const HEARTBEAT_AUTH_TRIES: u32 = 5;
/// Longest wait for the terminated/failed call during a stop.
const STOP_CALL_TIMEOUT: Duration = Duration::from_millis(1500);
/// Longest wait for the broker to take presence `offline` and the disconnect.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const MQTT_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Why the node could not run or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    TokenRejected(BackendError),
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error("registration failed: {0}")]
    Registration(#[from] RegistrationError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    #[error(
        "the backend rejected {HEARTBEAT_AUTH_TRIES} heartbeats in a row, so this node stops: {0}"
    )]
    HeartbeatRejected(BackendError),
    #[error(
        "cannot open the event outbox {path}: {source}; check that the config dir is writable"
    )]
    Outbox {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot find the node's own executable to supervise workloads: {0}")]
    OwnExecutable(std::io::Error),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error(transparent)]
    Gpus(#[from] crate::gpus::InventoryError),
    #[error(transparent)]
    Standalone(#[from] crate::standalone::StandaloneError),
    #[error("cannot create the config dir {path}: {source}; set CYBERWAVE_CONFIG_DIR to a writable directory")]
    ConfigDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Runs the node until `shutdown` trips or a fatal error; `Ok` is a clean stop.
pub async fn run(settings: Settings, shutdown: Shutdown) -> Result<(), NodeError> {
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let config_dir = &settings.config_dir.value;
    fsutil::create_private_dir(config_dir).map_err(|source| NodeError::ConfigDir {
        path: config_dir.clone(),
        source,
    })?;
    let _lock = ConfigDirLock::acquire(config_dir)?;
    if settings.standalone {
        return standalone::run(settings, shutdown).await;
    }
    let token = settings.require_token()?;
    let backend = Backend::new(
        &settings.api_url.value,
        token.value.clone(),
        token.origin.to_string(),
        settings.workspace_slug.as_ref().map(|w| w.value.clone()),
    )?;
    validate_token(&backend).await?;
    // Register before installing, so a failed install script can be
    // reported on the very first start too: the backend knows the instance
    // (and can tell the user why it never came online) only once it has a
    // uuid for it.
    let identity = match register(&backend, &settings, &shutdown).await {
        Ok(Some(identity)) => identity,
        Ok(None) => return Ok(()),
        Err(error) => return Err(fail_before_ready(&backend, &settings, error).await),
    };
    match run_install_script(&settings, &shutdown).await {
        Err(InstallError::Interrupted) => return Ok(()),
        Err(error) => {
            let error = NodeError::from(error);
            report_failed(&backend, &error.to_string(), &identity.uuid, &identity.slug).await;
            return Err(error);
        }
        Ok(()) => {}
    }
    match RunningNode::start(settings, Some(backend.clone()), identity.clone(), shutdown) {
        Ok(node) => node.serve().await,
        Err(error) => {
            report_failed(&backend, &error.to_string(), &identity.uuid, &identity.slug).await;
            Err(error)
        }
    }
}

/// The install script, if one is configured, in the working directory.
async fn run_install_script(settings: &Settings, shutdown: &Shutdown) -> Result<(), InstallError> {
    let Some(script) = &settings.install_script else {
        return Ok(());
    };
    install::run_install_script(
        &script.value,
        &settings.working_dir,
        &settings.dotenv_vars,
        shutdown,
    )
    .await
}

async fn validate_token(backend: &Backend) -> Result<(), NodeError> {
    match backend.validate_token().await {
        Ok(()) => {
            tracing::debug!("API token accepted by {}", backend.base_url());
            Ok(())
        }
        Err(error @ BackendError::Rejected { .. }) => Err(NodeError::TokenRejected(error)),
        Err(error) => {
            tracing::warn!("could not validate the API token ({error}); going on");
            Ok(())
        }
    }
}

/// Registers and saves the identity; `Ok(None)` when shutdown came first.
async fn register(
    backend: &Backend,
    settings: &Settings,
    shutdown: &Shutdown,
) -> Result<Option<Identity>, NodeError> {
    let hardware = serde_json::to_value(crate::telemetry::detect()).unwrap_or_default();
    let request = RegistrationRequest {
        known_uuid: settings.instance_uuid.as_ref().map(|u| u.value.as_str()),
        slug_hint: settings.instance_slug.as_ref().map(|s| s.value.as_str()),
        profile_slug: &settings.profile_slug.value,
        hardware: Some(&hardware),
    };
    let retry = settings.retry_unit.backend();
    let registration = match register_with_retry(backend, request, retry, shutdown).await {
        Ok(registration) => registration,
        Err(RegistrationError::Interrupted) => return Ok(None),
        Err(RegistrationError::Backend(e @ BackendError::Rejected { .. })) => {
            return Err(NodeError::TokenRejected(e))
        }
        Err(error) => return Err(error.into()),
    };
    let identity = save_identity(settings, &registration)?;
    tracing::info!(uuid = %identity.uuid, slug = %identity.slug, "registered with {}", backend.base_url());
    Ok(Some(identity))
}

fn save_identity(settings: &Settings, registration: &Registration) -> Result<Identity, NodeError> {
    let identity = Identity {
        uuid: registration.uuid.clone(),
        slug: registration.slug.clone(),
        workspace_slug: settings.workspace_slug.as_ref().map(|w| w.value.clone()),
        registered_at: protocol::now_rfc3339(),
        standalone: false,
    };
    identity::save(
        &identity::identity_path(&settings.config_dir.value),
        &identity,
    )?;
    Ok(identity)
}

/// Reports a failed registration to the backend when the node knows who it
/// is (a uuid from the identity file or the environment), then hands the
/// error back for the exit message.
async fn fail_before_ready(backend: &Backend, settings: &Settings, error: NodeError) -> NodeError {
    if matches!(error, NodeError::TokenRejected(_)) {
        return error;
    }
    if let Some(uuid) = &settings.instance_uuid {
        let slug = settings
            .instance_slug
            .as_ref()
            .map(|s| s.value.as_str())
            .unwrap_or(&uuid.value);
        report_failed(backend, &error.to_string(), &uuid.value, slug).await;
    }
    error
}

async fn report_failed(backend: &Backend, error: &str, uuid: &str, slug: &str) {
    match tokio::time::timeout(STOP_CALL_TIMEOUT, backend.failed(error, uuid, slug)).await {
        Ok(Ok(())) => tracing::info!("reported the failure to the backend"),
        Ok(Err(e)) => tracing::warn!("could not report the failure to the backend: {e}"),
        Err(_) => tracing::warn!("reporting the failure to the backend timed out"),
    }
}

mod bulk;
mod running;
mod standalone;
mod terminal;
mod workloads;
use running::RunningNode;
