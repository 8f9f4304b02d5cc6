//! A blocking MQTT client for tests, playing the role of the Cyberwave cloud
//! (sending commands to the node, watching what it publishes).
//!
//! Built on rumqttc's sync `Client`; a background thread drives the
//! `Connection` and forwards publishes into a channel, so test code stays
//! plain sequential Rust with explicit timeouts.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rumqttc::{Client, ConnectionError, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

/// How long connect / subscribe / publish wait for the broker's ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `request` waits for the node's response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Node responses (log tails, status dumps) can exceed rumqttc's 10 KiB default.
const MAX_PACKET: usize = 4 * 1024 * 1024;

/// Acks and connection results, from the event-loop thread to the caller.
enum Control {
    Connected,
    Failed(String),
    SubAck,
    PubAck,
}

/// Shared between the handle and the event-loop thread.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    connections: AtomicUsize,
    /// Topics to re-subscribe after a reconnect (clean sessions forget them).
    topics: Mutex<Vec<String>>,
}

/// A connected test client; disconnects on drop.
pub struct TestClient {
    client: Client,
    shared: Arc<Shared>,
    control: Mutex<Receiver<Control>>,
    messages: Mutex<Receiver<(String, Vec<u8>)>>,
}

impl TestClient {
    /// Connects anonymously; panics if not connected within 5 s.
    pub fn connect(port: u16) -> TestClient {
        Self::try_connect(port, None).unwrap_or_else(|e| panic!("MQTT connect: {e}"))
    }

    /// Connects with credentials; panics if not connected within 5 s.
    pub fn connect_with(port: u16, user: &str, pass: &str) -> TestClient {
        Self::try_connect(port, Some((user, pass)))
            .unwrap_or_else(|e| panic!("MQTT connect as {user}: {e}"))
    }

    /// Connects with a keep-alive that outlasts a broker stalled for less
    /// than `keep_alive` (the default 5 s reconnects after ~5 s of silence).
    pub fn connect_with_keep_alive(port: u16, keep_alive: Duration) -> TestClient {
        Self::try_connect_sized(port, None, MAX_PACKET, keep_alive)
            .unwrap_or_else(|e| panic!("MQTT connect: {e}"))
    }

    /// Connects, returning the broker's refusal (or a timeout) as `Err`.
    pub fn try_connect(port: u16, creds: Option<(&str, &str)>) -> Result<TestClient, String> {
        Self::try_connect_sized(port, creds, MAX_PACKET, Duration::from_secs(5))
    }

    /// Connects anonymously, sending and reading packets up to `max_packet`
    /// bytes (for tests of oversized messages).
    pub fn connect_sized(port: u16, max_packet: usize) -> TestClient {
        Self::try_connect_sized(port, None, max_packet, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("MQTT connect: {e}"))
    }

    fn try_connect_sized(
        port: u16,
        creds: Option<(&str, &str)>,
        max_packet: usize,
        keep_alive: Duration,
    ) -> Result<TestClient, String> {
        let id = format!("cw-test-{}", uuid::Uuid::new_v4().simple());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_clean_session(true)
            .set_keep_alive(keep_alive)
            .set_max_packet_size(max_packet, max_packet);
        if let Some((user, pass)) = creds {
            opts.set_credentials(user, pass);
        }
        let (client, mut connection) = Client::new(opts, 64);
        // Like the node: no Nagle, or a publish that follows an ack waits
        // ~40 ms for the broker's delayed ACK and every timing is off.
        let mut network = connection.eventloop.network_options();
        network.set_tcp_nodelay(true);
        connection.eventloop.set_network_options(network);
        let (control_tx, control_rx) = mpsc::channel();
        let (msg_tx, msg_rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        {
            let client = client.clone();
            let shared = Arc::clone(&shared);
            thread::spawn(move || event_loop(connection, client, &shared, control_tx, msg_tx));
        }
        let this = TestClient {
            client,
            shared,
            control: Mutex::new(control_rx),
            messages: Mutex::new(msg_rx),
        };
        match this.wait_control(|c| matches!(c, Control::Connected | Control::Failed(_))) {
            Some(Control::Connected) => Ok(this),
            Some(Control::Failed(e)) => Err(e),
            _ => Err(format!(
                "no CONNACK from 127.0.0.1:{port} within {ACK_TIMEOUT:?}"
            )),
        }
    }

    /// Subscribes at QoS 1 and waits for the SUBACK, so messages published
    /// after this returns are guaranteed to be delivered.
    pub fn subscribe(&self, topic: &str) {
        lock(&self.shared.topics).push(topic.to_string());
        self.client
            .subscribe(topic, QoS::AtLeastOnce)
            .expect("queue SUBSCRIBE");
        assert!(
            self.wait_control(|c| matches!(c, Control::SubAck))
                .is_some(),
            "no SUBACK for {topic} within {ACK_TIMEOUT:?}"
        );
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK.
    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .expect("queue PUBLISH");
        assert!(
            self.wait_control(|c| matches!(c, Control::PubAck))
                .is_some(),
            "no PUBACK for {topic} within {ACK_TIMEOUT:?}"
        );
    }

    /// Publishes a JSON value at QoS 1.
    pub fn publish_json(&self, topic: &str, value: &Value) {
        self.publish(topic, value.to_string());
    }

    /// Next incoming message, or `None` after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        lock(&self.messages).recv_timeout(timeout).ok()
    }

    /// Next JSON message for which `pred(topic, value)` holds. Non-matching
    /// and non-JSON messages are consumed and discarded.
    pub fn recv_json_where(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&str, &Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (topic, payload) = self.recv(left)?;
            if let Ok(value) = serde_json::from_slice::<Value>(&payload) {
                if pred(&topic, &value) {
                    return Some(value);
                }
            }
        }
    }

    /// Discards all messages received so far.
    pub fn drain(&self) {
        while lock(&self.messages).try_recv().is_ok() {}
    }

    /// Sends a command and waits (≤ 5 s) for the response on
    /// `response_topic` (which must already be subscribed; it may be a
    /// filter with `+`/`#`) carrying the same `request_id`. A `request_id`
    /// is generated if `request` has none.
    pub fn request(
        &self,
        command_topic: &str,
        response_topic: &str,
        request: &Value,
    ) -> Option<Value> {
        let mut request = request.clone();
        let id = match request.get("request_id") {
            Some(id) => id.clone(),
            None => {
                let id = Value::String(uuid::Uuid::new_v4().to_string());
                if let Some(obj) = request.as_object_mut() {
                    obj.insert("request_id".to_string(), id.clone());
                }
                id
            }
        };
        self.publish_json(command_topic, &request);
        self.recv_json_where(REQUEST_TIMEOUT, |topic, v| {
            topic_matches(response_topic, topic) && v.get("request_id") == Some(&id)
        })
    }

    /// Number of successful (re)connections so far; grows after a broker
    /// restart once the client has reconnected and re-subscribed.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Waits until `connections() >= n`.
    pub fn wait_connections(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.connections() < n {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Waits for the first control event accepted by `want`, dropping others
    /// (e.g. a stray SUBACK from an automatic re-subscribe).
    fn wait_control(&self, want: impl Fn(&Control) -> bool) -> Option<Control> {
        let deadline = Instant::now() + ACK_TIMEOUT;
        let rx = lock(&self.control);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(c) if want(&c) => return Some(c),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.client.try_disconnect();
    }
}

/// Drives the connection: forwards publishes and acks, reconnects after
/// errors (rumqttc reconnects on the next poll), and gives up only if the
/// very first connection fails or the handle was dropped.
fn event_loop(
    mut connection: rumqttc::Connection,
    client: Client,
    shared: &Shared,
    control: Sender<Control>,
    messages: Sender<(String, Vec<u8>)>,
) {
    for event in connection.iter() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if shared.connections.fetch_add(1, Ordering::SeqCst) > 0 {
                    for topic in lock(&shared.topics).iter() {
                        let _ = client.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                    }
                }
                let _ = control.send(Control::Connected);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let _ = messages.send((p.topic, p.payload.to_vec()));
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = control.send(Control::SubAck);
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                let _ = control.send(Control::PubAck);
            }
            Ok(_) => {}
            Err(e) => {
                if shared.connections.load(Ordering::SeqCst) == 0 {
                    let _ = control.send(Control::Failed(describe(&e)));
                    return;
                }
                if matches!(e, ConnectionError::RequestsDone) {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => format!("connection refused: {code:?}"),
        other => other.to_string(),
    }
}

/// MQTT topic filter matching (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
