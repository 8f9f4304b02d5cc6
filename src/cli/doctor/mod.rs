//! `cyberwave-cloud-node doctor`: what stands between this machine and a
//! working node, each check with its fix. Every check calls the code the
//! node itself runs (settings loading, the backend client, the broker
//! connection, the ONNX Runtime lookup, NVML, the config dir lock), so a
//! check that passes here passes at `start`.

mod local;
mod remote;

use std::fmt::Write;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::SettingsArgs;
use crate::config::{ConfigError, Environment, Settings};

pub(super) const DOCTOR_HELP: &str = "\
CHECKS
  settings     every problem of cyberwave.yml, the .env files and the environment
  api token    present, and accepted by the backend (not with --standalone)
  backend      reachable (not with --standalone)
  broker       a real MQTT connection with the node's TLS and credentials
               (standalone: the embedded broker's port free, or the node's broker answering)
  config dir   writable, its free space, whether a node runs with it
  onnx, gguf, torchscript   built in, and the runtime found (with its version)
  gpus         NVML's GPUs and driver, or the declared `gpus` setting
  templates    each template's program found in PATH (./x relative to the repository)
  systemd      the unit's state, when it is installed

EXIT CODES
  0  nothing failed (warnings are fine)
  1  a check failed

EXAMPLES
  cyberwave-cloud-node doctor
  cyberwave-cloud-node doctor --standalone
  cyberwave-cloud-node doctor --config ./ml-repo/cyberwave.yml --json";

/// `doctor`'s flags: the settings flags of `start`, and `--json`.
#[derive(Debug, Args)]
pub(super) struct DoctorArgs {
    #[command(flatten)]
    settings: SettingsArgs,
    /// Print a JSON array of {check, status, detail, fix} for a program
    #[arg(long)]
    json: bool,
}

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Fail,
    Warn,
    /// Not applicable here (standalone, a feature not built, nothing installed).
    Skip,
}

impl Status {
    fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✓",
            Status::Fail => "✗",
            Status::Warn => "!",
            Status::Skip => "-",
        }
    }
}

/// One line of the report.
#[derive(Debug, Serialize)]
struct Check {
    check: &'static str,
    status: Status,
    detail: String,
    /// What to do about a failure or a warning.
    fix: Option<String>,
}

impl Check {
    fn ok(check: &'static str, detail: impl Into<String>) -> Check {
        Check::new(check, Status::Ok, detail, None)
    }

    fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(check, Status::Fail, detail, Some(fix.into()))
    }

    fn warn(check: &'static str, detail: impl Into<String>, fix: Option<String>) -> Check {
        Check::new(check, Status::Warn, detail, fix)
    }

    fn skip(check: &'static str, detail: impl Into<String>) -> Check {
        Check::new(check, Status::Skip, detail, None)
    }

    fn new(
        check: &'static str,
        status: Status,
        detail: impl Into<String>,
        fix: Option<String>,
    ) -> Check {
        Check {
            check,
            status,
            detail: detail.into(),
            fix,
        }
    }
}

/// Runs every check, prints them, and exits 1 when one failed.
pub(super) fn run(args: &DoctorArgs) -> ExitCode {
    let checks = collect(args);
    let printed = if args.json {
        serde_json::to_string_pretty(&checks)
            .map(|text| text + "\n")
            .map_err(anyhow::Error::from)
    } else {
        Ok(render(&checks))
    };
    match printed {
        Ok(text) => super::output::write_stdout(text.as_bytes()),
        Err(error) => return super::output::fail(&error),
    }
    if checks.iter().any(|c| c.status == Status::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn collect(args: &DoctorArgs) -> Vec<Check> {
    let mut checks = Vec::new();
    let loaded = Settings::load(&args.settings.overrides(), &Environment::from_process());
    let settings = match loaded {
        Ok(settings) => {
            checks.push(settings_ok(&settings));
            // The templates check says it, with the fix.
            let no_templates = settings.no_templates_warning();
            for warning in &settings.warnings {
                if Some(warning) != no_templates.as_ref() {
                    checks.push(Check::warn("settings", warning, None));
                }
            }
            Some(settings)
        }
        Err(error) => {
            checks.extend(error.problems().into_iter().map(settings_problem));
            for warning in error.warnings() {
                checks.push(Check::warn("settings", warning, None));
            }
            None
        }
    };
    match &settings {
        Some(settings) => {
            let mut settings = settings.clone();
            if settings.uses_embedded_broker() {
                settings.point_at_embedded_broker();
            }
            checks.extend(remote::checks(&settings));
            checks.push(local::config_dir(&settings));
            if let Some(check) = local::registered_identity(&settings) {
                checks.push(check);
            }
            checks.push(local::templates(&settings));
        }
        None => {
            let why = "not checked: the settings do not load";
            for name in ["api token", "backend", "broker", "config dir", "templates"] {
                checks.push(Check::skip(name, why));
            }
        }
    }
    checks.extend(local::runtimes(settings.as_ref()));
    checks.push(local::gpus(settings.as_ref()));
    checks.push(local::systemd());
    checks
}

fn settings_ok(settings: &Settings) -> Check {
    let from = match &settings.config_file {
        Some(path) => format!("{} and the environment", path.display()),
        None => "the environment (no cyberwave.yml found)".to_owned(),
    };
    let mode = if settings.standalone {
        "standalone; "
    } else {
        ""
    };
    Check::ok("settings", format!("{mode}loaded from {from}"))
}

/// One settings problem, with where to fix it.
fn settings_problem(problem: &ConfigError) -> Check {
    let fix = match problem {
        ConfigError::Read { path, .. } => format!("make {} readable", path.display()),
        ConfigError::MissingConfigFile { .. } => {
            "check the --config path (it names a cyberwave.yml)".to_owned()
        }
        ConfigError::Yaml { .. } => {
            "fix the YAML syntax on that line (quote a value holding `: ` or `#`)".to_owned()
        }
        ConfigError::WrongType { what, expected, .. } => {
            format!("write {what} as {expected}")
        }
        ConfigError::DotEnv { .. } => {
            "write that line as KEY=VALUE, or comment it out with #".to_owned()
        }
        ConfigError::Invalid { origin, .. } => format!("correct the value at {origin}"),
        ConfigError::NoToken { .. } => "see `cyberwave-cloud-node start --help`".to_owned(),
        ConfigError::Several { .. } => "see each problem above".to_owned(),
    };
    Check::fail("settings", problem.to_string(), fix)
}

/// The report for a person: one line per check, the fix indented below.
fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for check in checks {
        let _ = writeln!(
            out,
            "{} {:width$}  {}",
            check.status.mark(),
            check.check,
            check.detail
        );
        if let Some(fix) = &check.fix {
            let _ = writeln!(out, "  {:width$}  fix: {fix}", "");
        }
    }
    let count = |status| checks.iter().filter(|c| c.status == status).count();
    let _ = writeln!(
        out,
        "\n{} ok, {} failed, {} warnings, {} skipped",
        count(Status::Ok),
        count(Status::Fail),
        count(Status::Warn),
        count(Status::Skip)
    );
    out
}
