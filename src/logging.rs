//! Logging set-up, for the CLI and for the model server it starts. Both log
//! to stderr through `tracing`; `CYBERWAVE_LOG=<filter>` overrides the
//! default filter of either. `--log-format json` (or
//! `CYBERWAVE_LOG_FORMAT=json`) makes the CLI's lines JSON; under the
//! journal they carry their syslog priority instead of a timestamp. It sits below `cli` and
//! `deploy` so the model server does not reach up into the CLI for it.

use tracing::Level;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// `CYBERWAVE_LOG` when set and valid, else `default`.
fn filter(default: &str) -> EnvFilter {
    std::env::var("CYBERWAVE_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default))
}

/// Logging of the model server: its stderr is its log file, so plain text
/// at info level (CYBERWAVE_LOG overrides, as for the node).
pub fn init_server_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(filter("warn,cyberwave_cloud_node=info,ort=warn"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
}

/// How log lines look (`--log-format`, `CYBERWAVE_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people: time, level, message (no time under the journal,
    /// which stamps lines itself)
    #[default]
    Text,
    /// One JSON object a line, for log collectors
    Json,
}

/// Logging of the command line and the node it runs: `-v` for debug, `-vv`
/// for trace; colours when stderr is a terminal; JSON lines with
/// [`LogFormat::Json`]; no timestamps when stderr is the journal.
pub fn init_cli_logging(verbose: u8, format: Option<LogFormat>) {
    let (format, bad_env) = match format {
        Some(format) => (format, None),
        None => format_from_env(),
    };
    let default = match verbose {
        // The embedded broker reports every client that hangs up as an
        // error; the node reports its own problems.
        0 => "warn,cyberwave_cloud_node=info,install=info,rumqttd=off",
        1 => "warn,cyberwave_cloud_node=debug,install=info,rumqttd=warn",
        _ => "warn,cyberwave_cloud_node=trace,install=trace",
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(default))
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        LogFormat::Text if crate::systemd::stderr_is_journal() => {
            let format = tracing_subscriber::fmt::format()
                .without_time()
                .with_ansi(false)
                .with_target(false);
            builder
                .with_ansi(false)
                .event_format(JournalPriority(format))
                .init()
        }
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    if let Some(value) = bad_env {
        tracing::warn!("CYBERWAVE_LOG_FORMAT={value:?} is neither text nor json; logging text");
    }
}

/// `CYBERWAVE_LOG_FORMAT` (`text` or `json`, any case; empty is unset).
/// Like an invalid `CYBERWAVE_LOG`, a bad value falls back to text, with a
/// warning: a typo in a service's environment file does not stop the node.
fn format_from_env() -> (LogFormat, Option<String>) {
    let value = std::env::var("CYBERWAVE_LOG_FORMAT").unwrap_or_default();
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "text" => (LogFormat::Text, None),
        "json" => (LogFormat::Json, None),
        _ => (LogFormat::Text, Some(value)),
    }
}

/// Puts the syslog priority first (`<3>` for an error ... `<7>` for debug),
/// which the journal reads off a service's stderr lines and strips
/// (SyslogLevelPrefix=, on by default): `journalctl -p warning` then works.
struct JournalPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalPriority<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(context, writer, event)
    }
}
