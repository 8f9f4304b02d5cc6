//! A runner asked for a GPU it cannot have (no CUDA provider in ONNX
//! Runtime, no CUDA device for LibTorch, no GPU backend in llama.cpp) says
//! so: the load fails with the reason, unless the options carry
//! `"allow_cpu_fallback": true`, in which case the model runs on the CPU and
//! the reply carries the warning (`warnings` in what the model reports). The
//! node's log is never the only place it shows.

use serde_json::{Map, Value};

use super::RunnerError;

/// The option that allows running on the CPU instead.
pub const ALLOW_CPU_FALLBACK: &str = "allow_cpu_fallback";

/// What the load must do when the GPU it was asked for is not there:
/// `Err` with `why`, or, where the options allow the CPU, a warning added
/// to `warnings` and `Ok`.
pub fn without_gpu(
    options: &Map<String, Value>,
    why: String,
    warnings: &mut Vec<String>,
) -> Result<(), RunnerError> {
    if fallback_allowed(options)? {
        tracing::warn!("{why}; running on the CPU ({ALLOW_CPU_FALLBACK})");
        warnings.push(format!("{why}; running on the CPU ({ALLOW_CPU_FALLBACK})"));
        Ok(())
    } else {
        Err(RunnerError::NoGpu(why))
    }
}

fn fallback_allowed(options: &Map<String, Value>) -> Result<bool, RunnerError> {
    match options.get(ALLOW_CPU_FALLBACK) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(allowed)) => Ok(*allowed),
        Some(other) => Err(RunnerError::Options(format!(
            "\"{ALLOW_CPU_FALLBACK}\" must be true or false, got {}",
            crate::protocol::quote_json(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn options(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn no_gpu_is_an_error_unless_the_cpu_is_allowed() {
        let mut warnings = Vec::new();
        let refused = without_gpu(&options(json!({})), "no CUDA here".into(), &mut warnings);
        let error = refused.unwrap_err().to_string();
        assert!(
            error.contains("no CUDA here") && error.contains("allow_cpu_fallback"),
            "{error}"
        );
        assert!(warnings.is_empty());
        let allowed = options(json!({"allow_cpu_fallback": true}));
        without_gpu(&allowed, "no CUDA here".into(), &mut warnings).unwrap();
        assert_eq!(
            warnings,
            ["no CUDA here; running on the CPU (allow_cpu_fallback)"]
        );
        let bad = options(json!({"allow_cpu_fallback": "yes"}));
        assert!(without_gpu(&bad, "x".into(), &mut warnings).is_err());
    }
}
