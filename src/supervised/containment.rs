//! Which processes belong to a workload, and stopping all of them: with a
//! grace period, then SIGKILL. The one implementation of that stop, for a
//! cancel and for a cancel a restarted node resumes.
//!
//! Two kinds of containment (docs/design.md, "Containment"):
//! - `cgroup`: the workload runs in a cgroup v2 of its own ([`super::cgroup`]);
//!   its processes are exactly the cgroup's, `setsid` or not, and
//!   `cgroup.kill` ends them all.
//! - `process-tree`, where the node cannot create cgroups: the processes
//!   are found through `/proc`: the descendants of the supervisor (a child
//!   subreaper, so orphans of the workload become its children) and of the
//!   workload, every process seen before (pid and start time), and every
//!   member of a process group or session they started. An id is trusted
//!   only while some process still holds it, so a recycled pid that names
//!   a stranger's new group is never signalled.
//!
//! Zombies never count: a process that has exited is gone, whoever is late
//! to collect its status.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::cgroup;
use super::handoff::{now_unix_ms, StartedFile};
use super::procfs::{self, Stat};

/// How a workload's processes are held together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cgroup,
    ProcessTree,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cgroup => "cgroup",
            Kind::ProcessTree => "process-tree",
        }
    }
}

/// The longest pause between two looks at a stopping workload.
const MAX_PAUSE: Duration = Duration::from_millis(50);
/// How many looks, a millisecond apart, before the pauses grow.
const EAGER_LOOKS: u32 = 20;

/// The processes of one workload.
#[derive(Debug)]
pub struct Unit {
    cgroup: Option<PathBuf>,
    /// The supervisor (pid, start time): its descendants are the workload's,
    /// it is not.
    supervisor: Option<(i32, u64)>,
    /// The workload's first process, leader of its process group.
    leader: (i32, u64),
    /// Every process seen in the tree, by pid and start time.
    known: HashSet<(i32, u64)>,
    /// Process groups and sessions the tree's processes are in.
    ids: HashSet<i32>,
}

impl Unit {
    /// The unit of a process the shim started.
    pub fn of(started: &StartedFile) -> Unit {
        Unit {
            cgroup: started.cgroup.clone(),
            supervisor: Some((started.supervisor_pid, started.supervisor_start_time)),
            leader: (started.pid, started.start_time),
            known: HashSet::new(),
            ids: HashSet::new(),
        }
    }

    /// Sends `signal` to every live process of the workload; returns how
    /// many there were (0: it has ended, nothing was signalled).
    pub fn signal(&mut self, signal: Signal) -> usize {
        if let Some(dir) = &self.cgroup {
            let listed = cgroup::procs(dir);
            if let Ok(pids) = listed {
                if signal == Signal::SIGKILL && !pids.is_empty() {
                    let _ = cgroup::kill_all(dir);
                    return pids.len();
                }
                for pid in &pids {
                    let _ = kill(Pid::from_raw(*pid), signal);
                }
                return pids.len();
            }
        }
        let members = self.members();
        let supervisor_group = self.supervisor.map(|(pid, _)| pid);
        for member in &members {
            let _ = kill(Pid::from_raw(member.pid), signal);
        }
        // Whole groups too: that reaches a fork made since the scan.
        let groups: HashSet<i32> = members.iter().map(|m| m.pgrp).collect();
        for group in groups.into_iter().filter(|g| Some(*g) != supervisor_group) {
            let _ = kill(Pid::from_raw(-group), signal);
        }
        members.len()
    }

    /// True while any process of the workload is alive.
    pub fn alive(&mut self) -> bool {
        if let Some(dir) = &self.cgroup {
            match cgroup::populated(dir) {
                Ok(populated) => return populated,
                // Removed: only an empty cgroup can be.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
                Err(_) => {}
            }
        }
        !self.members().is_empty()
    }

    /// Waits until every process has ended, SIGKILLing whatever is left
    /// from `kill_at_ms` (Unix ms) on; gives up early once `keep_going`
    /// says no. `what` names the unit in the log ("workload r-1").
    /// Blocking: run it off the event loop.
    pub fn settle(mut self, kill_at_ms: u64, what: &str, keep_going: impl Fn() -> bool) {
        // Most workloads are gone within milliseconds: look every
        // millisecond at first, then less and less often.
        let mut pause = Duration::from_millis(1);
        let mut looks = 0;
        let mut killing = false;
        while self.alive() && keep_going() {
            let now = now_unix_ms();
            let nap = if now >= kill_at_ms {
                if !killing {
                    tracing::warn!(
                        pid = self.leader.0,
                        "{what} outlived its grace period: sending SIGKILL"
                    );
                    killing = true;
                }
                self.signal(Signal::SIGKILL);
                pause
            } else {
                pause.min(Duration::from_millis(kill_at_ms - now))
            };
            std::thread::sleep(nap);
            looks += 1;
            if looks >= EAGER_LOOKS {
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }

    /// The live processes of the tree (process-tree containment), learning
    /// the ids of the groups and sessions they are in.
    fn members(&mut self) -> Vec<Stat> {
        let table = procfs::all();
        let mut children: HashMap<i32, Vec<&Stat>> = HashMap::new();
        for process in &table {
            children.entry(process.ppid).or_default().push(process);
        }
        let is_supervisor = |p: &Stat| self.supervisor == Some((p.pid, p.start_time));
        // The leader's group outlives the leader, and Linux hands out no pid
        // still in use as a group id: with no process of that pid, whoever
        // is in the group was in the workload's. (A process that has the pid
        // but another start time is a stranger, and so is its group.)
        let leader_gone = !table.iter().any(|p| p.pid == self.leader.0);
        let mut queue: Vec<&Stat> = table
            .iter()
            .filter(|p| {
                is_supervisor(p)
                    || (p.pid, p.start_time) == self.leader
                    || self.known.contains(&(p.pid, p.start_time))
                    || (leader_gone && p.pgrp == self.leader.0)
                    || self.ids.contains(&p.pgrp)
                    || self.ids.contains(&p.session)
            })
            .collect();
        let mut seen: HashSet<i32> = HashSet::new();
        let mut members = Vec::new();
        while let Some(process) = queue.pop() {
            if !seen.insert(process.pid) {
                continue;
            }
            queue.extend(children.get(&process.pid).into_iter().flatten());
            if !is_supervisor(process) {
                members.push(*process);
            }
        }
        // An id is only trusted while a process holds it (zombies do): once
        // free, the kernel may hand it to a stranger. The node's own group
        // and session are never the workload's, whatever a failed setsid
        // left behind.
        self.ids
            .retain(|id| table.iter().any(|p| p.pgrp == *id || p.session == *id));
        let me = std::process::id() as i32;
        let own = [
            nix::unistd::getpgrp().as_raw(),
            nix::unistd::getsid(None).map(|s| s.as_raw()).unwrap_or(me),
        ];
        members.retain(|m| m.pid != me && !own.contains(&m.pgrp) && !own.contains(&m.session));
        for member in &members {
            self.ids.extend([member.pgrp, member.session]);
        }
        self.known = members.iter().map(|m| (m.pid, m.start_time)).collect();
        members.retain(Stat::is_live);
        members
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..500 {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn in_own_session(command: &mut Command) -> &mut Command {
        // SAFETY: only setsid(2) between fork and exec.
        unsafe { command.pre_exec(|| Ok(nix::unistd::setsid().map(drop)?)) }
    }

    fn tree_of(leader: (i32, u64)) -> Unit {
        Unit {
            cgroup: None,
            supervisor: None,
            leader,
            known: HashSet::new(),
            ids: HashSet::new(),
        }
    }

    #[test]
    fn the_process_tree_reaches_a_setsid_grandchild() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("escaped");
        let script = format!(
            "setsid sh -c 'echo $$ > {0}.tmp; mv {0}.tmp {0}; exec sleep 30' & sleep 30",
            pid_file.display()
        );
        // In a session of its own, as the supervisor's workloads are: the
        // node's own session is never the workload's.
        let mut shell = in_own_session(Command::new("sh").args(["-c", &script]))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_for(|| pid_file.exists()));
        let escaped: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let leader = shell.id() as i32;
        let mut unit = tree_of((leader, procfs::start_time(leader).unwrap()));
        // The shell, its sleep, and the sleep in a session of its own.
        assert_eq!(unit.signal(Signal::SIGKILL), 3);
        let _ = shell.wait();
        assert!(wait_for(|| !unit.alive()));
        assert!(!procfs::stat(escaped).is_some_and(|s| s.is_live()));
    }

    #[test]
    fn a_stranger_with_the_workloads_pid_is_left_alone() {
        let mut stranger = in_own_session(Command::new("sleep").arg("30"))
            .spawn()
            .unwrap();
        let pid = stranger.id() as i32;
        let start = procfs::start_time(pid).unwrap();
        // The record names this pid, but with another start time: the
        // workload it named has ended, and pid and group are a stranger's.
        let mut unit = tree_of((pid, start + 1));
        assert!(!unit.alive());
        assert_eq!(unit.signal(Signal::SIGKILL), 0);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            matches!(stranger.try_wait(), Ok(None)),
            "the stranger was killed"
        );
        let _ = stranger.kill();
        let _ = stranger.wait();
    }
}
