//! The model server's socket protocol: one JSON object per line each way.
//!
//! Requests: `{"op": "infer", "request": {...}}`, `{"op": "info"}`,
//! `{"op": "shutdown"}`. Replies: `{"ok": true, ...}` or
//! `{"ok": false, "kind": "bad_request"|"overloaded"|"inference", "error"}`.
//! A streaming request gets `{"event": {...}}` lines before its reply.
//! The node opens one connection per request (a Unix connect costs
//! microseconds), so concurrent requests never wait on each other's replies.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The longest reply line the node reads (outputs of large tensors).
pub const MAX_LINE: usize = 256 * 1024 * 1024;

/// Large tensors arrive in one line; reading them in big chunks saves
/// hundreds of small reads.
pub const READ_BUFFER: usize = 1024 * 1024;

/// Sends one request and reads its reply.
pub async fn call(socket: &Path, request: &Value, timeout: Duration) -> Result<Value, String> {
    call_streaming(socket, request, timeout, |_| {}).await
}

/// Sends one request and reads its reply, handing each `{"event": ...}`
/// line that comes before it to `on_event`.
pub async fn call_streaming(
    socket: &Path,
    request: &Value,
    timeout: Duration,
    mut on_event: impl FnMut(Value),
) -> Result<Value, String> {
    let exchange = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| format!("cannot reach the model server at {}: {e}", socket.display()))?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        line.push(b'\n');
        write
            .write_all(&line)
            .await
            .map_err(|e| format!("the model server closed the connection: {e}"))?;
        let mut reader = BufReader::with_capacity(READ_BUFFER, read);
        loop {
            let line = read_line(&mut reader).await?.ok_or_else(|| {
                "the model server closed the connection without answering (did it crash?)"
                    .to_owned()
            })?;
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
        Err(_) => Err(format!(
            "the model server did not answer within {} s",
            timeout.as_secs_f64()
        )),
    }
}

/// Reads one JSON line; `Ok(None)` at end of stream.
pub async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Value>, String> {
    let mut buffer = Vec::new();
    let read = (&mut *reader)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut buffer)
        .await
        .map_err(|e| format!("reading from the model server socket failed: {e}"))?;
    if read == 0 {
        return Ok(None);
    }
    if buffer.last() != Some(&b'\n') && read as usize >= MAX_LINE {
        return Err(format!("a message is longer than {MAX_LINE} bytes"));
    }
    serde_json::from_slice(&buffer)
        .map(Some)
        .map_err(|e| format!("a message is not valid JSON: {e}"))
}
