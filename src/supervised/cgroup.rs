//! One cgroup v2 per workload, where the node may create one (docs/design.md,
//! "Containment"): process groups and sessions are advisory, any
//! descendant can `setsid` away, but nothing leaves its cgroup on its own,
//! and `cgroup.kill` reaches every process in it at once.
//!
//! Layout: `<the node's own cgroup>/cyberwave-workloads/<node>.<workload>`.
//! The workloads live *below* the node's cgroup, never beside it: that is
//! the subtree the node may write to (root, or a systemd unit with
//! `Delegate=yes`). The node's own cgroup keeps its processes; that is
//! allowed because the node enables no controllers in it (cgroup v2's "no
//! internal processes" rule is about controllers), and the cgroups that
//! hold processes are leaves. `<node>` keeps two nodes on one machine (or
//! one test run's many) apart; a workload's cgroup is removed once the
//! workload has ended and left nothing behind, so nothing accumulates. The supervisor stays outside the workload's
//! cgroup, so `cgroup.kill` never takes down the process that records the
//! exit status.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The directory every node's workload cgroups live in, below the node's own.
const WORKLOADS_DIR: &str = "cyberwave-workloads";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 file system is mounted (see /proc/self/mountinfo)")]
    NotMounted,
    #[error("cannot tell this process's cgroup v2 (/proc/self/cgroup has no `0::` line under a cgroup2 mount)")]
    OwnCgroupUnknown,
    #[error("cannot create cgroup {path}: {source} (needs root, or a delegated cgroup: `Delegate=yes` under systemd)")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where this node creates its workloads' cgroups.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    dir: PathBuf,
    /// `<node>.`, the start of every name this node gives.
    prefix: String,
}

impl CgroupRoot {
    /// Finds the node's own cgroup and makes sure it can create cgroups
    /// below it; `node` (no `/`) tells this node's cgroups from others'.
    pub fn detect(node: &str) -> Result<CgroupRoot, CgroupError> {
        let dir = own_cgroup_dir()?.join(WORKLOADS_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Create {
            path: dir.clone(),
            source,
        })?;
        let root = CgroupRoot {
            dir,
            prefix: format!("{node}."),
        };
        // create_dir_all succeeds on a read-only mount where the directory
        // already exists: only a fresh one proves the right to create.
        let probe = root.create(&format!("probe-{}", std::process::id()))?;
        let _ = remove(&probe);
        Ok(root)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new, empty cgroup for one workload.
    pub fn create(&self, name: &str) -> Result<PathBuf, CgroupError> {
        let path = self.dir.join(format!("{}{name}", self.prefix));
        std::fs::create_dir(&path).map_err(|source| CgroupError::Create {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Removes the empty cgroups an earlier run of this node left (one that
    /// still holds processes cannot be removed, and stays).
    pub fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&self.prefix)
            {
                let _ = remove(&entry.path());
            }
        }
    }
}

/// The node's own cgroup directory: the cgroup2 mount plus the `0::` path
/// of /proc/self/cgroup, taken relative to the mount's root (which is not
/// `/` where a container mounts only its own subtree).
fn own_cgroup_dir() -> Result<PathBuf, CgroupError> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|_| CgroupError::NotMounted)?;
    let (root, mount) = info
        .lines()
        .find_map(|line| {
            let (fields, rest) = line.split_once(" - ")?;
            rest.starts_with("cgroup2 ").then_some(())?;
            let mut fields = fields.split(' ');
            let root = fields.nth(3)?;
            let mount = fields.next()?;
            Some((unescape(root), unescape(mount)))
        })
        .ok_or(CgroupError::NotMounted)?;
    let own =
        std::fs::read_to_string("/proc/self/cgroup").map_err(|_| CgroupError::OwnCgroupUnknown)?;
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or(CgroupError::OwnCgroupUnknown)?;
    let relative = Path::new(path)
        .strip_prefix(&root)
        .map_err(|_| CgroupError::OwnCgroupUnknown)?;
    // Outside the cgroup namespace's root (`/../..`): not ours to write.
    if relative
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(CgroupError::OwnCgroupUnknown);
    }
    Ok(PathBuf::from(mount).join(relative))
}

/// mountinfo escapes spaces and the like as `\040`.
fn unescape(field: &str) -> String {
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True while a live process is in the cgroup or below. Zombies do not
/// count: the kernel takes a process out when it exits, not when reaped.
pub fn populated(cgroup: &Path) -> std::io::Result<bool> {
    let events = std::fs::read_to_string(cgroup.join("cgroup.events"))?;
    Ok(events
        .lines()
        .any(|l| l.split_whitespace().eq(["populated", "1"])))
}

/// The processes in the cgroup and in any cgroup below it (a workload
/// running as root may make its own).
pub fn procs(cgroup: &Path) -> std::io::Result<Vec<i32>> {
    let mut pids: Vec<i32> = std::fs::read_to_string(cgroup.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for entry in std::fs::read_dir(cgroup)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            pids.extend(procs(&entry.path()).unwrap_or_default());
        }
    }
    Ok(pids)
}

/// SIGKILLs every process in the cgroup and below: `cgroup.kill` (Linux
/// 5.14) does it at once, forks included; older kernels get a kill per
/// listed process.
pub fn kill_all(cgroup: &Path) -> std::io::Result<()> {
    let kill_file = cgroup.join("cgroup.kill");
    if kill_file.exists() {
        return std::fs::OpenOptions::new()
            .write(true)
            .open(kill_file)?
            .write_all(b"1");
    }
    for pid in procs(cgroup)? {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    Ok(())
}

/// Removes an empty cgroup; gone already counts as removed.
pub fn remove(cgroup: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir(cgroup) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/x\"), r"/x\");
    }
}
