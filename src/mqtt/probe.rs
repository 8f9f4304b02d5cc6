//! One real connection to a broker, for `doctor`: TCP, TLS (with the
//! node's own CA handling) and the CONNECT with the credentials, then a
//! clean disconnect. It uses a client id of its own, a clean session and no
//! last will, so probing the broker of a running node disturbs neither the
//! node's session nor its presence.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, Incoming, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};

use super::{tls_config, MqttError};
use crate::secret::Secret;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub host: String,
    pub port: u16,
    pub use_tls: bool,
    pub ca_file: Option<PathBuf>,
    /// `None` connects without credentials.
    pub credentials: Option<(String, Secret)>,
}

/// Why the probe did not get a CONNACK.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("nothing listens at {at}: the connection was refused")]
    Refused { at: String },
    #[error("cannot reach {at}: {reason}")]
    Unreachable { at: String, reason: String },
    #[error("the broker at {at} refused the credentials of user {user:?}")]
    Credentials { at: String, user: String },
    #[error("the broker at {at} refused the connection ({code})")]
    Rejected { at: String, code: String },
    #[error("TLS with {at} failed: {reason}")]
    Tls { at: String, reason: String },
    #[error("no MQTT answer from {at} within {}s", .timeout.as_secs_f32())]
    Timeout { at: String, timeout: Duration },
    #[error("{at} answered, but not as an MQTT broker does: {reason}")]
    NotMqtt { at: String, reason: String },
    #[error(transparent)]
    Setup(#[from] MqttError),
}

impl ProbeTarget {
    /// `host:port`, as the errors name it.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn options(&self) -> Result<MqttOptions, MqttError> {
        let id = format!("cloud-node-doctor-{}", uuid::Uuid::new_v4().simple());
        let mut options = MqttOptions::new(id, &self.host, self.port);
        options
            .set_clean_session(true)
            .set_keep_alive(Duration::from_secs(10));
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user, password.expose());
        }
        if self.use_tls {
            crate::install_crypto_provider();
            let tls: TlsConfiguration = tls_config(self.ca_file.as_ref())?;
            options.set_transport(Transport::tls_with_config(tls));
        }
        Ok(options)
    }
}

/// Connects to `target` and disconnects again; a refused TCP connection
/// fails at once, anything else within `timeout`.
pub async fn probe(target: &ProbeTarget, timeout: Duration) -> Result<(), ProbeError> {
    let at = target.address();
    let (client, mut eventloop) = AsyncClient::new(target.options()?, 10);
    let connack = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(error) => return Err(classify(error, target, timeout)),
            }
        }
    };
    match tokio::time::timeout(timeout, connack).await {
        Ok(Ok(())) => {
            let _ = client.try_disconnect();
            // Lets the DISCONNECT out; the broker would drop us anyway.
            let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
            Ok(())
        }
        Ok(Err(error)) => Err(error),
        Err(_) => Err(ProbeError::Timeout { at, timeout }),
    }
}

fn classify(error: ConnectionError, target: &ProbeTarget, timeout: Duration) -> ProbeError {
    let at = target.address();
    match error {
        ConnectionError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            ProbeError::Refused { at }
        }
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => ProbeError::Credentials {
            at,
            user: target
                .credentials
                .as_ref()
                .map(|(user, _)| user.clone())
                .unwrap_or_default(),
        },
        ConnectionError::ConnectionRefused(code) => ProbeError::Rejected {
            at,
            code: format!("{code:?}"),
        },
        ConnectionError::Tls(e) => ProbeError::Tls {
            at,
            reason: e.to_string(),
        },
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => {
            ProbeError::Timeout { at, timeout }
        }
        ConnectionError::MqttState(e) => ProbeError::NotMqtt {
            at,
            reason: e.to_string(),
        },
        ConnectionError::NotConnAck(packet) => ProbeError::NotMqtt {
            at,
            reason: format!("its first packet was {packet:?}, not CONNACK"),
        },
        other => ProbeError::Unreachable {
            at,
            reason: other.to_string(),
        },
    }
}
