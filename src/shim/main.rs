//! `cyberwave-cloud-node-shim <base> <cwd> <command> [<cgroup>]`: the small
//! process that sits between the node and each workload or model server
//! (docs/design.md, "The shim"; the pattern of conmon and containerd's
//! shims).
//!
//! It leaves the node's session (setsid), becomes the child subreaper of
//! the process's tree, starts `/bin/sh -c <command>` in a process group of
//! its own (and in `<cgroup>`, when the node made one) with output going to
//! `<base>.stdout.log` and `<base>.stderr.log`, writes `<base>.started.json`,
//! tells the node what it started on its stdout (one JSON line), waits, and
//! writes `<base>.exit.json`. Because it outlives the node, the exit status
//! is never lost, whatever happens to the node meanwhile.
//!
//! As the subreaper it collects every orphan of the process, so none
//! lingers as a zombie for an init that reaps late or never. Its own exit
//! status is the process's (the code, or 128 + signal when killed, like a
//! shell's `$?`), so the outcome survives a disk that cannot take the exit
//! file: the node, its parent, reads it. A file it cannot write is logged
//! to the stderr log, where people look.
//!
//! A binary of its own, not a mode of the node: plain blocking code on std
//! and libc, no async runtime, TLS or model runners, so each running
//! workload costs well under a megabyte and starts in a fraction of the
//! time the node's executable would take to load.

// The node's own files, at the same paths as in the library, so they
// compile here unchanged; the node uses more of them than the shim does.
#[allow(dead_code)]
#[path = "../fsutil"]
mod fsutil {
    pub mod atomic;
}
mod clone_into;

#[allow(dead_code)]
#[path = "../supervised"]
mod supervised {
    pub mod handoff;
    pub mod procfs;
}

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

use fsutil::atomic::{write_file, Durability};
use supervised::handoff::{self, now_unix_ms, signal_name, ExitFile, Report, StartedFile};
use supervised::procfs;

/// The exit status when the process could not be started: what a shell
/// reports for a command it cannot run.
const SPAWN_FAILED: u8 = 127;
/// The exit status when waiting for the process failed.
const WAIT_FAILED: u8 = 125;
/// The exit status for a wrong command line.
const USAGE: u8 = 2;

/// Writes `value` as JSON to `path` through a temp file and a rename,
/// mode 0600.
fn write_json<T: serde::Serialize>(
    path: &Path,
    value: &T,
    durability: Durability,
) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    write_file(path, &bytes, 0o600, durability)
}

/// Process group the forwarded signals go to (0 until the process exists).
static PROCESS_GROUP: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(signal: libc::c_int) {
    let group = PROCESS_GROUP.load(Ordering::SeqCst);
    if group > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe {
            libc::kill(-group, signal);
        }
    }
}

/// The files of one supervised process, all named `<base>.<suffix>`.
struct Files {
    base: PathBuf,
}

impl Files {
    fn with(&self, suffix: &str) -> PathBuf {
        let mut name = self.base.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    }
    fn stdout(&self) -> PathBuf {
        self.with(".stdout.log")
    }
    fn stderr(&self) -> PathBuf {
        self.with(".stderr.log")
    }
    fn started(&self) -> PathBuf {
        self.with(".started.json")
    }
    fn exit(&self) -> PathBuf {
        self.with(".exit.json")
    }

    /// One line in the stderr log, best effort: the disk may be full.
    fn log(&self, message: &str) {
        if let Ok(mut log) = open_log(&self.stderr()) {
            let _ = writeln!(log, "cyberwave-cloud-node-shim: {message}");
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let (base, cwd, command, cgroup) = match args.as_slice() {
        [base, cwd, command] => (base, cwd, command, None),
        [base, cwd, command, cgroup] => (base, cwd, command, Some(Path::new(cgroup))),
        _ => {
            eprintln!(
                "usage: {} <base> <cwd> <command> [<cgroup>]\n\
                 Started by cyberwave-cloud-node for each workload and model server; not meant to be run by hand.",
                handoff::SHIM_NAME
            );
            return ExitCode::from(USAGE);
        }
    };
    let files = Files {
        base: PathBuf::from(base),
    };
    detach();
    match spawn(&files, Path::new(cwd), command, cgroup) {
        Ok((pid, cgroup)) => {
            PROCESS_GROUP.store(pid, Ordering::SeqCst);
            report_started(&files, pid, cgroup);
            let (exit, status) = wait_for(pid);
            // Written or not (a full or read-only disk), the exit status
            // goes out as our own.
            if let Err(e) = write_json(&files.exit(), &exit, Durability::Synced) {
                files.log(&format!(
                    "cannot write {}: {e}; the exit status ({status}) is this shim's own",
                    files.exit().display()
                ));
            }
            reap_exited();
            ExitCode::from(status)
        }
        Err(error) => {
            let error = error.to_string();
            files.log(&error);
            let exit = spawn_failure(error.clone());
            if let Err(e) = write_json(&files.exit(), &exit, Durability::Synced) {
                files.log(&format!("cannot write {}: {e}", files.exit().display()));
            }
            tell_node(&Report::Failed { error });
            ExitCode::from(SPAWN_FAILED)
        }
    }
}

/// Leaves the node's session, adopts the process's orphans, and sets the
/// signal dispositions the shim needs.
fn detach() {
    let _ = nix_setsid();
    // SAFETY: plain prctl and signal(2) calls before any other thread exists.
    unsafe {
        // Orphans of the process become our children, and are reaped.
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        // The pipe to the node may be gone by the time we write to it. (std
        // resets SIGPIPE for the child; nothing else is ignored, so the
        // process starts with default dispositions.)
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        // Someone signalling the shim means the process.
        let handler = forward_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
    }
}

fn nix_setsid() -> std::io::Result<()> {
    // SAFETY: a plain syscall.
    match unsafe { libc::setsid() } {
        -1 => Err(std::io::Error::last_os_error()),
        _ => Ok(()),
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

/// Why the process could not be started.
#[derive(Debug, thiserror::Error)]
enum SpawnError {
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start /bin/sh in {}: {source}", cwd.display())]
    Shell {
        cwd: PathBuf,
        source: std::io::Error,
    },
}

/// Starts the process, in `cgroup` when given and possible; returns its
/// pid and the cgroup it runs in.
fn spawn<'a>(
    files: &Files,
    cwd: &Path,
    command: &OsString,
    cgroup: Option<&'a Path>,
) -> Result<(i32, Option<&'a Path>), SpawnError> {
    if let Some(dir) = cgroup {
        // Any failure here (no right to move processes, the cgroup gone)
        // only costs the cgroup: the node then tracks the processes
        // through /proc.
        match spawn_in(files, cwd, command, Some(dir)) {
            Ok(pid) => return Ok((pid, Some(dir))),
            Err(e) => files.log(&format!("{e}; running without the cgroup")),
        }
    }
    Ok((spawn_in(files, cwd, command, None)?, None))
}

fn spawn_in(
    files: &Files,
    cwd: &Path,
    command: &OsString,
    cgroup: Option<&Path>,
) -> Result<i32, SpawnError> {
    let open = |path: PathBuf| open_log(&path).map_err(|source| SpawnError::Open { path, source });
    let (stdout, stderr) = (open(files.stdout())?, open(files.stderr())?);
    let shell_error = |source| SpawnError::Shell {
        cwd: cwd.to_owned(),
        source,
    };
    if let Some(dir) = cgroup {
        let launch = clone_into::Launch {
            cwd,
            command,
            stdout: &stdout,
            stderr: &stderr,
        };
        let opened = File::open(dir).map_err(|source| SpawnError::Open {
            path: dir.to_owned(),
            source,
        })?;
        match clone_into::spawn_in_cgroup(&opened, &launch) {
            Ok(pid) => return Ok(pid),
            Err(clone_into::CloneError::Exec(source)) => return Err(shell_error(source)),
            // An older kernel: the child moves itself in, below.
            Err(clone_into::CloneError::Unsupported) => {}
        }
    }
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
            .map_err(|source| SpawnError::Open {
                path: dir.to_owned(),
                source,
            })?;
        // The child moves itself before it runs anything, so every process
        // it ever starts is born in the cgroup.
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
    let child = shell.spawn().map_err(shell_error)?;
    Ok(child.id() as i32)
}

fn report_started(files: &Files, pid: i32, cgroup: Option<&Path>) {
    let me = std::process::id() as i32;
    let started = StartedFile {
        supervisor_pid: me,
        supervisor_start_time: procfs::start_time(me).unwrap_or(0),
        pid,
        start_time: procfs::start_time(pid).unwrap_or(0),
        started_unix_ms: now_unix_ms(),
        cgroup: cgroup.map(Path::to_path_buf),
    };
    // Atomic, not synced: the file is about a running process, which a
    // power loss ends too; the node learns the same from the pipe.
    if let Err(e) = write_json(&files.started(), &started, Durability::Atomic) {
        files.log(&format!("cannot write {}: {e}", files.started().display()));
    }
    tell_node(&Report::Started(started));
}

/// One line to the node, then let go of the pipe: the node may be gone
/// long before the process ends, and nothing else is ever printed.
fn tell_node(report: &Report) {
    let mut line = serde_json::to_vec(report).unwrap_or_default();
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&line);
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

/// Waits for the process; returns its exit file and its status as one
/// byte, the way a shell reports it (code, or 128 + signal).
fn wait_for(pid: i32) -> (ExitFile, u8) {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data, filled by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // Any child: as the subreaper, the process's orphans are ours too.
        // SAFETY: valid pointers to locals.
        let reaped = unsafe { libc::wait4(-1, &mut status, 0, &mut usage) };
        if reaped == pid {
            break;
        }
        if reaped == -1 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            let mut exit = ExitFile::from_shim_status(0);
            exit.exit_code = None;
            exit.error = Some(format!(
                "waiting for the workload failed: {}",
                std::io::Error::last_os_error()
            ));
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
            Some(signal_name(signal)),
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

/// The process never ran: 127 ([`SPAWN_FAILED`]) is what a shell reports
/// for a command it cannot run.
fn spawn_failure(error: String) -> ExitFile {
    ExitFile {
        exit_code: Some(i32::from(SPAWN_FAILED)),
        signal: None,
        ended_unix_ms: now_unix_ms(),
        cpu_seconds: 0.0,
        max_rss_bytes: 0,
        error: Some(error),
    }
}
