//! Starting the process directly inside its cgroup: `clone3(2)` with
//! `CLONE_INTO_CGROUP` (Linux 5.7).
//!
//! The other way, the child writing itself into `cgroup.procs` before it
//! execs, is a migration: the kernel takes the cgroup hierarchy's
//! thread-group lock for writing, which waits for an RCU grace period. On
//! the machines measured that cost ~10 ms per start, more right after
//! another workload's cgroup emptied, and it was most of the time from one
//! workload's exit to the next queued one running. A process born in its
//! cgroup migrates nothing.
//!
//! The child does only async-signal-safe work between the clone and the
//! exec (the shim has one thread, so no lock can be held), and tells the
//! parent why an exec failed through a close-on-exec pipe, as
//! `std::process::Command` does.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{Error, ErrorKind, Read, Result};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `struct clone_args` of `linux/sched.h`: every field is a u64 on every
/// architecture; the kernel takes the size as the version.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` of `linux/sched.h`.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// What the process needs, made before the clone: the child may not
/// allocate.
pub struct Launch<'a> {
    pub cwd: &'a Path,
    pub command: &'a OsStr,
    pub stdout: &'a File,
    pub stderr: &'a File,
}

/// Why the process did not start.
pub enum CloneError {
    /// The kernel cannot start it in the cgroup (no clone3, no
    /// CLONE_INTO_CGROUP, no right to the cgroup): nothing ran, another
    /// way may work.
    Unsupported,
    /// The process was created but could not run the shell (a missing
    /// working directory, no /bin/sh).
    Exec(Error),
}

/// Starts `/bin/sh -c <command>` in the cgroup directory `cgroup`, in a
/// process group of its own; returns its pid.
pub fn spawn_in_cgroup(cgroup: &File, launch: &Launch) -> std::result::Result<i32, CloneError> {
    let prepared = Prepared::new(launch).map_err(CloneError::Exec)?;
    let (mut report_read, report_write) = cloexec_pipe().map_err(|_| CloneError::Unsupported)?;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM gives the child its own copy of the
    // address space, like fork; the child only runs `exec_child`.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match pid {
        -1 => Err(CloneError::Unsupported),
        0 => exec_child(&prepared, launch, report_write.as_raw_fd()),
        pid => {
            drop(report_write);
            let pid = pid as i32;
            match exec_outcome(&mut report_read) {
                Ok(()) => Ok(pid),
                Err(e) => {
                    // SAFETY: reaping our own child, which has exited.
                    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
                    Err(CloneError::Exec(e))
                }
            }
        }
    }
}

/// The C strings and pointer arrays execve needs.
struct Prepared {
    cwd: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    dev_null: File,
}

impl Prepared {
    fn new(launch: &Launch) -> Result<Prepared> {
        let c = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| {
                Error::new(
                    ErrorKind::InvalidInput,
                    "a NUL byte in the command or its environment",
                )
            })
        };
        let argv = vec![c(b"/bin/sh")?, c(b"-c")?, c(launch.command.as_bytes())?];
        let envp = std::env::vars_os()
            .map(|(key, value)| {
                let mut pair = key.as_bytes().to_vec();
                pair.push(b'=');
                pair.extend_from_slice(value.as_bytes());
                c(&pair)
            })
            .collect::<Result<Vec<_>>>()?;
        let pointers = |strings: &[CString]| {
            let mut list: Vec<_> = strings.iter().map(|s| s.as_ptr()).collect();
            list.push(std::ptr::null());
            list
        };
        Ok(Prepared {
            cwd: c(launch.cwd.as_os_str().as_bytes())?,
            argv_ptrs: pointers(&argv),
            envp_ptrs: pointers(&envp),
            argv,
            envp,
            dev_null: File::open("/dev/null")?,
        })
    }
}

/// The child: standard descriptors, working directory, process group,
/// default SIGPIPE and an empty signal mask, then the shell. Never returns.
fn exec_child(prepared: &Prepared, launch: &Launch, report: libc::c_int) -> ! {
    // SAFETY: async-signal-safe calls only, on descriptors and strings made
    // before the clone; `_exit` on every failure.
    unsafe {
        let fail = || report_errno_and_exit(report);
        for (from, to) in [
            (prepared.dev_null.as_raw_fd(), 0),
            (launch.stdout.as_raw_fd(), 1),
            (launch.stderr.as_raw_fd(), 2),
        ] {
            if libc::dup2(from, to) == -1 {
                fail();
            }
        }
        if libc::chdir(prepared.cwd.as_ptr()) == -1 || libc::setpgid(0, 0) == -1 {
            fail();
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::execve(
            prepared.argv[0].as_ptr(),
            prepared.argv_ptrs.as_ptr(),
            prepared.envp_ptrs.as_ptr(),
        );
        let _ = &prepared.envp;
        fail()
    }
}

/// The child's end when something failed: errno to the parent, then out
/// with the status a shell gives a command it cannot run.
unsafe fn report_errno_and_exit(report: libc::c_int) -> ! {
    let errno = *libc::__errno_location();
    libc::write(report, (&errno as *const libc::c_int).cast(), 4);
    libc::_exit(127)
}

/// Reads the child's report: nothing (the pipe closed by the exec) means
/// it runs, four bytes are the errno of what failed.
fn exec_outcome(report: &mut File) -> Result<()> {
    let mut errno = [0u8; 4];
    let mut got = 0;
    loop {
        match report.read(&mut errno[got..]) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if got == errno.len() {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    match got {
        0 => Ok(()),
        _ => Err(Error::from_raw_os_error(i32::from_ne_bytes(errno))),
    }
}

fn cloexec_pipe() -> Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(Error::last_os_error());
    }
    // SAFETY: fresh descriptors owned by nobody else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}
