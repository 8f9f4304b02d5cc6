//! Logging set-up, for the CLI and for the model server it starts. Both log
//! to stderr through `tracing`; `CYBERWAVE_LOG=<filter>` overrides the
//! default filter of either. It sits below `cli` and `deploy` so the model
//! server does not reach up into the CLI for it.

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

/// Logging of the command line and the node it runs: `-v` for debug, `-vv`
/// for trace; colours when stderr is a terminal.
pub fn init_cli_logging(verbose: u8) {
    let default = match verbose {
        // The embedded broker reports every client that hangs up as an
        // error; the node reports its own problems.
        0 => "warn,cyberwave_cloud_node=info,install=info,rumqttd=off",
        1 => "warn,cyberwave_cloud_node=debug,install=info,rumqttd=warn",
        _ => "warn,cyberwave_cloud_node=trace,install=trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter(default))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
