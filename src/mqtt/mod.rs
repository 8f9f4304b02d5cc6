//! The node's one MQTT connection.
//!
//! [`MqttLink::start`] spawns a task that owns rumqttc's event loop and does
//! nothing but drive it: it forwards what arrives to the node over an
//! unbounded channel (so a slow handler can never stall pings or acks),
//! re-subscribes on every ConnAck and re-announces presence once the SubAck
//! comes (a restarted broker without persistence has forgotten both), and
//! reconnects with capped backoff. Incoming commands are acknowledged by the
//! node only once handled (manual acks), so a crash between delivery and
//! handling makes the broker deliver the command again; the acks leave in
//! arrival order ([`acks`]).
//! Nothing here waits for room in rumqttc's request queue ([`queue`]): the
//! node's loop must run on through a broker outage.
//!
//! Nothing bigger than the broker's packet limit (`mqtt_max_packet_bytes`)
//! is handed to rumqttc: a broker that drops the connection over it would be
//! sent it again after every reconnect. Callers cut payloads to
//! [`MqttLink::payload_budget`] first (`protocol::fit`); what still does not
//! fit is dropped here with an error in the log, never retried.

mod acks;
mod ledger;
pub mod outbox;
pub mod probe;
mod queue;
pub mod topics;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing,
    Publish, QoS, Request, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use acks::Seq;
pub use ledger::Tracked;
pub use outbox::{Outbox, OutboxEntry};
pub use topics::Topics;

use queue::Queue;

use crate::backoff::Backoff;
use crate::protocol::{NodeRef, Presence};
use crate::secret::Secret;

/// Largest packet read. Generous on purpose: a command the client refuses
/// to read kills the connection, and a persistent session would deliver it
/// again on every reconnect (see [`on_connection_lost`] for how that loop
/// is broken).
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
        /// Outbox events and live output the new session dropped: publish
        /// them again.
        dropped: Vec<Tracked>,
    },
    Subscribed,
    /// A command; acknowledge it with [`MqttLink::ack`] and `seq` once
    /// handled.
    Message {
        seq: Seq,
        publish: Publish,
    },
    ConnectionLost {
        error: String,
        retry_in: Duration,
    },
    /// The broker acknowledged the publish tracked under this outbox id.
    Delivered(u64),
    /// Something was refused for lack of room, and there is room now.
    Room,
}

/// The handle the node publishes through. Every method returns at once.
pub struct MqttLink {
    queue: Arc<Queue>,
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
        // the broker's delayed ACK (docs/design.md, "Latency").
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let queue = Arc::new(Queue::new(client));
        let link = MqttLink {
            queue: queue.clone(),
            presence_topic: config.presence_topic.clone(),
            node: config.node.clone(),
            max_packet_bytes: config.max_packet_bytes,
            task: tokio::spawn(drive(eventloop, queue, config, events_tx)),
        };
        Ok((link, events_rx))
    }

    /// The most payload bytes a message on `topic` may have.
    pub fn payload_budget(&self, topic: &str) -> usize {
        self.max_packet_bytes
            .saturating_sub(publish_overhead(topic))
    }

    /// Whether the broker would take this message; logs the refusal.
    fn fits(&self, topic: &str, payload: &[u8]) -> bool {
        let size = payload.len() + publish_overhead(topic);
        if size > self.max_packet_bytes {
            let error = MqttError::TooLarge {
                topic: topic.to_owned(),
                size,
                limit: self.max_packet_bytes,
            };
            tracing::error!("{error}");
            return false;
        }
        true
    }

    /// Publishes with QoS 1 now, or as soon as the request queue has room:
    /// for what must not be lost (responses, presence).
    pub fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        if self.fits(topic, &payload) {
            self.queue
                .essential(topic, payload, retain, Tracked::Untracked);
        }
    }

    /// Like [`MqttLink::publish`], and reports [`MqttEvent::Delivered`] with
    /// `id` once the broker has acknowledged it.
    pub fn publish_tracked(&self, topic: &str, payload: Vec<u8>, id: u64) {
        if self.fits(topic, &payload) {
            self.queue
                .essential(topic, payload, false, Tracked::Outbox(id));
        }
    }

    /// Publishes bulk (live output, metrics, terminal bytes) with QoS 1 if
    /// the link takes it now; otherwise the payload comes back, and the
    /// caller keeps it and tries again on [`MqttEvent::Room`]. `tracked`
    /// comes back in [`MqttEvent::Connected`] if a fresh session drops the
    /// publish. A payload that can never fit is dropped (`Ok`), not handed
    /// back to be retried for ever.
    pub fn try_publish_bulk(
        &self,
        topic: &str,
        payload: Vec<u8>,
        tracked: Tracked,
    ) -> Result<(), Vec<u8>> {
        if !self.fits(topic, &payload) {
            return Ok(());
        }
        self.queue.try_bulk(topic, payload, tracked)
    }

    /// Whether bulk would be taken now (connected, within the allowance).
    pub fn bulk_ready(&self) -> bool {
        self.queue.bulk_ready()
    }

    /// Acknowledges command `seq` once handled; the ack leaves when every
    /// earlier command's has.
    pub fn ack(&self, seq: Seq) {
        self.queue.ack(seq);
    }

    /// Publishes presence `offline`, disconnects cleanly (so the broker does
    /// not fire the last will as well) and waits up to `timeout` for the
    /// connection task to finish. Without a connection it gives up after
    /// `timeout`: the broker fires the last will instead.
    pub async fn close(self, timeout: Duration) {
        let offline = presence(&self.node, "offline");
        self.publish(&self.presence_topic, offline, true);
        let queue = self.queue;
        let mut task = self.task;
        let finished = tokio::time::timeout(timeout, async {
            // The disconnect goes after everything waiting, offline included.
            while !queue.try_disconnect() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = (&mut task).await;
        })
        .await;
        if finished.is_err() {
            task.abort();
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
    queue: Arc<Queue>,
    config: MqttConfig,
    events: mpsc::UnboundedSender<MqttEvent>,
) {
    let mut failures: u32 = 0;
    loop {
        let event = eventloop.poll().await;
        // The request queue drained a little or a PUBACK freed bulk room:
        // hand over what waits, and wake the node if it asked for room.
        let progress = matches!(
            event,
            Ok(Event::Outgoing(Outgoing::Publish(_)) | Event::Incoming(Incoming::PubAck(_)))
        );
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                failures = 0;
                on_connack(
                    &mut eventloop,
                    &queue,
                    &config,
                    &events,
                    ack.session_present,
                );
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
                // `online` only once the broker has the subscriptions: a
                // backend that sends a command on seeing it must not lose it.
                let online = presence(&config.node, "online");
                queue.essential(&config.presence_topic, online, true, Tracked::Untracked);
                let _ = events.send(MqttEvent::Subscribed);
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                let seq = queue.lock().acks.on_received(&publish);
                match seq {
                    Some(seq) => {
                        let _ = events.send(MqttEvent::Message { seq, publish });
                    }
                    None => {
                        tracing::debug!(topic = %publish.topic, "a command delivered again after a reconnect was handled already");
                        queue.flush();
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => queue.lock().ledger.on_sent(pkid),
            Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                if let Tracked::Outbox(id) = queue.lock().ledger.on_acked(ack.pkid) {
                    let _ = events.send(MqttEvent::Delivered(id));
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(ConnectionError::RequestsDone) => return,
            Err(error) => {
                on_connection_lost(&mut eventloop, &queue, &error);
                failures += 1;
                let retry_in = config.backoff.delay(failures);
                let error = describe(&error, &config);
                let _ = events.send(MqttEvent::ConnectionLost { error, retry_in });
                tokio::time::sleep(retry_in).await;
            }
        }
        if progress && queue.flush() {
            let _ = events.send(MqttEvent::Room);
        }
    }
}

/// A (re)connect: the ledger and the acks learn whether the session
/// survived, subscriptions and presence go out again, the node is told.
fn on_connack(
    eventloop: &mut EventLoop,
    queue: &Arc<Queue>,
    config: &MqttConfig,
    events: &mpsc::UnboundedSender<MqttEvent>,
    session_present: bool,
) {
    // A clean session was only asked to shed an unreadable message; later
    // reconnects resume a persistent one.
    eventloop.mqtt_options.set_clean_session(false);
    tracing::debug!(session_present, "connected to the MQTT broker");
    let dropped = {
        let mut state = queue.lock();
        state.acks.on_connected(session_present);
        state.ledger.on_connected(session_present)
    };
    on_connect(queue, config);
    let _ = events.send(MqttEvent::Connected {
        session_present,
        dropped,
    });
}

/// The connection broke: what rumqttc still holds unsent is accounted for,
/// and a message too big to read is shed by the next connect.
fn on_connection_lost(eventloop: &mut EventLoop, queue: &Queue, error: &ConnectionError) {
    if read_too_much(error) {
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
    let mut state = queue.lock();
    state.ledger.on_lost(unassigned);
    state.acks.on_lost();
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

/// Subscriptions go through the request queue from a separate task:
/// awaiting queue space here, inside the only task that drains the queue,
/// could deadlock. Presence `online` follows the SUBACK.
fn on_connect(queue: &Arc<Queue>, config: &MqttConfig) {
    let filters: Vec<rumqttc::SubscribeFilter> = config
        .subscriptions
        .iter()
        .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce))
        .collect();
    let client = queue.client().clone();
    tokio::spawn(async move {
        let _ = client.subscribe_many(filters).await;
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
