//! The node's GPUs and who holds them.
//!
//! - [`Inventory`]: the GPUs this node may hand out, found once at start:
//!   what NVML reports (MIG instances where a GPU has MIG on), restricted by
//!   the `gpus` setting, or declared by it where NVML reports none (no
//!   driver: how tests and GPU-less machines describe a node).
//! - [`GpuPool`]: which [`Holder`] (a workload's request_id or a
//!   deployment's id) holds which GPU. Holding is exclusive: a GPU has one
//!   holder or none. [`visible_devices`] names a holder's GPUs for
//!   `CUDA_VISIBLE_DEVICES`.
//!
//! Why a top-level module at layer 3 (scripts/check-layers.py), next to
//! `supervised` rather than inside it: it reads `config` (the setting) and
//! `telemetry` (NVML's list; NVML is queried in one place) below it, and
//! the owners of work above it (`workload`, `deploy`) will keep their
//! GPUs' ids in their records. `supervised` is about processes and is
//! partly compiled into the shim; NVML has no business there.

mod inventory;
mod pool;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

pub use inventory::{Inventory, InventoryError, Source};
pub use pool::{GpuError, GpuPool};

/// The pool, shared by the owners of work (workloads now, deployments
/// next) and the node's reports. They all run in the node's one task, so
/// the lock is never contended; it only lets each own a handle.
#[derive(Debug, Clone)]
pub struct SharedPool(Arc<Mutex<GpuPool>>);

impl SharedPool {
    pub fn new(pool: GpuPool) -> SharedPool {
        SharedPool(Arc::new(Mutex::new(pool)))
    }

    pub fn lock(&self) -> MutexGuard<'_, GpuPool> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One GPU the node may hand out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gpu {
    /// NVML's index (a MIG instance has its GPU's), or the declared one.
    pub index: u32,
    /// `GPU-...` or `MIG-...`, where known.
    pub uuid: Option<String>,
    pub name: String,
    pub memory_total_bytes: u64,
    /// Free at start-up, when the inventory was taken.
    pub memory_free_bytes: u64,
    /// A MIG instance rather than a whole GPU.
    pub mig: bool,
    /// Declared by the `gpus` setting, not detected.
    pub declared: bool,
}

impl Gpu {
    /// What names it to CUDA and in a record: the UUID where known (stable
    /// across reboots and the only way to name a MIG instance), else the
    /// index.
    pub fn id(&self) -> String {
        match &self.uuid {
            Some(uuid) => uuid.clone(),
            None => self.index.to_string(),
        }
    }

    /// For messages: `0`, or `0 MIG-...` for a MIG instance (several share
    /// an index).
    pub fn label(&self) -> String {
        match (&self.uuid, self.mig) {
            (Some(uuid), true) => format!("{} {uuid}", self.index),
            (Some(_) | None, _) => self.index.to_string(),
        }
    }
}

/// Who holds GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Holder {
    /// A workload, by its request_id.
    Workload(String),
    /// A deployment, by its deployment id.
    Deployment(String),
}

impl Holder {
    /// `workload` or `deployment`, for "the workload asks for ...".
    pub fn noun(&self) -> &'static str {
        match self {
            Holder::Workload(_) => "workload",
            Holder::Deployment(_) => "deployment",
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Holder::Workload(id) | Holder::Deployment(id) => id,
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.noun(), self.id())
    }
}

/// `CUDA_VISIBLE_DEVICES` (and `NVIDIA_VISIBLE_DEVICES`) for `gpus`: their
/// ids, comma-separated; empty for none, which CUDA reads as "no GPU".
pub fn visible_devices(gpus: &[Gpu]) -> String {
    gpus.iter().map(Gpu::id).collect::<Vec<_>>().join(",")
}

/// The variables that give a process exactly `gpus` (none: no GPU), for a
/// workload and a model server alike.
pub fn environment(gpus: &[Gpu]) -> Vec<(String, String)> {
    let devices = visible_devices(gpus);
    // The NVIDIA container runtime reads an empty value as "its default".
    let nvidia = if devices.is_empty() {
        "none".to_owned()
    } else {
        devices.clone()
    };
    vec![
        ("CUDA_VISIBLE_DEVICES".into(), devices.clone()),
        ("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into()),
        ("NVIDIA_VISIBLE_DEVICES".into(), nvidia),
        ("CYBERWAVE_GPUS".into(), devices),
    ]
}

/// `GPU 0` or `GPUs 0, 1`, for messages.
fn gpu_labels<'a>(gpus: impl IntoIterator<Item = &'a Gpu>) -> String {
    let labels: Vec<String> = gpus.into_iter().map(Gpu::label).collect();
    let noun = if labels.len() == 1 { "GPU" } else { "GPUs" };
    format!("{noun} {}", labels.join(", "))
}

#[cfg(test)]
pub(crate) fn declared(index: u32) -> Gpu {
    Gpu {
        index,
        uuid: None,
        name: inventory::DECLARED_NAME.to_owned(),
        memory_total_bytes: 0,
        memory_free_bytes: 0,
        mig: false,
        declared: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuids_where_known_else_indexes() {
        let plain = declared(2);
        let mut named = declared(0);
        named.uuid = Some("GPU-aa".into());
        let mut mig = declared(0);
        mig.uuid = Some("MIG-bb".into());
        mig.mig = true;
        assert_eq!(
            visible_devices(&[named.clone(), plain.clone(), mig.clone()]),
            "GPU-aa,2,MIG-bb"
        );
        assert_eq!(visible_devices(&[]), "");
        assert_eq!(named.label(), "0");
        assert_eq!(mig.label(), "0 MIG-bb");
        assert_eq!(gpu_labels([&plain]), "GPU 2");
        assert_eq!(gpu_labels([&named, &plain]), "GPUs 0, 2");
    }

    #[test]
    fn holders_serialize_as_status_shows_them() {
        let holder = Holder::Workload("r-1".into());
        assert_eq!(
            serde_json::to_value(&holder).unwrap(),
            serde_json::json!({"workload": "r-1"})
        );
        assert_eq!(
            Holder::Deployment("d-2".into()).to_string(),
            "deployment d-2"
        );
    }
}
