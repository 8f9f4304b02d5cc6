//! Which GPUs a workload gets (issue 13). `gpus_per_workload` (or the
//! request's own `"gpus": N`) says how many; with a number, the workload
//! holds that many GPUs of the node's pool exclusively from its launch to
//! its end (restarts of the node included: the record keeps their ids) and
//! sees only them (`CUDA_VISIBLE_DEVICES`). With `all` (the default) it
//! sees every GPU and holds none, as before.
//!
//! A request the node can never serve (more GPUs than it has, none at all)
//! is refused at once with the numbers; one that must wait for GPUs held by
//! others waits in the queue like one waiting for a slot. With
//! `"allow_cpu_fallback": true` it runs now, on the CPU, and its `started`
//! answer carries the warning.

use super::*;
use crate::gpus::{visible_devices, Gpu, GpuError, Holder};

/// The most GPUs a request may ask for.
const MAX_GPUS: u64 = 64;

/// What a workload command asks of the GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GpuAsk {
    /// `None`: every GPU, none exclusively (`all`).
    pub count: Option<usize>,
    /// `allow_cpu_fallback`: run on the CPU rather than wait or fail.
    pub cpu_fallback: bool,
}

/// What a launching workload got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GpuGrant {
    /// `None`: every GPU (`all`); `Some`: exactly these, held.
    pub gpus: Option<Vec<Gpu>>,
    /// Said in the `started` answer (a CPU fallback).
    pub warnings: Vec<String>,
}

impl Workloads {
    /// Reads `gpus` and `allow_cpu_fallback` from the params (the node's
    /// `gpus_per_workload` where the request does not say).
    pub(super) fn gpu_ask(&self, params: &Map<String, Value>) -> Result<GpuAsk, StartRefusal> {
        let count = match params.get("gpus") {
            None | Some(Value::Null) => self.config.gpus_per_workload,
            Some(Value::String(all)) if all == "all" => None,
            Some(value) => match value.as_u64() {
                Some(n) if n <= MAX_GPUS => Some(n as usize),
                _ => {
                    return Err(StartRefusal::BadGpus {
                        got: crate::protocol::quote_json(value),
                    })
                }
            },
        };
        let cpu_fallback = match params.get("allow_cpu_fallback") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(allowed)) => *allowed,
            Some(value) => {
                return Err(StartRefusal::BadFallback {
                    got: crate::protocol::quote_json(value),
                })
            }
        };
        Ok(GpuAsk {
            count,
            cpu_fallback,
        })
    }

    /// Refuses now what can never be served (more GPUs than the node has,
    /// no GPU at all), unless the CPU is allowed.
    pub(super) fn gpus_possible(&self, request_id: &str, ask: GpuAsk) -> Result<(), StartRefusal> {
        let Some(count) = ask.count else {
            return Ok(());
        };
        let holder = Holder::Workload(request_id.to_owned());
        match self.gpus.lock().check(&holder, count) {
            Err(error) if !error.is_temporary() && !ask.cpu_fallback => {
                Err(StartRefusal::Gpus(error))
            }
            _ => Ok(()),
        }
    }

    /// Whether the GPUs asked for are free now; `Err` is what it waits for.
    pub(super) fn gpus_free(&self, request_id: &str, ask: GpuAsk) -> Result<(), Wait> {
        let (Some(count), false) = (ask.count, ask.cpu_fallback) else {
            return Ok(());
        };
        let holder = Holder::Workload(request_id.to_owned());
        match self.gpus.lock().check(&holder, count) {
            Err(error) if error.is_temporary() => Err(Wait::Gpus {
                reason: error.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Takes the GPUs for a launching workload.
    pub(super) fn take_gpus(
        &self,
        request_id: &str,
        ask: GpuAsk,
    ) -> Result<GpuGrant, StartRefusal> {
        let Some(count) = ask.count else {
            return Ok(GpuGrant {
                gpus: None,
                warnings: Vec::new(),
            });
        };
        let holder = Holder::Workload(request_id.to_owned());
        match self.gpus.lock().assign(holder, count) {
            Ok(gpus) => Ok(GpuGrant {
                gpus: Some(gpus),
                warnings: Vec::new(),
            }),
            Err(error) if ask.cpu_fallback => Ok(cpu_instead(request_id, &error)),
            Err(error) => Err(StartRefusal::Gpus(error)),
        }
    }

    /// Takes back what `take_gpus` gave (the workload ended, or its launch
    /// failed).
    pub(super) fn release_gpus(&self, request_id: &str) {
        let freed = self
            .gpus
            .lock()
            .release(&Holder::Workload(request_id.to_owned()));
        if !freed.is_empty() {
            tracing::debug!(request_id, "released {}", visible_devices(&freed));
        }
    }

    /// A workload found running after a restart keeps the GPUs its record
    /// names until it ends.
    pub(super) fn reserve_gpus(&self, record: &WorkloadRecord) {
        if let Some(ids) = &record.gpus {
            let holder = Holder::Workload(record.request_id.clone());
            self.gpus.lock().reserve(holder, ids);
        }
    }
}

fn cpu_instead(request_id: &str, error: &GpuError) -> GpuGrant {
    let warning = format!("{error}; running on the CPU (allow_cpu_fallback)");
    tracing::warn!(request_id, "{warning}");
    GpuGrant {
        gpus: Some(Vec::new()),
        warnings: vec![warning],
    }
}

/// The variables that say which GPUs a workload may use; none for `all`
/// (the node's own environment stands). Empty values mean "no GPU".
pub(super) fn gpu_env(grant: &GpuGrant) -> Vec<(String, String)> {
    match &grant.gpus {
        Some(gpus) => crate::gpus::environment(gpus),
        None => Vec::new(),
    }
}
