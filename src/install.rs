//! The install script: run once at start, before registration, so a node
//! that cannot prepare its environment never announces itself as ready.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::shutdown::Shutdown;

/// How many lines of output a failure report keeps.
pub const TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot start the install script `{script}` with /bin/sh: {source}")]
    Spawn {
        script: String,
        source: std::io::Error,
    },
    #[error("install script `{script}` failed with {status}; last lines of its output:\n{tail}")]
    Failed {
        script: String,
        status: String,
        exit_code: Option<i32>,
        tail: String,
    },
    #[error("install script interrupted by shutdown")]
    Interrupted,
}

/// Runs `script` with `/bin/sh -c` in `working_dir`, logging each line of its
/// output. On shutdown the script's whole process group gets SIGTERM.
pub async fn run_install_script(
    script: &str,
    working_dir: &Path,
    extra_env: &[(String, String)],
    shutdown: &Shutdown,
) -> Result<(), InstallError> {
    tracing::info!(dir = %working_dir.display(), "running install script: {script}");
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .current_dir(working_dir)
        .envs(extra_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| InstallError::Spawn {
            script: script.to_owned(),
            source,
        })?;
    let (lines_tx, mut lines) = mpsc::channel::<(&'static str, String)>(64);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward_lines(out, "stdout", lines_tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward_lines(err, "stderr", lines_tx));
    }
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some((stream, line)) => {
                    tracing::info!(target: "install", stream, "{line}");
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
                None => break,
            },
            _ = shutdown.wait() => {
                if let Some(pid) = child.id() {
                    let group = nix::unistd::Pid::from_raw(-(pid as i32));
                    let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
                }
                return Err(InstallError::Interrupted);
            }
        }
    }
    let status = child.wait().await.map_err(|source| InstallError::Spawn {
        script: script.to_owned(),
        source,
    })?;
    if status.success() {
        tracing::info!("install script finished");
        return Ok(());
    }
    let described = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {}", crate::supervised::signal_name(sig)),
        _ => "an unknown status".to_owned(),
    };
    let tail: Vec<String> = tail.into_iter().map(|l| format!("  | {l}")).collect();
    Err(InstallError::Failed {
        script: script.to_owned(),
        status: described,
        exit_code: status.code(),
        tail: if tail.is_empty() {
            "  | (no output)".to_owned()
        } else {
            tail.join("\n")
        },
    })
}

async fn forward_lines(
    stream: impl AsyncRead + Unpin,
    name: &'static str,
    lines: mpsc::Sender<(&'static str, String)>,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                if lines.send((name, line)).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn success_and_failure_with_tail() {
        let dir = tempfile::tempdir().unwrap();
        let shutdown = Shutdown::new();
        run_install_script("echo ok", dir.path(), &[], &shutdown)
            .await
            .unwrap();
        let env = vec![("GREETING".to_owned(), "hi".to_owned())];
        let err = run_install_script(
            "echo $GREETING; echo oops >&2; exit 3",
            dir.path(),
            &env,
            &shutdown,
        )
        .await
        .unwrap_err();
        match err {
            InstallError::Failed {
                exit_code, tail, ..
            } => {
                assert_eq!(exit_code, Some(3));
                assert!(tail.contains("hi") && tail.contains("oops"), "{tail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn runs_in_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        run_install_script("touch marker", dir.path(), &[], &Shutdown::new())
            .await
            .unwrap();
        assert!(dir.path().join("marker").exists());
    }
}
