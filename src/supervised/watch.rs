//! Learning the moment a process ends, for processes that are not our
//! children (adopted after a restart): `pidfd_open` makes the exit a
//! readable file descriptor tokio can wait on. Kernels without pidfd (before
//! 5.3) get a once-a-second poll of `/proc` instead.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::procfs;

/// How often the fallback looks.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Resolves when the process (pid, start time) has ended.
pub async fn process_exit(pid: i32, start_time: u64) {
    if let Some(fd) = pidfd_open(pid) {
        // The pidfd refers to whatever process has this pid now: make sure
        // it is still ours, or it already ended.
        if !procfs::is_running(pid, start_time) {
            return;
        }
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and
        // unchanged until the AsyncFd is dropped.
        if let Ok(async_fd) = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
            let _ = async_fd.readable().await;
            return;
        }
    }
    while procfs::is_running(pid, start_time) {
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: a plain syscall; the returned descriptor is owned from here on.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notices_the_exit_of_a_non_child() {
        // `sh` starts `sleep` in the background and exits: the sleep is not
        // our child, like an adopted workload.
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 0.3 & echo $!"])
            .output()
            .unwrap();
        let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let start = procfs::start_time(pid).unwrap();
        let began = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), process_exit(pid, start))
            .await
            .expect("exit noticed");
        assert!(began.elapsed() < Duration::from_secs(2));
    }
}
