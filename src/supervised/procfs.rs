//! What `/proc` tells about a process: alive or not, since when, and
//! where it sits (parent, process group, session).
//!
//! A pid alone is not an identity: after a reboot or a long uptime the same
//! number may belong to a stranger. The start time (field 22 of
//! `/proc/<pid>/stat`, in clock ticks since boot) makes (pid, start time) a
//! name no other process can share, so the node never signals or adopts a
//! process it did not start.
//!
//! Zombies are dead (docs/design.md, "Containment"): a process that has exited
//! but whose parent has not collected its status yet is never "running",
//! whoever is late to reap it.

/// The fields of `/proc/<pid>/stat` the node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub start_time: u64,
}

impl Stat {
    /// Still running: neither a zombie nor dead.
    pub fn is_live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

/// The stat of `pid`, or `None` when there is no such process.
pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(
        pid,
        &std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?,
    )
}

fn parse_stat(pid: i32, text: &str) -> Option<Stat> {
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'.
    let mut fields = text.get(text.rfind(')')? + 2..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let mut number = || fields.next()?.parse::<i64>().ok();
    let (ppid, pgrp, session) = (number()?, number()?, number()?);
    // Field 22 (starttime) is the 16th after the session (field 6).
    let start_time = fields.nth(15)?.parse().ok()?;
    Some(Stat {
        pid,
        state,
        ppid: ppid as i32,
        pgrp: pgrp as i32,
        session: session as i32,
        start_time,
    })
}

/// Every process this node can see.
pub fn all() -> Vec<Stat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .collect()
}

/// The start time of `pid`, or `None` when there is no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

/// True when `pid` is the process that started at `start_time` and has not
/// been reaped. A zombie still counts: its exit has not been collected.
pub fn is_same_process(pid: i32, expected_start: u64) -> bool {
    start_time(pid) == Some(expected_start)
}

/// True when the process is alive and not a zombie.
pub fn is_running(pid: i32, expected_start: u64) -> bool {
    stat(pid).is_some_and(|s| s.start_time == expected_start && s.is_live())
}

/// The process group of `pid`, or `None` when there is no such process.
pub fn process_group(pid: i32) -> Option<i32> {
    stat(pid).map(|s| s.pgrp)
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
        let own = stat(me).unwrap();
        assert_eq!(own.ppid, nix::unistd::getppid().as_raw());
        assert_eq!(own.session, nix::unistd::getsid(None).unwrap().as_raw());
        assert!(all().iter().any(|s| s.pid == me));
    }

    #[test]
    fn names_with_spaces_and_parentheses() {
        let line = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 777 1000 10";
        let s = parse_stat(42, line).unwrap();
        assert_eq!(
            (s.state, s.ppid, s.pgrp, s.session, s.start_time),
            ('S', 1, 42, 42, 777)
        );
    }

    #[test]
    fn a_zombie_is_not_running() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Not waited for yet: a zombie once it has exited.
        let mut zombie = false;
        for _ in 0..500 {
            if stat(pid).is_some_and(|s| s.state == 'Z') {
                zombie = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(zombie);
        let start = start_time(pid).unwrap();
        assert!(is_same_process(pid, start));
        assert!(!is_running(pid, start));
        drop(child);
    }
}
