//! A throw-away Mosquitto broker per test.
//!
//! Every test gets its own broker on its own port so tests can run in
//! parallel and can stop/restart "the cloud" without disturbing each other.
//! The broker lives in a private temp dir (config, password file, log) and is
//! killed when the [`Broker`] is dropped, even if the test panics.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// How long we wait for the broker to accept TCP connections.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `stop()` waits after SIGTERM before escalating to SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running (or stopped) Mosquitto instance bound to 127.0.0.1.
pub struct Broker {
    dir: TempDir,
    port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Starts an anonymous broker on a free port.
    pub fn start() -> Broker {
        Self::start_inner(None, false)
    }

    /// Starts an anonymous broker with extra `mosquitto.conf` lines, e.g.
    /// `max_packet_size 1048576`.
    pub fn start_with_conf(extra: &str) -> Broker {
        Self::start_inner_conf(None, false, extra)
    }

    /// Starts a broker that only accepts `user`/`pass`.
    ///
    /// Used to check that the node passes MQTT credentials through and fails
    /// loudly when they are wrong.
    pub fn start_with_password(user: &str, pass: &str) -> Broker {
        Self::start_inner(Some((user, pass)), false)
    }

    /// Starts a TLS-only broker with a throw-away CA (made with openssl);
    /// [`Broker::ca_file`] is the CA a client must trust. The server
    /// certificate is for `localhost`.
    pub fn start_tls() -> Broker {
        Self::start_inner(None, true)
    }

    /// The CA certificate of a [`Broker::start_tls`] broker.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn start_inner(creds: Option<(&str, &str)>, tls: bool) -> Broker {
        Self::start_inner_conf(creds, tls, "")
    }

    fn start_inner_conf(creds: Option<(&str, &str)>, tls: bool, extra: &str) -> Broker {
        // Picking a free port and then handing it to another process is racy
        // (another test may grab it in between), so retry a few times.
        let mut last_err = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("cw-broker-")
                .tempdir()
                .expect("create broker temp dir");
            let password_file = creds.map(|(u, p)| make_password_file(dir.path(), u, p));
            let log = dir.path().join("mosquitto.log");
            let conf = dir.path().join("mosquitto.conf");
            let port = free_port();
            write_conf(&conf, port, &log, password_file.as_deref());
            if !extra.is_empty() {
                let mut text = fs::read_to_string(&conf).expect("read conf");
                text.push_str(extra);
                text.push('\n');
                fs::write(&conf, text).expect("write conf");
            }
            if tls {
                make_tls_files(dir.path());
                let mut text = fs::read_to_string(&conf).expect("read conf");
                let d = dir.path().display();
                text = text.replacen(
                    "\n",
                    &format!(
                        "\ncafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n"
                    ),
                    1,
                );
                fs::write(&conf, text).expect("write conf");
            }
            let mut broker = Broker {
                dir,
                port,
                conf,
                log,
                child: None,
            };
            match broker.spawn_and_wait() {
                Ok(()) => return broker,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start mosquitto: {last_err}");
    }

    /// The TCP port the broker listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Gracefully stops the broker (SIGTERM, then wait; SIGKILL after 5 s).
    ///
    /// Simulates the cloud's MQTT endpoint going away; the port stays
    /// reserved in the sense that [`Broker::restart`] reuses it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }

    /// Freezes the broker (SIGSTOP): connections stay open but nothing is
    /// read or acknowledged, like a broker that cannot keep up.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGSTOP);
        }
    }

    /// Lets a [`Broker::pause`]d broker run again.
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
        }
    }

    /// Starts the broker again on the same port with the same config.
    ///
    /// Stops it first if it is still running. Waits until it is reachable, so
    /// a client reconnect after this returns should succeed.
    pub fn restart(&mut self) {
        self.stop();
        // The old socket may linger briefly; mosquitto sets SO_REUSEADDR, but
        // give a failed bind a few more chances anyway.
        let mut last_err = String::new();
        for _ in 0..10 {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) => {
                    last_err = e;
                    thread::sleep(Duration::from_millis(200));
                }
            }
        }
        panic!(
            "could not restart mosquitto on port {}: {last_err}",
            self.port
        );
    }

    /// The broker's log so far (log file plus anything it wrote to stderr).
    ///
    /// Handy in assertion messages when a connection unexpectedly fails.
    pub fn log(&self) -> String {
        let mut out = fs::read_to_string(&self.log).unwrap_or_default();
        if let Ok(stderr) = fs::read_to_string(self.dir.path().join("stderr.log")) {
            out.push_str(&stderr);
        }
        out
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("stderr.log"))
            .map_err(|e| format!("open stderr log: {e}"))?;
        let child = Command::new(mosquitto_path())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn mosquitto: {e}"))?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!("mosquitto exited early ({status}): {}", self.log()));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.kill_child();
        Err(format!(
            "mosquitto not reachable on {addr} after {START_TIMEOUT:?}: {}",
            self.log()
        ))
    }

    fn kill_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill_child();
    }
}

/// Asks the kernel for a currently free port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

fn write_conf(conf: &Path, port: u16, log: &Path, password_file: Option<&Path>) {
    let mut text = format!(
        "listener {port} 127.0.0.1\n\
         persistence false\n\
         log_dest file {}\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         log_type information\n\
         connection_messages true\n\
         set_tcp_nodelay true\n",
        log.display()
    );
    match password_file {
        Some(pw) => {
            text.push_str("allow_anonymous false\n");
            text.push_str(&format!("password_file {}\n", pw.display()));
        }
        None => text.push_str("allow_anonymous true\n"),
    }
    // As root, mosquitto drops privileges to the `mosquitto` user, which then
    // cannot write to our private temp dir. `user root` keeps it as is; the
    // option is ignored when not running as root.
    if nix::unistd::geteuid().is_root() {
        text.push_str("user root\n");
    }
    fs::write(conf, text).expect("write mosquitto.conf");
}

/// A CA and a `localhost` server certificate signed by it.
fn make_tls_files(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl not found: apt-get install openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ]);
}

fn make_password_file(dir: &Path, user: &str, pass: &str) -> PathBuf {
    let path = dir.join("passwd");
    let tool = sibling_tool("mosquitto_passwd");
    let out = Command::new(&tool)
        .arg("-b")
        .arg("-c")
        .arg(&path)
        .arg(user)
        .arg(pass)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", tool.display()));
    assert!(
        out.status.success(),
        "mosquitto_passwd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// Locates the mosquitto binary: PATH first, then the Debian location.
fn mosquitto_path() -> PathBuf {
    find_tool("mosquitto", &["/usr/sbin/mosquitto"]).unwrap_or_else(|| {
        panic!(
            "mosquitto not found: install it with `apt-get install mosquitto` (.ci/run does this)"
        )
    })
}

/// Locates a helper tool shipped with mosquitto (e.g. `mosquitto_passwd`).
fn sibling_tool(name: &str) -> PathBuf {
    let fallbacks = [format!("/usr/bin/{name}"), format!("/usr/sbin/{name}")];
    let fallbacks: Vec<&str> = fallbacks.iter().map(String::as_str).collect();
    find_tool(name, &fallbacks).unwrap_or_else(|| {
        panic!("{name} not found: install it with `apt-get install mosquitto` (.ci/run does this)")
    })
}

fn find_tool(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(name))
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}
