//! What `/proc` tells about a process: alive or not, and since when.
//!
//! A pid alone is not an identity: after a reboot or a long uptime the same
//! number may belong to a stranger. The start time (field 22 of
//! `/proc/<pid>/stat`, in clock ticks since boot) makes (pid, start time) a
//! name no other process can share, so the node never signals or adopts a
//! process it did not start.

/// The start time of `pid`, or `None` when there is no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// True when `pid` is the process that started at `start_time` and has not
/// been reaped. A zombie still counts: its exit has not been collected.
pub fn is_same_process(pid: i32, expected_start: u64) -> bool {
    start_time(pid) == Some(expected_start)
}

/// True when the process is alive and not a zombie.
pub fn is_running(pid: i32, expected_start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let mut fields = stat[close + 2..].split_whitespace();
    let state = fields.next().unwrap_or("");
    let start = fields.nth(18).and_then(|s| s.parse::<u64>().ok());
    start == Some(expected_start) && state != "Z" && state != "X"
}

/// The process group of `pid`, or `None` when there is no such process.
pub fn process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// True while any process is left in process group `pgid`.
pub fn group_alive(pgid: i32) -> bool {
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    !matches!(
        kill(Pid::from_raw(-pgid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_a_start_time() {
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap();
        assert!(is_same_process(me, start));
        assert!(is_running(me, start));
        assert!(!is_same_process(me, start + 1));
        assert_eq!(start_time(i32::MAX), None);
        assert_eq!(process_group(me), Some(nix::unistd::getpgrp().as_raw()));
    }
}
