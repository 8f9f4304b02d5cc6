//! The checks that talk to something: the backend (token and reachability)
//! and the MQTT broker.

use std::net::TcpListener;
use std::time::Duration;

use super::Check;
use crate::backend::{Backend, BackendError};
use crate::config::{Secret, Settings};
use crate::lock::{ConfigDirLock, LockError};
use crate::mqtt::probe::{probe, ProbeError, ProbeTarget};
use crate::standalone::StandaloneError;

/// How long the broker may take to answer a CONNECT; a refused connection
/// is known at once.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// The api token, backend and broker checks.
pub(super) fn checks(settings: &Settings) -> Vec<Check> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let detail = format!("cannot start the async runtime: {error}");
            let fix = "check the process limits (ulimit -n)";
            return ["api token", "backend", "broker"]
                .into_iter()
                .map(|name| Check::fail(name, detail.clone(), fix))
                .collect();
        }
    };
    let mut checks = if settings.standalone {
        vec![
            Check::skip("api token", "standalone: no token is used"),
            Check::skip("backend", "standalone: no Cyberwave backend is used"),
        ]
    } else {
        Vec::from(runtime.block_on(backend(settings)))
    };
    checks.push(runtime.block_on(broker(settings)));
    checks
}

/// One call the node makes first, `validate_token`: its answer says both
/// whether the backend is reachable and whether it takes the token.
async fn backend(settings: &Settings) -> [Check; 2] {
    let url = &settings.api_url.value;
    let token = settings.api_token.as_ref();
    let no_token = || {
        let error = settings
            .require_token()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        Check::fail("api token", "no API token found", error)
    };
    let client = Backend::new(
        url,
        token
            .map(|t| t.value.clone())
            .unwrap_or_else(|| Secret::new("")),
        token.map(|t| t.origin.to_string()).unwrap_or_default(),
        settings.workspace_slug.as_ref().map(|w| w.value.clone()),
    );
    let answer = match client {
        Ok(client) => client.validate_token().await,
        Err(error) => Err(error),
    };
    let reachable = || Check::ok("backend", format!("{url} answers"));
    let url_fix = format!(
        "check the network (and HTTPS_PROXY), or the API URL (from {})",
        settings.api_url.origin
    );
    match (answer, token) {
        (Ok(()), Some(token)) => [
            Check::ok(
                "api token",
                format!("accepted by {url} (from {})", token.origin),
            ),
            reachable(),
        ],
        (Ok(()), None) | (Err(BackendError::Rejected { .. }), None) => [no_token(), reachable()],
        (Err(error @ BackendError::Rejected { .. }), Some(_)) => [
            Check::fail("api token", format!("rejected by {url}"), error.to_string()),
            reachable(),
        ],
        (Err(error), token) => {
            let token_check = match token {
                Some(_) => Check::skip("api token", "not checked: the backend did not answer"),
                None => no_token(),
            };
            [
                token_check,
                Check::fail("backend", error.to_string(), url_fix),
            ]
        }
    }
}

/// A real connection with the node's TLS and credentials, or, for the
/// embedded broker, its port: free (the node is not running) or answering
/// MQTT for a running node.
async fn broker(settings: &Settings) -> Check {
    if settings.uses_embedded_broker() {
        return embedded_broker(settings).await;
    }
    // The uuid the node logs in with: a standalone node's local one, or
    // the registered one (none before the first registration).
    let uuid = if settings.standalone {
        let local = settings.identity.as_ref().filter(|i| i.standalone);
        local.map(|i| i.uuid.clone())
    } else {
        settings.instance_uuid.as_ref().map(|u| u.value.clone())
    };
    let credentials = match (&uuid, &settings.mqtt_username) {
        (None, None) => None,
        _ => Some(settings.mqtt_credentials(uuid.as_deref().unwrap_or_default())),
    };
    let target = ProbeTarget {
        host: settings.mqtt_host.value.clone(),
        port: settings.mqtt_port.value,
        use_tls: settings.mqtt_use_tls.value,
        ca_file: settings.mqtt_tls_ca_certs.as_ref().map(|c| c.value.clone()),
        credentials,
    };
    let tls = if target.use_tls { " over TLS" } else { "" };
    match probe(&target, BROKER_TIMEOUT).await {
        Ok(()) => Check::ok(
            "broker",
            format!("connected to {}{tls} and logged in", target.address()),
        ),
        Err(error @ ProbeError::Credentials { .. }) if target.credentials.is_none() => {
            Check::warn(
                "broker",
                format!("{error}; the node logs in as its instance uuid, which it gets at its first registration"),
                Some("start the node once (it registers), then run doctor again".into()),
            )
        }
        Err(error) => Check::fail("broker", error.to_string(), broker_fix(&error, settings)),
    }
}

fn broker_fix(error: &ProbeError, settings: &Settings) -> String {
    let host = &settings.mqtt_host.origin;
    let port = &settings.mqtt_port.origin;
    match error {
        ProbeError::Refused { .. } | ProbeError::Unreachable { .. } => format!(
            "check the broker's host (from {host}) and port (from {port}); a standalone node's broker is 127.0.0.1 at the port it was started with"
        ),
        ProbeError::Timeout { .. } => format!(
            "check that a firewall lets the port through, and the port (from {port}): 8883 is TLS, 1883 is not"
        ),
        ProbeError::Credentials { .. } => "check CYBERWAVE_MQTT_USERNAME / CYBERWAVE_MQTT_PASSWORD (defaults: the instance uuid and the API token)".into(),
        ProbeError::Rejected { .. } => "check the broker's log for why it refuses this client".into(),
        ProbeError::Tls { .. } | ProbeError::Setup(_) => format!(
            "check mqtt_use_tls (from {}) and the CA file (CYBERWAVE_MQTT_TLS_CA_CERTS)",
            settings.mqtt_use_tls.origin
        ),
        ProbeError::NotMqtt { .. } => format!(
            "this port (from {port}) is not an MQTT broker's: check the port"
        ),
    }
}

async fn embedded_broker(settings: &Settings) -> Check {
    let port = settings.mqtt_port.value;
    let running = node_running(settings);
    if TcpListener::bind(("127.0.0.1", port)).is_ok() {
        return match running {
            Some(pid) => Check::fail(
                "broker",
                format!("a node runs with this config dir (pid {pid}), but nothing listens on 127.0.0.1:{port}"),
                "pass the --mqtt-port that node was started with",
            ),
            None => Check::ok(
                "broker",
                format!("127.0.0.1:{port} is free for the embedded broker (the node is not running)"),
            ),
        };
    }
    let target = ProbeTarget {
        host: "127.0.0.1".into(),
        port,
        use_tls: false,
        ca_file: None,
        credentials: None,
    };
    match (probe(&target, BROKER_TIMEOUT).await, running) {
        (Ok(()), Some(pid)) => Check::ok(
            "broker",
            format!("the node (pid {pid}) runs; its broker answers at 127.0.0.1:{port}"),
        ),
        (answer, _) => {
            let taken = crate::standalone::ensure_port_free(port)
                .err()
                .unwrap_or(StandaloneError::BrokerDidNotStart { port });
            let detail = match answer {
                Ok(()) => {
                    format!("another MQTT broker answers at 127.0.0.1:{port}, not this node's")
                }
                Err(error) => {
                    format!("127.0.0.1:{port} is taken by a program that is not this node: {error}")
                }
            };
            Check::fail("broker", detail, taken.to_string())
        }
    }
}

/// The pid of a node holding the config dir's lock, if one does.
fn node_running(settings: &Settings) -> Option<String> {
    if !settings.config_dir.value.is_dir() {
        return None;
    }
    match ConfigDirLock::acquire(&settings.config_dir.value) {
        Err(LockError::Held { pid, .. }) => Some(pid),
        Ok(_) | Err(LockError::Io { .. }) => None,
    }
}
