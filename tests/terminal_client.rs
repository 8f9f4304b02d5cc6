//! The `terminal` client as a person uses it: in a real terminal (a tmux
//! pane) against a standalone node, typing with `send-keys` and reading the
//! screen with `capture-pane`; and with piped input, as a script uses it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::free_port;
use common::{Node, NodeProcess};

const CONFIG: &str = "cyberwave-cloud-node:\n  terminal:\n    enabled: true\n    shell: /bin/sh\n";

/// A standalone node with the terminal on, on its own port.
fn standalone(port: u16, config: &str) -> NodeProcess {
    let node = Node::new()
        .cwd_file("cyberwave.yml", config)
        // The remote shell's prompt, whoever runs the test (root gets `#`).
        .env_var("PS1", "remote> ")
        .args(["start", "--standalone", "--mqtt-port", &port.to_string()])
        .spawn();
    assert!(
        node.wait_for_log("ready: listening on", Duration::from_secs(15)),
        "standalone node not ready:\n{}",
        node.stderr()
    );
    node
}

/// The command line that runs the client as the node's user, with
/// nothing else from the test's environment.
fn client_command(home: &Path, port: u16) -> String {
    format!(
        "env -i HOME={} PATH=/usr/bin:/bin {} terminal --mqtt-port {port}",
        home.display(),
        common::node::NODE_BIN
    )
}

/// A tmux server of its own (its own socket), killed on drop.
struct Tmux {
    _dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Tmux {
    fn available() -> bool {
        Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// A detached 120x40 session running `command` in its one pane.
    fn start(command: &str) -> Tmux {
        let dir = tempfile::tempdir().unwrap();
        let tmux = Tmux {
            socket: dir.path().join("tmux.sock"),
            _dir: dir,
        };
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "120",
            "-y",
            "40",
            command,
        ]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` literally, then Enter.
    fn type_line(&self, text: &str) {
        self.run(&["send-keys", "-t", "t", "-l", text]);
        self.run(&["send-keys", "-t", "t", "Enter"]);
    }

    /// The pane's whole screen and history.
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", "t"])
    }

    /// Waits until a line of the screen, trimmed, satisfies `wanted`.
    fn wait_line(&self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let screen = self.screen();
            if let Some(line) = screen.lines().map(str::trim).find(|l| wanted(l)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no {what} on the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for `line` as a line of output: alone, or after a prompt
    /// when keys typed ahead were echoed before it (not the typed command).
    fn wait_for(&self, line: &str) {
        let after_prompt = format!("> {line}");
        self.wait_line(line, |l| l == line || l.ends_with(&after_prompt));
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

#[test]
fn a_person_types_into_the_remote_shell_in_tmux() {
    if !Tmux::available() {
        eprintln!("SKIPPED: tmux is not installed (apt-get install tmux); the terminal client was not tested in a real terminal");
        return;
    }
    let port = free_port();
    let node = standalone(port, CONFIG);
    let client = client_command(node.home(), port);
    // The pane runs the client three times (ended by `exit 3`, by `~.`, by
    // SIGTERM), then shows the exit codes and whether the local terminal is
    // cooked again.
    let script = format!(
        "{client}; echo \"first exited $?\"; {client}; echo \"second exited $?\"; \
         {client}; echo \"third exited $?\"; \
         echo \"tty: $(stty -a | tr ' ;' '\\n\\n' | grep -xE -- '-?(icanon|echo|isig)' | tr '\\n' ' ')\"; sleep 600"
    );
    let tmux = Tmux::start(&script);
    tmux.wait_for("remote>");

    tmux.type_line("echo $((6*7))");
    tmux.wait_for("42");

    // Ctrl-C reaches the remote shell and ends its `sleep`; the client lives on.
    tmux.type_line("sleep 30");
    std::thread::sleep(Duration::from_millis(300));
    tmux.run(&["send-keys", "-t", "t", "C-c"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux.type_line("echo after-$((1+1))");
    tmux.wait_for("after-2");

    tmux.type_line("stty size");
    tmux.wait_for("40 120");
    tmux.run(&["resize-window", "-t", "t", "-x", "100", "-y", "30"]);
    // The SIGWINCH and the resize travel on their own: ask until it shows.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tmux
        .screen()
        .lines()
        .any(|l| l.trim() == "30 100" || l.trim().ends_with("> 30 100"))
    {
        assert!(
            Instant::now() < deadline,
            "the resize never reached the remote PTY:\n{}",
            tmux.screen()
        );
        tmux.type_line("stty size");
        std::thread::sleep(Duration::from_millis(500));
    }

    tmux.type_line("exit 3");
    tmux.wait_for("first exited 3");

    // `~.` after Enter ends the second session, as in ssh.
    wait_prompt_after(&tmux, "first exited 3");
    tmux.run(&["send-keys", "-t", "t", "Enter"]);
    tmux.run(&["send-keys", "-t", "t", "-l", "~."]);
    tmux.wait_for("second exited 255");

    // SIGTERM ends the third (the pane's shell runs it as its child).
    wait_prompt_after(&tmux, "second exited 255");
    let shell = tmux.run(&["list-panes", "-t", "t", "-F", "#{pane_pid}"]);
    let shell = shell.trim();
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap();
    let client_pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(client_pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    tmux.wait_for("third exited 255");
    let tty = tmux.wait_line("the local tty's settings", |l| l.starts_with("tty:"));
    assert_eq!(
        tty, "tty: isig icanon echo",
        "the local terminal is not restored"
    );
}

/// Waits for the next session's prompt after the line `line`.
fn wait_prompt_after(tmux: &Tmux, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let screen = tmux.screen();
        let after = &screen[screen.find(line).unwrap()..];
        if after.lines().skip(1).any(|l| l.trim() == "remote>") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no session after {line}:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `terminal <args>` with HOME = `home` and its stdio piped.
fn spawn_piped(home: &Path, args: &[&str]) -> std::process::Child {
    Command::new(common::node::NODE_BIN)
        .arg("terminal")
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs the client with `input` piped to it; (exit code, stdout, stderr).
fn piped(home: &Path, args: &[&str], input: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = spawn_piped(home, args);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn piped_input_runs_in_the_remote_shell_and_its_exit_code_comes_back() {
    let port = free_port();
    let node = standalone(port, CONFIG);
    assert!(
        node.stderr()
            .contains("remote terminal enabled: shell /bin/sh, at most 2 session(s)"),
        "the node says the terminal is on, with its shell and limits:\n{}",
        node.stderr()
    );
    let p = port.to_string();
    let (code, out, err) = piped(
        node.home(),
        &["--mqtt-port", &p],
        "echo answer=$((6*7))\nexit 4\n",
    );
    assert_eq!(code, 4, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("answer=42"), "{out}");

    // The end of the input ends the shell (a Ctrl-D at its prompt).
    let (code, out, err) = piped(node.home(), &["--mqtt-port", &p], "echo done\n");
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
}

#[test]
fn a_connected_node_is_reached_by_slug_through_its_broker() {
    let s = common::scenario::Scenario::start(|n| {
        n.cwd_file("cyberwave.yml", CONFIG)
            .env_var("PS1", "remote> ")
    });
    // Another user's machine: no identity here, only flags.
    let elsewhere = tempfile::tempdir().unwrap();
    let port = s.broker.port().to_string();
    let args = [
        "--node",
        &s.slug,
        "--mqtt-host",
        "127.0.0.1",
        "--mqtt-port",
        &port,
    ];
    let (code, out, err) = piped(elsewhere.path(), &args, "echo on-$((40+2))\nexit 5\n");
    assert_eq!(code, 5, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("on-42"), "{out}");
}

#[test]
fn a_refused_or_unreachable_terminal_says_why() {
    let port = free_port();
    let node = standalone(
        port,
        "cyberwave-cloud-node:\n  terminal:\n    enabled: false\n",
    );
    let (code, _, err) = piped(node.home(), &["--mqtt-port", &port.to_string()], "");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("refused the terminal: terminal access is disabled on this node"),
        "{err}"
    );

    let closed = free_port();
    let started = Instant::now();
    let (code, _, err) = piped(node.home(), &["--mqtt-port", &closed.to_string()], "");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "cannot reach the MQTT broker at 127.0.0.1:{closed}"
        )),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a refused connection is known at once"
    );
}

/// Collects a child's pipe in a thread, readable while it runs.
fn collect(
    mut pipe: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<String>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                return;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    seen
}

fn wait_text(seen: &std::sync::Mutex<String>, text: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !seen.lock().unwrap().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in the client's {what}: {}",
            seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_session_outlives_a_broker_restart() {
    use std::io::Write;
    let mut s = common::scenario::Scenario::start(|n| {
        n.cwd_file("cyberwave.yml", CONFIG)
            .env_var("PS1", "remote> ")
    });
    let elsewhere = tempfile::tempdir().unwrap();
    let port = s.broker.port().to_string();
    let mut child = spawn_piped(
        elsewhere.path(),
        &[
            "--node",
            &s.uuid,
            "--mqtt-host",
            "127.0.0.1",
            "--mqtt-port",
            &port,
        ],
    );
    let mut stdin = child.stdin.take().unwrap();
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    stdin.write_all(b"echo first-$((1+1))\n").unwrap();
    wait_text(&out, "first-2", "output");

    let connections = s.client.connections();
    s.broker.restart();
    wait_text(&err, "back on the broker at 127.0.0.1", "stderr");
    assert!(s
        .client
        .wait_connections(connections + 1, Duration::from_secs(10)));
    // The node resubscribes on its own schedule (the test broker forgets
    // subscriptions); input sent before that would be lost. The terminal's
    // input topic is in the same SUBSCRIBE as the command topics. The shell
    // is still there.
    s.status_once_subscribed(Duration::from_secs(15));
    stdin.write_all(b"echo second-$((2+2))\nexit 6\n").unwrap();
    wait_text(&out, "second-4", "output");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the client did not end");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(6), "{}", err.lock().unwrap());
}
