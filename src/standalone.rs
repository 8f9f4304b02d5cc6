//! `start --standalone`: a node with no Cyberwave account. It embeds an MQTT
//! broker (rumqttd) on 127.0.0.1, makes up its own identity, and skips every
//! REST call; everything else (topics, payloads, workloads) is the connected
//! node's, so what works here works against the real platform.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::identity::{self, Identity, IdentityError};
use crate::mqtt::topics::parse_topic_segment;

/// Largest message the embedded broker accepts.
const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("port {port} on 127.0.0.1 is taken (another MQTT broker or node?): pick a free one, e.g. `--mqtt-port {suggestion}`")]
    PortTaken { port: u16, suggestion: u16 },
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Listen { port: u16, source: std::io::Error },
    #[error("the embedded MQTT broker did not start listening on 127.0.0.1:{port}")]
    BrokerDidNotStart { port: u16 },
    #[error("{path} holds the identity of an instance registered with the Cyberwave backend ({uuid}); a standalone node will not replace it. Run it with its own config dir, e.g. CYBERWAVE_CONFIG_DIR=~/.cyberwave-standalone")]
    RegisteredIdentity {
        path: std::path::PathBuf,
        uuid: String,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// Starts the embedded broker on 127.0.0.1:`port` and waits until it accepts
/// connections. The broker lives in threads of its own until the process ends.
pub fn start_broker(port: u16) -> Result<(), StandaloneError> {
    ensure_port_free(port)?;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let mut broker = rumqttd::Broker::new(broker_config(listen));
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!("the embedded MQTT broker stopped: {e}");
            }
        })
        .map_err(|source| StandaloneError::Listen { port, source })?;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&listen, Duration::from_millis(100)).is_ok() {
            tracing::info!("embedded MQTT broker listening on {listen}");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(StandaloneError::BrokerDidNotStart { port })
}

/// rumqttd logs a bind failure instead of returning it: check first.
pub fn ensure_port_free(port: u16) -> Result<(), StandaloneError> {
    match TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(StandaloneError::PortTaken {
            port,
            suggestion: free_port_near(port),
        }),
        Err(source) => Err(StandaloneError::Listen { port, source }),
    }
}

fn free_port_near(port: u16) -> u16 {
    (port.saturating_add(1)..=port.saturating_add(100))
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap_or(port.saturating_add(1))
}

fn broker_config(listen: SocketAddr) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: MAX_PAYLOAD,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "standalone".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 500,
            max_segment_size: MAX_PAYLOAD,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("standalone".to_owned(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

/// The saved standalone identity, or a new one (uuid v4, slug from the hint
/// or the host name), saved and marked standalone.
pub fn local_identity(
    config_dir: &Path,
    slug_hint: Option<&str>,
) -> Result<Identity, StandaloneError> {
    let path = identity::identity_path(config_dir);
    match identity::load(&path) {
        Ok(Some(saved)) if saved.standalone => {
            if slug_hint.is_none_or(|hint| hint == saved.slug) {
                return Ok(saved);
            }
        }
        Ok(Some(registered)) => {
            return Err(StandaloneError::RegisteredIdentity {
                path,
                uuid: registered.uuid,
            })
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("{e}; making a new standalone identity"),
    }
    let slug = slug_hint.map(str::to_owned).unwrap_or_else(host_slug);
    let identity = Identity {
        uuid: uuid::Uuid::new_v4().to_string(),
        slug,
        workspace_slug: None,
        registered_at: crate::protocol::now_rfc3339(),
        standalone: true,
    };
    identity::save(&path, &identity)?;
    Ok(identity)
}

/// The host name as a topic-safe slug.
pub fn host_slug() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let cleaned: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    parse_topic_segment(&cleaned).unwrap_or_else(|_| "standalone".to_owned())
}

/// The file a running standalone node writes in its config dir, so that
/// `send` and `terminal` find it without flags (docs/protocol.md, "Files
/// under the config dir").
pub const ADDRESS_FILE: &str = "standalone_address.json";

/// Where a running standalone node's broker is, and who it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeAddress {
    pub host: String,
    pub port: u16,
    pub uuid: String,
    pub slug: String,
    /// The node's process: the record is stale once it is gone.
    pub pid: u32,
}

impl NodeAddress {
    /// Whether the node that wrote this still runs (a node killed with
    /// SIGKILL leaves its record behind).
    pub fn is_live(&self) -> bool {
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
            Ok(()) | Err(nix::errno::Errno::EPERM) => true,
            Err(_) => false,
        }
    }
}

pub fn address_path(config_dir: &Path) -> std::path::PathBuf {
    config_dir.join(ADDRESS_FILE)
}

/// The recorded address, live or stale; `None` when there is none or it
/// cannot be read (a warning at debug level: it is only a hint).
pub fn recorded_address(config_dir: &Path) -> Option<NodeAddress> {
    let path = address_path(config_dir);
    match crate::fsutil::load_json::<NodeAddress>(&path) {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!("ignoring {}: {e}", path.display());
            None
        }
    }
}

/// Records `address` for as long as the returned guard lives; the file is
/// removed when it is dropped (a clean stop, or a fatal error).
pub fn record_address(config_dir: &Path, address: &NodeAddress) -> AddressRecord {
    let path = address_path(config_dir);
    match crate::fsutil::write_json(&path, address) {
        Ok(()) => AddressRecord(Some(path)),
        Err(e) => {
            tracing::warn!(
                "cannot record this node's MQTT address in {}: {e}; `send` will need --mqtt-port {}",
                path.display(),
                address.port
            );
            AddressRecord(None)
        }
    }
}

/// Removes the address record when dropped.
pub struct AddressRecord(Option<std::path::PathBuf>);

impl Drop for AddressRecord {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::debug!("cannot remove {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = local_identity(dir.path(), Some("lab")).unwrap();
        assert!(first.standalone);
        assert_eq!(first.slug, "lab");
        assert_eq!(local_identity(dir.path(), None).unwrap(), first);
        assert!(!host_slug().is_empty());
    }

    #[test]
    fn a_registered_identity_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = identity::identity_path(dir.path());
        std::fs::write(&path, r#"{"uuid":"u-1","slug":"real"}"#).unwrap();
        let err = local_identity(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("CYBERWAVE_CONFIG_DIR"), "{err}");
        assert!(std::fs::read_to_string(&path).unwrap().contains("u-1"));
    }

    #[test]
    fn the_address_is_recorded_while_the_guard_lives() {
        let dir = tempfile::tempdir().unwrap();
        let address = NodeAddress {
            host: "127.0.0.1".into(),
            port: 18931,
            uuid: "u-1".into(),
            slug: "lab".into(),
            pid: std::process::id(),
        };
        let guard = record_address(dir.path(), &address);
        assert_eq!(recorded_address(dir.path()), Some(address.clone()));
        assert!(address.is_live());
        drop(guard);
        assert_eq!(recorded_address(dir.path()), None);
        let gone = NodeAddress {
            pid: i32::MAX as u32,
            ..address
        };
        assert!(!gone.is_live());
    }

    #[test]
    fn a_taken_port_is_refused_with_a_suggestion() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = ensure_port_free(port).unwrap_err().to_string();
        assert!(err.contains("--mqtt-port"), "{err}");
    }
}
