//! The usual set-up of a node test: broker, fake backend, a node started
//! against both and waited on until it is ready.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{standard_env, Broker, FakeBackend, Node, NodeProcess, TestClient};

pub const TOKEN: &str = "test-token-0123456789";
pub const READY: &str = "ready: listening on";

/// A running node with everything around it.
pub struct Scenario {
    pub broker: Broker,
    pub backend: FakeBackend,
    pub node: NodeProcess,
    pub client: TestClient,
    pub uuid: String,
    pub slug: String,
    pub prefix: String,
}

impl Scenario {
    /// Starts broker and backend, then the node built by `customize`, and
    /// waits until it listens for commands.
    pub fn start(customize: impl FnOnce(Node) -> Node) -> Scenario {
        let broker = Broker::start();
        let backend = FakeBackend::start();
        Self::start_with(broker, backend, customize)
    }

    pub fn start_with(
        broker: Broker,
        backend: FakeBackend,
        customize: impl FnOnce(Node) -> Node,
    ) -> Scenario {
        let node = customize(Node::new().arg("start").envs(standard_env(
            broker.port(),
            &backend.url(),
            TOKEN,
        )))
        .spawn();
        assert!(
            node.wait_for_log(READY, Duration::from_secs(10)),
            "node never became ready:\n{}",
            node.stderr()
        );
        let identity = read_identity(&node);
        let prefix = prefix_from_log(&node.stderr());
        let client = TestClient::connect(broker.port());
        let scenario = Scenario {
            uuid: identity["uuid"].as_str().unwrap().to_owned(),
            slug: identity["slug"].as_str().unwrap().to_owned(),
            broker,
            backend,
            node,
            client,
            prefix,
        };
        scenario.client.subscribe(&scenario.response_topic());
        scenario
    }

    pub fn topic(&self, id: &str, leaf: &str) -> String {
        format!("{}cyberwave/cloud-node/{id}/{leaf}", self.prefix)
    }

    pub fn response_topic(&self) -> String {
        self.topic(&self.uuid, "response")
    }

    /// Sends `command` on the uuid topic and returns the response.
    pub fn request(&self, command: Value) -> Value {
        self.request_on(&self.uuid.clone(), command)
    }

    pub fn request_on(&self, id: &str, command: Value) -> Value {
        self.client
            .request(&self.topic(id, "command"), &self.response_topic(), &command)
            .unwrap_or_else(|| {
                panic!(
                    "no response to {command}; node log:\n{}",
                    self.node.stderr()
                )
            })
    }

    pub fn status(&self) -> Value {
        self.request(json!({"command": "status"}))
    }

    /// Asks `status` until it is answered, for up to `within`: after a
    /// reconnect the node subscribes again on its own schedule, and a
    /// command sent before that is lost. The answer proves the node's
    /// subscriptions (all in one SUBSCRIBE) are back.
    pub fn status_once_subscribed(&self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let answer = self.client.request(
                &self.topic(&self.uuid, "command"),
                &self.response_topic(),
                &json!({"command": "status"}),
            );
            if let Some(answer) = answer {
                return answer;
            }
            assert!(
                Instant::now() < deadline,
                "status unanswered for {within:?}; node log:\n{}",
                self.node.stderr()
            );
        }
    }
}

/// The identity file the node wrote.
pub fn read_identity(node: &NodeProcess) -> Value {
    let path = node.config_dir().join("instance_identity.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The prefix is visible in the ready line: "listening on <P>cyberwave/...".
fn prefix_from_log(log: &str) -> String {
    let line = log.lines().find(|l| l.contains(READY)).unwrap_or_default();
    let after = &line[line.find(READY).map(|i| i + READY.len() + 1).unwrap_or(0)..];
    after
        .split("cyberwave/cloud-node/")
        .next()
        .unwrap_or("")
        .to_owned()
}
