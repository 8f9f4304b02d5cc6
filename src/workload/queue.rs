//! The workload queue (`max_queued_workloads`): workload commands that could
//! not start at once, waiting on disk in arrival order for a slot.
//!
//! Each waiting command is one file, `workload_logs/queue/<seq>_<rid>.json`
//! ([`QueuedFile`]), written synced before the `queued` reply and before the
//! command is acknowledged, so an acknowledged command is never lost. The
//! params are stored as the launch would write them: without the
//! workload's own token, which stays in memory only (a node restarted
//! meanwhile hands the workload the node's token, as for a command without
//! one).
//!
//! A file leaves the queue only once what replaces it is on disk:
//! - a start: once the workload's record is synced (the `started` event);
//!   a node that dies in between finds the record and drops the file, so
//!   nothing is started twice;
//! - a cancel, or a start that failed: the file is first marked with its
//!   end ([`QueueEnd`]), then the terminal event is stored in the outbox,
//!   then the file goes. A node that dies in between reports the end again
//!   (the outbox recognises its own copy), never starts it.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::paths::rid;
use crate::fsutil::{self, load_json, StateFileError};
use crate::protocol::WorkloadKind;

/// The queue's directory below `workload_logs/`.
pub const QUEUE_DIR: &str = "queue";

/// One queued workload command, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedFile {
    /// Arrival order: larger is later.
    pub seq: u64,
    pub request_id: String,
    pub workload_type: WorkloadKind,
    /// Without `cyberwave_workload_token`.
    pub params: Map<String, Value>,
    pub queued_unix_ms: u64,
    /// Set once it left the queue without running; its terminal event is
    /// due (or was stored and not yet recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<QueueEnd>,
}

/// How a queued workload ended without ever running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum QueueEnd {
    /// A `cancel` removed it from the queue.
    Cancelled { at_unix_ms: u64 },
    /// Its turn came and it could not be started (`error` says why).
    Failed { at_unix_ms: u64, error: String },
}

/// A queued command in memory.
#[derive(Debug)]
pub struct Queued {
    pub file: QueuedFile,
    path: PathBuf,
    /// The workload's own API token, never written to disk.
    token: Option<String>,
    /// Its launch has begun; the file stays until its record is synced.
    launching: bool,
}

impl Queued {
    /// Still waiting for its turn (neither launching nor ended).
    pub fn is_waiting(&self) -> bool {
        !self.launching && self.file.ended.is_none()
    }
}

/// Why a command could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "the params are {len} bytes as JSON, over the {limit} bytes a queued request may keep on disk; \
         send smaller params (a path or URL to the data) or retry when the node is free"
    )]
    TooBig { len: usize, limit: u64 },
    #[error("cannot write the queue file {}: {source}; check free space and permissions of the config dir", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The queue, oldest first.
pub struct WorkloadQueue {
    dir: PathBuf,
    entries: Vec<Queued>,
    next_seq: u64,
    /// `max_queued_workloads`.
    capacity: usize,
}

impl WorkloadQueue {
    /// Loads what an earlier run left in `logs_dir/queue/`. An unreadable
    /// file is left where it is, with a warning naming it.
    pub fn open(logs_dir: &Path, capacity: usize) -> WorkloadQueue {
        let dir = logs_dir.join(QUEUE_DIR);
        let mut queue = WorkloadQueue {
            entries: Vec::new(),
            next_seq: 1,
            capacity,
            dir,
        };
        let Ok(listing) = std::fs::read_dir(&queue.dir) else {
            return queue;
        };
        for path in listing.flatten().map(|e| e.path()) {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.starts_with('.') || !name.ends_with(".json") {
                continue; // a temp file of an interrupted write
            }
            if let Some(seq) = name.split('_').next().and_then(|s| s.parse::<u64>().ok()) {
                queue.next_seq = queue.next_seq.max(seq + 1);
            }
            match load_json::<QueuedFile>(&path) {
                Ok(Some(file)) => {
                    queue.next_seq = queue.next_seq.max(file.seq + 1);
                    queue.entries.push(Queued {
                        file,
                        path,
                        token: None,
                        launching: false,
                    });
                }
                Ok(None) => {}
                Err(e) => warn_unreadable(&e),
            }
        }
        queue.entries.sort_by_key(|q| q.file.seq);
        queue
    }

    /// Drops (file and all) the entries `started` says already have a
    /// workload: an earlier run started them and died before removing the
    /// file.
    pub fn drop_started(&mut self, started: impl Fn(&str) -> bool) {
        let (gone, kept): (Vec<Queued>, Vec<Queued>) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|q| started(&q.file.request_id));
        self.entries = kept;
        for queued in gone {
            tracing::info!(
                request_id = %queued.file.request_id,
                "the queued {} workload was already started by an earlier run; removed from the queue",
                queued.file.workload_type
            );
            remove_file(&queued.path);
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many wait for their turn.
    pub fn waiting(&self) -> usize {
        self.entries.iter().filter(|q| q.is_waiting()).count()
    }

    pub fn get(&self, request_id: &str) -> Option<&Queued> {
        self.entries
            .iter()
            .find(|q| q.file.request_id == request_id)
    }

    /// 1-based place among the waiting ones.
    pub fn position(&self, request_id: &str) -> Option<usize> {
        self.entries
            .iter()
            .filter(|q| q.is_waiting())
            .position(|q| q.file.request_id == request_id)
            .map(|p| p + 1)
    }

    /// The oldest waiting one.
    pub fn head(&self) -> Option<&QueuedFile> {
        self.entries
            .iter()
            .find(|q| q.is_waiting())
            .map(|q| &q.file)
    }

    /// The request_ids whose end is due to be reported.
    pub fn ended(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|q| q.file.ended.is_some())
            .map(|q| q.file.request_id.clone())
            .collect()
    }

    /// Queues a command: on disk (synced) before this returns. Returns its
    /// 1-based position.
    pub fn push(
        &mut self,
        kind: WorkloadKind,
        request_id: &str,
        params: Map<String, Value>,
        token: Option<String>,
    ) -> Result<usize, QueueError> {
        let file = QueuedFile {
            seq: self.next_seq,
            request_id: request_id.to_owned(),
            workload_type: kind,
            params,
            queued_unix_ms: fsutil::now_unix_ms(),
            ended: None,
        };
        let bytes = serde_json::to_vec(&file).map_err(io::Error::other);
        let limit = fsutil::STATE_FILE_LIMIT;
        if let Ok(bytes) = &bytes {
            if bytes.len() as u64 > limit {
                return Err(QueueError::TooBig {
                    len: bytes.len(),
                    limit,
                });
            }
        }
        let path = self
            .dir
            .join(format!("{:012}_{}.json", file.seq, rid(request_id)));
        let written = bytes.and_then(|bytes| {
            fsutil::create_private_dir(&self.dir)?;
            fsutil::write_atomic(&path, &bytes, 0o600)
        });
        written.map_err(|source| QueueError::Write {
            path: path.clone(),
            source,
        })?;
        self.next_seq += 1;
        self.entries.push(Queued {
            file,
            path,
            token,
            launching: false,
        });
        Ok(self.waiting())
    }

    /// The head's launch begins: it stops waiting, and hands over its
    /// token. Its file stays until [`WorkloadQueue::launched`].
    pub fn begin_launch(&mut self, request_id: &str) -> Option<(QueuedFile, Option<String>)> {
        let queued = self
            .entries
            .iter_mut()
            .find(|q| q.file.request_id == request_id && q.is_waiting())?;
        queued.launching = true;
        Some((queued.file.clone(), queued.token.take()))
    }

    /// Whether `request_id` is a queued one being launched.
    pub fn is_launching(&self, request_id: &str) -> bool {
        self.get(request_id).is_some_and(|q| q.launching)
    }

    /// Its record is synced: the file goes.
    pub fn launched(&mut self, request_id: &str) {
        if let Some(queued) = self.take(request_id) {
            remove_file(&queued.path);
        }
    }

    /// Marks the entry as ended without running (synced), so a node that
    /// dies before the terminal event is recorded reports it again.
    pub fn end(&mut self, request_id: &str, end: QueueEnd) -> io::Result<()> {
        let Some(queued) = self
            .entries
            .iter_mut()
            .find(|q| q.file.request_id == request_id)
        else {
            return Ok(());
        };
        queued.launching = false;
        queued.file.ended = Some(end);
        fsutil::write_json(&queued.path, &queued.file)
    }

    /// The terminal event of an ended entry is in the outbox: the entry
    /// goes. `false` when `request_id` has no ended entry.
    pub fn remove_ended(&mut self, request_id: &str) -> bool {
        let ended = self.get(request_id).is_some_and(|q| q.file.ended.is_some());
        if ended {
            self.launched(request_id);
        }
        ended
    }

    fn take(&mut self, request_id: &str) -> Option<Queued> {
        let at = self
            .entries
            .iter()
            .position(|q| q.file.request_id == request_id)?;
        Some(self.entries.remove(at))
    }

    /// `queued_workloads` of the status output, in order.
    pub fn summaries(&self, now_ms: u64) -> Vec<Value> {
        self.entries
            .iter()
            .filter(|q| q.is_waiting())
            .enumerate()
            .map(|(at, q)| {
                json!({
                    "request_id": q.file.request_id,
                    "type": q.file.workload_type,
                    "position": at + 1,
                    "queued_for_seconds": (now_ms.saturating_sub(q.file.queued_unix_ms) / 1000),
                })
            })
            .collect()
    }
}

fn warn_unreadable(problem: &StateFileError) {
    tracing::warn!(
        "{problem}; this queued request is skipped and its file left for the operator (remove it once looked at)"
    );
}

/// Removes a queue file and syncs the directory, so a removal that was
/// answered for (a cancel) is not undone by a power loss.
fn remove_file(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!("cannot remove the queue file {}: {e}", path.display());
            return;
        }
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(n: u64) -> Map<String, Value> {
        json!({"n": n}).as_object().unwrap().clone()
    }

    #[test]
    fn order_positions_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = WorkloadQueue::open(dir.path(), 5);
        for (n, id) in ["a", "b/../x", "c"].into_iter().enumerate() {
            let pos = q
                .push(
                    WorkloadKind::Training,
                    id,
                    params(n as u64),
                    Some("t".into()),
                )
                .unwrap();
            assert_eq!(pos, n + 1);
        }
        assert_eq!(q.position("c"), Some(3));
        let (file, token) = q.begin_launch("a").unwrap();
        assert_eq!(
            (file.request_id.as_str(), token.as_deref()),
            ("a", Some("t"))
        );
        assert_eq!(q.position("b/../x"), Some(1));
        assert_eq!(q.head().unwrap().request_id, "b/../x");
        q.end("c", QueueEnd::Cancelled { at_unix_ms: 1 }).unwrap();
        assert_eq!(q.waiting(), 1);

        // A restart: order kept, tokens gone, the launching one waits
        // again unless its record exists, the ended one stays ended.
        let mut again = WorkloadQueue::open(dir.path(), 5);
        again.drop_started(|id| id == "a");
        let ids: Vec<&str> = again
            .entries
            .iter()
            .map(|q| q.file.request_id.as_str())
            .collect();
        assert_eq!(ids, ["b/../x", "c"]);
        assert_eq!(again.ended(), ["c"]);
        assert!(again.remove_ended("c"));
        assert!(!again.remove_ended("b/../x"));
        assert_eq!(
            std::fs::read_dir(dir.path().join(QUEUE_DIR))
                .unwrap()
                .count(),
            1
        );
        let pos = again
            .push(WorkloadKind::Inference, "d", params(9), None)
            .unwrap();
        assert_eq!(pos, 2);
        assert!(again.entries[1].file.seq > 3, "sequence numbers go on");
    }

    #[test]
    fn the_file_holds_no_token_and_unreadable_files_are_left() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = WorkloadQueue::open(dir.path(), 5);
        q.push(
            WorkloadKind::Training,
            "a",
            params(1),
            Some("secret".into()),
        )
        .unwrap();
        let qdir = dir.path().join(QUEUE_DIR);
        let file = std::fs::read_dir(&qdir).unwrap().next().unwrap().unwrap();
        assert!(!std::fs::read_to_string(file.path())
            .unwrap()
            .contains("secret"));
        std::fs::write(qdir.join("000000000007_b.json"), "{torn").unwrap();
        let mut again = WorkloadQueue::open(dir.path(), 5);
        assert_eq!(again.waiting(), 1);
        assert!(qdir.join("000000000007_b.json").exists());
        again
            .push(WorkloadKind::Training, "c", params(2), None)
            .unwrap();
        assert_eq!(again.entries[1].file.seq, 8);
    }
}
