//! Terminal events that must not be lost.
//!
//! An event is written here before it is published and removed only when
//! the broker has acknowledged it (QoS 1 PUBACK, matched by the MQTT link's
//! ledger). After a crash, a broker outage or a new broker session, whatever
//! is still here is published again: receivers dedupe by request_id and
//! event, so "again" is safe where "never" would not be.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fsutil;

/// One stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub topic: String,
    pub payload: Value,
}

/// The outbox directory and the ids of what it holds.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    next_id: u64,
    files: BTreeMap<u64, PathBuf>,
    /// Names of the events an earlier run left here: they are published
    /// again on the first connect, so reporting one of them once more
    /// (a run that crashed between storing it and recording the end) must
    /// not publish it a second time.
    left_by_earlier_run: HashSet<String>,
}

impl Outbox {
    /// Opens (creating) `dir` and indexes the events left by earlier runs.
    pub fn open(dir: &Path) -> std::io::Result<Outbox> {
        fsutil::create_private_dir(dir)?;
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        names.sort();
        let left_by_earlier_run = names
            .iter()
            .filter_map(|p| Some(p.file_stem()?.to_string_lossy().into_owned()))
            .collect();
        let files: BTreeMap<u64, PathBuf> = (1..).zip(names).collect();
        Ok(Outbox {
            dir: dir.to_owned(),
            next_id: files.len() as u64 + 1,
            files,
            left_by_earlier_run,
        })
    }

    /// Whether an earlier run stored the event `name` and left it here:
    /// it goes out (again) on the first connect, whatever this run does.
    pub fn left_by_earlier_run(&self, name: &str) -> bool {
        self.left_by_earlier_run.contains(name)
    }

    /// Stores an event durably under `name`, which must be unique per event
    /// (`<type>_<rid>.<event>`): storing the same event twice, as a node
    /// that crashed half-way through reporting it will, keeps one copy.
    pub fn add(&mut self, name: &str, entry: &OutboxEntry) -> std::io::Result<u64> {
        let path = self.dir.join(format!("{name}.json"));
        let bytes = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        fsutil::write_atomic(&path, &bytes, 0o600)?;
        if let Some((id, _)) = self.files.iter().find(|(_, p)| **p == path) {
            return Ok(*id);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.files.insert(id, path);
        Ok(id)
    }

    /// Every stored event, oldest first; unreadable files are skipped with
    /// a warning rather than blocking the rest.
    pub fn pending(&self) -> Vec<(u64, OutboxEntry)> {
        self.files
            .iter()
            .filter_map(|(id, path)| {
                let read = std::fs::read(path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| {
                        serde_json::from_slice::<OutboxEntry>(&b).map_err(|e| e.to_string())
                    });
                match read {
                    Ok(entry) => Some((*id, entry)),
                    Err(e) => {
                        tracing::warn!(
                            "outbox file {} is unreadable ({e}); skipping it",
                            path.display()
                        );
                        None
                    }
                }
            })
            .collect()
    }

    /// Rewrites stored event `id` (cut to fit the broker); a failed write
    /// is only logged: the next resend cuts it again.
    pub fn replace(&mut self, id: u64, entry: &OutboxEntry) {
        let Some(path) = self.files.get(&id) else {
            return;
        };
        let written = serde_json::to_vec(entry)
            .map_err(std::io::Error::other)
            .and_then(|bytes| fsutil::write_atomic(path, &bytes, 0o600));
        if let Err(e) = written {
            tracing::warn!("cannot rewrite outbox file {}: {e}", path.display());
        }
    }

    /// The broker has the event: forget it.
    pub fn delivered(&mut self, id: u64) {
        if let Some(path) = self.files.remove(&id) {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(
                    "cannot remove delivered outbox file {}: {e}",
                    path.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_until_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let entry = OutboxEntry {
            topic: "t".into(),
            payload: serde_json::json!({"event": "completed"}),
        };
        let mut outbox = Outbox::open(dir.path()).unwrap();
        let first = outbox.add("training_r1.completed", &entry).unwrap();
        outbox.add("training_r2.failed", &entry).unwrap();
        assert_eq!(
            outbox.add("training_r2.failed", &entry).unwrap(),
            first + 1,
            "same event, same entry"
        );
        let mut reopened = Outbox::open(dir.path()).unwrap();
        assert_eq!(reopened.pending().len(), 2);
        outbox.delivered(first);
        let mut again = Outbox::open(dir.path()).unwrap();
        assert_eq!(again.pending().len(), 1);
        let (id, _) = again.pending()[0].clone();
        again.delivered(id);
        reopened.files.clear();
        assert!(Outbox::open(dir.path()).unwrap().pending().is_empty());
    }
}
