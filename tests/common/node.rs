//! Runs the real `cyberwave-cloud-node` binary as a child process.
//!
//! The tests exercise the shipped binary end to end (signals, exit codes,
//! files on disk), so each run gets an isolated, throw-away HOME and working
//! dir and a scrubbed environment: nothing from the developer's machine (a
//! real `~/.cyberwave`, a real token) can leak in. Output goes to files so it
//! can be inspected while the process is still running.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// Path of the binary under test, built by Cargo for integration tests.
pub const NODE_BIN: &str = env!("CARGO_BIN_EXE_cyberwave-cloud-node");

/// The usual environment for a node talking to a test broker and backend.
///
/// Heartbeats every second so liveness tests stay fast.
pub fn standard_env(broker_port: u16, backend_url: &str, token: &str) -> Vec<(String, String)> {
    [
        ("CYBERWAVE_API_TOKEN", token.to_string()),
        ("CYBERWAVE_API_URL", backend_url.to_string()),
        ("CYBERWAVE_MQTT_HOST", "127.0.0.1".to_string()),
        ("CYBERWAVE_MQTT_PORT", broker_port.to_string()),
        ("CYBERWAVE_HEARTBEAT_INTERVAL", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Builder for a node run. Temp dirs are created up front so tests can write
/// files (config, credentials) before spawning.
pub struct Node {
    home: TempDir,
    workdir: TempDir,
    env: Vec<(String, String)>,
    args: Vec<String>,
    pre_exec: Vec<PreExec>,
    /// The node's executable: the one cargo built, unless a test moved it.
    binary: PathBuf,
}

/// Runs in the forked child just before the node's binary is executed.
type PreExec = Box<dyn FnMut() -> std::io::Result<()> + Send + Sync>;

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

impl Node {
    /// Fresh temp HOME and working dir, no args, no extra env.
    pub fn new() -> Node {
        Node {
            home: temp_dir("cw-home-"),
            workdir: temp_dir("cw-work-"),
            env: Vec::new(),
            args: Vec::new(),
            pre_exec: Vec::new(),
            binary: PathBuf::from(NODE_BIN),
        }
    }

    /// Runs this executable instead of the one cargo built (a copy placed
    /// somewhere else, to see what it finds beside itself).
    #[allow(dead_code)] // not every test file moves the node
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Node {
        self.binary = path.into();
        self
    }

    /// Runs `hook` in the child between fork and exec (a prctl, a mount
    /// namespace of its own): only async-signal-safe calls, no allocation.
    pub fn pre_exec(
        mut self,
        hook: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Node {
        self.pre_exec.push(Box::new(hook));
        self
    }

    /// Sets an env var for the child (later calls win).
    pub fn env_var(mut self, key: impl Into<String>, value: impl Into<String>) -> Node {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets several env vars, e.g. the output of [`standard_env`].
    pub fn envs<K, V>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Node
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Appends one command-line argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Node {
        self.args.push(arg.into());
        self
    }

    /// Appends several command-line arguments.
    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Node {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Writes a file into the working dir (e.g. `cyberwave.yml`, `.env`).
    pub fn cwd_file(self, name: &str, contents: &str) -> Node {
        write_file(&self.workdir.path().join(name), contents);
        self
    }

    /// Writes a file relative to HOME (e.g. `.cyberwave/credentials.json`).
    pub fn home_file(self, rel_path: &str, contents: &str) -> Node {
        write_file(&self.home.path().join(rel_path), contents);
        self
    }

    /// The temp HOME (before spawning).
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The temp working dir (before spawning).
    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// Starts the node in the background.
    pub fn spawn(mut self) -> NodeProcess {
        let logs = temp_dir("cw-logs-");
        let stdout_path = logs.path().join("stdout.log");
        let stderr_path = logs.path().join("stderr.log");
        let stdout = fs::File::create(&stdout_path).expect("create stdout log");
        let stderr = fs::File::create(&stderr_path).expect("create stderr log");
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_string());
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args)
            .current_dir(self.workdir.path())
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.home.path())
            .env("CYBERWAVE_RETRY_BASE_MS", "50")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for hook in self.pre_exec.drain(..) {
            // SAFETY: the hooks promise to stay async-signal-safe.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, hook);
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()));
        let config_dir = self
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "CYBERWAVE_CONFIG_DIR")
            .map(|(_, v)| PathBuf::from(v))
            .unwrap_or_else(|| self.home.path().join(".cyberwave"));
        NodeProcess {
            child: Mutex::new(child),
            home: self.home,
            workdir: self.workdir,
            config_dir,
            _logs: logs,
            stdout_path,
            stderr_path,
        }
    }

    /// Runs a short command (e.g. `config show`) to completion.
    ///
    /// Returns (status, stdout, stderr). Panics with the output so far if it
    /// does not exit within `timeout`.
    pub fn run_to_exit(self, timeout: Duration) -> (ExitStatus, String, String) {
        let proc = self.spawn();
        match proc.wait_exit(timeout) {
            Some(status) => (status, proc.stdout(), proc.stderr()),
            None => {
                proc.kill9();
                panic!(
                    "node did not exit within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    proc.stdout(),
                    proc.stderr()
                );
            }
        }
    }
}

/// A running (or exited) node. Dropping it SIGKILLs the node if needed and
/// removes its temp dirs.
pub struct NodeProcess {
    child: Mutex<Child>,
    home: TempDir,
    workdir: TempDir,
    config_dir: PathBuf,
    _logs: TempDir,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

/// The memory figure flood tests hold the node to: 64 MiB (issue 11), or
/// 48 MiB over what the node used before the flood, whichever is higher. A
/// build with `--features torch` maps LibTorch at start (~170 MiB resident
/// before any work); what a flood may cost it is the same 48 MiB.
pub fn flood_rss_limit_kib(baseline_kib: u64) -> u64 {
    const ABSOLUTE_KIB: u64 = 64 * 1024;
    const GROWTH_KIB: u64 = 48 * 1024;
    ABSOLUTE_KIB.max(baseline_kib + GROWTH_KIB)
}

/// Resident memory of process `pid` in KiB (`VmRSS`), `None` once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl NodeProcess {
    /// OS process id of the node.
    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    /// The node's resident memory in KiB, `None` once it is gone.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }

    /// The node's HOME.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// `$HOME/.cyberwave`, or `CYBERWAVE_CONFIG_DIR` if the test set it.
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// The node's working directory.
    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// Everything the node wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Everything the node wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Waits until `substr` shows up in stderr or stdout.
    pub fn wait_for_log(&self, substr: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().contains(substr) || self.stdout().contains(substr) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `sig` to the node (no-op if it already exited and was reaped).
    pub fn signal(&self, sig: Signal) {
        let mut child = self.child();
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        kill(Pid::from_raw(child.id() as i32), sig)
            .unwrap_or_else(|e| panic!("kill({}, {sig}): {e}", child.id()));
    }

    /// Waits for the node to exit; `None` if still running after `timeout`.
    /// Can be called repeatedly; the status is remembered.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Exit status if the node has exited, without blocking.
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.child().try_wait().expect("try_wait on node")
    }

    /// SIGKILLs the node (simulating a crash / power loss) and reaps it.
    pub fn kill9(&self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
        // A failing test is much easier to debug with the node's own story.
        if thread::panicking() {
            eprintln!(
                "--- node stdout ---\n{}\n--- node stderr ---\n{}\n--- end node output ---",
                self.stdout(),
                self.stderr()
            );
        }
    }
}

fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temp dir")
}

fn write_file(path: &Path, contents: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent dirs");
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Runs a helper program (a benchmark's reference, a model generator) to
/// completion; panics with its stderr when it fails. Returns its stdout.
pub fn run_ok(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}
