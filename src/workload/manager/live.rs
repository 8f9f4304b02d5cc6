//! Live output of the workloads: what to publish, and what the MQTT link
//! could not take (read again later, from the same offset).

use super::*;

impl Workloads {
    /// New output of every running workload.
    pub fn poll_output(&mut self) -> Vec<TailMessage> {
        let mut out = Vec::new();
        for entry in self.entries.values_mut() {
            if let (Some(tail), WorkloadState::Running) = (entry.tail.as_mut(), entry.record.state)
            {
                out.extend(tail.poll(&entry.record, &entry.paths, false));
            }
        }
        out
    }

    /// The rest of an ended workload's output (its tail stays until
    /// [`Workloads::end_output`]).
    pub fn poll_ended(&mut self, request_id: &str) -> Vec<TailMessage> {
        match self.entries.get_mut(request_id) {
            Some(Entry {
                tail: Some(tail),
                record,
                paths,
                ..
            }) => tail.poll(record, paths, true),
            _ => Vec::new(),
        }
    }

    /// `unsent` were polled but not published: their streams go back to
    /// where they start. Then the offsets that are due are saved.
    pub fn commit_output(&mut self, unsent: Vec<TailMessage>) {
        for message in unsent {
            match message {
                TailMessage::Progress { request_id, value } => {
                    if let Some(tail) = self.tail_of(&request_id) {
                        tail.unsent_progress(value);
                    }
                }
                log => {
                    if let Some((request_id, stream, offset)) = log.position() {
                        self.rewind_output(request_id, stream, offset);
                    }
                }
            }
        }
        for entry in self.entries.values_mut() {
            if let Some(tail) = entry.tail.as_mut() {
                tail.save(&entry.paths, false);
            }
        }
    }

    /// Output of `stream` from `offset` on never reached the broker (a
    /// fresh broker session dropped it): publish it again.
    pub fn rewind_output(&mut self, request_id: &str, stream: Stream, offset: u64) {
        if let Some(tail) = self.tail_of(request_id) {
            tail.rewind(stream, offset);
        }
    }

    /// An ended workload's output is all out: stop following it.
    pub fn end_output(&mut self, request_id: &str) {
        if let Some(entry) = self.entries.get_mut(request_id) {
            if let Some(mut tail) = entry.tail.take() {
                tail.save(&entry.paths, true);
            }
        }
    }

    fn tail_of(&mut self, request_id: &str) -> Option<&mut OutputTail> {
        self.entries.get_mut(request_id)?.tail.as_mut()
    }
}
