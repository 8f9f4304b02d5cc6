//! Workloads: the repository's inference, training and simulate commands,
//! run as detached processes that outlive the node (docs/design.md).
//!
//! - [`paths`]: file names under `workload_logs/`, safe for any request_id.
//! - [`record`]: the node's record and the supervisor's started/exit files.
//! - [`template`]: rendering `{body}`/`{params_file}`, the workload token.
//! - [`launch`]: files, supervisor, pid, in the order that survives crashes.
//! - [`manager`]: start, adopt, cancel, exit, terminal event, retention.
//! - [`queue`]: workload commands waiting on disk for a slot.
//! - [`tail`]: live output and progress with persisted offsets.
//! - [`local`]: the `status` and `logs` commands that need no broker.

pub mod cancel;
pub mod launch;
pub mod local;
pub mod manager;
pub mod output;
pub mod paths;
pub mod queue;
pub mod record;
pub mod tail;
pub mod template;

pub use manager::{Admitted, Handled, Terminal, WorkloadConfig, WorkloadEvent, Workloads};
