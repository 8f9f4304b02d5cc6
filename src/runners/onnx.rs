//! The ONNX runner, on `ort` with ONNX Runtime loaded at run time.
//!
//! Loading the library at run time (`load-dynamic`) keeps the default build
//! free of native dependencies and lets one binary use whichever ONNX
//! Runtime the machine has: CPU or CUDA, from pip or from a tarball. The
//! library is found in this order: `ORT_DYLIB_PATH`, the `onnxruntime_path`
//! setting, the `onnxruntime` package of the machine's Python, the dynamic
//! linker's search path.
//!
//! `ort`'s `Session::run` needs exclusive access, so concurrent requests
//! each take a session from a pool that grows on demand; the model server
//! caps the pool at the deployment's `max_concurrency`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::memory::Allocator;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{DynTensor, DynValue, TensorElementType, ValueType};
use serde_json::{json, Map, Value};

use super::gpu;
use super::tensor::{inputs_from_json, wants_base64, DType, RequestError, Tensor, TensorSpec};
use super::{
    check_option_keys, expect_format, usize_option, EventSink, Format, ModelRunner, RunnerError,
    RuntimeError, RuntimePaths,
};

/// The ONNX Runtime release the pinned `ort` is made for; CI tests this one.
pub const RECOMMENDED_VERSION: &str = "1.31.1";
/// The oldest release the build accepts (`ort`'s `api-20` feature).
pub const MINIMUM_VERSION: &str = "1.20";

const OPTIONS: &[&str] = &[
    "intra_op_threads",
    "inter_op_threads",
    "graph_optimization_level",
    "execution_provider",
    "cuda_device_id",
];

/// The process's one ONNX Runtime environment, or why there is none.
static ENVIRONMENT: OnceLock<Result<(Environment, String), OnnxRuntimeError>> = OnceLock::new();

/// Why ONNX Runtime is not usable here; each says how to install it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OnnxRuntimeError {
    #[error("ORT_DYLIB_PATH={} is not an ONNX Runtime library; {}", .0.display(), install_hint())]
    NotALibrary(PathBuf),
    #[error("onnxruntime_path {} holds no libonnxruntime.so; {}", .0.display(), install_hint())]
    NoLibraryIn(PathBuf),
    /// `tried` says, place by place, why each had none.
    #[error("ONNX Runtime not found (looked at: {}); {}", .tried.join("; "), install_hint())]
    NotFound { tried: Vec<String> },
    /// `ort`'s error, as text: the result is kept for the whole process.
    #[error("ONNX Runtime at {} does not load: {reason}; {}", .library.display(), install_hint())]
    DoesNotLoad { library: PathBuf, reason: String },
    #[error("ONNX Runtime at {} failed to start: {reason}", .library.display())]
    DoesNotStart { library: PathBuf, reason: String },
    #[error("ONNX Runtime is not loaded")]
    NotLoaded,
}

impl From<OnnxRuntimeError> for RunnerError {
    fn from(error: OnnxRuntimeError) -> RunnerError {
        RunnerError::Runtime(RuntimeError::Onnx(error))
    }
}

/// Why the machine's Python has no `onnxruntime` to offer, for
/// [`OnnxRuntimeError::NotFound`]'s list.
#[derive(Debug, thiserror::Error)]
enum PythonProbeError {
    #[error("{0}: no onnxruntime package")]
    NoPackage(&'static str),
    #[error("python3 (not found)")]
    NoPython,
}

/// Session settings from the deployment's `options`.
#[derive(Debug, Clone, Default)]
struct SessionOptions {
    intra_op_threads: Option<usize>,
    inter_op_threads: Option<usize>,
    optimization: Option<GraphOptimizationLevel>,
    cuda: Option<i32>,
}

pub struct OnnxRunner {
    path: PathBuf,
    options: SessionOptions,
    /// Idle sessions; `infer` takes one and puts it back.
    pool: Mutex<Vec<Session>>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl OnnxRunner {
    pub fn load(
        path: &Path,
        options: &Map<String, Value>,
        ignored: &[&str],
        runtimes: &RuntimePaths,
        warnings: &mut Vec<String>,
    ) -> Result<OnnxRunner, RunnerError> {
        check_option_keys(options, OPTIONS, ignored)?;
        let raw = options;
        let mut options = parse_options(raw)?;
        expect_format(path, Format::Onnx)?;
        let environment = environment(runtimes)?;
        let session = match build_session(environment, path, &options) {
            Err(RunnerError::NoGpu(why)) => {
                gpu::without_gpu(raw, why, warnings)?;
                // Every later session of this model runs on the CPU too.
                options.cuda = None;
                build_session(environment, path, &options)?
            }
            built => built?,
        };
        let inputs = session
            .inputs()
            .iter()
            .map(|o| spec(o.name(), o.dtype()))
            .collect();
        let outputs = session
            .outputs()
            .iter()
            .map(|o| spec(o.name(), o.dtype()))
            .collect();
        Ok(OnnxRunner {
            path: path.to_owned(),
            options,
            pool: Mutex::new(vec![session]),
            inputs,
            outputs,
        })
    }

    fn take_session(&self) -> Result<Session, RunnerError> {
        if let Some(session) = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(session);
        }
        let (environment, _) = ENVIRONMENT
            .get()
            .and_then(|e| e.as_ref().ok())
            .ok_or(OnnxRuntimeError::NotLoaded)?;
        build_session(environment, &self.path, &self.options)
    }

    /// Checks every input against the specs, by name.
    fn check_inputs(&self, inputs: &[(String, Tensor)]) -> Result<(), RunnerError> {
        let known = || {
            self.inputs
                .iter()
                .map(|s| format!("{} ({})", s.name, s.describe()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some((name, _)) = inputs
            .iter()
            .find(|(n, _)| !self.inputs.iter().any(|s| &s.name == n))
        {
            return Err(RunnerError::BadRequest(format!(
                "unknown input '{name}'; the model's inputs are {}",
                known()
            )));
        }
        for spec in &self.inputs {
            match inputs.iter().find(|(n, _)| *n == spec.name) {
                Some((_, tensor)) => spec.check(tensor).map_err(RequestError::Tensor)?,
                None => {
                    return Err(RunnerError::BadRequest(format!(
                        "missing input '{}' ({}); the model's inputs are {}",
                        spec.name,
                        spec.describe(),
                        known()
                    )))
                }
            }
        }
        Ok(())
    }
}

impl ModelRunner for OnnxRunner {
    fn input_specs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn output_specs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn infer(&self, request: &Map<String, Value>, _: EventSink<'_>) -> Result<Value, RunnerError> {
        let base64 = wants_base64(request)?;
        let inputs = inputs_from_json(request)?;
        self.check_inputs(&inputs)?;
        let values = inputs
            .iter()
            .map(|(name, tensor)| Ok((name.as_str(), to_ort(tensor)?)))
            .collect::<Result<Vec<_>, RunnerError>>()?;
        let mut session = self.take_session()?;
        let started = Instant::now();
        let result = session
            .run(values)
            .map_err(|e| RunnerError::Inference(e.to_string()));
        let run_ms = crate::protocol::round::millis(started.elapsed().as_secs_f64() * 1000.0);
        let outputs = result.and_then(|outputs| {
            let mut out = Map::new();
            for (name, value) in &outputs {
                out.insert(name.to_owned(), from_ort(name, &value)?.to_json(base64));
            }
            Ok(out)
        });
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(session);
        Ok(json!({"outputs": outputs?, "run_ms": run_ms}))
    }
}

/// `Ok("ONNX Runtime 1.31.1 from /path")`, or why it does not load.
pub fn runtime_status(runtimes: &RuntimePaths) -> Result<String, OnnxRuntimeError> {
    environment(runtimes).map(|_| {
        ENVIRONMENT
            .get()
            .and_then(|e| e.as_ref().ok())
            .map(|(_, d)| d.clone())
            .unwrap_or_default()
    })
}

fn environment(runtimes: &RuntimePaths) -> Result<&'static Environment, OnnxRuntimeError> {
    let loaded = ENVIRONMENT.get_or_init(|| {
        let library = find_library(runtimes)?;
        let builder = ort::init_from(&library).map_err(|e| OnnxRuntimeError::DoesNotLoad {
            library: library.clone(),
            reason: e.to_string(),
        })?;
        let environment = builder
            .with_name("cyberwave-cloud-node")
            .build()
            .map_err(|e| OnnxRuntimeError::DoesNotStart {
                library: library.clone(),
                reason: e.to_string(),
            })?;
        let version = library_version(&library).unwrap_or_else(|| "(unknown version)".into());
        tracing::debug!("ONNX Runtime {version} loaded from {}", library.display());
        Ok((
            environment,
            format!("ONNX Runtime {version} from {}", library.display()),
        ))
    });
    loaded.as_ref().map(|(e, _)| e).map_err(Clone::clone)
}

/// ONNX Runtime's own version string (`OrtGetApiBase()->GetVersionString()`).
fn library_version(library: &Path) -> Option<String> {
    /// The stable head of ONNX Runtime's C API: two function pointers.
    #[repr(C)]
    struct ApiBase {
        get_api: unsafe extern "C" fn(u32) -> *const std::ffi::c_void,
        get_version_string: unsafe extern "C" fn() -> *const std::ffi::c_char,
    }
    // SAFETY: the library is already loaded by `ort` (this only takes a
    // reference), and `OrtGetApiBase` has had this signature since 1.0.
    unsafe {
        let lib = libloading::Library::new(library).ok()?;
        let base: libloading::Symbol<unsafe extern "C" fn() -> *const ApiBase> =
            lib.get(b"OrtGetApiBase").ok()?;
        let base = base();
        if base.is_null() {
            return None;
        }
        let version = ((*base).get_version_string)();
        (!version.is_null()).then(|| {
            std::ffi::CStr::from_ptr(version)
                .to_string_lossy()
                .into_owned()
        })
    }
}

pub fn install_hint() -> String {
    format!(
        "install ONNX Runtime with `pip install onnxruntime=={RECOMMENDED_VERSION}` (or onnxruntime-gpu for CUDA; any release >= {MINIMUM_VERSION} works), or point ORT_DYLIB_PATH or the onnxruntime_path setting at libonnxruntime.so"
    )
}

/// Finds `libonnxruntime.so`; the error lists every place looked at.
fn find_library(runtimes: &RuntimePaths) -> Result<PathBuf, OnnxRuntimeError> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return library_in(&path).ok_or(OnnxRuntimeError::NotALibrary(path));
    }
    if let Some(path) = &runtimes.onnxruntime {
        return library_in(path).ok_or_else(|| OnnxRuntimeError::NoLibraryIn(path.clone()));
    }
    let mut tried = vec![
        "ORT_DYLIB_PATH (unset)".to_owned(),
        "onnxruntime_path (unset)".to_owned(),
    ];
    match python_package_dir() {
        Ok(dir) => match library_in(&dir.join("capi")) {
            Some(found) => return Ok(found),
            None => tried.push(format!("{}/capi (no libonnxruntime.so)", dir.display())),
        },
        Err(why) => tried.push(why.to_string()),
    }
    for name in ["libonnxruntime.so", "libonnxruntime.so.1"] {
        // SAFETY: loading ONNX Runtime runs its initialisers, which is what
        // using it needs anyway; the handle is closed again at once.
        if unsafe { libloading::Library::new(name) }.is_ok() {
            return Ok(PathBuf::from(name));
        }
    }
    tried.push("the dynamic linker's search path".into());
    Err(OnnxRuntimeError::NotFound { tried })
}

/// A library file itself, or the newest `libonnxruntime.so*` in a directory.
fn library_in(path: &Path) -> Option<PathBuf> {
    if path.is_file() {
        return Some(path.to_owned());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Where the machine's Python keeps its `onnxruntime` package.
fn python_package_dir() -> Result<PathBuf, PythonProbeError> {
    const PROBE: &str = "import os, onnxruntime; print(os.path.dirname(onnxruntime.__file__))";
    for python in ["python3", "python"] {
        let Ok(output) = Command::new(python).args(["-c", PROBE]).output() else {
            continue;
        };
        if output.status.success() {
            let dir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            return Ok(PathBuf::from(dir));
        }
        return Err(PythonProbeError::NoPackage(python));
    }
    Err(PythonProbeError::NoPython)
}

fn parse_options(options: &Map<String, Value>) -> Result<SessionOptions, RunnerError> {
    let optimization = match options
        .get("graph_optimization_level")
        .and_then(Value::as_str)
    {
        None => None,
        Some("disable") => Some(GraphOptimizationLevel::Disable),
        Some("basic") => Some(GraphOptimizationLevel::Level1),
        Some("extended") => Some(GraphOptimizationLevel::Level2),
        Some("all") => Some(GraphOptimizationLevel::All),
        Some(other) => {
            return Err(RunnerError::Options(format!(
                "\"graph_optimization_level\" must be disable, basic, extended or all, got {}",
                crate::protocol::quote(other)
            )))
        }
    };
    let device = usize_option(options, "cuda_device_id")?.unwrap_or(0) as i32;
    let cuda = match options.get("execution_provider").and_then(Value::as_str) {
        None | Some("cpu") => None,
        Some("cuda") => Some(device),
        Some(other) => {
            return Err(RunnerError::Options(format!(
                "\"execution_provider\" must be cpu or cuda, got {}",
                crate::protocol::quote(other)
            )))
        }
    };
    Ok(SessionOptions {
        intra_op_threads: usize_option(options, "intra_op_threads")?,
        inter_op_threads: usize_option(options, "inter_op_threads")?,
        optimization,
        cuda,
    })
}

fn build_session(
    environment: &Environment,
    path: &Path,
    options: &SessionOptions,
) -> Result<Session, RunnerError> {
    let load_error = |e: String| RunnerError::Load {
        path: path.to_owned(),
        reason: e,
    };
    let mut builder = Session::builder(environment).map_err(|e| load_error(e.to_string()))?;
    if let Some(n) = options.intra_op_threads {
        builder = builder
            .with_intra_threads(n)
            .map_err(|e| load_error(e.to_string()))?;
    }
    if let Some(n) = options.inter_op_threads {
        builder = builder
            .with_inter_threads(n)
            .map_err(|e| load_error(e.to_string()))?;
    }
    if let Some(level) = options.optimization {
        builder = builder
            .with_optimization_level(level)
            .map_err(|e| load_error(e.to_string()))?;
    }
    if let Some(device) = options.cuda {
        builder = with_cuda(builder, device)?;
    }
    builder.commit_from_file(path).map_err(|e| {
        let mut reason = e.to_string();
        if reason.contains("Protobuf parsing failed") {
            reason.push_str(" (the file is not an ONNX model, or it is truncated)");
        }
        load_error(reason)
    })
}

/// Adds the CUDA provider; `NoGpu` says why it cannot be had.
fn with_cuda(
    builder: ort::session::builder::SessionBuilder,
    device: i32,
) -> Result<ort::session::builder::SessionBuilder, RunnerError> {
    if !ep::CUDA::is_available().unwrap_or(false) {
        return Err(RunnerError::NoGpu(
            "execution_provider cuda asked for, but this ONNX Runtime has no CUDA provider (install onnxruntime-gpu)".into(),
        ));
    }
    let cuda = ep::CUDA::default()
        .with_device_id(device)
        .build()
        .error_on_failure();
    builder.with_execution_providers([cuda]).map_err(|e| {
        RunnerError::NoGpu(format!(
            "execution_provider cuda asked for, but the CUDA provider did not start on device {device} ({e})"
        ))
    })
}

fn spec(name: &str, value_type: &ValueType) -> TensorSpec {
    match value_type {
        ValueType::Tensor {
            ty,
            shape,
            dimension_symbols,
        } => TensorSpec {
            name: name.to_owned(),
            dtype: dtype_of(*ty)
                .map_or_else(|| format!("{ty:?}").to_lowercase(), |d| d.name().to_owned()),
            shape: shape.iter().map(|d| u64::try_from(*d).ok()).collect(),
            dim_names: dimension_symbols
                .iter()
                .map(|s| Some(s.clone()).filter(|s| !s.is_empty()))
                .collect(),
        },
        other => TensorSpec {
            name: name.to_owned(),
            dtype: format!("{other:?}").to_lowercase(),
            shape: Vec::new(),
            dim_names: Vec::new(),
        },
    }
}

fn dtype_of(ty: TensorElementType) -> Option<DType> {
    Some(match ty {
        TensorElementType::Float32 => DType::Float32,
        TensorElementType::Float16 => DType::Float16,
        TensorElementType::Float64 => DType::Float64,
        TensorElementType::Int8 => DType::Int8,
        TensorElementType::Int32 => DType::Int32,
        TensorElementType::Int64 => DType::Int64,
        TensorElementType::Uint8 => DType::Uint8,
        TensorElementType::Bool => DType::Bool,
        _ => return None,
    })
}

fn element_type(dtype: DType) -> TensorElementType {
    match dtype {
        DType::Float32 => TensorElementType::Float32,
        DType::Float16 => TensorElementType::Float16,
        DType::Float64 => TensorElementType::Float64,
        DType::Int8 => TensorElementType::Int8,
        DType::Int32 => TensorElementType::Int32,
        DType::Int64 => TensorElementType::Int64,
        DType::Uint8 => TensorElementType::Uint8,
        DType::Bool => TensorElementType::Bool,
    }
}

/// Copies the tensor's bytes into a CPU tensor of ONNX Runtime.
fn to_ort(tensor: &Tensor) -> Result<DynValue, RunnerError> {
    let mut value = DynTensor::new(
        &Allocator::default(),
        element_type(tensor.dtype),
        tensor.shape.clone(),
    )
    .map_err(|e| {
        RunnerError::Inference(format!(
            "cannot allocate a {} tensor: {e}",
            tensor.describe()
        ))
    })?;
    if !tensor.bytes.is_empty() {
        // SAFETY: ONNX Runtime allocated exactly element_count * size bytes
        // on the CPU for this dtype and shape, which is what `bytes` holds
        // (checked when the tensor was parsed).
        unsafe {
            std::ptr::copy_nonoverlapping(
                tensor.bytes.as_ptr(),
                value.data_ptr_mut().cast::<u8>(),
                tensor.bytes.len(),
            );
        }
    }
    Ok(value.into_dyn())
}

/// Copies an output of ONNX Runtime into a tensor.
fn from_ort(name: &str, value: &DynValue) -> Result<Tensor, RunnerError> {
    let ValueType::Tensor { ty, shape, .. } = value.dtype() else {
        return Err(RunnerError::Inference(format!(
            "output '{name}' is not a tensor; the node returns tensors only"
        )));
    };
    let dtype = dtype_of(*ty).ok_or_else(|| {
        RunnerError::Inference(format!(
            "output '{name}' has element type {ty:?}, which the tensor JSON cannot carry"
        ))
    })?;
    let shape: Vec<usize> = shape
        .iter()
        .map(|d| usize::try_from(*d).unwrap_or(0))
        .collect();
    let len = shape.iter().product::<usize>() * dtype.size();
    let mut bytes = vec![0u8; len];
    if len > 0 {
        let tensor = value
            .view()
            .downcast::<ort::value::DynTensorValueType>()
            .map_err(|e| RunnerError::Inference(format!("output '{name}': {e}")))?;
        // SAFETY: a CPU tensor of `len` bytes (dtype and shape from the
        // runtime); outputs of the CPU and CUDA providers land in CPU memory
        // unless an IoBinding says otherwise, and none is used.
        unsafe {
            std::ptr::copy_nonoverlapping(tensor.data_ptr().cast::<u8>(), bytes.as_mut_ptr(), len);
        }
    }
    Ok(Tensor {
        dtype,
        shape,
        bytes,
    })
}
