//! `cyberwave-cloud-node __supervise <base> <cwd> <command> [<cgroup>]`: the
//! small process that sits between the node and a workload (DESIGN.md, the
//! pattern of conmon and containerd's shims).
//!
//! It leaves the node's session (setsid), becomes the child subreaper of
//! the workload's tree, starts `/bin/sh -c <command>` in a process group of
//! its own (and in `<cgroup>`, when the node made one) with output going to
//! the log files, tells the node the workload's pid through its stdout
//! pipe, waits, and writes the exit status atomically next to the logs.
//! Because it outlives the node, the exit code is never lost, whatever
//! happens to the node meanwhile.
//!
//! As the subreaper it collects every orphan of the workload, so none
//! lingers as a zombie for an init that reaps late or never. Its own exit
//! status is the workload's (the code, or 128 + signal when killed, like a
//! shell's `$?`), so the outcome survives a disk that cannot take the exit
//! file: the node, its parent, reads it.
//! Plain blocking code: no async runtime, a few hundred KiB of memory.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{self, SigHandler, Signal};

use super::paths::WorkloadPaths;
use super::procfs;
use super::record::{now_unix_ms, write_json, ExitFile, StartedFile};

/// The hidden subcommand's name.
pub const MODE: &str = "__supervise";
/// What the supervisor prints on its stdout once the workload runs.
pub const READY_LINE: &str = "started";

/// Process group the forwarded signals go to (0 until the workload exists).
static WORKLOAD_GROUP: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(signal: libc::c_int) {
    let group = WORKLOAD_GROUP.load(Ordering::SeqCst);
    if group > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe {
            libc::kill(-group, signal);
        }
    }
}

/// The supervisor's exit status when the workload could not be started:
/// what a shell reports for a command it cannot run.
const SPAWN_FAILED: u8 = 127;
/// The supervisor's exit status when waiting for the workload failed.
const WAIT_FAILED: u8 = 125;

/// Entry point; `args` are the process arguments after the mode name.
pub fn main(args: &[OsString]) -> ExitCode {
    let (base, cwd, command, cgroup) = match args {
        [base, cwd, command] => (base, cwd, command, None),
        [base, cwd, command, cgroup] => (base, cwd, command, Some(Path::new(cgroup))),
        _ => {
            eprintln!(
                "usage: cyberwave-cloud-node {MODE} <base> <cwd> <command> [<cgroup>] (internal)"
            );
            return ExitCode::from(2);
        }
    };
    let paths = WorkloadPaths::from_base(PathBuf::from(base));
    let _ = nix::unistd::setsid();
    // Orphans of the workload become our children, and are reaped at once.
    // SAFETY: a plain prctl on this process.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    // SAFETY: installing plain handlers before any other thread exists.
    unsafe {
        // The pipe to the node may be gone by the time we write to it. (std
        // resets SIGPIPE for the workload itself; nothing else is ignored,
        // so the workload starts with default dispositions.)
        let _ = signal::signal(Signal::SIGPIPE, SigHandler::SigIgn);
        // Someone signalling the supervisor means the workload.
        let _ = signal::signal(Signal::SIGTERM, SigHandler::Handler(forward_signal));
        let _ = signal::signal(Signal::SIGINT, SigHandler::Handler(forward_signal));
    }
    match spawn_workload(&paths, Path::new(cwd), command, cgroup) {
        Ok((pid, cgroup)) => {
            WORKLOAD_GROUP.store(pid, Ordering::SeqCst);
            report_started(&paths, pid, cgroup);
            let (exit, status) = wait_for(pid);
            // Written or not (a full or read-only disk), the exit status
            // goes out as our own.
            let _ = write_json(&paths.exit(), &exit);
            reap_exited();
            ExitCode::from(status)
        }
        Err(error) => {
            let _ = write_json(&paths.exit(), &spawn_failure(&paths, error));
            tell_node(READY_LINE);
            ExitCode::from(SPAWN_FAILED)
        }
    }
}

/// Collects the orphans that have already ended; ones still running are
/// handed on to the next subreaper when we exit.
fn reap_exited() {
    let mut status: libc::c_int = 0;
    // SAFETY: a plain waitpid on our own children, without blocking.
    while unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } > 0 {}
}

fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Starts the workload, in `cgroup` when given and possible; returns its
/// pid and the cgroup it runs in.
fn spawn_workload<'a>(
    paths: &WorkloadPaths,
    cwd: &Path,
    command: &OsString,
    cgroup: Option<&'a Path>,
) -> Result<(i32, Option<&'a Path>), String> {
    if let Some(dir) = cgroup {
        // Any failure here (no right to move processes, the cgroup gone)
        // only costs the cgroup: the node then tracks the processes
        // through /proc.
        if let Ok(pid) = spawn_in(paths, cwd, command, Some(dir)) {
            return Ok((pid, Some(dir)));
        }
    }
    Ok((spawn_in(paths, cwd, command, None)?, None))
}

fn spawn_in(
    paths: &WorkloadPaths,
    cwd: &Path,
    command: &OsString,
    cgroup: Option<&Path>,
) -> Result<i32, String> {
    let stdout = open_log(&paths.stdout())
        .map_err(|e| format!("cannot open {}: {e}", paths.stdout().display()))?;
    let stderr = open_log(&paths.stderr())
        .map_err(|e| format!("cannot open {}: {e}", paths.stderr().display()))?;
    let mut shell = Command::new("/bin/sh");
    shell
        .arg("-c")
        .arg(command)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    if let Some(dir) = cgroup {
        let procs = OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
        // The child moves itself before it runs anything, so every process
        // the workload ever starts is born in the cgroup.
        // SAFETY: only write(2) between fork and exec.
        unsafe {
            shell.pre_exec(move || {
                use std::os::fd::AsRawFd;
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) == 1 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let child = shell
        .spawn()
        .map_err(|e| format!("cannot start /bin/sh in {}: {e}", cwd.display()))?;
    Ok(child.id() as i32)
}

fn report_started(paths: &WorkloadPaths, pid: i32, cgroup: Option<&Path>) {
    let me = std::process::id() as i32;
    let started = StartedFile {
        supervisor_pid: me,
        supervisor_start_time: procfs::start_time(me).unwrap_or(0),
        pid,
        start_time: procfs::start_time(pid).unwrap_or(0),
        started_unix_ms: now_unix_ms(),
        cgroup: cgroup.map(Path::to_path_buf),
    };
    let _ = write_json(&paths.started(), &started);
    tell_node(READY_LINE);
}

/// One line to the node, then let go of the pipe: the node may be gone
/// long before the workload ends, and nothing else is ever printed.
fn tell_node(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto the standard descriptors of this single-threaded process.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
        }
    }
}

/// Waits for the workload; returns its exit file and its status as one
/// byte, the way a shell reports it (code, or 128 + signal).
fn wait_for(pid: i32) -> (ExitFile, u8) {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data, filled by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // Any child: as the subreaper, the workload's orphans are ours too.
        // SAFETY: valid pointers to locals.
        let reaped = unsafe { libc::wait4(-1, &mut status, 0, &mut usage) };
        if reaped == pid {
            break;
        }
        if reaped == -1 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            let exit = ExitFile {
                exit_code: None,
                signal: None,
                ended_unix_ms: now_unix_ms(),
                cpu_seconds: 0.0,
                max_rss_bytes: 0,
                error: Some(format!(
                    "waiting for the workload failed: {}",
                    std::io::Error::last_os_error()
                )),
            };
            return (exit, WAIT_FAILED);
        }
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let (exit_code, signal, byte) = if libc::WIFEXITED(status) {
        let code = libc::WEXITSTATUS(status);
        (Some(code), None, code as u8)
    } else if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        (
            None,
            Some(crate::install::signal_name(signal)),
            128u8.saturating_add(signal as u8),
        )
    } else {
        (None, None, WAIT_FAILED)
    };
    let exit = ExitFile {
        exit_code,
        signal,
        ended_unix_ms: now_unix_ms(),
        cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        max_rss_bytes: (usage.ru_maxrss as u64) * 1024,
        error: None,
    };
    (exit, byte)
}

/// The workload never ran: 127 ([`SPAWN_FAILED`]) is what a shell reports
/// for a command it cannot run, and the reason goes to the stderr log where
/// people look.
fn spawn_failure(paths: &WorkloadPaths, error: String) -> ExitFile {
    if let Ok(mut log) = open_log(&paths.stderr()) {
        let _ = writeln!(log, "cyberwave-cloud-node: {error}");
    }
    ExitFile {
        exit_code: Some(i32::from(SPAWN_FAILED)),
        signal: None,
        ended_unix_ms: now_unix_ms(),
        cpu_seconds: 0.0,
        max_rss_bytes: 0,
        error: Some(error),
    }
}
