//! `cyberwave-cloud-node __supervise <base> <cwd> <command>`: the small
//! process that sits between the node and a workload (DESIGN.md, the pattern
//! of conmon and containerd's shims).
//!
//! It leaves the node's session (setsid), starts `/bin/sh -c <command>` in a
//! process group of its own with output going to the log files, tells the
//! node the workload's pid through its stdout pipe, waits, and writes the
//! exit status atomically next to the logs. Because it outlives the node,
//! the exit code is never lost, whatever happens to the node meanwhile.
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

/// Entry point; `args` are the process arguments after the mode name.
pub fn main(args: &[OsString]) -> ExitCode {
    let [base, cwd, command] = args else {
        eprintln!("usage: cyberwave-cloud-node {MODE} <base> <cwd> <command> (internal)");
        return ExitCode::from(2);
    };
    let paths = WorkloadPaths::from_base(PathBuf::from(base));
    let _ = nix::unistd::setsid();
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
    match spawn_workload(&paths, Path::new(cwd), command) {
        Ok(pid) => {
            WORKLOAD_GROUP.store(pid, Ordering::SeqCst);
            report_started(&paths, pid);
            let exit = wait_for(pid);
            let _ = write_json(&paths.exit(), &exit);
        }
        Err(error) => {
            let _ = write_json(&paths.exit(), &spawn_failure(&paths, error));
            tell_node(READY_LINE);
        }
    }
    ExitCode::SUCCESS
}

fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

fn spawn_workload(paths: &WorkloadPaths, cwd: &Path, command: &OsString) -> Result<i32, String> {
    let stdout = open_log(&paths.stdout())
        .map_err(|e| format!("cannot open {}: {e}", paths.stdout().display()))?;
    let stderr = open_log(&paths.stderr())
        .map_err(|e| format!("cannot open {}: {e}", paths.stderr().display()))?;
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start /bin/sh in {}: {e}", cwd.display()))?;
    Ok(child.id() as i32)
}

fn report_started(paths: &WorkloadPaths, pid: i32) {
    let me = std::process::id() as i32;
    let started = StartedFile {
        supervisor_pid: me,
        supervisor_start_time: procfs::start_time(me).unwrap_or(0),
        pid,
        start_time: procfs::start_time(pid).unwrap_or(0),
        started_unix_ms: now_unix_ms(),
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

fn wait_for(pid: i32) -> ExitFile {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data, filled by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals; pid is our own child.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            break;
        }
        if reaped == -1 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return ExitFile {
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
        }
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let (exit_code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (
            None,
            Some(crate::install::signal_name(libc::WTERMSIG(status))),
        )
    } else {
        (None, None)
    };
    ExitFile {
        exit_code,
        signal,
        ended_unix_ms: now_unix_ms(),
        cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        max_rss_bytes: (usage.ru_maxrss as u64) * 1024,
        error: None,
    }
}

/// The workload never ran: 127 is what a shell reports for a command it
/// cannot run, and the reason goes to the stderr log where people look.
fn spawn_failure(paths: &WorkloadPaths, error: String) -> ExitFile {
    if let Ok(mut log) = open_log(&paths.stderr()) {
        let _ = writeln!(log, "cyberwave-cloud-node: {error}");
    }
    ExitFile {
        exit_code: Some(127),
        signal: None,
        ended_unix_ms: now_unix_ms(),
        cpu_seconds: 0.0,
        max_rss_bytes: 0,
        error: Some(error),
    }
}
