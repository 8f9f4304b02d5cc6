//! The command line: clap definitions, dispatch, exit codes. Each command's
//! body is a module of its own: `start`, [`send`], `terminal`, `doctor`,
//! [`run_model`], `local` (`status` and `logs`), `completions`, `man`;
//! logging is set up by [`crate::logging`]. [`address`] resolves which node
//! and broker a client command (`send`, `terminal`) talks to. Everything a
//! command prints for a person goes through [`output`]: one format for fatal
//! errors, and stdout that ends quietly on a closed pipe.

pub mod address;
mod completions;
mod doctor;
mod local;
mod man;
pub mod output;
pub mod run_model;
pub mod send;
mod start;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Environment, Overrides, Settings};

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

    /// Log lines as text for people or as JSON lines for a log collector
    /// [default: CYBERWAVE_LOG_FORMAT, else text]
    #[arg(long, value_enum, global = true, value_name = "FORMAT")]
    log_format: Option<crate::logging::LogFormat>,

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
    /// Open an interactive shell on a node, like ssh (its remote terminal; see --help)
    #[command(after_long_help = terminal::TERMINAL_HELP)]
    Terminal(terminal::TerminalArgs),
    /// Show this machine's hardware: OS, CPU, memory, disks, NVIDIA GPUs
    Info {
        /// Print JSON for a program instead of text for a person
        #[arg(long)]
        json: bool,
    },
    /// List the workloads and model deployments this node knows (from its records; no broker needed)
    Status {
        /// Print a JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Print the output of a workload or a model server (stdout unless --stderr)
    Logs {
        /// A workload's request_id, or a deployment's id
        #[arg(value_name = "ID")]
        request_id: String,
        /// Print the stderr log instead of stdout
        #[arg(long)]
        stderr: bool,
        /// Keep printing new output until the workload ends
        #[arg(short, long)]
        follow: bool,
    },
    /// Load a model and run it once in this process (no node, no broker)
    #[command(after_long_help = run_model::RUN_MODEL_HELP)]
    RunModel(run_model::RunModelArgs),
    /// Check this machine and the settings: each check with ✓/✗ and, when
    /// it fails, the fix (exit 0 only when nothing failed)
    #[command(after_long_help = doctor::DOCTOR_HELP)]
    Doctor(doctor::DoctorArgs),
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
    /// Print the man page (roff) to stdout: `man > cyberwave-cloud-node.1`, or `man | man -l -`
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
    Show(ShowArgs),
}

#[derive(Debug, Args)]
struct ShowArgs {
    #[command(flatten)]
    settings: SettingsArgs,
    /// Print JSON for a program instead of a table
    #[arg(long)]
    json: bool,
}

const SEND_HELP: &str = "\
EXIT CODES
  0  the command was answered ok (with --wait done: the workload completed)
  N  --wait done and the workload failed: its own exit code (128+signal if killed)
  1  an error response, a cancelled workload, or bad arguments
  2  no answer within --timeout, or no broker (a refused connection fails at once)

  130 Ctrl-C (the workload keeps running; the message says how to re-attach)

WHICH NODE AND BROKER
  --mqtt-host/--mqtt-port (or the environment, .env, cyberwave.yml) win. Else a
  standalone node running with this config dir is found by the address it records
  in <config dir>/standalone_address.json. --node picks the node, never the broker.

EXAMPLES
  cyberwave-cloud-node send status
  cyberwave-cloud-node send training --params '{\"epochs\": 3}' --wait done --follow-logs
  cyberwave-cloud-node send wait r-1 --follow-logs       (attach to a workload started earlier)
  cyberwave-cloud-node send cancel r-1
  cyberwave-cloud-node send inference --params @request.json --node gpu1 --json";

/// `send`'s own flags, plus the settings flags that say which broker.
#[derive(Debug, Args)]
struct SendArgs {
    /// The command: status, training, inference, simulate, cancel, deploy, ...;
    /// or `wait` to attach to a workload started earlier
    #[arg(value_parser = completions::CommandName, hide_possible_values = true)]
    command: String,
    /// For `wait` and `cancel`: the workload's request_id
    #[arg(value_name = "REQUEST_ID")]
    workload: Option<String>,
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
    wait: send::Wait,
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
    #[command(flatten)]
    broker: BrokerArgs,
}

/// Which broker a client command (`send`, `terminal`) goes through; see
/// [`address`] for what is used when none is given.
#[derive(Debug, Args)]
struct BrokerArgs {
    /// Path to cyberwave.yml, for the broker settings
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// MQTT broker host [default: a standalone node's recorded address, else as `start`]
    #[arg(long, value_name = "HOST")]
    mqtt_host: Option<String>,
    /// MQTT broker port [default: a standalone node's recorded address, else as `start`]
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    mqtt_port: Option<u16>,
}

impl BrokerArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            config: self.config.clone(),
            mqtt_host: self.mqtt_host.clone(),
            mqtt_port: self.mqtt_port,
            ..Overrides::default()
        }
    }

    /// The same flags again, for a command line printed to re-attach.
    fn as_flags(&self) -> String {
        let mut flags = String::new();
        if let Some(config) = &self.config {
            flags.push_str(&format!(" --config {}", config.display()));
        }
        if let Some(host) = &self.mqtt_host {
            flags.push_str(&format!(" --mqtt-host {host}"));
        }
        if let Some(port) = self.mqtt_port {
            flags.push_str(&format!(" --mqtt-port {port}"));
        }
        flags
    }
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return output::usage(&error),
    };
    crate::logging::init_cli_logging(cli.verbose, cli.log_format);
    let outcome = match &cli.command {
        CliCommand::Start(args) => start::run(args),
        CliCommand::Config {
            action: ConfigAction::Show(args),
        } => config_show(args),
        CliCommand::Doctor(args) => return doctor::run(args),
        CliCommand::Send(args) => return send::run(args),
        CliCommand::Terminal(args) => return terminal::run(args),
        CliCommand::Info { json } => info(*json),
        CliCommand::Status { json } => local::status(*json),
        CliCommand::Logs {
            request_id,
            stderr,
            follow,
        } => local::logs(request_id, *stderr, *follow),
        CliCommand::RunModel(args) => run_model::run(args),
        CliCommand::Completions { shell } => completions::print(*shell),
        CliCommand::Man => man::page(),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => output::fail(&error),
    }
}

fn load_settings(args: &SettingsArgs) -> anyhow::Result<Settings> {
    Ok(Settings::load(
        &args.overrides(),
        &Environment::from_process(),
    )?)
}

fn config_show(args: &ShowArgs) -> anyhow::Result<()> {
    let mut settings = load_settings(&args.settings)?;
    // What a standalone node connects to, not what the platform's would.
    if settings.uses_embedded_broker() {
        settings.point_at_embedded_broker();
    }
    if args.json {
        let text = serde_json::to_string_pretty(&config::render_json(&settings))?;
        output::outln!("{text}");
    } else {
        output::out!("{}", config::render_table(&settings));
    }
    Ok(())
}

fn info(json: bool) -> anyhow::Result<()> {
    let mut hardware = crate::telemetry::detect();
    node_gpus(&mut hardware);
    if json {
        output::outln!("{}", serde_json::to_string_pretty(&hardware)?);
    } else {
        output::out!("{}", crate::telemetry::hardware::render(&hardware));
    }
    Ok(())
}

/// Narrows `hardware`'s GPUs to the node's own, as the `gpus` setting of
/// this directory and environment makes them; on a settings problem NVML's
/// list stays, with the problem on stderr (`start` would stop on it).
fn node_gpus(hardware: &mut crate::telemetry::hardware::Hardware) {
    let settings = match Settings::load(&Overrides::default(), &Environment::from_process()) {
        Ok(settings) => settings,
        Err(error) => {
            tracing::warn!("GPUs as NVML reports them; the settings cannot be read: {error}");
            return;
        }
    };
    match crate::gpus::Inventory::resolve(hardware.gpus.clone(), &settings.gpus) {
        Ok(inventory) => hardware.gpus = inventory.describe(&hardware.gpus),
        Err(error) => tracing::warn!("GPUs as NVML reports them: {error}"),
    }
}
