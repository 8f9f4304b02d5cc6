//! Workloads: the repository's inference, training and simulate commands,
//! run as detached processes that outlive the node (DESIGN.md).
//!
//! - [`paths`]: file names under `workload_logs/`, safe for any request_id.
//! - [`record`]: the node's record and the supervisor's started/exit files.
//! - [`template`]: rendering `{body}`/`{params_file}`, the workload token.
//! - [`launch`]: files, supervisor, pid, in the order that survives crashes.
//! - [`supervisor`]: the hidden `__supervise` mode that owns the exit code
//!   and reaps the workload's orphans.
//! - [`containment`], [`cgroup`]: which processes are the workload's (its
//!   cgroup v2, or its process tree) and the one stop: grace, then SIGKILL.
//! - [`manager`]: start, adopt, cancel, exit, terminal event, retention.
//! - [`tail`]: live output and progress with persisted offsets.
//! - [`watch`], [`procfs`]: exits of non-children; process identity and
//!   liveness (zombies are dead).
//! - [`local`]: the `status` and `logs` commands that need no broker.

pub mod cancel;
pub mod cgroup;
pub mod containment;
pub mod launch;
pub mod local;
pub mod manager;
pub mod output;
pub mod paths;
pub mod procfs;
pub mod record;
pub mod supervisor;
pub mod tail;
pub mod template;
pub mod watch;

pub use manager::{Refusal, Terminal, WorkloadConfig, WorkloadEvent, WorkloadStats, Workloads};
