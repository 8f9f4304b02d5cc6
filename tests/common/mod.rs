//! Shared integration-test harness: a real MQTT broker, a fake REST backend,
//! an MQTT client playing the cloud, and a handle on the node binary.
//!
//! Each test binary compiles this module separately and uses only part of
//! it, hence the blanket `dead_code` allowance.
#![allow(dead_code, unused_imports)]

pub mod backend;
pub mod broker;
mod http;
pub mod mounts;
pub mod mqtt;
pub mod node;
pub mod restart;

pub use backend::{FakeBackend, Recorded};
pub use broker::Broker;
pub use mqtt::TestClient;
pub use node::{standard_env, Node, NodeProcess};
pub mod scenario;
