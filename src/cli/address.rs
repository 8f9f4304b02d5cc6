//! Which node a client command (`send`, `terminal`) talks to, and through
//! which broker: [`resolve_target`].
//!
//! The order: a broker host or port given by a flag, the environment, a
//! `.env` or `cyberwave.yml` wins; else a standalone node running from this
//! config dir is found by the address it recorded at start
//! (`standalone_address.json`); else a standalone identity in the config dir
//! means the embedded broker on 127.0.0.1; else the settings as `start`
//! reads them. `--node` only picks the node's topic: it never changes the
//! broker host (before, `--node gpu9 --mqtt-port 18931` quietly switched to
//! mqtt.cyberwave.com).

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{MqttOptions, Transport};

use crate::config::{Origin, Settings, Sourced};
use crate::identity;
use crate::standalone::{self, NodeAddress};

/// Where the client goes: the node (uuid or slug) and the settings with the
/// broker to reach it through.
#[derive(Debug, Clone)]
pub struct Target {
    pub node: String,
    pub settings: Settings,
    /// The standalone node record found in the config dir, live or stale:
    /// for the hint when the broker cannot be reached.
    pub recorded: Option<NodeAddress>,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no --node given and no node found in {dir}: no running standalone node recorded its address there ({record}) and there is no node identity; start a node first, or pass --node <uuid|slug> with --mqtt-host/--mqtt-port")]
    NoNode { dir: PathBuf, record: String },
}

/// True when the user said where the broker is: a flag, the environment,
/// `.env` or `cyberwave.yml` (credentials.json and the defaults are the
/// platform's, not a choice for this command).
fn chosen<T>(setting: &Sourced<T>) -> bool {
    match &setting.origin {
        Origin::Flag(_) | Origin::Env(_) | Origin::DotEnv { .. } | Origin::Yaml { .. } => true,
        Origin::Credentials { .. } | Origin::Identity { .. } | Origin::Default => false,
        Origin::Derived(_) => false,
    }
}

/// The node to talk to and the broker to reach it through (see the module
/// doc for the order). `node` is `--node`.
pub fn resolve_target(settings: &Settings, node: Option<&str>) -> Result<Target, TargetError> {
    let dir = &settings.config_dir.value;
    let recorded = standalone::recorded_address(dir);
    let live = recorded.clone().filter(NodeAddress::is_live);
    let local = identity::load(&identity::identity_path(dir)).ok().flatten();
    let node = match (node, &live, &local) {
        (Some(node), _, _) => node.to_owned(),
        (None, Some(live), _) => live.uuid.clone(),
        (None, None, Some(local)) => local.uuid.clone(),
        (None, None, None) => {
            return Err(TargetError::NoNode {
                dir: dir.clone(),
                record: describe_record(recorded.as_ref()),
            })
        }
    };
    let mut settings = settings.clone();
    let standalone_here = live.is_some() || local.as_ref().is_some_and(|l| l.standalone);
    if standalone_here && !chosen(&settings.mqtt_host) {
        let (host, why) = match &live {
            Some(live) => (live.host.clone(), "recorded by the running standalone node"),
            None => ("127.0.0.1".to_owned(), "the local standalone node"),
        };
        settings.mqtt_host = Sourced::new(host, Origin::Derived(why));
        settings.mqtt_use_tls = Sourced::new(false, Origin::Derived(why));
    }
    if let (Some(live), false) = (&live, chosen(&settings.mqtt_port)) {
        settings.mqtt_port = Sourced::new(
            live.port,
            Origin::Derived("recorded by the running standalone node"),
        );
    }
    Ok(Target {
        node,
        settings,
        recorded,
    })
}

/// How a client command connects: a client id of its own (`<prefix>-<random>`,
/// stable across its reconnects), the node's credentials, TLS as the
/// settings say. `persistent` asks the broker to keep the session (and the
/// QoS 1 messages for it) while the client is away.
pub fn client_options(
    settings: &Settings,
    node: &str,
    prefix: &str,
    persistent: bool,
    max_packet: usize,
) -> Result<MqttOptions, crate::mqtt::MqttError> {
    let id = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    let mut options = MqttOptions::new(id, &settings.mqtt_host.value, settings.mqtt_port.value);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(!persistent)
        .set_max_packet_size(max_packet, max_packet);
    let (username, password) = settings.mqtt_credentials(node);
    options.set_credentials(username, password.expose().to_owned());
    if settings.mqtt_use_tls.value {
        crate::install_crypto_provider();
        let ca = settings.mqtt_tls_ca_certs.as_ref().map(|c| c.value.clone());
        options.set_transport(Transport::tls_with_config(crate::mqtt::tls_config(
            ca.as_ref(),
        )?));
    }
    Ok(options)
}

/// What the config dir says about a standalone node, for hints.
pub fn describe_record(recorded: Option<&NodeAddress>) -> String {
    match recorded {
        None => format!("no {}", standalone::ADDRESS_FILE),
        Some(r) if r.is_live() => format!(
            "{} names node {} on {}:{} (pid {})",
            standalone::ADDRESS_FILE,
            r.slug,
            r.host,
            r.port,
            r.pid
        ),
        Some(r) => format!(
            "{} is stale: its node (pid {}, port {}) is gone",
            standalone::ADDRESS_FILE,
            r.pid,
            r.port
        ),
    }
}

/// How to find the right broker, for a client that could not reach one:
/// indented lines to follow the error.
pub fn broker_hint(target: &Target) -> String {
    let settings = &target.settings;
    format!(
        "  host {} ({}), port {} ({})\n  \
         in {}: {}\n  \
         is the node running? A standalone node prints `embedded MQTT broker listening on \
         127.0.0.1:<port>` when it starts:\n  \
         pass that port with --mqtt-port (--mqtt-host for another machine), or run this with \
         the node's CYBERWAVE_CONFIG_DIR",
        settings.mqtt_host.value,
        settings.mqtt_host.origin,
        settings.mqtt_port.value,
        settings.mqtt_port.origin,
        settings.config_dir.value.display(),
        describe_record(target.recorded.as_ref()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Environment, Overrides};
    use crate::identity::Identity;

    /// Settings for a HOME of its own, with `vars` and flags.
    fn settings(home: &std::path::Path, vars: &[(&str, &str)], overrides: Overrides) -> Settings {
        let env = Environment {
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cwd: home.to_path_buf(),
            home: Some(home.to_path_buf()),
        };
        Settings::load(&overrides, &env).unwrap()
    }

    fn running_node(home: &std::path::Path) -> standalone::AddressRecord {
        let dir = home.join(".cyberwave");
        std::fs::create_dir_all(&dir).unwrap();
        let address = NodeAddress {
            host: "127.0.0.1".into(),
            port: 18931,
            uuid: "u-lab".into(),
            slug: "lab".into(),
            pid: std::process::id(),
        };
        standalone::record_address(&dir, &address)
    }

    #[test]
    fn a_running_standalone_node_is_found_and_node_keeps_its_host() {
        let home = tempfile::tempdir().unwrap();
        let _running = running_node(home.path());
        let found =
            resolve_target(&settings(home.path(), &[], Overrides::default()), None).unwrap();
        assert_eq!(found.node, "u-lab");
        assert_eq!(found.settings.mqtt_host.value, "127.0.0.1");
        assert_eq!(found.settings.mqtt_port.value, 18931);
        assert!(!found.settings.mqtt_use_tls.value);

        let flags = Overrides {
            mqtt_port: Some(18999),
            ..Overrides::default()
        };
        let other = resolve_target(&settings(home.path(), &[], flags), Some("gpu9")).unwrap();
        assert_eq!(other.node, "gpu9");
        assert_eq!(
            other.settings.mqtt_host.value, "127.0.0.1",
            "--node keeps the host"
        );
        assert_eq!(other.settings.mqtt_port.value, 18999, "the flag wins");

        let vars = [("CYBERWAVE_MQTT_HOST", "broker.example")];
        let chosen =
            resolve_target(&settings(home.path(), &vars, Overrides::default()), None).unwrap();
        assert_eq!(chosen.settings.mqtt_host.value, "broker.example");
    }

    #[test]
    fn a_stale_record_is_ignored_and_named() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(".cyberwave");
        std::fs::create_dir_all(&dir).unwrap();
        let stale = NodeAddress {
            host: "127.0.0.1".into(),
            port: 18931,
            uuid: "u-gone".into(),
            slug: "gone".into(),
            pid: i32::MAX as u32,
        };
        crate::fsutil::write_json(&standalone::address_path(&dir), &stale).unwrap();
        let err = resolve_target(&settings(home.path(), &[], Overrides::default()), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is stale") && err.contains("--node"), "{err}");

        let identity = Identity {
            uuid: "u-local".into(),
            slug: "local".into(),
            workspace_slug: None,
            registered_at: String::new(),
            standalone: true,
        };
        identity::save(&identity::identity_path(&dir), &identity).unwrap();
        let found =
            resolve_target(&settings(home.path(), &[], Overrides::default()), None).unwrap();
        assert_eq!(found.node, "u-local");
        assert_eq!(found.settings.mqtt_host.value, "127.0.0.1");
        assert_eq!(
            found.settings.mqtt_port.value,
            crate::config::DEFAULT_MQTT_PORT
        );
        assert!(broker_hint(&found).contains("is stale"));
    }
}
