//! The supervised-process core that workloads and model servers share
//! (docs/design.md, "The supervised unit").
//!
//! - [`handoff`]: what the shim and the node tell each other (arguments,
//!   the report line, the started and exit files); compiled into the shim.
//! - [`launch`]: starting a command under the shim and learning its pid.
//! - [`procfs`]: process identity (pid + start time) and liveness.
//! - [`watch`]: the exit of a process that is not the node's child.
//! - [`unit`]: what happens after a launch, as events to the owner: the
//!   shim ended, a stop has finished.
//! - [`exit`]: the exit status from the best source there is.
//! - [`containment`], [`cgroup`]: which processes are the unit's (its cgroup
//!   v2, or its process tree) and the one stop: grace, then SIGKILL.
//!
//! Workloads (`crate::workload`) and deployments (`crate::deploy`) own
//! what their processes mean; this module owns that they run, are found
//! again after a restart, stop when told, and report an exit status.

pub mod cgroup;
pub mod containment;
pub mod exit;
pub mod handoff;
pub mod launch;
pub mod procfs;
pub mod unit;
pub mod watch;

use std::path::{Path, PathBuf};

pub use containment::Unit;
pub use exit::ExitStatus;
pub use handoff::{now_unix_ms, signal_name, ExitFile, StartedFile};
pub use unit::{Notifier, ProcessEvent, ShimEnd};

/// The directory of every supervised process's files (its logs, and the
/// shim's started and exit files): `workload_logs/` for the contract's
/// sake, model servers included.
pub fn logs_dir(config_dir: &Path) -> PathBuf {
    config_dir.join("workload_logs")
}

/// The files the shim writes for one process, all `<base>.<suffix>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFiles {
    base: PathBuf,
}

impl UnitFiles {
    /// `<dir>/<stem>.*`.
    pub fn new(dir: &Path, stem: &str) -> UnitFiles {
        UnitFiles {
            base: dir.join(stem),
        }
    }

    /// The stem every file shares (the shim gets it this way).
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// `<base><suffix>`: an owner's own files sit beside the shim's.
    pub fn with(&self, suffix: &str) -> PathBuf {
        let mut name = self.base.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    }

    pub fn stdout(&self) -> PathBuf {
        self.with(".stdout.log")
    }
    pub fn stderr(&self) -> PathBuf {
        self.with(".stderr.log")
    }
    /// Written by the shim once the process exists.
    pub fn started(&self) -> PathBuf {
        self.with(".started.json")
    }
    /// Written by the shim when the process has ended.
    pub fn exit(&self) -> PathBuf {
        self.with(".exit.json")
    }
}

/// Where the shim is: beside the node's executable (`/usr/bin` for the
/// package, `target/<profile>` for cargo), beside the directory above it
/// (cargo's `examples/` and `deps/`), or on `PATH`.
pub fn find_shim(exe: &Path) -> Option<PathBuf> {
    let dirs = exe
        .parent()
        .into_iter()
        .chain(exe.parent().and_then(Path::parent));
    let path = std::env::var_os("PATH").unwrap_or_default();
    dirs.map(Path::to_path_buf)
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(handoff::SHIM_NAME))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
