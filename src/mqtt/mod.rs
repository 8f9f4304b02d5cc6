//! The node's one MQTT connection.
//!
//! [`MqttLink::start`] spawns a task that owns rumqttc's event loop and does
//! nothing but drive it: it forwards what arrives to the node over an
//! unbounded channel (so a slow handler can never stall pings or acks),
//! re-subscribes and re-announces presence on every ConnAck (a restarted
//! broker without persistence has forgotten both), and reconnects with capped
//! backoff. Incoming commands are acknowledged by the node only once handled
//! (manual acks), so a crash between delivery and handling makes the broker
//! deliver the command again.
//!
//! Nothing bigger than the broker's packet limit (`mqtt_max_packet_bytes`)
//! is handed to rumqttc: such a publish is refused here with
//! [`MqttError::TooLarge`], since a broker that drops the connection over
//! it would be sent it again after every reconnect. Callers cut payloads to
//! [`MqttLink::payload_budget`] first (`protocol::fit`).

mod ledger;
pub mod topics;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing,
    Publish, QoS, Request, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use topics::Topics;

use crate::backoff::Backoff;
use crate::config::Secret;
use crate::protocol::{NodeRef, Presence};

/// Largest packet read. Generous on purpose: a command the client refuses
/// to read kills the connection, and a persistent session would deliver it
/// again on every reconnect (see [`drive`] for how that loop is broken).
/// What the node sends is bounded by `mqtt_max_packet_bytes` instead.
pub const MAX_INCOMING_BYTES: usize = 32 * 1024 * 1024;

/// Bytes a QoS 1 PUBLISH needs besides its payload: the fixed header (at
/// most 5), the topic (2 + its length) and the packet id (2).
pub fn publish_overhead(topic: &str) -> usize {
    9 + topic.len()
}

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("cannot read the MQTT CA certificate file {path}: {source}; check CYBERWAVE_MQTT_TLS_CA_CERTS / mqtt_tls_ca_certs")]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the MQTT CA certificate file {path} holds no usable PEM certificate ({reason})")]
    CaContent { path: PathBuf, reason: String },
    #[error("no system CA certificates found for MQTT over TLS: install the ca-certificates package or set CYBERWAVE_MQTT_TLS_CA_CERTS")]
    NoSystemRoots,
    #[error("the MQTT connection is closed")]
    Closed,
    #[error("a {size}-byte message for {topic} is over the broker's {limit}-byte packet limit (mqtt_max_packet_bytes); it was not sent")]
    TooLarge {
        topic: String,
        size: usize,
        limit: usize,
    },
}

/// How to reach and introduce ourselves to the broker.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub use_tls: bool,
    pub ca_file: Option<PathBuf>,
    pub username: String,
    pub password: Secret,
    pub client_id: String,
    pub keep_alive: Duration,
    /// The broker's packet limit: nothing bigger is sent.
    pub max_packet_bytes: usize,
    /// Command topics, subscribed with QoS 1 on every connect.
    pub subscriptions: Vec<String>,
    pub presence_topic: String,
    /// Who we are, for the presence payloads.
    pub node: NodeRef,
    pub backoff: Backoff,
}

/// What the connection task reports to the node.
#[derive(Debug)]
pub enum MqttEvent {
    Connected {
        session_present: bool,
        /// Outbox ids whose publishes the new session dropped.
        dropped: Vec<u64>,
    },
    Subscribed,
    Message(Publish),
    ConnectionLost {
        error: String,
        retry_in: Duration,
    },
    /// The broker acknowledged the publish tracked under this outbox id.
    Delivered(u64),
}

/// Every publish goes through here, so the ledger sees them all, in the
/// order the request queue does.
struct Publisher {
    client: AsyncClient,
    order: tokio::sync::Mutex<()>,
    ledger: Arc<Mutex<ledger::Ledger>>,
}

impl Publisher {
    async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        token: ledger::Token,
    ) -> Result<(), MqttError> {
        let _turn = self.order.lock().await;
        lock(&self.ledger).queued(token);
        let sent = self
            .client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await;
        if sent.is_err() {
            lock(&self.ledger).unqueue_last();
            return Err(MqttError::Closed);
        }
        Ok(())
    }
}

fn lock(ledger: &Mutex<ledger::Ledger>) -> std::sync::MutexGuard<'_, ledger::Ledger> {
    ledger
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The handle the node publishes through.
pub struct MqttLink {
    client: AsyncClient,
    publisher: Arc<Publisher>,
    task: JoinHandle<()>,
    presence_topic: String,
    node: NodeRef,
    max_packet_bytes: usize,
}

impl MqttLink {
    /// Starts connecting in the background; progress arrives as [`MqttEvent`]s.
    pub fn start(
        config: MqttConfig,
    ) -> Result<(MqttLink, mpsc::UnboundedReceiver<MqttEvent>), MqttError> {
        crate::install_crypto_provider();
        let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
        options
            .set_keep_alive(config.keep_alive)
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_inflight(256)
            .set_max_packet_size(MAX_INCOMING_BYTES, config.max_packet_bytes)
            .set_credentials(&config.username, config.password.expose())
            .set_last_will(LastWill::new(
                &config.presence_topic,
                presence(&config.node, "offline"),
                QoS::AtLeastOnce,
                true,
            ));
        if config.use_tls {
            options.set_transport(Transport::tls_with_config(tls_config(
                config.ca_file.as_ref(),
            )?));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let mut network = eventloop.network_options();
        // Without TCP_NODELAY a reply that follows a PUBACK waits ~40 ms for
        // the broker's delayed ACK (DESIGN.md, "Latency").
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let publisher = Arc::new(Publisher {
            client: client.clone(),
            order: tokio::sync::Mutex::new(()),
            ledger: Arc::default(),
        });
        let link = MqttLink {
            client,
            publisher: publisher.clone(),
            presence_topic: config.presence_topic.clone(),
            node: config.node.clone(),
            max_packet_bytes: config.max_packet_bytes,
            task: tokio::spawn(drive(eventloop, publisher, config, events_tx)),
        };
        Ok((link, events_rx))
    }

    /// The most payload bytes a message on `topic` may have.
    pub fn payload_budget(&self, topic: &str) -> usize {
        self.max_packet_bytes
            .saturating_sub(publish_overhead(topic))
    }

    /// Refuses what the broker would not take (see the module docs).
    fn check_size(&self, topic: &str, payload: &[u8]) -> Result<(), MqttError> {
        let size = payload.len() + publish_overhead(topic);
        if size > self.max_packet_bytes {
            return Err(MqttError::TooLarge {
                topic: topic.to_owned(),
                size,
                limit: self.max_packet_bytes,
            });
        }
        Ok(())
    }

    /// Publishes with QoS 1. Waits only for room in the request queue.
    pub async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<(), MqttError> {
        self.check_size(topic, &payload)?;
        self.publisher.publish(topic, payload, retain, None).await
    }

    /// Publishes with QoS 1 and reports [`MqttEvent::Delivered`] with `id`
    /// once the broker has acknowledged it.
    pub async fn publish_tracked(
        &self,
        topic: &str,
        payload: Vec<u8>,
        id: u64,
    ) -> Result<(), MqttError> {
        self.check_size(topic, &payload)?;
        self.publisher
            .publish(topic, payload, false, Some(id))
            .await
    }

    /// Acknowledges a command once it has been handled.
    pub async fn ack(&self, publish: &Publish) {
        if self.client.ack(publish).await.is_err() {
            tracing::debug!("ack after the connection closed");
        }
    }

    /// Publishes presence `offline`, disconnects cleanly (so the broker does
    /// not fire the last will as well) and waits up to `timeout` for the
    /// connection task to finish.
    pub async fn close(self, timeout: Duration) {
        let offline = presence(&self.node, "offline");
        let _ = self.publish(&self.presence_topic, offline, true).await;
        let _ = self.client.disconnect().await;
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            tracing::warn!(
                "the broker did not take the disconnect within {timeout:?}; closing anyway"
            );
        }
    }
}

/// A presence payload stamped now. For the last will, "now" is when the
/// will is handed to the broker: the only time known then.
fn presence(node: &NodeRef, state: &'static str) -> Vec<u8> {
    Presence {
        state,
        uuid: &node.uuid,
        slug: &node.slug,
        version: env!("CARGO_PKG_VERSION"),
        ts: crate::protocol::now_rfc3339(),
    }
    .to_bytes()
}

pub(crate) fn tls_config(ca_file: Option<&PathBuf>) -> Result<TlsConfiguration, MqttError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| MqttError::CaFile {
                path: path.clone(),
                source,
            })?;
            let content_error = |reason: String| MqttError::CaContent {
                path: path.clone(),
                reason,
            };
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| content_error(e.to_string()))?;
                roots.add(cert).map_err(|e| content_error(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(content_error("no BEGIN CERTIFICATE block".into()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(MqttError::NoSystemRoots);
            }
        }
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

/// The connection task: drive the event loop until a clean disconnect.
async fn drive(
    mut eventloop: EventLoop,
    publisher: Arc<Publisher>,
    config: MqttConfig,
    events: mpsc::UnboundedSender<MqttEvent>,
) {
    let mut failures: u32 = 0;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                failures = 0;
                // A clean session was only asked to shed an unreadable
                // message; later reconnects resume a persistent one.
                eventloop.mqtt_options.set_clean_session(false);
                tracing::debug!(
                    session_present = ack.session_present,
                    "connected to the MQTT broker"
                );
                let dropped = lock(&publisher.ledger).on_connected(ack.session_present);
                on_connect(&publisher, &config);
                let _ = events.send(MqttEvent::Connected {
                    session_present: ack.session_present,
                    dropped,
                });
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    tracing::error!(
                        topics = ?config.subscriptions,
                        "the broker refused a command subscription: check the MQTT user's ACL"
                    );
                }
                let _ = events.send(MqttEvent::Subscribed);
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                let _ = events.send(MqttEvent::Message(publish));
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => lock(&publisher.ledger).on_sent(pkid),
            Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                if let Some(id) = lock(&publisher.ledger).on_acked(ack.pkid) {
                    let _ = events.send(MqttEvent::Delivered(id));
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(ConnectionError::RequestsDone) => return,
            Err(error) => {
                if read_too_much(&error) {
                    tracing::error!(
                        "a message over the {MAX_INCOMING_BYTES} bytes this node reads arrived on a command topic; it cannot be answered. The broker would deliver it again on every reconnect, so the next connect starts a clean session, dropping it (and any other command queued for this node while it was offline)"
                    );
                    eventloop.mqtt_options.set_clean_session(true);
                }
                let unassigned = eventloop
                    .pending
                    .iter()
                    .filter(|r| matches!(r, Request::Publish(p) if p.pkid == 0))
                    .count();
                lock(&publisher.ledger).on_lost(unassigned);
                failures += 1;
                let retry_in = config.backoff.delay(failures);
                let error = describe(&error, &config);
                let _ = events.send(MqttEvent::ConnectionLost { error, retry_in });
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

/// Whether the connection died reading a packet over [`MAX_INCOMING_BYTES`].
fn read_too_much(error: &ConnectionError) -> bool {
    matches!(
        error,
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)
        ))
    )
}

/// Subscriptions and presence go through the request queue from a separate
/// task: awaiting queue space here, inside the only task that drains the
/// queue, could deadlock.
fn on_connect(publisher: &Arc<Publisher>, config: &MqttConfig) {
    let publisher = publisher.clone();
    let filters: Vec<rumqttc::SubscribeFilter> = config
        .subscriptions
        .iter()
        .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce))
        .collect();
    let presence_topic = config.presence_topic.clone();
    let online = presence(&config.node, "online");
    tokio::spawn(async move {
        let _ = publisher.client.subscribe_many(filters).await;
        let _ = publisher.publish(&presence_topic, online, true, None).await;
    });
}

fn describe(error: &ConnectionError, config: &MqttConfig) -> String {
    use rumqttc::ConnectReturnCode as Code;
    let at = format!("{}:{}", config.host, config.port);
    match error {
        ConnectionError::ConnectionRefused(Code::BadUserNamePassword | Code::NotAuthorized) => format!(
            "the broker at {at} refused the credentials for user {:?}: check CYBERWAVE_MQTT_USERNAME / CYBERWAVE_MQTT_PASSWORD (defaults: the instance uuid and the API token)",
            config.username
        ),
        ConnectionError::ConnectionRefused(code) => format!("the broker at {at} refused the connection ({code:?})"),
        ConnectionError::Io(e) => format!("cannot reach the broker at {at}: {e}"),
        ConnectionError::Tls(e) => format!("TLS with the broker at {at} failed: {e}"),
        ConnectionError::NetworkTimeout => format!("connecting to the broker at {at} timed out"),
        other => format!("connection to the broker at {at} failed: {other}"),
    }
}
