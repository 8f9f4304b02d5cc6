//! The model server's socket protocol: one JSON object per line each way.
//!
//! Requests: `{"op": "infer", "request": {...}}`, `{"op": "info"}`,
//! `{"op": "shutdown"}`. Replies: `{"ok": true, ...}` or
//! `{"ok": false, "kind": "bad_request"|"overloaded"|"inference", "error"}`.
//! A streaming request gets `{"event": {...}}` lines before its reply.
//! The node opens one connection per request (a Unix connect costs
//! microseconds), so concurrent requests never wait on each other's replies.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The longest reply line the node reads (outputs of large tensors).
pub const MAX_LINE: usize = 256 * 1024 * 1024;

/// Large tensors arrive in one line; reading them in big chunks saves
/// hundreds of small reads.
pub const READ_BUFFER: usize = 1024 * 1024;

/// Why a call to a model server got no reply.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot reach the model server at {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Encode(serde_json::Error),
    #[error("the model server closed the connection: {0}")]
    Write(#[source] io::Error),
    #[error("the model server closed the connection without answering (did it crash?)")]
    Closed,
    #[error("the model server did not answer within {} s", timeout.as_secs_f64())]
    Timeout { timeout: Duration },
    #[error("reading from the model server socket failed: {0}")]
    Read(#[source] io::Error),
    #[error("a message is longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("a message is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
}

/// Sends one request and reads its reply.
pub async fn call(socket: &Path, request: &Value, timeout: Duration) -> Result<Value, WireError> {
    call_streaming(socket, request, timeout, |_| {}).await
}

/// Sends one request and reads its reply, handing each `{"event": ...}`
/// line that comes before it to `on_event`.
pub async fn call_streaming(
    socket: &Path,
    request: &Value,
    timeout: Duration,
    mut on_event: impl FnMut(Value),
) -> Result<Value, WireError> {
    let exchange = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| WireError::Connect {
                socket: socket.to_owned(),
                source,
            })?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request).map_err(WireError::Encode)?;
        line.push(b'\n');
        write.write_all(&line).await.map_err(WireError::Write)?;
        let mut reader = BufReader::with_capacity(READ_BUFFER, read);
        loop {
            let line = read_line(&mut reader).await?.ok_or(WireError::Closed)?;
            match line {
                Value::Object(mut fields) if fields.contains_key("event") => {
                    on_event(fields.remove("event").unwrap_or_default())
                }
                reply => return Ok(reply),
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(WireError::Timeout { timeout }),
    }
}

/// Reads one JSON line; `Ok(None)` at end of stream.
pub async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Value>, WireError> {
    let mut buffer = Vec::new();
    let read = (&mut *reader)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut buffer)
        .await
        .map_err(WireError::Read)?;
    if read == 0 {
        return Ok(None);
    }
    if buffer.last() != Some(&b'\n') && read as usize >= MAX_LINE {
        return Err(WireError::TooLong);
    }
    serde_json::from_slice(&buffer)
        .map(Some)
        .map_err(WireError::NotJson)
}
