//! Which output stream of a process a piece of live output comes from.

use serde::{Deserialize, Serialize};

/// `stdout` or `stderr`, as the logs topic names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub const BOTH: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

    /// The wire name; the same as the serde form.
    pub const fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    pub fn from_name(name: &str) -> Option<Stream> {
        Stream::BOTH.into_iter().find(|s| s.name() == name)
    }
}
