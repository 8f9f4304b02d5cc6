//! Which node and which broker `terminal` talks to, and how it connects.
//! The resolution is `send`'s, so the two always reach the same node.

use rumqttc::MqttOptions;

use super::ClientError;
use crate::config::Settings;

/// The node to open a terminal on and the settings to reach it with:
/// `send`'s resolution ([`crate::cli::address`]), so the two always talk
/// to the same node, a running standalone node's recorded address included.
pub(super) fn resolve(
    settings: &Settings,
    node: Option<&str>,
) -> Result<(String, Settings), ClientError> {
    let target = crate::cli::address::resolve_target(settings, node)?;
    Ok((target.node, target.settings))
}

pub(super) fn client_options(settings: &Settings, node: &str) -> Result<MqttOptions, ClientError> {
    Ok(crate::cli::address::client_options(
        settings,
        node,
        "cyberwave-terminal",
        false,
        1024 * 1024,
    )?)
}
