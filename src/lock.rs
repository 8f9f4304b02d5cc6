//! One node per config dir. Two nodes sharing `~/.cyberwave` would adopt
//! each other's workloads and race on the same records, so the second one is
//! refused, naming the first one's pid. The lock is an `flock` on
//! `node.lock`: the kernel drops it when the process dies, however it dies,
//! so a crashed node never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

pub const LOCK_FILE: &str = "node.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another cyberwave-cloud-node (pid {pid}) is already running with the config dir {dir}; stop it, or give this one its own dir with CYBERWAVE_CONFIG_DIR")]
    Held { pid: String, dir: PathBuf },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held for the node's whole life.
#[derive(Debug)]
pub struct ConfigDirLock {
    _lock: Flock<File>,
}

impl ConfigDirLock {
    pub fn acquire(config_dir: &Path) -> Result<ConfigDirLock, LockError> {
        let path = config_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(LockError::Held {
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid.to_owned()
                    },
                    dir: config_dir.to_owned(),
                });
            }
            Err((_, errno)) => return Err(io(errno.into())),
        };
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        write!(lock, "{}", std::process::id()).map_err(io)?;
        Ok(ConfigDirLock { _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = ConfigDirLock::acquire(dir.path()).unwrap();
        let err = ConfigDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        assert!(ConfigDirLock::acquire(dir.path()).is_ok());
    }
}
