//! What the command line prints for a person, in one place:
//!
//! - [`fatal`]: the one format of an error that ends a command, for every
//!   subcommand: `cyberwave-cloud-node: error: <message>` on stderr, one
//!   `  caused by: ...` line per cause, then `  hint: ...` where there is one.
//!   It goes straight to stderr, not through the log formatter, so it shows
//!   at every log level (`CYBERWAVE_LOG=off` included).
//!   Command-line usage errors found by clap get the same prefix ([`usage`]).
//! - [`write_stdout`] and [`outln!`]: stdout for one-shot output. A closed
//!   pipe (`status | head -n 1`) ends the program quietly with exit code 0:
//!   the reader has all it wanted, so a `set -o pipefail` script does not
//!   fail on it. Rust ignores SIGPIPE, and `println!` panics there instead.

use std::fmt::Display;
use std::io::Write;
use std::process::ExitCode;

/// What every fatal error line starts with.
const PREFIX: &str = "cyberwave-cloud-node: error:";

/// An error with a next step for the person who hit it. Transparent: it
/// displays (and has the causes of) the error it wraps; [`fatal`] prints
/// the hint after the cause chain.
#[derive(Debug)]
pub struct Hinted {
    error: anyhow::Error,
    hint: String,
}

impl std::fmt::Display for Hinted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Hinted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// Wraps `error` with a `hint` line for [`fatal`].
pub fn with_hint(error: impl Into<anyhow::Error>, hint: impl Display) -> anyhow::Error {
    Hinted {
        error: error.into(),
        hint: hint.to_string(),
    }
    .into()
}

/// The text of a fatal error: the message, the causes, the hint.
pub fn render(error: &anyhow::Error) -> String {
    let mut chain = error.chain();
    let mut text = format!(
        "{PREFIX} {}\n",
        chain.next().map(ToString::to_string).unwrap_or_default()
    );
    let mut last = text.clone();
    for cause in chain {
        let line = cause.to_string();
        // A wrapper that repeats its cause (`{0}` and `#[source]` both)
        // would print the same line twice.
        if last.contains(&line) {
            continue;
        }
        text.push_str(&format!("  caused by: {line}\n"));
        last = line;
    }
    let hint = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<Hinted>())
        .map(|hinted| hinted.hint.as_str());
    if let Some(hint) = hint {
        text.push_str(&format!("  hint: {hint}\n"));
    }
    text
}

/// Prints `error` as a fatal error on stderr.
pub fn fatal(error: &anyhow::Error) {
    let _ = std::io::stderr().lock().write_all(render(error).as_bytes());
}

/// Prints `error` as a fatal error and gives the usual exit code (1).
pub fn fail(error: &anyhow::Error) -> ExitCode {
    fatal(error);
    ExitCode::FAILURE
}

/// What clap found wrong with the command line, in the format of
/// [`fatal`] (clap's usage and tip follow), exit code 2. `--help` and
/// `--version` go to stdout as clap prints them: exit code 0, and quietly on
/// a closed pipe.
pub fn usage(error: &clap::Error) -> ExitCode {
    if !error.use_stderr() {
        error.exit();
    }
    let text = error.render().to_string();
    let text = match text.strip_prefix("error:") {
        Some(rest) => format!("{PREFIX}{rest}"),
        None => text,
    };
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
    ExitCode::from(2)
}

/// Writes `bytes` to stdout. A closed pipe ends the program here with exit
/// code 0 (see the module doc); any other write error is fatal (exit 1).
pub fn write_stdout(bytes: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_all(bytes).and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            fatal(&anyhow::Error::new(e).context("cannot write to stdout"));
            std::process::exit(1)
        }
    }
}

/// `println!` for command output, through [`write_stdout`]: no panic on a
/// closed pipe.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::write_stdout(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}
pub(crate) use outln;

/// `print!` for command output, through [`write_stdout`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write_stdout(format!($($arg)*).as_bytes())
    };
}
pub(crate) use out;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("the broker at {0} is unreachable")]
    struct Unreachable(&'static str);

    #[test]
    fn fatal_text_has_message_causes_and_hint() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = anyhow::Error::new(io)
            .context(Unreachable("127.0.0.1:1883"))
            .context("send status failed");
        let error = with_hint(error, "start the node first");
        assert_eq!(
            render(&error),
            "cyberwave-cloud-node: error: send status failed\n\
             \x20 caused by: the broker at 127.0.0.1:1883 is unreachable\n\
             \x20 caused by: refused\n\
             \x20 hint: start the node first\n"
        );
    }

    #[test]
    fn a_cause_repeated_in_its_wrapper_is_printed_once() {
        let io = std::io::Error::other("disk full");
        let error = anyhow::Error::new(io).context("cannot save: disk full");
        assert_eq!(
            render(&error),
            "cyberwave-cloud-node: error: cannot save: disk full\n"
        );
    }
}
