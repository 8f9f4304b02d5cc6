//! The periodic metrics sample, published on `.../metrics` and kept for
//! `status` and the heartbeat. One [`Sampler`] lives as long as the node, so
//! CPU percentages and network rates are over the interval, not since boot.

use std::time::Instant;

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::Nvml;
use serde_json::{json, Value};
use sysinfo::{Networks, System};

/// The node's own figures since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NodeFigures {
    pub uptime_seconds: u64,
    pub workloads_started: u64,
    pub workloads_completed: u64,
    pub workloads_failed: u64,
    pub workloads_cancelled: u64,
    pub workload_seconds: f64,
}

pub struct Sampler {
    system: System,
    networks: Networks,
    nvml: Option<Nvml>,
    last: Instant,
}

impl Sampler {
    /// `None` where the system figures cannot be read at all.
    pub fn new() -> Option<Sampler> {
        let made = System::new().and_then(|s| Ok((s, Networks::new_with_refreshed_list()?)));
        let (mut system, networks) = match made {
            Ok(parts) => parts,
            Err(e) => {
                tracing::warn!("metrics are off: cannot read the system figures ({e})");
                return None;
            }
        };
        system.refresh_cpu_usage();
        Some(Sampler {
            system,
            networks,
            nvml: super::nvml(),
            last: Instant::now(),
        })
    }

    /// GPU memory per process (pid → bytes), where NVML reports it.
    pub fn gpu_memory_by_pid(&self) -> std::collections::HashMap<u32, u64> {
        use nvml_wrapper::enums::device::UsedGpuMemory;
        let mut by_pid = std::collections::HashMap::new();
        let Some(nvml) = &self.nvml else {
            return by_pid;
        };
        for index in 0..nvml.device_count().unwrap_or(0) {
            let Ok(device) = nvml.device_by_index(index) else {
                continue;
            };
            for process in device.running_compute_processes().unwrap_or_default() {
                if let UsedGpuMemory::Used(bytes) = process.used_gpu_memory {
                    *by_pid.entry(process.pid).or_default() += bytes;
                }
            }
        }
        by_pid
    }

    /// One sample; CPU and network figures cover the time since the last one.
    pub fn sample(&mut self, node: &NodeFigures) -> Value {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.networks.refresh(true);
        let seconds = self.last.elapsed().as_secs_f64().max(0.001);
        self.last = Instant::now();
        let (rx, tx) = self.networks.iter().fold((0u64, 0u64), |(rx, tx), (_, n)| {
            (rx + n.received(), tx + n.transmitted())
        });
        let load = System::load_average().unwrap_or_default();
        let round = |x: f32| (f64::from(x) * 10.0).round() / 10.0;
        json!({
            "ts": crate::protocol::now_rfc3339(),
            "cpu": {
                "percent": round(self.system.global_cpu_usage()),
                "per_core": self.system.cpus().iter().map(|c| round(c.usage())).collect::<Vec<_>>(),
            },
            "load_average": [load.one, load.five, load.fifteen],
            "memory": {
                "total_bytes": self.system.total_memory(),
                "used_bytes": self.system.used_memory(),
                "available_bytes": self.system.available_memory(),
            },
            "swap": {"total_bytes": self.system.total_swap(), "used_bytes": self.system.used_swap()},
            "network": {
                "rx_bytes_per_second": (rx as f64 / seconds).round(),
                "tx_bytes_per_second": (tx as f64 / seconds).round(),
            },
            "disks": super::hardware::disks()
                .into_iter()
                .map(|d| json!({"mount": d.mount, "free_bytes": d.free_bytes, "total_bytes": d.total_bytes}))
                .collect::<Vec<_>>(),
            "gpus": self.nvml.as_ref().map(gpu_figures).unwrap_or_default(),
            "node": {
                "uptime_seconds": node.uptime_seconds,
                "workloads_started": node.workloads_started,
                "workloads_completed": node.workloads_completed,
                "workloads_failed": node.workloads_failed,
                "workloads_cancelled": node.workloads_cancelled,
                "workload_seconds": (node.workload_seconds * 10.0).round() / 10.0,
            },
        })
    }
}

fn gpu_figures(nvml: &Nvml) -> Vec<Value> {
    (0..nvml.device_count().unwrap_or(0))
        .filter_map(|index| {
            let device = nvml.device_by_index(index).ok()?;
            Some(json!({
                "index": index,
                "utilization_percent": device.utilization_rates().ok().map(|u| u.gpu),
                "memory_used_bytes": device.memory_info().ok().map(|m| m.used),
                "temperature_celsius": device.temperature(TemperatureSensor::Gpu).ok(),
                "power_watts": device.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
            }))
        })
        .collect()
}

/// The few figures the heartbeat carries.
pub fn summary(sample: &Value) -> Value {
    json!({
        "cpu_percent": sample["cpu"]["percent"],
        "memory_used_bytes": sample["memory"]["used_bytes"],
        "gpus": sample["gpus"].as_array().map(Vec::len).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_has_plausible_values() {
        let mut sampler = Sampler::new().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let sample = sampler.sample(&NodeFigures::default());
        let percent = sample["cpu"]["percent"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&percent));
        assert!(!sample["cpu"]["per_core"].as_array().unwrap().is_empty());
        assert!(sample["memory"]["available_bytes"].as_u64().unwrap() > 0);
        assert!(sample["network"]["rx_bytes_per_second"].as_f64().unwrap() >= 0.0);
        assert_eq!(
            summary(&sample)["gpus"],
            sample["gpus"].as_array().unwrap().len()
        );
    }
}
