//! What the machine is and how it is doing: hardware detection for `info`
//! and registration, and the periodic metrics sample.
//!
//! GPUs come from NVML, loaded at run time: a machine without the NVIDIA
//! driver simply has no GPUs, never an error.

pub mod hardware;
pub mod metrics;

pub use hardware::detect;
pub use metrics::{NodeFigures, Sampler};

/// NVML when the driver is installed; why not otherwise, for `-v`.
pub(crate) fn nvml() -> Option<nvml_wrapper::Nvml> {
    match nvml_wrapper::Nvml::init() {
        Ok(nvml) => Some(nvml),
        Err(e) => {
            tracing::debug!("no NVIDIA GPUs: NVML is not available ({e})");
            None
        }
    }
}
