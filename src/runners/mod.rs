//! Built-in model runners: models the node runs itself, without a script of
//! the user's (the ModelLoader of the C++ node, docs/design.md "Built-in runners").
//!
//! - [`ModelRunner`]: one loaded model; [`load`] picks the runner by format.
//! - [`tensor`]: the tensor JSON every tensor runner speaks.
//! - [`roots`]: models load only from inside `model_roots`.
//! - `onnx` (feature `onnx`, default): ONNX Runtime, loaded at run time.
//! - `gguf` (feature `gguf`): language models through llama.cpp, with
//!   `generate` for the token loop.
//! - `torch` (feature `torch`): TorchScript modules through LibTorch.
//!
//! Each format sits behind a cargo feature. A build without one still
//! recognises the format and says how to get a build that has it.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Map, Value};

#[cfg(feature = "gguf")]
mod generate;
#[cfg(feature = "gguf")]
pub mod gguf;
mod gpu;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod roots;
pub mod tensor;
#[cfg(feature = "torch")]
pub mod torch;

use tensor::TensorSpec;

/// The model formats the node knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Onnx,
    Gguf,
    TorchScript,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Onnx, Format::Gguf, Format::TorchScript];

    pub fn name(self) -> &'static str {
        match self {
            Format::Onnx => "onnx",
            Format::Gguf => "gguf",
            Format::TorchScript => "torchscript",
        }
    }

    /// The cargo feature that builds this runner.
    pub fn feature(self) -> &'static str {
        match self {
            Format::Onnx => "onnx",
            Format::Gguf => "gguf",
            Format::TorchScript => "torch",
        }
    }

    /// Reads the `format` param; `torch` and `pt` are accepted for TorchScript.
    pub fn parse(name: &str) -> Result<Format, RunnerError> {
        match name.to_ascii_lowercase().as_str() {
            "onnx" => Ok(Format::Onnx),
            "gguf" => Ok(Format::Gguf),
            "torchscript" | "torch" | "pt" => Ok(Format::TorchScript),
            _ => Err(RunnerError::BadRequest(format!(
                "unknown model format {}; use onnx, gguf or torchscript",
                crate::protocol::quote(name)
            ))),
        }
    }

    /// Whether this build has the runner.
    pub fn is_built(self) -> bool {
        match self {
            Format::Onnx => cfg!(feature = "onnx"),
            Format::Gguf => cfg!(feature = "gguf"),
            Format::TorchScript => cfg!(feature = "torch"),
        }
    }

    /// From the extension first, then the first bytes of the file.
    pub fn detect(path: &Path) -> Result<Format, RunnerError> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("onnx") => return Ok(Format::Onnx),
            Some("gguf") => return Ok(Format::Gguf),
            Some("pt" | "pth" | "torchscript") => return Ok(Format::TorchScript),
            _ => {}
        }
        match sniff(path)? {
            Some(format) => Ok(format),
            None => Err(RunnerError::BadRequest(format!(
                "cannot tell the format of {}: name it *.onnx, *.gguf or *.pt, or give \"format\" (onnx, gguf, torchscript)",
                path.display()
            ))),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the magic bytes say: GGUF files start with `GGUF`, TorchScript
/// archives are zip files. ONNX (protobuf) has no magic of its own.
pub fn sniff(path: &Path) -> Result<Option<Format>, RunnerError> {
    let mut head = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|e| RunnerError::Load {
        path: path.to_owned(),
        reason: format!("cannot open it: {e}"),
    })?;
    let read = file.read(&mut head).unwrap_or(0);
    Ok(match &head[..read] {
        b"GGUF" => Some(Format::Gguf),
        b"PK\x03\x04" => Some(Format::TorchScript),
        _ => None,
    })
}

/// Refuses a file whose first bytes say it is another format, or that lacks
/// the magic bytes `expected` has (ONNX, protobuf, has none to check).
pub fn expect_format(path: &Path, expected: Format) -> Result<(), RunnerError> {
    let refuse = |reason: String| {
        Err(RunnerError::Load {
            path: path.to_owned(),
            reason,
        })
    };
    let title = match expected {
        Format::Onnx => "ONNX",
        Format::Gguf => "GGUF",
        Format::TorchScript => "TorchScript",
    };
    match sniff(path)? {
        Some(found) if found == expected => Ok(()),
        Some(other) => refuse(format!(
            "it is a {other} file, not {title}; give \"format\": \"{other}\""
        )),
        None => match expected {
            Format::Onnx => Ok(()),
            Format::Gguf => refuse("not a GGUF file (it does not start with \"GGUF\")".into()),
            Format::TorchScript => refuse(
                "not a TorchScript archive (a .pt file saved by torch.jit.save is a zip file)"
                    .into(),
            ),
        },
    }
}

/// Why a model did not load or a request did not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RunnerError {
    #[error("this build has no {format} runner: build with `cargo build --release --features {feature}`")]
    NotBuilt {
        format: &'static str,
        feature: &'static str,
    },
    /// The runtime library itself is missing or unusable.
    #[error(transparent)]
    Runtime(RuntimeError),
    #[error("cannot load model {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("bad options: {0}")]
    Options(String),
    /// A request that does not fit the model: wrong inputs, dtypes, shapes.
    #[error("{0}")]
    BadRequest(String),
    /// A request whose tensors cannot be read (a bad request too).
    #[error(transparent)]
    Tensors(#[from] tensor::RequestError),
    #[error("inference failed: {0}")]
    Inference(String),
    /// A GPU was asked for and cannot be used; the CPU was not allowed.
    #[error("{0}; set \"allow_cpu_fallback\": true in the options to run on the CPU instead")]
    NoGpu(String),
}

impl RunnerError {
    /// Whether the request was at fault rather than the model or the
    /// runtime: what the model server answers as `"kind": "bad_request"`.
    pub fn is_bad_request(&self) -> bool {
        match self {
            RunnerError::BadRequest(_) | RunnerError::Tensors(_) => true,
            RunnerError::NotBuilt { .. }
            | RunnerError::Runtime(_)
            | RunnerError::Load { .. }
            | RunnerError::Options(_)
            | RunnerError::Inference(_)
            | RunnerError::NoGpu(_) => false,
        }
    }
}

/// Why a runner's runtime library is missing or unusable. Kept once per
/// process and handed to every load that needs it, hence `Clone`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuntimeError {
    #[cfg(feature = "onnx")]
    #[error(transparent)]
    Onnx(onnx::OnnxRuntimeError),
    /// llama.cpp's backend did not initialise (its error, as text).
    #[cfg(feature = "gguf")]
    #[error("llama.cpp did not start: {0}")]
    Llama(String),
}
/// What a runner may send while a request runs (the `token` events of a
/// streaming generation), before its output.
pub type EventSink<'a> = &'a mut dyn FnMut(Value);

/// One loaded model. `infer` may be called from several threads at once.
pub trait ModelRunner: Send + Sync {
    /// The tensor inputs; empty for runners that take no tensors (GGUF).
    fn input_specs(&self) -> &[TensorSpec];
    fn output_specs(&self) -> &[TensorSpec];
    /// Runs one request (its JSON object) and returns the output JSON.
    fn infer(
        &self,
        request: &Map<String, Value>,
        events: EventSink<'_>,
    ) -> Result<Value, RunnerError>;
    /// Format-specific facts for `--info` and `ready` (context size, ...).
    fn details(&self) -> Value {
        Value::Null
    }
}

/// Where the runners find their runtime libraries.
#[derive(Debug, Clone, Default)]
pub struct RuntimePaths {
    /// The `onnxruntime_path` setting: the library or a directory holding it.
    pub onnxruntime: Option<PathBuf>,
}

/// A loaded model with what the deployment reports about it.
pub struct Model {
    pub runner: Box<dyn ModelRunner>,
    pub format: Format,
    pub path: PathBuf,
    /// Growth of the process's resident memory while loading.
    pub memory_bytes: u64,
    pub load_ms: f64,
    /// What the load had to give up (a GPU, with `allow_cpu_fallback`).
    pub warnings: Vec<String>,
}

impl Model {
    /// `{"format", "input_specs", "output_specs", "memory_bytes", "load_ms"}`.
    pub fn describe(&self) -> Value {
        let specs = |s: &[TensorSpec]| s.iter().map(TensorSpec::to_json).collect::<Vec<_>>();
        let mut described = json!({
            "model": self.path,
            "format": self.format.name(),
            "input_specs": specs(self.runner.input_specs()),
            "output_specs": specs(self.runner.output_specs()),
            "memory_bytes": self.memory_bytes,
            "load_ms": self.load_ms,
            "details": self.runner.details(),
        });
        if !self.warnings.is_empty() {
            described["warnings"] = json!(self.warnings);
        }
        described
    }
}

/// Loads `path` with the runner of `format` (detected when `None`).
/// `options` are the runner's own (threads, optimisation, device); keys
/// listed in `ignored` belong to the caller and pass unchecked.
pub fn load(
    path: &Path,
    format: Option<&str>,
    options: &Map<String, Value>,
    ignored: &[&str],
    runtimes: &RuntimePaths,
) -> Result<Model, RunnerError> {
    let format = match format {
        Some(name) => Format::parse(name)?,
        None => Format::detect(path)?,
    };
    if !format.is_built() {
        return Err(RunnerError::NotBuilt {
            format: format.name(),
            feature: format.feature(),
        });
    }
    let before = resident_bytes();
    let started = Instant::now();
    // Every runner takes the CPU-fallback option (`gpu`).
    let ignored: Vec<&str> = ignored
        .iter()
        .copied()
        .chain([gpu::ALLOW_CPU_FALLBACK])
        .collect();
    let mut warnings = Vec::new();
    let runner = load_with(format, path, options, &ignored, runtimes, &mut warnings)?;
    Ok(Model {
        runner,
        format,
        path: path.to_owned(),
        memory_bytes: resident_bytes().saturating_sub(before),
        load_ms: crate::protocol::round::millis(started.elapsed().as_secs_f64() * 1000.0),
        warnings,
    })
}

#[allow(unused_variables)]
fn load_with(
    format: Format,
    path: &Path,
    options: &Map<String, Value>,
    ignored: &[&str],
    runtimes: &RuntimePaths,
    warnings: &mut Vec<String>,
) -> Result<Box<dyn ModelRunner>, RunnerError> {
    match format {
        #[cfg(feature = "onnx")]
        Format::Onnx => Ok(Box::new(onnx::OnnxRunner::load(
            path, options, ignored, runtimes, warnings,
        )?)),
        #[cfg(feature = "gguf")]
        Format::Gguf => Ok(Box::new(gguf::GgufRunner::load(
            path, options, ignored, warnings,
        )?)),
        #[cfg(feature = "torch")]
        Format::TorchScript => Ok(Box::new(torch::TorchRunner::load(
            path, options, ignored, warnings,
        )?)),
        #[allow(unreachable_patterns)] // every format built in
        other => Err(RunnerError::NotBuilt {
            format: other.name(),
            feature: other.feature(),
        }),
    }
}

/// Whether each format is built in and whether its runtime loads here, for
/// `info` and `run-model --list-formats`.
pub fn format_support(runtimes: &RuntimePaths) -> Vec<Value> {
    Format::ALL
        .into_iter()
        .map(|format| {
            let runtime = match format {
                #[cfg(feature = "onnx")]
                Format::Onnx => onnx::runtime_status(runtimes).map_err(|e| e.to_string()),
                #[cfg(feature = "gguf")]
                Format::Gguf => gguf::runtime_status().map_err(|e| e.to_string()),
                #[cfg(feature = "torch")]
                Format::TorchScript => Ok(format!(
                    "LibTorch (linked at build time; CUDA {})",
                    if tch::Cuda::is_available() {
                        "available"
                    } else {
                        "not available"
                    }
                )),
                #[allow(unreachable_patterns)] // every format built in
                _ => Err(format!(
                    "not in this build (cargo feature `{}`)",
                    format.feature()
                )),
            };
            json!({
                "format": format.name(),
                "built": format.is_built(),
                "runtime_loads": runtime.is_ok(),
                "runtime": runtime.unwrap_or_else(|e| e),
            })
        })
        .collect()
}

/// Options shared by every runner's parser: rejects unknown keys by name.
pub fn check_option_keys(
    options: &Map<String, Value>,
    known: &[&str],
    ignored: &[&str],
) -> Result<(), RunnerError> {
    match options
        .keys()
        .find(|k| !known.contains(&k.as_str()) && !ignored.contains(&k.as_str()))
    {
        Some(unknown) => {
            let mut all: Vec<&str> = known.iter().chain(ignored).copied().collect();
            all.sort_unstable();
            Err(RunnerError::Options(format!(
                "unknown option {}; known options: {}",
                crate::protocol::quote(unknown),
                all.join(", ")
            )))
        }
        None => Ok(()),
    }
}

/// A non-negative integer option, `None` when absent.
pub fn usize_option(options: &Map<String, Value>, key: &str) -> Result<Option<usize>, RunnerError> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                RunnerError::Options(format!(
                    "\"{key}\" must be a non-negative integer, got {}",
                    crate::protocol::quote_json(value)
                ))
            }),
    }
}

/// Resident memory of this process (`/proc/self/statm`), 0 when unknown.
pub fn resident_bytes() -> u64 {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}
