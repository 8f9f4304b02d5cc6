//! The standalone start: embedded broker, local identity, no REST.

use super::running::RunningNode;
use super::NodeError;
use crate::config::{Origin, Settings};
use crate::install::InstallError;
use crate::shutdown::Shutdown;
use crate::standalone::{local_identity, record_address, start_broker, NodeAddress};

pub(super) async fn run(mut settings: Settings, shutdown: Shutdown) -> Result<(), NodeError> {
    // Only an explicit --mqtt-host means "use that broker" (see
    // `Settings::uses_embedded_broker`).
    if settings.uses_embedded_broker() {
        let port = settings.mqtt_port.value;
        tokio::task::spawn_blocking(move || start_broker(port))
            .await
            .expect("broker start-up does not panic")?;
        settings.point_at_embedded_broker();
    }
    match super::run_install_script(&settings, &shutdown).await {
        Err(InstallError::Interrupted) => return Ok(()),
        Err(error) => return Err(error.into()),
        Ok(()) => {}
    }
    let slug_hint = settings
        .instance_slug
        .as_ref()
        .filter(|s| !matches!(s.origin, Origin::Identity { .. }))
        .map(|s| s.value.clone());
    let identity = local_identity(&settings.config_dir.value, slug_hint.as_deref())?;
    tracing::info!(uuid = %identity.uuid, slug = %identity.slug, "standalone node: no Cyberwave backend is used");
    // For `send` and `terminal` without flags; removed when this returns.
    let _address = record_address(
        &settings.config_dir.value,
        &NodeAddress {
            host: settings.mqtt_host.value.clone(),
            port: settings.mqtt_port.value,
            uuid: identity.uuid.clone(),
            slug: identity.slug.clone(),
            pid: std::process::id(),
        },
    );
    RunningNode::start(settings, None, identity, shutdown)?
        .serve()
        .await
}
