//! Running the node from your own Rust program, the way the Python package
//! offers `CloudNode.from_config_file().run()`.
//!
//! ```sh
//! CYBERWAVE_API_TOKEN=... cargo run --example embed -- path/to/cyberwave.yml
//! ```
//!
//! Settings come from the same sources as the CLI (environment, `.env`
//! files, the given cyberwave.yml, credentials.json); `Overrides` plays the
//! part of the command-line flags.

use cyberwave_cloud_node::{Environment, Overrides, Settings, Shutdown};

fn main() -> anyhow::Result<std::process::ExitCode> {
    // Models are served by this same executable in a hidden mode. Ship
    // `cyberwave-cloud-node-shim` beside it: workloads run under that.
    if let Some(code) = cyberwave_cloud_node::run_model_server_if_asked() {
        return Ok(code);
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run())?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let overrides = Overrides {
        config: std::env::args().nth(1).map(Into::into),
        slug: Some("embedded-node".into()),
        ..Overrides::default()
    };
    let settings = Settings::load(&overrides, &Environment::from_process())?;
    for warning in &settings.warnings {
        eprintln!("warning: {warning}");
    }

    // The program decides when to stop: here on Ctrl+C / SIGTERM, but a
    // `Shutdown` can be triggered from anywhere (`shutdown.trigger()`).
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals()?;
    cyberwave_cloud_node::run(settings, shutdown).await?;
    Ok(())
}
