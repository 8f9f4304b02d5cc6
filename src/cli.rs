//! The command line: clap definitions, logging set-up, dispatch, exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::config::{self, Environment, Overrides, Settings};
use crate::shutdown::Shutdown;

const TOKEN_HELP: &str = "\
API TOKEN
  The node needs a Cyberwave API token. It is looked up in this order:
    1. the environment:      export CYBERWAVE_API_TOKEN=...  (or CYBERWAVE_API_KEY)
    2. ./.env                CYBERWAVE_API_TOKEN=...  (the --config file's directory when given)
    3. ~/.cyberwave/.env     (the config dir: $CYBERWAVE_CONFIG_DIR, else
                             $CYBERWAVE_EDGE_CONFIG_DIR, else ~/.cyberwave)
    4. ~/.cyberwave/credentials.json, written by `cyberwave-cli login`
  It is never read from cyberwave.yml, which usually lives in git.

SETTINGS
  Every setting follows: flag > environment > ./.env > config-dir .env >
  cyberwave.yml > credentials.json > default. `cyberwave-cloud-node config show`
  prints each effective value and where it came from.

EXAMPLES
  cyberwave-cloud-node start --slug gpu1
  cyberwave-cloud-node start --config ./ml-repo/cyberwave.yml --profile gpu-a100 -v
  cyberwave-cloud-node config show";

/// Turns this computer into a Cyberwave compute node.
///
/// The node registers with the Cyberwave backend over HTTPS, connects out to
/// the Cyberwave MQTT broker (no open ports) and runs the inference, training
/// and simulate commands of your repository's cyberwave.yml when the platform
/// asks for them.
#[derive(Debug, Parser)]
#[command(name = "cyberwave-cloud-node", version, after_long_help = TOKEN_HELP)]
struct Cli {
    /// Log more: -v for debug, -vv for trace (CYBERWAVE_LOG=<filter> for full control)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Debug, Subcommand)]
enum CliCommand {
    /// Register with Cyberwave and serve commands until stopped (SIGTERM or Ctrl+C)
    #[command(after_long_help = TOKEN_HELP)]
    Start(SettingsArgs),
    /// Send a command to a node and show what comes back, like the backend would
    #[command(after_long_help = SEND_HELP)]
    Send(SendArgs),
    /// Show this machine's hardware: OS, CPU, memory, disks, NVIDIA GPUs
    Info {
        /// Print JSON for a program instead of text for a person
        #[arg(long)]
        json: bool,
    },
    /// List the workloads this node knows (from its records; no broker needed)
    Status {
        /// Print a JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Print a workload's output (stdout unless --stderr)
    Logs {
        /// The request_id the workload was started with
        request_id: String,
        /// Print the stderr log instead of stdout
        #[arg(long)]
        stderr: bool,
        /// Keep printing new output until the workload ends
        #[arg(short, long)]
        follow: bool,
    },
    /// Load a model and run it once in this process (no node, no broker)
    #[command(after_long_help = crate::runners::run_model::RUN_MODEL_HELP)]
    RunModel(crate::runners::run_model::RunModelArgs),
    /// Inspect the node's settings
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Print a shell completion script to save in your shell's completion dir (see --help)
    #[command(after_long_help = COMPLETIONS_HELP)]
    Completions {
        /// The shell to write the script for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout
    #[command(hide = true)]
    Man,
}

const COMPLETIONS_HELP: &str = "\
WHERE TO PUT IT
  bash        > ~/.local/share/bash-completion/completions/cyberwave-cloud-node
  zsh         > ~/.zfunc/_cyberwave-cloud-node, with fpath+=~/.zfunc before compinit
  fish        > ~/.config/fish/completions/cyberwave-cloud-node.fish
  elvish      > ~/.config/elvish/lib/cyberwave-cloud-node.elv, then `use cyberwave-cloud-node`
  powershell  | Out-String | Invoke-Expression, in your $PROFILE
  The Debian package installs the bash, zsh and fish scripts for every user.

EXAMPLES
  cyberwave-cloud-node completions bash \\
      > ~/.local/share/bash-completion/completions/cyberwave-cloud-node
  cyberwave-cloud-node completions fish > ~/.config/fish/completions/cyberwave-cloud-node.fish";

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Print every effective setting and where it came from (the token is masked)
    Show(SettingsArgs),
}

const SEND_HELP: &str = "\
EXIT CODES
  0  the command was answered ok (with --wait done: the workload completed)
  N  --wait done and the workload failed: its own exit code (128+signal if killed)
  1  an error response, a cancelled workload, or bad arguments
  2  no answer (or no broker) within --timeout

EXAMPLES
  cyberwave-cloud-node send status
  cyberwave-cloud-node send training --params '{\"epochs\": 3}' --wait done --follow-logs
  cyberwave-cloud-node send cancel --params '{\"workload_request_id\": \"r-1\"}'
  cyberwave-cloud-node send inference --params @request.json --node gpu1 --json";

/// `send`'s own flags, plus the settings flags that say which broker.
#[derive(Debug, Args)]
struct SendArgs {
    /// The command: status, training, inference, simulate, cancel, ...
    command: String,
    /// The command's params: a JSON object, or @FILE to read it from a file
    #[arg(long, value_name = "JSON|@FILE")]
    params: Option<String>,
    /// The request_id to use [default: a new uuid]
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
    /// The node's uuid or slug [default: the node whose identity is in the config dir]
    #[arg(long, value_name = "UUID|SLUG")]
    node: Option<String>,
    /// How long to wait: none, started (the immediate response), done (a workload's end)
    #[arg(long, value_enum, default_value = "started")]
    wait: crate::send::Wait,
    /// Print the workload's live output as it arrives (with --wait done)
    #[arg(long)]
    follow_logs: bool,
    /// Print every message as a raw JSON line
    #[arg(long)]
    json: bool,
    /// Seconds to wait for an answer [default: 10 for the first answer; after
    /// `started`, --wait done waits as long as the workload runs]
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,
    /// Path to cyberwave.yml, for the broker settings
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// MQTT broker host [default: as `start`]
    #[arg(long, value_name = "HOST")]
    mqtt_host: Option<String>,
    /// MQTT broker port [default: as `start`]
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    mqtt_port: Option<u16>,
}

/// Flags that override every other settings source.
#[derive(Debug, Args)]
struct SettingsArgs {
    /// Slug to ask the backend for; a hint, the backend may assign another
    #[arg(long, value_name = "SLUG")]
    slug: Option<String>,

    /// Path to cyberwave.yml [default: ./cyberwave.yml]; its directory becomes the working directory
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Node profile slug, e.g. gpu-a100 [default: default]
    #[arg(long, value_name = "SLUG")]
    profile: Option<String>,

    /// MQTT broker host [default: mqtt.cyberwave.com]
    #[arg(long, value_name = "HOST")]
    mqtt_host: Option<String>,

    /// MQTT broker port; 8883 turns TLS on [default: 1883]
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    mqtt_port: Option<u16>,

    /// Run without a Cyberwave account: embed an MQTT broker on 127.0.0.1
    /// (at --mqtt-port), make a local identity, skip every REST call. With
    /// --mqtt-host, use that broker instead of embedding one
    #[arg(long)]
    standalone: bool,
}

impl SettingsArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            slug: self.slug.clone(),
            config: self.config.clone(),
            profile: self.profile.clone(),
            mqtt_host: self.mqtt_host.clone(),
            mqtt_port: self.mqtt_port,
            standalone: self.standalone,
        }
    }
}

/// The binary's whole life.
pub fn main() -> ExitCode {
    if let Some(code) = crate::run_model_server_if_asked() {
        return code;
    }
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let outcome = match &cli.command {
        CliCommand::Start(args) => start(args),
        CliCommand::Config {
            action: ConfigAction::Show(args),
        } => config_show(args),
        CliCommand::Send(args) => return send(args),
        CliCommand::Info { json } => info(*json),
        CliCommand::Status { json } => local_status(*json),
        CliCommand::Logs {
            request_id,
            stderr,
            follow,
        } => local_logs(request_id, *stderr, *follow),
        CliCommand::RunModel(args) => crate::runners::run_model::run(args),
        CliCommand::Completions { shell } => completions(*shell),
        CliCommand::Man => man_page(),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

fn load_settings(args: &SettingsArgs) -> anyhow::Result<Settings> {
    Ok(Settings::load(
        &args.overrides(),
        &Environment::from_process(),
    )?)
}

fn start(args: &SettingsArgs) -> anyhow::Result<()> {
    let settings = load_settings(args)?;
    // One thread is plenty for a node that mostly waits, and keeps the idle
    // footprint small; blocking work goes to tokio's blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = Shutdown::new();
        shutdown.listen_for_signals()?;
        crate::node::run(settings, shutdown).await?;
        Ok(())
    })
}

fn config_show(args: &SettingsArgs) -> anyhow::Result<()> {
    let settings = load_settings(args)?;
    print!("{}", config::render_table(&settings));
    Ok(())
}

fn send(args: &SendArgs) -> ExitCode {
    let overrides = Overrides {
        config: args.config.clone(),
        mqtt_host: args.mqtt_host.clone(),
        mqtt_port: args.mqtt_port,
        ..Overrides::default()
    };
    let settings = match Settings::load(&overrides, &Environment::from_process()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let timeout = match args.timeout {
        Some(t) if !(t > 0.0 && t.is_finite()) => {
            eprintln!("error: --timeout must be a positive number of seconds, got {t}");
            return ExitCode::FAILURE;
        }
        t => t.map(std::time::Duration::from_secs_f64),
    };
    let request = crate::send::SendRequest {
        command: args.command.clone(),
        params: args.params.clone(),
        request_id: args.request_id.clone(),
        node: args.node.clone(),
        wait: args.wait,
        follow_logs: args.follow_logs,
        json: args.json,
        timeout,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::send::send(&settings, request)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn info(json: bool) -> anyhow::Result<()> {
    let hardware = crate::telemetry::detect();
    if json {
        println!("{}", serde_json::to_string_pretty(&hardware)?);
    } else {
        print!("{}", crate::telemetry::hardware::render(&hardware));
    }
    Ok(())
}

/// The workload log dir of the node that would run here.
fn local_logs_dir() -> anyhow::Result<PathBuf> {
    let settings = Settings::load(&Overrides::default(), &Environment::from_process())?;
    Ok(crate::workload::paths::logs_dir(&settings.config_dir.value))
}

fn local_status(json: bool) -> anyhow::Result<()> {
    print!(
        "{}",
        crate::workload::local::status(&local_logs_dir()?, json)
    );
    Ok(())
}

fn local_logs(request_id: &str, stderr: bool, follow: bool) -> anyhow::Result<()> {
    let dir = local_logs_dir()?;
    crate::workload::local::logs(
        &dir,
        request_id,
        stderr,
        follow,
        &mut std::io::stdout().lock(),
    )?;
    Ok(())
}

/// Prints the completion script for `shell`. clap_complete panics on a write
/// error, so the script is made in memory and written here, where a closed
/// pipe is an ordinary error.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut command = Cli::command();
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    write_stdout(&script)
}

/// Prints the man page, for packaging (`man > cyberwave-cloud-node.1`). One
/// page for the whole program: clap_mangen's top-level sections, a COMMANDS
/// section with each command's synopsis, description, options and notes, then
/// the top level's notes (API TOKEN and so on) as sections of their own.
/// (clap_mangen's own page would point at a cyberwave-cloud-node-start(1) and
/// so on, which nobody installs.)
fn man_page() -> anyhow::Result<()> {
    let mut command = Cli::command();
    command.build();
    let man = clap_mangen::Man::new(command.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    page.extend_from_slice(b".SH COMMANDS\n");
    let top_notes = command.get_after_long_help().map(ToString::to_string);
    for sub in leaf_commands(&command) {
        let name = sub.get_bin_name().unwrap_or_else(|| sub.get_name());
        page.extend_from_slice(format!(".SS \"{name}\"\n").as_bytes());
        // -v and -h are in the top-level OPTIONS already.
        let sub = sub.clone().mut_args(|arg| {
            let hide = arg.is_hide_set() || arg.is_global_set() || arg.get_id() == "help";
            arg.hide(hide)
        });
        let man = clap_mangen::Man::new(sub.clone());
        let mut section = Vec::new();
        man.render_synopsis_section(&mut section)?;
        man.render_description_section(&mut section)?;
        man.render_options_section(&mut section)?;
        // Its sections become paragraphs of this subsection.
        for line in String::from_utf8(section)?.lines() {
            let line = if line.starts_with(".SH ") {
                ".PP"
            } else {
                line
            };
            page.extend_from_slice(line.as_bytes());
            page.push(b'\n');
        }
        let notes = sub.get_after_long_help().map(ToString::to_string);
        if let Some(notes) = notes.filter(|notes| Some(notes) != top_notes.as_ref()) {
            page.extend_from_slice(roff_notes(&notes, false).as_bytes());
        }
    }
    if let Some(notes) = &top_notes {
        page.extend_from_slice(roff_notes(notes, true).as_bytes());
    }
    man.render_version_section(&mut page)?;
    write_stdout(&page)
}

/// The commands that run something (`config show`, not `config`), in --help
/// order, without the hidden ones and `help`.
fn leaf_commands(command: &clap::Command) -> Vec<&clap::Command> {
    command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
        .flat_map(|sub| {
            if sub.has_subcommands() {
                leaf_commands(sub)
            } else {
                vec![sub]
            }
        })
        .collect()
}

/// An `after_long_help` text in roff: its unindented lines are headings
/// (sections at the top level, bold lines in a command's subsection), the
/// indented ones are kept as they are, unfilled.
fn roff_notes(text: &str, top_level: bool) -> String {
    let mut roff = String::new();
    let mut unfilled = false;
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let line = line.replace('\\', "\\e").replace('-', "\\-");
        if line.starts_with(' ') {
            if !unfilled {
                roff.push_str(".nf\n");
                unfilled = true;
            }
            roff.push_str(&line);
        } else {
            if unfilled {
                roff.push_str(".fi\n");
                unfilled = false;
            }
            if top_level {
                roff.push_str(&format!(".SH \"{line}\""));
            } else {
                roff.push_str(&format!(".PP\n\\fB{line}\\fR"));
            }
        }
        roff.push('\n');
    }
    if unfilled {
        roff.push_str(".fi\n");
    }
    roff
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes)?;
    stdout.flush()?;
    Ok(())
}

/// Logging of the model server: its stderr is its log file, so plain text
/// at info level (CYBERWAVE_LOG overrides, as for the node).
pub fn init_server_logging() {
    let filter = std::env::var("CYBERWAVE_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| {
            tracing_subscriber::EnvFilter::new("warn,cyberwave_cloud_node=info,ort=warn")
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        // The embedded broker reports every client that hangs up as an
        // error; the node reports its own problems.
        0 => "warn,cyberwave_cloud_node=info,install=info,rumqttd=off",
        1 => "warn,cyberwave_cloud_node=debug,install=info,rumqttd=warn",
        _ => "warn,cyberwave_cloud_node=trace,install=trace",
    };
    let filter = std::env::var("CYBERWAVE_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
