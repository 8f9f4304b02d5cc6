//! Hardware detection (`cyberwave-cloud-node info`, the `hardware` of the
//! registration body).

use std::fmt::Write;

use nvml_wrapper::Nvml;
use serde::Serialize;
use sysinfo::{Disks, System};

#[derive(Debug, Clone, Serialize)]
pub struct Hardware {
    pub os: String,
    pub kernel: String,
    pub hostname: String,
    pub arch: String,
    pub cpu_model: String,
    pub physical_cores: Option<usize>,
    pub logical_cores: usize,
    pub memory_total_bytes: u64,
    pub disks: Vec<DiskInfo>,
    pub gpus: Vec<GpuInfo>,
    /// Model formats the built-in runners of this build can load.
    pub model_formats: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskInfo {
    pub mount: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// One GPU as NVML reports it: a whole GPU, or one MIG instance of a GPU
/// whose MIG mode is on (a MIG-enabled GPU is not usable whole, so its
/// instances are listed instead of it). `info` shows the node's own list
/// (see `crate::gpus`), where `declared` marks a GPU the `gpus` setting
/// declared on a machine without NVML.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuInfo {
    /// NVML's index; a MIG instance has its GPU's.
    pub index: u32,
    pub name: String,
    /// `GPU-...`, or `MIG-...` for a MIG instance; `None` when unknown.
    pub uuid: Option<String>,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    pub mig: bool,
    pub declared: bool,
    pub driver_version: String,
    pub cuda_version: String,
    pub compute_capability: String,
}

/// Everything detectable, now.
pub fn detect() -> Hardware {
    let (cpu_model, logical_cores, memory_total_bytes) = match System::new() {
        Ok(mut system) => {
            system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
            system.refresh_memory();
            let model = system
                .cpus()
                .first()
                .map(|c| c.brand().trim().to_owned())
                .filter(|b| !b.is_empty())
                .unwrap_or_else(|| "unknown".into());
            (model, system.cpus().len(), system.total_memory())
        }
        Err(e) => {
            tracing::warn!("cannot read the CPU and memory figures: {e}");
            ("unknown".into(), 0, 0)
        }
    };
    Hardware {
        os: System::long_os_version().unwrap_or_default(),
        kernel: System::kernel_version().unwrap_or_default(),
        hostname: System::host_name().unwrap_or_default(),
        arch: System::cpu_arch(),
        cpu_model,
        physical_cores: System::physical_core_count().ok(),
        logical_cores,
        memory_total_bytes,
        disks: disks(),
        gpus: nvml_gpus(),
        model_formats: crate::runners::Format::ALL
            .into_iter()
            .filter(|f| f.is_built())
            .map(crate::runners::Format::name)
            .collect(),
    }
}

/// Real filesystems only: pseudo and overlay mounts repeat the same space.
pub(crate) fn disks() -> Vec<DiskInfo> {
    let Ok(list) = Disks::new_with_refreshed_list() else {
        return Vec::new();
    };
    let mut seen = std::collections::HashSet::new();
    list.iter()
        .filter(|d| d.total_space() > 0)
        .filter(|d| seen.insert(d.name().to_os_string()))
        .map(|d| DiskInfo {
            mount: d.mount_point().display().to_string(),
            total_bytes: d.total_space(),
            free_bytes: d.available_space(),
        })
        .collect()
}

/// NVML's value for "MIG mode on" (nvml.h; nvml-wrapper does not re-export it).
const NVML_DEVICE_MIG_ENABLE: u32 = 1;

/// Every GPU NVML reports, MIG instances in place of their GPU; empty where
/// NVML is absent. For `crate::gpus`, which builds the node's list from it.
pub(crate) fn nvml_gpus() -> Vec<GpuInfo> {
    super::nvml().map(|nvml| gpus(&nvml)).unwrap_or_default()
}

fn gpus(nvml: &Nvml) -> Vec<GpuInfo> {
    let driver = nvml.sys_driver_version().unwrap_or_default();
    let cuda = nvml
        .sys_cuda_driver_version()
        .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10))
        .unwrap_or_default();
    let count = nvml.device_count().unwrap_or(0);
    let mut out = Vec::new();
    for index in 0..count {
        let Ok(device) = nvml.device_by_index(index) else {
            continue;
        };
        let whole = describe(&device, index, false, &driver, &cuda);
        let mig_on = device
            .mig_mode()
            .is_ok_and(|m| m.current == NVML_DEVICE_MIG_ENABLE);
        if !mig_on {
            out.push(whole);
            continue;
        }
        // Slots without an instance answer NotFound: skipped.
        for slot in 0..device.mig_device_count().unwrap_or(0) {
            if let Ok(instance) = device.mig_device_by_index(slot) {
                let mut mig = describe(&instance, index, true, &driver, &cuda);
                mig.compute_capability = whole.compute_capability.clone();
                out.push(mig);
            }
        }
    }
    out
}

fn describe(
    device: &nvml_wrapper::Device<'_>,
    index: u32,
    mig: bool,
    driver: &str,
    cuda: &str,
) -> GpuInfo {
    let memory = device.memory_info().ok();
    GpuInfo {
        index,
        name: device.name().unwrap_or_default(),
        uuid: device.uuid().ok(),
        memory_total_bytes: memory.as_ref().map(|m| m.total).unwrap_or(0),
        memory_free_bytes: memory.as_ref().map(|m| m.free).unwrap_or(0),
        mig,
        declared: false,
        driver_version: driver.to_owned(),
        cuda_version: cuda.to_owned(),
        compute_capability: device
            .cuda_compute_capability()
            .map(|c| format!("{}.{}", c.major, c.minor))
            .unwrap_or_default(),
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn render_gpu(gpu: &GpuInfo) -> String {
    let uuid = gpu.uuid.as_deref().unwrap_or("");
    if gpu.declared {
        return format!("gpu {:<5} declared by the gpus setting {uuid}", gpu.index);
    }
    let kind = if gpu.mig { " MIG instance" } else { "" };
    format!(
        "gpu {:<5} {}{kind} {} ({} free; compute {}, driver {}, CUDA {}) {uuid}",
        gpu.index,
        gpu.name,
        gib(gpu.memory_total_bytes),
        gib(gpu.memory_free_bytes),
        gpu.compute_capability,
        gpu.driver_version,
        gpu.cuda_version,
    )
}

/// `info` for a person.
pub fn render(hw: &Hardware) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "host      {} ({})", hw.hostname, hw.arch);
    let _ = writeln!(out, "os        {} (kernel {})", hw.os, hw.kernel);
    let physical = hw
        .physical_cores
        .map(|c| c.to_string())
        .unwrap_or_else(|| "?".into());
    let _ = writeln!(
        out,
        "cpu       {} ({physical} cores, {} threads)",
        hw.cpu_model, hw.logical_cores
    );
    let _ = writeln!(out, "memory    {}", gib(hw.memory_total_bytes));
    for disk in &hw.disks {
        let _ = writeln!(
            out,
            "disk      {} {} free of {}",
            disk.mount,
            gib(disk.free_bytes),
            gib(disk.total_bytes)
        );
    }
    if hw.gpus.is_empty() {
        let _ = writeln!(out, "gpus      none (no NVIDIA driver or no NVIDIA GPU)");
    }
    for gpu in &hw.gpus {
        let _ = writeln!(out, "{}", render_gpu(gpu));
    }
    let formats = if hw.model_formats.is_empty() {
        "none in this build".to_owned()
    } else {
        hw.model_formats.join(", ")
    };
    let _ = writeln!(out, "models    {formats}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_has_plausible_figures() {
        let hw = detect();
        assert!(hw.logical_cores >= 1);
        assert!(hw.memory_total_bytes > 100 << 20);
        assert!(!hw.kernel.is_empty());
        assert!(render(&hw).contains("memory"));
    }
}
