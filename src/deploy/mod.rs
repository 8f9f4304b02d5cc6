//! Resident model deployments: a model loaded once in a model server of its
//! own and served over a Unix socket (docs/design.md "Built-in runners").
//!
//! - [`files`]: the record, spec, state and socket of each deployment.
//! - [`server`]: the hidden `__serve-model` mode, one process per model.
//! - [`wire`]: the JSON-lines protocol on the socket.
//! - [`listing`]: the rows of `deployments` and `status`.
//! - [`stats`]: request counts and latency percentiles, kept by the server.
//! - [`request`]: the checked params of deploy, infer and undeploy.
//! - [`manager`]: the node's side: deploy, undeploy, adopt, and what the
//!   servers report; `calls`: infer and the listings.

mod calls;
pub mod files;
mod gpus;
pub mod listing;
pub mod manager;
pub mod request;
pub mod server;
pub mod stats;
pub mod wire;

pub use manager::{DeployConfig, DeployEvent, Deployments};
