//! Which GPUs a model server gets (issue 13): `deploy`'s `"gpus": N`, or
//! one when its options ask for a GPU (ONNX `execution_provider: cuda`,
//! TorchScript `device: cuda`, GGUF `gpu_layers` > 0), held from the deploy
//! until the server is gone, from the same pool as the workloads, so a GPU
//! never has two holders. The server sees only its GPUs
//! (`CUDA_VISIBLE_DEVICES`): the runners' device 0 is the one it was given.

use serde_json::{Map, Value};

use super::manager::{DeployError, Deployments};
use crate::gpus::{environment, Holder};

/// The most GPUs one deployment may ask for.
const MAX_GPUS: u64 = 64;

/// How many GPUs a deploy asks for; `None`: it names no GPU, and its server
/// sees the node's environment as it is.
pub(super) fn gpu_count(
    params: &Map<String, Value>,
    options: &Map<String, Value>,
) -> Result<Option<usize>, DeployError> {
    match params.get("gpus") {
        None | Some(Value::Null) => {}
        Some(value) => {
            return match value.as_u64() {
                Some(n) if n <= MAX_GPUS => Ok(Some(n as usize)),
                _ => Err(DeployError::BadGpus {
                    got: crate::protocol::quote_json(value),
                }),
            }
        }
    }
    let is = |key: &str, wanted: &str| options.get(key).and_then(Value::as_str) == Some(wanted);
    let offloads = options
        .get("gpu_layers")
        .and_then(Value::as_u64)
        .is_some_and(|layers| layers > 0);
    let wants_gpu = is("execution_provider", "cuda") || is("device", "cuda") || offloads;
    Ok(wants_gpu.then_some(1))
}

/// What a model server was given: its environment's GPU variables and the
/// ids its record keeps (`None`: no GPU asked for).
pub(super) struct Granted {
    pub env: Vec<(String, String)>,
    pub ids: Option<Vec<String>>,
}

impl Deployments {
    /// Takes `count` GPUs for `deployment_id`. Where none can be had and
    /// the options allow the CPU, the server gets no GPU: its runner then
    /// falls back and its `ready` says so.
    pub(super) fn take_gpus(
        &self,
        deployment_id: &str,
        count: Option<usize>,
        options: &Map<String, Value>,
    ) -> Result<Granted, DeployError> {
        let Some(count) = count else {
            return Ok(Granted {
                env: Vec::new(),
                ids: None,
            });
        };
        let holder = Holder::Deployment(deployment_id.to_owned());
        let gpus = match self.gpus.lock().assign(holder, count) {
            Ok(gpus) => gpus,
            Err(error) if options.get("allow_cpu_fallback") == Some(&Value::Bool(true)) => {
                tracing::warn!(
                    deployment_id,
                    "{error}; the model server gets no GPU (allow_cpu_fallback)"
                );
                Vec::new()
            }
            Err(error) => return Err(DeployError::Gpus(error)),
        };
        Ok(Granted {
            env: environment(&gpus),
            ids: Some(gpus.iter().map(|g| g.id()).collect()),
        })
    }

    /// The server is gone (or never started): its GPUs are free.
    pub(super) fn release_gpus(&self, deployment_id: &str) {
        self.gpus
            .lock()
            .release(&Holder::Deployment(deployment_id.to_owned()));
    }

    /// A server found running after a restart keeps its GPUs.
    pub(super) fn reserve_gpus(&self, deployment_id: &str, ids: &[String]) {
        let holder = Holder::Deployment(deployment_id.to_owned());
        self.gpus.lock().reserve(holder, ids);
    }
}
