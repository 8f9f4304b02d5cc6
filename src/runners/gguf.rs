//! The GGUF runner: language models through llama.cpp (`llama-cpp-2`,
//! built from its vendored sources with the `gguf` feature).
//!
//! The model is loaded once and lives as long as the process (a model
//! server serves one model; `run-model` runs one): `llama-cpp-2`'s contexts
//! borrow the model, and a `'static` model lets each request own a context
//! of its own on whatever thread runs it. A request's context is made for
//! it and dropped after, so concurrent requests never share a KV cache.
//! Generation itself is in [`super::generate`].

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use serde_json::{json, Map, Value};

use super::generate::{self, GenerateRequest, Prompt};
use super::gpu;
use super::tensor::TensorSpec;
use super::{
    check_option_keys, expect_format, usize_option, EventSink, Format, ModelRunner, RunnerError,
    RuntimeError,
};

const OPTIONS: &[&str] = &["n_ctx", "n_threads", "n_batch", "gpu_layers", "seed"];
/// The context when the deployment does not say (capped by the model's own).
const DEFAULT_N_CTX: u32 = 4096;
const DEFAULT_N_BATCH: u32 = 512;

/// llama.cpp's backend, initialised once per process.
static BACKEND: OnceLock<Result<LlamaBackend, RuntimeError>> = OnceLock::new();
/// The last errors llama.cpp logged, to say why a load failed.
static LAST_ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The deployment's options.
#[derive(Debug, Clone, Copy)]
pub struct GgufOptions {
    pub n_ctx: u32,
    pub n_threads: i32,
    pub n_batch: u32,
    pub seed: Option<u32>,
}

pub struct GgufRunner {
    model: &'static LlamaModel,
    options: GgufOptions,
    template: Option<LlamaChatTemplate>,
}

impl GgufRunner {
    pub fn load(
        path: &Path,
        options: &Map<String, Value>,
        ignored: &[&str],
        warnings: &mut Vec<String>,
    ) -> Result<GgufRunner, RunnerError> {
        check_option_keys(options, OPTIONS, ignored)?;
        let load_error = |reason: String| RunnerError::Load {
            path: path.to_owned(),
            reason,
        };
        expect_format(path, Format::Gguf)?;
        let backend = backend()?;
        let mut gpu_layers = usize_option(options, "gpu_layers")?.unwrap_or(0) as u32;
        if gpu_layers > 0 && !backend.supports_gpu_offload() {
            let why = format!("gpu_layers {gpu_layers} asked for, but this build of llama.cpp has no GPU backend (build the node with `--features cuda` or `--features vulkan`)");
            gpu::without_gpu(options, why, warnings)?;
            gpu_layers = 0;
        }
        LAST_ERRORS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers);
        let model = LlamaModel::load_from_file(backend, path, &params).map_err(|e| {
            let logged = LAST_ERRORS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .join("; ");
            let why = if logged.is_empty() {
                e.to_string()
            } else {
                logged
            };
            load_error(format!(
                "llama.cpp cannot load it (truncated or not a supported model?): {why}"
            ))
        })?;
        let model: &'static LlamaModel = Box::leak(Box::new(model));
        let options = parse_options(options, model.n_ctx_train())?;
        let template = model.chat_template(None).ok();
        Ok(GgufRunner {
            model,
            options,
            template,
        })
    }

    /// The prompt text of a request: its `prompt`, or its `messages`
    /// rendered with the model's own chat template.
    fn prompt_text(&self, prompt: &Prompt) -> Result<String, RunnerError> {
        match prompt {
            Prompt::Text(text) => Ok(text.clone()),
            Prompt::Messages(messages) => {
                let template = self.template.as_ref().ok_or_else(|| {
                    RunnerError::BadRequest("this model has no chat template (tokenizer.chat_template); send \"prompt\" instead of \"messages\"".into())
                })?;
                let chat = messages
                    .iter()
                    .map(|(role, content)| LlamaChatMessage::new(role.clone(), content.clone()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| RunnerError::BadRequest(format!("\"messages\": {e}")))?;
                self.model
                    .apply_chat_template(template, &chat, true)
                    .map_err(|e| {
                        RunnerError::BadRequest(format!(
                            "the model's chat template cannot render these messages: {e}"
                        ))
                    })
            }
        }
    }
}

impl ModelRunner for GgufRunner {
    fn input_specs(&self) -> &[TensorSpec] {
        &[]
    }

    fn output_specs(&self) -> &[TensorSpec] {
        &[]
    }

    fn infer(
        &self,
        request: &Map<String, Value>,
        events: EventSink<'_>,
    ) -> Result<Value, RunnerError> {
        let request = GenerateRequest::parse(request, self.options.n_ctx, self.options.seed)?;
        let prompt = self.prompt_text(&request.prompt)?;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.options.n_ctx))
            .with_n_batch(self.options.n_batch)
            .with_n_ubatch(self.options.n_batch)
            .with_n_threads(self.options.n_threads)
            .with_n_threads_batch(self.options.n_threads);
        let backend = backend()?;
        let mut context = self.model.new_context(backend, params).map_err(|e| {
            RunnerError::Inference(format!(
                "cannot make a llama.cpp context of {} tokens: {e}",
                self.options.n_ctx
            ))
        })?;
        generate::run(
            self.model,
            &mut context,
            &prompt,
            &request,
            self.options.n_batch as usize,
            events,
        )
    }

    fn details(&self) -> Value {
        json!({
            "n_ctx": self.options.n_ctx,
            "n_ctx_train": self.model.n_ctx_train(),
            "n_vocab": self.model.n_vocab(),
            "n_params": self.model.n_params(),
            "n_threads": self.options.n_threads,
            "n_batch": self.options.n_batch,
            "chat_template": self.template.is_some(),
        })
    }
}

fn parse_options(
    options: &Map<String, Value>,
    n_ctx_train: u32,
) -> Result<GgufOptions, RunnerError> {
    let trained = if n_ctx_train > 0 {
        n_ctx_train
    } else {
        DEFAULT_N_CTX
    };
    let n_ctx = match usize_option(options, "n_ctx")? {
        Some(0) => return Err(RunnerError::Options("\"n_ctx\" must be at least 1".into())),
        Some(n) => u32::try_from(n)
            .map_err(|_| RunnerError::Options(format!("\"n_ctx\" {n} is too large")))?,
        None => trained.min(DEFAULT_N_CTX),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n_threads = usize_option(options, "n_threads")?
        .unwrap_or(threads)
        .max(1) as i32;
    let n_batch =
        usize_option(options, "n_batch")?.map_or(DEFAULT_N_BATCH, |n| n.clamp(1, 1 << 16) as u32);
    let seed = usize_option(options, "seed")?.map(|s| s as u32);
    Ok(GgufOptions {
        n_ctx,
        n_threads,
        n_batch,
        seed,
    })
}

/// For `--list-formats`: whether llama.cpp starts here.
pub fn runtime_status() -> Result<String, RunnerError> {
    let backend = backend()?;
    let gpu = if backend.supports_gpu_offload() {
        "with GPU offload"
    } else {
        "CPU only"
    };
    Ok(format!(
        "llama.cpp (vendored by llama-cpp-sys-2 {LLAMA_SYS_VERSION}), {gpu}"
    ))
}

/// The llama-cpp-sys-2 release whose vendored llama.cpp this build uses.
pub const LLAMA_SYS_VERSION: &str = "0.1.161";

fn backend() -> Result<&'static LlamaBackend, RunnerError> {
    BACKEND
        .get_or_init(|| {
            capture_llama_logs();
            LlamaBackend::init().map_err(|e| RuntimeError::Llama(e.to_string()))
        })
        .as_ref()
        .map_err(|e| RunnerError::Runtime(e.clone()))
}

/// Routes llama.cpp's log to `tracing` (debug), keeping its errors for the
/// load error message.
fn capture_llama_logs() {
    unsafe extern "C" fn on_log(
        level: llama_cpp_sys_2::ggml_log_level,
        text: *const std::ffi::c_char,
        _: *mut std::ffi::c_void,
    ) {
        if text.is_null() {
            return;
        }
        // SAFETY: llama.cpp passes a NUL-terminated string valid for the call.
        let line = unsafe { std::ffi::CStr::from_ptr(text) }.to_string_lossy();
        let line = line.trim_end();
        if level == llama_cpp_sys_2::GGML_LOG_LEVEL_ERROR {
            let mut errors = LAST_ERRORS.lock().unwrap_or_else(|p| p.into_inner());
            if errors.len() < 8 && !line.is_empty() {
                errors.push(line.to_owned());
            }
            tracing::warn!(target: "llama.cpp", "{line}");
        } else if !line.is_empty() {
            tracing::debug!(target: "llama.cpp", "{line}");
        }
    }
    // SAFETY: installs a callback that only reads its arguments.
    unsafe {
        llama_cpp_sys_2::llama_log_set(Some(on_log), std::ptr::null_mut());
    }
}
