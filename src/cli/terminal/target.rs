//! Which node and which broker `terminal` talks to, and how it connects.
//! The resolution is `send`'s, so the two always reach the same node.

use std::time::Duration;

use rumqttc::{MqttOptions, Transport};

use super::ClientError;
use crate::config::{Origin, Settings, Sourced};
use crate::identity;

/// The node to open a terminal on (`--node`, else the local identity's)
/// and the settings to reach it with: the same resolution as `send`'s, so
/// the two always talk to the same node. A local standalone node is on
/// this machine's embedded broker. (Kept in this one function so that it
/// can become a call of `send`'s own resolution, once that also finds a
/// standalone node's recorded address.)
pub(super) fn resolve(
    settings: &Settings,
    node: Option<&str>,
) -> Result<(String, Settings), ClientError> {
    let local = identity::load(&identity::identity_path(&settings.config_dir.value))
        .ok()
        .flatten();
    let node = match (node, &local) {
        (Some(node), _) => node.to_owned(),
        (None, Some(local)) => local.uuid.clone(),
        (None, None) => return Err(ClientError::NoNode(settings.config_dir.value.clone())),
    };
    let mut settings = settings.clone();
    let to_local_standalone = local
        .as_ref()
        .is_some_and(|l| l.standalone && (l.uuid == node || l.slug == node));
    if to_local_standalone && settings.mqtt_host.origin != Origin::Flag("--mqtt-host") {
        let origin = Origin::Derived("the local standalone node");
        settings.mqtt_host = Sourced::new("127.0.0.1".into(), origin.clone());
        settings.mqtt_use_tls = Sourced::new(false, origin);
    }
    Ok((node, settings))
}

pub(super) fn client_options(settings: &Settings, node: &str) -> Result<MqttOptions, ClientError> {
    let id = format!("cyberwave-terminal-{}", uuid::Uuid::new_v4().simple());
    let mut options = MqttOptions::new(id, &settings.mqtt_host.value, settings.mqtt_port.value);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(1024 * 1024, 1024 * 1024);
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
    if settings.mqtt_use_tls.value {
        crate::install_crypto_provider();
        let ca = settings.mqtt_tls_ca_certs.as_ref().map(|c| c.value.clone());
        options.set_transport(Transport::tls_with_config(crate::mqtt::tls_config(
            ca.as_ref(),
        )?));
    }
    Ok(options)
}
