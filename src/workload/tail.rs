//! Live output: new bytes of the log files go out on the logs topic with
//! their byte offsets, and new lines of the progress file become `progress`
//! events. The offsets only move past what the MQTT link took: a chunk it
//! refuses (a broker outage, a full allowance) or a fresh broker session
//! drops is [`OutputTail::rewind`]-ed and read again later, and a progress
//! value it refuses waits unless a newer one comes. The bytes are on disk, so
//! nothing queues in memory. How far each stream has gone is saved next to
//! the logs, so a restarted node carries on where the last one stopped:
//! nothing is skipped (a crash between a publish and the next save can
//! repeat a chunk; receivers place chunks by offset, so a repeat is
//! harmless).
//!
//! Files are read only when regular and a bounded window at a time
//! (`fsutil`). A progress line longer than [`MAX_PROGRESS_LINE`] is skipped
//! with one warning, however many polls it spans, and the lines after it
//! are delivered.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::paths::WorkloadPaths;
use super::record::{load_json, write_json, WorkloadRecord};
use crate::fsutil::{self, Links};
use crate::protocol::Stream;

/// Largest `data` in one logs message.
pub const MAX_CHUNK: usize = 64 * 1024;
/// Bound on what one poll reads per stream, so one chatty workload cannot
/// monopolise the node.
const MAX_PER_POLL: usize = 16 * MAX_CHUNK;
/// The longest progress line the node reads; a longer one is skipped.
pub const MAX_PROGRESS_LINE: usize = 64 * 1024;
/// At most four progress events a second per workload; the latest wins.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// Offsets are saved at most this often while a workload runs.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offsets {
    pub stdout: u64,
    pub stderr: u64,
    pub progress: u64,
}

impl Offsets {
    fn of(&mut self, stream: Stream) -> &mut u64 {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }
}

/// Something to publish.
#[derive(Debug, Clone, PartialEq)]
pub enum TailMessage {
    /// A logs-topic payload.
    Log(Value),
    /// The output of a `progress` event for workload `request_id`.
    Progress { request_id: String, value: Value },
}

impl TailMessage {
    /// Where a logs message starts: `(request_id, stream, offset)`.
    pub fn position(&self) -> Option<(&str, Stream, u64)> {
        match self {
            TailMessage::Log(value) => Some((
                value["request_id"].as_str()?,
                Stream::from_name(value["stream"].as_str()?)?,
                value["offset"].as_u64()?,
            )),
            TailMessage::Progress { .. } => None,
        }
    }
}

#[derive(Debug)]
pub struct OutputTail {
    offsets: Offsets,
    saved: Offsets,
    last_save: Instant,
    last_progress: Option<Instant>,
    pending_progress: Option<Value>,
}

impl OutputTail {
    /// Resumes from the saved offsets, if any.
    pub fn load(paths: &WorkloadPaths) -> OutputTail {
        let offsets = load_json::<Offsets>(&paths.offsets())
            .ok()
            .flatten()
            .unwrap_or_default();
        OutputTail {
            offsets,
            saved: offsets,
            last_save: Instant::now(),
            last_progress: None,
            pending_progress: None,
        }
    }

    /// Everything new since the last poll. `last` flushes the pending
    /// progress regardless of the rate limit (the workload has ended).
    pub fn poll(
        &mut self,
        record: &WorkloadRecord,
        paths: &WorkloadPaths,
        last: bool,
    ) -> Vec<TailMessage> {
        let mut out = Vec::new();
        for (stream, path) in [
            (Stream::Stdout, paths.stdout()),
            (Stream::Stderr, paths.stderr()),
        ] {
            let offset = self.offsets.of(stream);
            for (at, chunk) in read_chunks(&path, offset, last) {
                out.push(TailMessage::Log(log_message(record, stream, at, &chunk)));
            }
        }
        if let Some(value) = read_progress(&paths.progress(), &mut self.offsets.progress) {
            self.pending_progress = Some(value);
        }
        let due = self
            .last_progress
            .is_none_or(|at| at.elapsed() >= PROGRESS_INTERVAL);
        if due || last {
            if let Some(value) = self.pending_progress.take() {
                self.last_progress = Some(Instant::now());
                out.push(TailMessage::Progress {
                    request_id: record.request_id.clone(),
                    value,
                });
            }
        }
        out
    }

    /// The chunk of `stream` from `offset` on was not published: the next
    /// poll reads it again.
    pub fn rewind(&mut self, stream: Stream, offset: u64) {
        let current = self.offsets.of(stream);
        *current = (*current).min(offset);
    }

    /// A progress value was not published: it goes out next, unless a newer
    /// one comes first.
    pub fn unsent_progress(&mut self, value: Value) {
        self.pending_progress.get_or_insert(value);
    }

    /// Saves the offsets when they moved and a save is due (or `force`).
    pub fn save(&mut self, paths: &WorkloadPaths, force: bool) {
        if self.offsets == self.saved || (!force && self.last_save.elapsed() < SAVE_INTERVAL) {
            return;
        }
        if let Err(e) = write_json(&paths.offsets(), &self.offsets) {
            tracing::warn!(
                "cannot save live-output offsets {}: {e}",
                paths.offsets().display()
            );
            return;
        }
        self.saved = self.offsets;
        self.last_save = Instant::now();
    }
}

fn log_message(record: &WorkloadRecord, stream: Stream, offset: u64, chunk: &[u8]) -> Value {
    let mut message = json!({
        "request_id": record.request_id,
        "workload_type": record.workload_type,
        "stream": stream.name(),
        "offset": offset,
    });
    match std::str::from_utf8(chunk) {
        Ok(text) => message["data"] = json!(text),
        Err(_) => {
            // Not text: send the exact bytes so offsets stay meaningful.
            message["data"] = json!(String::from_utf8_lossy(chunk));
            message["data_b64"] = json!(base64::engine::general_purpose::STANDARD.encode(chunk));
            message["encoding"] = json!("base64");
        }
    }
    message
}

/// New bytes from `offset`, in chunks of at most [`MAX_CHUNK`] that do not
/// split a UTF-8 character (unless the bytes are not text, or `last`).
fn read_chunks(path: &Path, offset: &mut u64, last: bool) -> Vec<(u64, Vec<u8>)> {
    // A stat is the whole cost of a quiet workload: open only when it grew.
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if len <= *offset {
        return Vec::new();
    }
    let Ok(Some((bytes, _))) =
        fsutil::read_range(path, Links::Follow, *offset, MAX_PER_POLL as u64)
    else {
        return Vec::new();
    };
    let mut chunks = Vec::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        let mut take = rest.len().min(MAX_CHUNK);
        if let Err(e) = std::str::from_utf8(&rest[..take]) {
            if e.error_len().is_none() && e.valid_up_to() > 0 {
                take = e.valid_up_to(); // a character continues past the window
            } else if e.error_len().is_none() && !last && take == rest.len() {
                break; // a lone partial character: wait for the rest of it
            }
        }
        chunks.push((*offset, rest[..take].to_vec()));
        *offset += take as u64;
        rest = &rest[take..];
    }
    chunks
}

/// The last valid JSON line among the complete new lines of the progress
/// file; the offset moves past every complete line.
///
/// A line over [`MAX_PROGRESS_LINE`] is skipped: the offset moves past what
/// there is of it, even before its end is written, so it never pins the
/// reader. The byte before the offset says whether a skip is under way (an
/// offset inside a line, not after a newline), so a restarted node goes on
/// skipping where the last one stopped, without warning again.
fn read_progress(path: &Path, offset: &mut u64) -> Option<Value> {
    if std::fs::metadata(path).ok()?.len() <= *offset {
        return None;
    }
    let from = offset.saturating_sub(1);
    let (bytes, _) =
        fsutil::read_range(path, Links::Follow, from, MAX_PER_POLL as u64 + 1).ok()??;
    let (mut skipping, window) = match (*offset, bytes.split_first()) {
        (0, _) => (false, bytes.as_slice()),
        (_, Some((before, rest))) => (*before != b'\n', rest),
        (_, None) => return None,
    };
    let mut latest = None;
    let mut used = 0;
    while used < window.len() {
        let rest = &window[used..];
        let Some(end) = rest.iter().position(|b| *b == b'\n') else {
            if !skipping && rest.len() > MAX_PROGRESS_LINE {
                warn_long_line(path, *offset + used as u64);
                skipping = true;
            }
            if skipping {
                used = window.len(); // the rest of a long line, not yet ended
            }
            break;
        };
        let line = &rest[..end];
        if skipping {
            skipping = false; // the end of a long line
        } else if line.len() > MAX_PROGRESS_LINE {
            warn_long_line(path, *offset + used as u64);
        } else if !line.iter().all(u8::is_ascii_whitespace) {
            if let Ok(value) = serde_json::from_slice::<Value>(line) {
                latest = Some(value);
            }
        }
        used += end + 1;
    }
    *offset += used as u64;
    latest
}

fn warn_long_line(path: &Path, at: u64) {
    tracing::warn!(
        "skipping a progress line over {MAX_PROGRESS_LINE} bytes at offset {at} of {}: \
         progress lines are limited to 64 KiB; the lines after it are read",
        path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::WorkloadKind;

    #[test]
    fn chunks_respect_size_and_characters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text = "é".repeat(MAX_CHUNK); // 2 bytes each
        std::fs::write(&path, &text).unwrap();
        let mut offset = 0;
        let chunks = read_chunks(&path, &mut offset, false);
        let mut joined = Vec::new();
        for (at, chunk) in &chunks {
            assert_eq!(*at as usize, joined.len());
            assert!(chunk.len() <= MAX_CHUNK);
            assert!(std::str::from_utf8(chunk).is_ok());
            joined.extend_from_slice(chunk);
        }
        assert_eq!(joined, text.as_bytes());
        assert_eq!(offset as usize, text.len());
        assert!(
            read_chunks(&path, &mut offset, false).is_empty(),
            "nothing is re-sent"
        );
    }

    #[test]
    fn a_rewound_chunk_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let paths = WorkloadPaths::new(dir.path(), "training", "r");
        std::fs::write(paths.stdout(), "one\ntwo\n").unwrap();
        let record = WorkloadRecord::starting("r", WorkloadKind::Training, &paths);
        let mut tail = OutputTail::load(&paths);
        let first = tail.poll(&record, &paths, false);
        assert_eq!(first[0].position(), Some(("r", Stream::Stdout, 0)));
        assert!(tail.poll(&record, &paths, false).is_empty());
        tail.rewind(Stream::Stdout, 4);
        let again = tail.poll(&record, &paths, false);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].position(), Some(("r", Stream::Stdout, 4)));
        let TailMessage::Log(value) = &again[0] else {
            panic!("a log message")
        };
        assert_eq!(value["data"], "two\n");
        tail.rewind(Stream::Stdout, 9);
        assert!(
            tail.poll(&record, &paths, false).is_empty(),
            "never forward"
        );
    }

    #[test]
    fn unsent_progress_waits_unless_a_newer_one_comes() {
        let dir = tempfile::tempdir().unwrap();
        let paths = WorkloadPaths::new(dir.path(), "training", "r");
        let record = WorkloadRecord::starting("r", WorkloadKind::Training, &paths);
        let mut tail = OutputTail::load(&paths);
        tail.unsent_progress(json!({"step": 1}));
        let out = tail.poll(&record, &paths, true);
        assert!(matches!(&out[0], TailMessage::Progress { value, .. } if value["step"] == 1));
        tail.unsent_progress(json!({"step": 1}));
        std::fs::write(paths.progress(), "{\"step\":2}\n").unwrap();
        let out = tail.poll(&record, &paths, true);
        assert!(matches!(&out[0], TailMessage::Progress { value, .. } if value["step"] == 2));
    }

    #[test]
    fn progress_takes_the_latest_complete_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        std::fs::write(&path, "{\"step\":1}\nnot json\n{\"step\":2}\n{\"step\":3").unwrap();
        let mut offset = 0;
        assert_eq!(read_progress(&path, &mut offset), Some(json!({"step": 2})));
        assert_eq!(
            read_progress(&path, &mut offset),
            None,
            "the partial line waits"
        );
    }

    #[test]
    fn a_long_progress_line_is_skipped_across_polls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let long = "x".repeat(MAX_PROGRESS_LINE + 1);
        let mut text = format!("{{\"step\":1}}\n{long}");
        std::fs::write(&path, &text).unwrap();
        let mut offset = 0;
        assert_eq!(read_progress(&path, &mut offset), Some(json!({"step": 1})));
        assert_eq!(offset as usize, text.len(), "the long line does not pin");
        text.push_str(&format!("{long}\n{{\"step\":2}}\n{{\"step\":3"));
        std::fs::write(&path, &text).unwrap();
        assert_eq!(read_progress(&path, &mut offset), Some(json!({"step": 2})));
        text.push_str("}\n");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(read_progress(&path, &mut offset), Some(json!({"step": 3})));
        // A complete long line within one window is skipped the same way.
        text.push_str(&format!("{long}\n{{\"step\":4}}\n"));
        std::fs::write(&path, &text).unwrap();
        assert_eq!(read_progress(&path, &mut offset), Some(json!({"step": 4})));
        assert_eq!(offset as usize, text.len());
    }

    #[test]
    fn a_line_longer_than_a_poll_window_never_pins_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let text = format!("{}\n{{\"step\":9}}\n", "y".repeat(3 * MAX_PER_POLL));
        std::fs::write(&path, &text).unwrap();
        let mut offset = 0;
        let mut found = None;
        for _ in 0..5 {
            found = found.or(read_progress(&path, &mut offset));
        }
        assert_eq!(found, Some(json!({"step": 9})));
        assert_eq!(offset as usize, text.len());
    }
}
