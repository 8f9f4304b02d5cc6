//! The checks of this machine alone: the config dir, the templates'
//! programs, the model runtimes, the GPUs and the systemd unit.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::Check;
use crate::config::{GpuSelection, Origin, Settings, Sourced};
use crate::gpus::Inventory;
use crate::lock::{ConfigDirLock, LockError};
use crate::runners::{self, Format, RuntimePaths};
use crate::standalone::StandaloneError;

/// Below this much free space in the config dir (workload logs, results,
/// records live there) the check warns.
const LOW_SPACE_BYTES: u64 = 1024 * 1024 * 1024;

/// The unit the Debian package installs.
const UNIT: &str = "cyberwave-cloud-node.service";
const UNIT_DIRS: [&str; 3] = [
    "/etc/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// Writable (as the node makes it: created private, a file written and
/// removed), with its free space and whether a node holds it.
pub(super) fn config_dir(settings: &Settings) -> Check {
    let dir = &settings.config_dir.value;
    let fix_dir = || {
        format!(
            "make {} writable for this user, or set CYBERWAVE_CONFIG_DIR to a writable directory",
            dir.display()
        )
    };
    if let Err(error) = crate::fsutil::create_private_dir(dir) {
        return Check::fail(
            "config dir",
            format!("cannot create {}: {error}", dir.display()),
            fix_dir(),
        );
    }
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    let written = std::fs::write(&probe, b"ok");
    let _ = std::fs::remove_file(&probe);
    if let Err(error) = written {
        return Check::fail(
            "config dir",
            format!("cannot write in {}: {error}", dir.display()),
            fix_dir(),
        );
    }
    let running = match ConfigDirLock::acquire(dir) {
        Err(LockError::Held { pid, .. }) => format!("; a node runs with it (pid {pid})"),
        Ok(_) | Err(LockError::Io { .. }) => String::new(),
    };
    // fsblkcnt_t is not u64 on every target.
    #[allow(clippy::unnecessary_cast)]
    let free = nix::sys::statvfs::statvfs(dir.as_path())
        .map(|s| s.blocks_available() as u64 * s.fragment_size() as u64);
    match free {
        Ok(free) if free < LOW_SPACE_BYTES => Check::warn(
            "config dir",
            format!("{} is writable, but only {} free{running}", dir.display(), gib(free)),
            Some(format!(
                "free space there (workload logs and results are kept {} days: log_retention_days), or move it with CYBERWAVE_CONFIG_DIR",
                settings.log_retention.value.as_secs() / 86_400
            )),
        ),
        Ok(free) => Check::ok(
            "config dir",
            format!("{} is writable, {} free{running}", dir.display(), gib(free)),
        ),
        Err(error) => Check::warn(
            "config dir",
            format!("{} is writable; its free space is unknown ({error}){running}", dir.display()),
            None,
        ),
    }
}

/// A standalone node refuses a config dir that holds a registered
/// instance's identity (`standalone::local_identity`): say so before.
pub(super) fn registered_identity(settings: &Settings) -> Option<Check> {
    let registered = settings.identity.as_ref().filter(|i| !i.standalone)?;
    if !settings.standalone {
        return None;
    }
    let error = StandaloneError::RegisteredIdentity {
        path: crate::identity::identity_path(&settings.config_dir.value),
        uuid: registered.uuid.clone(),
    };
    Some(Check::fail(
        "identity",
        error.to_string(),
        "CYBERWAVE_CONFIG_DIR=~/.cyberwave-standalone cyberwave-cloud-node start --standalone",
    ))
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1024.0 * 1024.0 * 1024.0))
}

/// Whether each template's program (its first word) can be found, as
/// `/bin/sh -c` in the working directory would.
pub(super) fn templates(settings: &Settings) -> Check {
    let configured: Vec<(&str, &Sourced<String>)> = [
        ("install_script", settings.install_script.as_ref()),
        ("inference", settings.inference_cmd.as_ref()),
        ("training", settings.training_cmd.as_ref()),
        ("simulate", settings.simulate_cmd.as_ref()),
    ]
    .into_iter()
    .filter_map(|(name, template)| Some((name, template?)))
    .collect();
    if configured.len() == usize::from(settings.install_script.is_some()) {
        return Check::warn(
            "templates",
            "no inference, training or simulate template is set: the node runs no such workload",
            Some("set them under `cyberwave-cloud-node:` in cyberwave.yml (e.g. `training: python train.py --params {body}`)".into()),
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for (name, template) in configured {
        let Some(program) = first_word(&template.value) else {
            continue;
        };
        match resolve_program(program, &settings.working_dir, &path) {
            Some(resolved) => found.push(format!("{name}: {}", resolved.display())),
            None => missing.push((name, program.to_owned(), template.origin.clone())),
        }
    }
    if missing.is_empty() {
        return Check::ok("templates", found.join(", "));
    }
    let detail = missing
        .iter()
        .map(|(name, program, _)| format!("{name}: `{program}` not found"))
        .collect::<Vec<_>>()
        .join(", ");
    let fix = missing
        .iter()
        .map(|(_, program, origin)| missing_fix(program, origin, &settings.working_dir))
        .collect::<Vec<_>>()
        .join("; ");
    Check::fail("templates", detail, fix)
}

fn missing_fix(program: &str, origin: &Origin, working_dir: &Path) -> String {
    if program.contains('/') {
        format!(
            "`{program}` is relative to the repository {}: create it (and chmod +x), or correct {origin}",
            working_dir.display()
        )
    } else {
        format!("install `{program}` or add its directory to PATH, or correct {origin}")
    }
}

/// The program a shell command runs first: past `VAR=value` assignments;
/// `None` for a shell builtin or a word the shell expands.
fn first_word(command: &str) -> Option<&str> {
    const BUILTINS: &[&str] = &[
        "cd", "exec", "export", ".", "source", "set", "true", ":", "if", "for", "while", "{", "(",
        "echo", "test", "[", "env", "!",
    ];
    let word = command.split_whitespace().find(|w| !is_assignment(w))?;
    let word = word.trim_matches(['"', '\'']);
    let expands = word.contains(['$', '{', '`', '*', '?']);
    (!expands && !BUILTINS.contains(&word)).then_some(word)
}

/// `NAME=value`, which the shell takes as a variable for the command.
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// `./x` and `dir/x` relative to the repository, `/x` as is, a bare name
/// through `PATH`.
fn resolve_program(program: &str, working_dir: &Path, path: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let candidate = working_dir.join(program);
        return runnable(&candidate).then_some(candidate);
    }
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|candidate| runnable(candidate))
}

/// The model runtimes: the ONNX Runtime lookup the runner does, and
/// whether GGUF and TorchScript are in this build.
pub(super) fn runtimes(settings: Option<&Settings>) -> Vec<Check> {
    let paths = RuntimePaths {
        onnxruntime: settings.and_then(|s| s.onnxruntime_path.as_ref().map(|p| p.value.clone())),
    };
    Format::ALL
        .into_iter()
        .zip(runners::format_support(&paths))
        .map(|(format, support)| {
            let runtime = support["runtime"].as_str().unwrap_or_default().to_owned();
            if !format.is_built() {
                return Check::skip(
                    format.name(),
                    format!("not in this build (cargo feature `{}`)", format.feature()),
                );
            }
            if support["runtime_loads"].as_bool() == Some(true) {
                return Check::ok(format.name(), runtime);
            }
            Check::fail(
                format.name(),
                without_hint(format, &runtime),
                runtime_fix(format),
            )
        })
        .collect()
}

/// The runtime's error without the install hint it ends with: the fix
/// line says it.
fn without_hint(format: Format, error: &str) -> String {
    let hint = match format {
        #[cfg(feature = "onnx")]
        Format::Onnx => format!("; {}", runners::onnx::install_hint()),
        #[cfg(not(feature = "onnx"))]
        Format::Onnx => return error.to_owned(),
        Format::Gguf | Format::TorchScript => return error.to_owned(),
    };
    error
        .strip_suffix(hint.as_str())
        .unwrap_or(error)
        .to_owned()
}

fn runtime_fix(format: Format) -> String {
    match format {
        #[cfg(feature = "onnx")]
        Format::Onnx => format!(
            "pip install onnxruntime=={} (onnxruntime-gpu for CUDA), or point ORT_DYLIB_PATH or the onnxruntime_path setting at libonnxruntime.so",
            runners::onnx::RECOMMENDED_VERSION
        ),
        #[cfg(not(feature = "onnx"))]
        Format::Onnx => "build with the `onnx` feature".into(),
        Format::Gguf => "rebuild with the `gguf` feature (llama.cpp is vendored)".into(),
        Format::TorchScript => {
            "install LibTorch where .cargo/config.toml says, and rebuild with the `torch` feature".into()
        }
    }
}

/// NVML's GPUs and driver, narrowed or declared by the `gpus` setting.
pub(super) fn gpus(settings: Option<&Settings>) -> Check {
    let reported = crate::telemetry::hardware::nvml_gpus();
    let setting = settings
        .map(|s| s.gpus.clone())
        .unwrap_or_else(|| Sourced::new(GpuSelection::Detected, Origin::Default));
    let driver = reported
        .first()
        .map(|gpu| {
            format!(
                " (driver {}, CUDA {})",
                gpu.driver_version, gpu.cuda_version
            )
        })
        .unwrap_or_default();
    match Inventory::resolve(reported.clone(), &setting) {
        Ok(_) if reported.is_empty() && setting.value == GpuSelection::Detected => Check::skip(
            "gpus",
            "none: no NVIDIA driver (NVML) or no NVIDIA GPU; workloads run on the CPU",
        ),
        Ok(inventory) => Check::ok("gpus", format!("{}{driver}", inventory.describe_line())),
        Err(error) => Check::fail(
            "gpus",
            error.to_string(),
            format!(
                "correct the gpus setting (from {}); `nvidia-smi -L` lists the GPUs",
                setting.origin
            ),
        ),
    }
}

/// The systemd unit's state, when it is installed here.
pub(super) fn systemd() -> Check {
    let Some(unit_file) = UNIT_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(UNIT))
        .find(|path| path.is_file())
    else {
        return Check::skip("systemd", format!("{UNIT} is not installed"));
    };
    let ask = |verb: &str| {
        Command::new("systemctl")
            .args([verb, UNIT])
            .output()
            .ok()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let (Some(active), Some(enabled)) = (ask("is-active"), ask("is-enabled")) else {
        return Check::skip(
            "systemd",
            format!(
                "{} is installed, but systemctl is not available",
                unit_file.display()
            ),
        );
    };
    let detail = format!("{UNIT} is {active} and {enabled}");
    match active.as_str() {
        "active" | "activating" | "reloading" => Check::ok("systemd", detail),
        "failed" => Check::fail(
            "systemd",
            detail,
            format!("see why: journalctl -u {UNIT} -n 50; then sudo systemctl restart {UNIT}"),
        ),
        _ => Check::warn(
            "systemd",
            detail,
            Some(format!(
                "put the token in /etc/cyberwave/cloud-node.env, then sudo systemctl enable --now {UNIT}"
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_words() {
        assert_eq!(first_word("python train.py {body}"), Some("python"));
        assert_eq!(first_word("FOO=1 BAR=x ./run.sh"), Some("./run.sh"));
        assert_eq!(first_word("cd sub && make"), None);
        assert_eq!(first_word("$PYTHON x.py"), None);
        assert_eq!(first_word("/usr/bin/env python3"), Some("/usr/bin/env"));
    }
}
