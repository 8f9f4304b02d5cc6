//! Checks the test harness itself (broker, MQTT client, fake backend) without
//! the node, so a harness bug is not mistaken for a node bug.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Broker, FakeBackend, TestClient};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);

/// Minimal HTTP/1.1 client: returns (status, JSON body or Null).
fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to fake backend");
    stream.set_read_timeout(Some(T)).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Token {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    stream.read_to_string(&mut resp).expect("read response");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {resp:?}"));
    let body = resp
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, body)
}

#[test]
fn broker_pub_sub_round_trip() {
    let broker = Broker::start();
    let sub = TestClient::connect(broker.port());
    sub.subscribe("cw/test/+/status");
    let publisher = TestClient::connect(broker.port());
    publisher.publish_json("cw/test/a/status", &json!({"ok": true, "request_id": "r1"}));
    let (topic, payload) = sub.recv(T).expect("message delivered");
    assert_eq!(topic, "cw/test/a/status");
    let v: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(v["ok"], true);

    // `recv_json_where` skips messages that do not match.
    publisher.publish("cw/test/b/status", "not json");
    publisher.publish_json("cw/test/c/status", &json!({"n": 1}));
    publisher.publish_json("cw/test/d/status", &json!({"n": 2}));
    let got = sub.recv_json_where(T, |t, v| t.ends_with("/d/status") && v["n"] == 2);
    assert_eq!(got, Some(json!({"n": 2})));
}

#[test]
fn request_matches_request_id() {
    let broker = Broker::start();
    let cloud = TestClient::connect(broker.port());
    cloud.subscribe("resp/#");
    // A stand-in for the node: answers every command with its request_id.
    let responder = TestClient::connect(broker.port());
    responder.subscribe("cmd");
    let handle = std::thread::spawn(move || {
        let (_, payload) = responder.recv(T).expect("command arrives");
        let cmd: Value = serde_json::from_slice(&payload).unwrap();
        responder.publish_json("resp/x", &json!({"request_id": "other"}));
        responder.publish_json("resp/x", &json!({"request_id": cmd["request_id"], "ok": 1}));
    });
    let resp = cloud.request("cmd", "resp/+", &json!({"command": "status"}));
    handle.join().unwrap();
    assert_eq!(resp.expect("response")["ok"], 1);
}

#[test]
fn broker_restart_keeps_port_and_client_resubscribes() {
    let mut broker = Broker::start();
    let port = broker.port();
    let sub = TestClient::connect(port);
    sub.subscribe("t/restart");
    broker.stop();
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "broker still up after stop"
    );
    broker.restart();
    assert_eq!(broker.port(), port);
    assert!(
        sub.wait_connections(2, Duration::from_secs(10)),
        "client did not reconnect"
    );
    let publisher = TestClient::connect(port);
    // The re-subscribe is asynchronous; retry until it has taken effect.
    let deadline = Instant::now() + T;
    let mut got = None;
    while got.is_none() && Instant::now() < deadline {
        publisher.publish("t/restart", "hello");
        got = sub.recv(Duration::from_millis(200));
    }
    assert_eq!(got.expect("message after restart").1, b"hello");
    assert!(
        broker.log().contains("mosquitto version"),
        "log: {}",
        broker.log()
    );
}

#[test]
fn password_broker_checks_credentials() {
    let broker = Broker::start_with_password("node", "s3cret");
    assert!(TestClient::try_connect(broker.port(), Some(("node", "wrong"))).is_err());
    assert!(TestClient::try_connect(broker.port(), None).is_err());
    let ok = TestClient::connect_with(broker.port(), "node", "s3cret");
    ok.subscribe("x");
    ok.publish("x", "y");
    assert_eq!(ok.recv(T).expect("own message").1, b"y");
}

#[test]
fn backend_create_register_heartbeat_flow() {
    let be = FakeBackend::start_with_tokens(&["tok-1"]);
    let port = be.port();
    assert_eq!(be.url(), format!("http://127.0.0.1:{port}"));

    let (s, list) = http(
        port,
        "GET",
        "/api/v1/cloud-node/instances?mine=1",
        Some("tok-1"),
        None,
    );
    assert_eq!((s, list), (200, json!([])));

    let (s, created) = http(
        port,
        "POST",
        "/api/v1/cloud-node",
        Some("tok-1"),
        Some(&json!({"profile_slug": "gpu"})),
    );
    assert_eq!(s, 201);
    let uuid = created["uuid"].as_str().unwrap().to_string();
    assert_eq!(created["slug"], format!("node-{}", &uuid[..8]));
    assert_eq!(created["profile_slug"], "gpu");
    assert_eq!(be.created_count(), 1);

    let (s, _) = http(
        port,
        "POST",
        "/api/v1/cloud-node",
        Some("tok-1"),
        Some(&json!({"profile_slug": "gpu", "slug": "mine"})),
    );
    assert_eq!(s, 201);
    be.set_slug_override(Some("assigned-slug"));
    let (_, forced) = http(
        port,
        "POST",
        "/api/v1/cloud-node",
        Some("tok-1"),
        Some(&json!({"profile_slug": "gpu", "slug": "mine"})),
    );
    assert_eq!(forced["slug"], "assigned-slug");

    let reg_path = format!("/api/v1/cloud-node/{uuid}/register");
    let (s, reg) = http(
        port,
        "POST",
        &reg_path,
        Some("tok-1"),
        Some(&json!({"profile_slug": "gpu"})),
    );
    assert_eq!(s, 200);
    assert_eq!(reg["success"], true);
    assert_eq!(reg["uuid"], uuid.as_str());

    let hb_path = format!("/api/v1/cloud-node/{uuid}/heartbeat");
    assert_eq!(http(port, "POST", &hb_path, Some("tok-1"), None).0, 200);
    assert_eq!(
        http(
            port,
            "POST",
            "/api/v1/cloud-node/terminated",
            Some("tok-1"),
            Some(&json!({}))
        )
        .0,
        200
    );
    assert_eq!(
        http(
            port,
            "POST",
            "/api/v1/cloud-node/failed",
            Some("tok-1"),
            Some(&json!({}))
        )
        .0,
        200
    );
    assert_eq!(
        http(port, "GET", "/api/v1/other", Some("tok-1"), None).0,
        404
    );

    let hb = be
        .wait_for_request("POST", "/heartbeat", T)
        .expect("heartbeat recorded");
    assert_eq!(hb.headers["authorization"], "Token tok-1");
    let reg = be.requests_matching("POST", "/register");
    assert_eq!(reg[0].body, json!({"profile_slug": "gpu"}));
    let list = be.requests_matching("GET", "/instances");
    assert_eq!(
        (list[0].path.as_str(), list[0].query.as_str()),
        ("/api/v1/cloud-node/instances", "mine=1")
    );
    assert!(be.wait_for_count("POST", "/api/v1/cloud-node", 3, T));

    // The backend reaps the instance: register and heartbeat now 404.
    be.forget_instance(&uuid);
    let (s, body) = http(port, "POST", &hb_path, Some("tok-1"), None);
    assert_eq!((s, body), (404, json!({"detail": "Not found."})));
    assert_eq!(
        http(port, "POST", &reg_path, Some("tok-1"), Some(&json!({}))).0,
        404
    );
    be.add_instance(&uuid, "back");
    assert_eq!(
        http(port, "POST", &reg_path, Some("tok-1"), Some(&json!({}))).1["slug"],
        "back"
    );
}

#[test]
fn backend_auth_and_failure_injection() {
    let be = FakeBackend::start_with_tokens(&["tok-1"]);
    let port = be.port();
    let unauthorized = (401, json!({"detail": "Invalid token."}));
    assert_eq!(
        http(
            port,
            "GET",
            "/api/v1/cloud-node/instances",
            Some("nope"),
            None
        ),
        unauthorized
    );
    assert_eq!(
        http(port, "GET", "/api/v1/cloud-node/instances", None, None),
        unauthorized
    );

    be.set_reject_all(true);
    assert_eq!(
        http(
            port,
            "GET",
            "/api/v1/cloud-node/instances",
            Some("tok-1"),
            None
        ),
        unauthorized
    );
    be.set_reject_all(false);

    be.set_status_override("GET", "/instances", Some(503));
    assert_eq!(
        http(
            port,
            "GET",
            "/api/v1/cloud-node/instances",
            Some("tok-1"),
            None
        ),
        (503, json!({"detail": "forced"}))
    );
    be.set_status_override("GET", "/instances", None);
    assert_eq!(
        http(
            port,
            "GET",
            "/api/v1/cloud-node/instances",
            Some("tok-1"),
            None
        )
        .0,
        200
    );

    be.set_delay("GET", "/instances", Duration::from_millis(400));
    let start = Instant::now();
    assert_eq!(
        http(
            port,
            "GET",
            "/api/v1/cloud-node/instances",
            Some("tok-1"),
            None
        )
        .0,
        200
    );
    assert!(start.elapsed() >= Duration::from_millis(400));

    // `start()` accepts any non-empty token.
    let open = FakeBackend::start();
    assert_eq!(
        http(
            open.port(),
            "GET",
            "/api/v1/cloud-node/instances",
            Some("anything"),
            None
        )
        .0,
        200
    );
    assert_eq!(
        http(
            open.port(),
            "GET",
            "/api/v1/cloud-node/instances",
            None,
            None
        )
        .0,
        401
    );
}

#[test]
fn backend_drop_releases_port() {
    let port = FakeBackend::start().port();
    // Dropped above: the same port can be served again.
    let again = FakeBackend::start_on(port);
    assert_eq!(again.port(), port);
    assert_eq!(
        http(port, "GET", "/api/v1/cloud-node/instances", Some("t"), None).0,
        200
    );
}
