//! Mounts for fault tests (a full disk, a read-only one); they need root,
//! which CI has: a test without it skips with a message ([`needs_root!`]).

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[macro_export]
macro_rules! needs_root {
    ($what:expr) => {
        if !$crate::common::mounts::is_root() {
            eprintln!("skipping: {} needs root (mount)", $what);
            return;
        }
    };
}

/// A mount made by a test, undone (lazily) when dropped.
pub struct Mounted(PathBuf);

impl Mounted {
    #[allow(dead_code)] // not every test file mounts a tmpfs
    pub fn tmpfs(dir: &Path, size: &str) -> Mounted {
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir));
        Mounted(dir.to_owned())
    }

    /// `dir` read-only from now on, for every process (a bind mount of
    /// itself, remounted read-only).
    pub fn read_only(dir: &Path) -> Mounted {
        run(Command::new("mount").arg("--bind").arg(dir).arg(dir));
        let mounted = Mounted(dir.to_owned());
        run(Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(dir));
        mounted
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn run(command: &mut Command) {
    let status = command.status().expect("run mount");
    assert!(status.success(), "{command:?}: {status}");
}
