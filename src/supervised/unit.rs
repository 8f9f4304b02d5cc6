//! What happens to a supervised unit after its launch, reported to its
//! owner as [`ProcessEvent`]s: its shim ends ([`Notifier::reap`] for a shim
//! this node started, [`Notifier::watch`] for one it adopted), and a stop
//! finishes ([`Notifier::stop`]: grace, then SIGKILL, one implementation).
//!
//! Each owner (workloads, deployments) has its own event type; the
//! notifier wraps these events into it, so an owner gets one stream.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use tokio::process::Child;
use tokio::sync::mpsc;

use super::containment::Unit;
use super::watch;

/// How long a unit that is still starting (a node died mid-launch) gets to
/// report before it is taken for gone.
const STARTING_GRACE: Duration = Duration::from_secs(2);

/// What the node saw of a shim's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShimEnd {
    /// It exited with the process's status (code, or 128 + signal).
    Exited(i32),
    /// It was killed by this signal.
    Killed(i32),
    /// It was not this node's child (adopted after a restart, or the
    /// process was watched directly): its status went to someone else.
    NotSeen,
}

impl ShimEnd {
    fn of(status: Option<std::process::ExitStatus>) -> ShimEnd {
        match status.map(|s| (s.code(), s.signal())) {
            Some((Some(code), _)) => ShimEnd::Exited(code),
            Some((None, Some(signal))) => ShimEnd::Killed(signal),
            _ => ShimEnd::NotSeen,
        }
    }
}

/// What a unit reports to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessEvent {
    /// The shim (or, once it died, the watched process) is gone.
    Exited(ShimEnd),
    /// Every process of a stopped unit has ended.
    Settled,
}

/// Sends units' events to their owner, each as the owner's event `E`
/// made by `wrap` from the unit's key (request_id, deployment_id).
pub struct Notifier<E> {
    tx: mpsc::UnboundedSender<E>,
    wrap: fn(String, ProcessEvent) -> E,
}

impl<E> Clone for Notifier<E> {
    fn clone(&self) -> Self {
        Notifier {
            tx: self.tx.clone(),
            wrap: self.wrap,
        }
    }
}

impl<E: Send + 'static> Notifier<E> {
    pub fn new(tx: mpsc::UnboundedSender<E>, wrap: fn(String, ProcessEvent) -> E) -> Notifier<E> {
        Notifier { tx, wrap }
    }

    /// Sends one of the owner's own events on the same stream.
    pub fn send(&self, event: E) {
        // Closed only while the node stops: nobody is left to tell.
        let _ = self.tx.send(event);
    }

    fn notify(&self, key: String, event: ProcessEvent) {
        self.send((self.wrap)(key, event));
    }

    /// The owner is gone (the node stops): background work may give up.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits for a shim this node started: `Exited` with its status, the
    /// process's own (the one copy when the exit file could not be
    /// written).
    pub async fn reap(&self, key: String, mut child: Child) {
        let status = child.wait().await.ok();
        self.notify(key, ProcessEvent::Exited(ShimEnd::of(status)));
    }

    /// Watches a process that is not the node's child, (pid, start time):
    /// `Exited(NotSeen)` once it is gone. `None` (no pid known yet: a node
    /// died mid-launch) gives a shim about to report a moment to do so.
    pub fn watch(&self, key: String, process: Option<(i32, u64)>) {
        let notifier = self.clone();
        tokio::spawn(async move {
            match process {
                Some((pid, start)) => watch::process_exit(pid, start).await,
                None => tokio::time::sleep(STARTING_GRACE).await,
            }
            notifier.notify(key, ProcessEvent::Exited(ShimEnd::NotSeen));
        });
    }

    /// Waits, off the event loop, until every process of `unit` has ended,
    /// SIGKILLing whatever is left from `kill_at_ms` (Unix ms) on; then
    /// `Settled`. `what` names the unit in the log. A node that stops
    /// leaves the rest to the next one, which resumes from the record.
    pub fn stop(&self, key: String, unit: Unit, kill_at_ms: u64, what: String) {
        let notifier = self.clone();
        tokio::task::spawn_blocking(move || {
            unit.settle(kill_at_ms, &what, || !notifier.is_closed());
            notifier.notify(key, ProcessEvent::Settled);
        });
    }
}
