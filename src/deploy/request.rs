//! The params of `deploy`, `infer` and `undeploy`, checked before anything
//! runs so that a bad message costs nothing but its error response.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::protocol::{json_kind, quote, quote_json};
use crate::runners::{self, roots, Format, RunnerError};

/// The longest `model` path accepted: Linux's PATH_MAX.
const MAX_MODEL_PATH: usize = 4096;

/// How long `infer` waits for the model server unless `timeout_seconds` says.
pub const DEFAULT_INFER_TIMEOUT: Duration = Duration::from_secs(300);

/// A checked `deploy`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployRequest {
    pub deployment_id: String,
    pub model: PathBuf,
    pub format: Option<String>,
    pub options: Map<String, Value>,
}

/// Why the params of `deploy`, `infer` or `undeploy` are refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("missing \"model\": give the path of the model file (inside model_roots)")]
    MissingModel,
    #[error("\"model\" must be a path string, got {got}")]
    ModelType { got: &'static str },
    #[error(
        "\"model\" {} is longer than the {MAX_MODEL_PATH} bytes a path may have",
        quote(model)
    )]
    ModelTooLong { model: String },
    #[error("\"{key}\" must be a string, got {got}")]
    NotString {
        key: &'static str,
        got: &'static str,
    },
    #[error("\"options\" must be an object, got {got}")]
    OptionsType { got: &'static str },
    #[error("bad options: \"max_concurrency\" must be at least 1")]
    NoConcurrency,
    #[error("missing \"deployment_id\": give the id the deploy command returned")]
    MissingId,
    #[error(
        "\"deployment_id\" {} is not allowed: use 1 to 64 of A-Z a-z 0-9 . _ - (not starting with a dot)",
        quote(id)
    )]
    BadId { id: String },
    #[error(
        "\"timeout_seconds\" must be a number of seconds between 0 and 86400, got {}",
        quote_json(value)
    )]
    Timeout { value: Value },
    /// The format, the options or the model path, as the runners judge them.
    #[error(transparent)]
    Runner(#[from] RunnerError),
}

/// Reads `deploy` params; `new_id` names a deployment that has no id given.
pub fn deploy(
    params: &Map<String, Value>,
    working_dir: &Path,
    model_roots: &[PathBuf],
    new_id: impl FnOnce() -> String,
) -> Result<DeployRequest, RequestError> {
    let model = match params.get("model") {
        Some(Value::String(model)) => model,
        Some(other) => {
            return Err(RequestError::ModelType {
                got: json_kind(other),
            })
        }
        None => return Err(RequestError::MissingModel),
    };
    if model.len() > MAX_MODEL_PATH {
        return Err(RequestError::ModelTooLong {
            model: model.clone(),
        });
    }
    let format = optional_string(params, "format")?;
    if let Some(name) = &format {
        let format = Format::parse(name)?;
        if !format.is_built() {
            return Err(RequestError::Runner(RunnerError::NotBuilt {
                format: format.name(),
                feature: format.feature(),
            }));
        }
    }
    let deployment_id = match optional_string(params, "deployment_id")? {
        Some(id) => checked_id(&id)?,
        None => new_id(),
    };
    let options = match params.get("options") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(options)) => options.clone(),
        Some(other) => {
            return Err(RequestError::OptionsType {
                got: json_kind(other),
            })
        }
    };
    for key in super::server::SERVER_OPTIONS {
        let value = runners::usize_option(&options, key)?;
        if *key == "max_concurrency" && value == Some(0) {
            return Err(RequestError::NoConcurrency);
        }
    }
    let model = roots::resolve_model_path(model, working_dir, model_roots)?;
    Ok(DeployRequest {
        deployment_id,
        model,
        format,
        options,
    })
}

/// The `deployment_id` of `infer` and `undeploy`: the same alphabet as a
/// deploy's, so a refusal never echoes more than a short quote.
pub fn deployment_id(params: &Map<String, Value>) -> Result<String, RequestError> {
    match optional_string(params, "deployment_id")? {
        Some(id) => checked_id(&id),
        None => Err(RequestError::MissingId),
    }
}

/// `infer`'s wait for the model server.
pub fn infer_timeout(params: &Map<String, Value>) -> Result<Duration, RequestError> {
    match params.get("timeout_seconds") {
        None | Some(Value::Null) => Ok(DEFAULT_INFER_TIMEOUT),
        Some(value) => value
            .as_f64()
            .filter(|s| *s > 0.0 && *s <= 86_400.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| RequestError::Timeout {
                value: value.clone(),
            }),
    }
}

fn optional_string(
    params: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<String>, RequestError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(RequestError::NotString {
            key,
            got: json_kind(other),
        }),
    }
}

/// Deployment ids name files and appear in logs: a plain, short alphabet.
fn checked_id(id: &str) -> Result<String, RequestError> {
    let plain = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if plain {
        Ok(id.to_owned())
    } else {
        Err(RequestError::BadId { id: id.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn params(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn deploy_params_are_checked_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.onnx"), b"x").unwrap();
        let roots = vec![dir.path().to_owned()];
        let check = |value: Value| deploy(&params(value), dir.path(), &roots, || "d-1".into());

        let ok = check(json!({"model": "m.onnx"})).unwrap();
        assert_eq!(ok.deployment_id, "d-1");
        assert!(ok.model.ends_with("m.onnx"));
        let cases = [
            (json!({}), "missing \"model\""),
            (json!({"model": 3}), "\"model\" must be a path string"),
            (
                json!({"model": "m.onnx", "format": "tflite"}),
                "unknown model format",
            ),
            (
                json!({"model": "m.onnx", "deployment_id": "../x"}),
                "is not allowed",
            ),
            (
                json!({"model": "m.onnx", "options": []}),
                "\"options\" must be an object",
            ),
            (
                json!({"model": "m.onnx", "options": {"max_queue": -1}}),
                "\"max_queue\" must be a non-negative integer",
            ),
            (
                json!({"model": "m.onnx", "options": {"max_concurrency": 0}}),
                "at least 1",
            ),
            (json!({"model": "/etc/passwd"}), "outside the model roots"),
        ];
        for (value, expected) in cases {
            let error = check(value.clone()).unwrap_err().to_string();
            assert!(error.contains(expected), "{value}: {error}");
        }
    }

    #[test]
    fn infer_params() {
        assert!(deployment_id(&params(json!({})))
            .unwrap_err()
            .to_string()
            .contains("missing \"deployment_id\""));
        assert_eq!(
            infer_timeout(&params(json!({}))).unwrap(),
            DEFAULT_INFER_TIMEOUT
        );
        assert!(infer_timeout(&params(json!({"timeout_seconds": -1}))).is_err());
    }
}
