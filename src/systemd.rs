//! What the node does differently under systemd: readiness notification
//! (`sd_notify`, for `Type=notify` units) and recognising the journal as
//! its stderr (`JOURNAL_STREAM`). Both are plain environment and socket
//! protocols (sd_notify(3), systemd.exec(5)), written here with std alone
//! rather than linking libsystemd.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// What the node tells the service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// Connected to the broker and subscribed: commands reach the node.
    Ready,
    /// The graceful stop has begun.
    Stopping,
}

impl Notify {
    fn message(self) -> &'static str {
        match self {
            Notify::Ready => "READY=1",
            Notify::Stopping => "STOPPING=1",
        }
    }
}

/// Sends `state` (plus a human `STATUS=` line) to `$NOTIFY_SOCKET`, when
/// systemd set it; a no-op otherwise. A failure is logged, never fatal: a
/// node that cannot notify still serves (systemd then times the start out
/// and says why).
pub fn notify(state: Notify, status: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = socket.to_string_lossy();
    let message = format!("{}\nSTATUS={status}\n", state.message());
    match send(&socket, message.as_bytes()) {
        Ok(()) => tracing::debug!("sd_notify {} to {socket}", state.message()),
        Err(error) => tracing::warn!(
            "cannot tell systemd {} through NOTIFY_SOCKET {socket}: {error}",
            state.message()
        ),
    }
}

/// One datagram to the notify socket: a path, or an abstract name written
/// with a leading '@' (sd_notify(3)).
fn send(socket: &str, message: &[u8]) -> io::Result<()> {
    let address = match socket.strip_prefix('@') {
        Some(name) => abstract_address(name.as_bytes())?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let sender = UnixDatagram::unbound()?;
    sender.send_to_addr(message, &address)?;
    Ok(())
}

#[cfg(target_os = "linux")]
fn abstract_address(name: &[u8]) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_address(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract socket names exist on Linux only",
    ))
}

/// Whether stderr is the journal: systemd sets `JOURNAL_STREAM` to the
/// `device:inode` of the stream it connected, and stderr is still that
/// stream (not redirected by a wrapper script). The journal stamps every
/// line itself, so the node leaves its own timestamps out.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    journal_stream_matches(&stream.to_string_lossy(), stat.st_dev, stat.st_ino)
}

fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.split_once(':') else {
        return false;
    };
    d.trim().parse() == Ok(dev) && i.trim().parse() == Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert!(journal_stream_matches("8:1234", 8, 1234));
        assert!(!journal_stream_matches("8:1234", 8, 1235));
        assert!(!journal_stream_matches("8", 8, 1234));
        assert!(!journal_stream_matches("", 0, 0));
    }

    #[test]
    fn notify_reaches_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), b"READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("cw-notify-test-{}", std::process::id());
        let address = abstract_address(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&address).unwrap();
        send(&format!("@{name}"), b"STOPPING=1").unwrap();
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
