//! The node's GPUs: NVML's list (from `telemetry`) and the `gpus` setting.
//! A pure function of the two, so restriction and declaration are tested
//! without a GPU.

use super::Gpu;
use crate::config::{GpuRef, GpuSelection, Origin, Sourced};
use crate::telemetry::hardware::GpuInfo;

/// The name of a GPU the setting declared (NVML cannot tell us one).
pub(super) const DECLARED_NAME: &str = "declared GPU";

/// Where the node's GPU list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// What NVML reports, all or the subset `gpus` names (possibly none).
    Nvml,
    /// NVML reports none; `gpus` declared these.
    Declared,
    /// `gpus: none`.
    Off,
}

/// The GPUs this node may hand out, in index order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub gpus: Vec<Gpu>,
    pub source: Source,
}

/// A `gpus` setting that does not fit this machine; start-up stops on it.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(
        "{setting} names GPU {entry}, but NVML reports {reported}; \
         name GPUs as `nvidia-smi -L` lists them, or leave gpus unset for all of them"
    )]
    NotReported {
        /// The setting as the operator wrote it: `CYBERWAVE_GPUS`, or the
        /// file, line and key.
        setting: String,
        entry: String,
        reported: String,
    },
}

impl Inventory {
    /// Asks NVML (once; absent NVML reports nothing) and applies `setting`.
    pub fn detect(setting: &Sourced<GpuSelection>) -> Result<Inventory, InventoryError> {
        Self::resolve(crate::telemetry::hardware::nvml_gpus(), setting)
    }

    /// The inventory `reported` (NVML's list) and `setting` make.
    pub fn resolve(
        reported: Vec<GpuInfo>,
        setting: &Sourced<GpuSelection>,
    ) -> Result<Inventory, InventoryError> {
        let (gpus, source) = match &setting.value {
            GpuSelection::Off => (Vec::new(), Source::Off),
            GpuSelection::Detected => (reported.iter().map(detected).collect(), Source::Nvml),
            GpuSelection::Only(list) if reported.is_empty() => (declare(list), Source::Declared),
            GpuSelection::Only(list) => (restrict(&reported, list, &setting.origin)?, Source::Nvml),
        };
        Ok(Inventory { gpus, source })
    }

    /// `info`'s GPU lines: NVML's facts for the GPUs the node keeps, and
    /// the declared ones as declared.
    pub fn describe(&self, reported: &[GpuInfo]) -> Vec<GpuInfo> {
        self.gpus
            .iter()
            .map(|gpu| {
                let facts = reported
                    .iter()
                    .find(|r| r.index == gpu.index && r.uuid == gpu.uuid && !gpu.declared);
                match facts {
                    Some(facts) => facts.clone(),
                    None => GpuInfo {
                        index: gpu.index,
                        name: gpu.name.clone(),
                        uuid: gpu.uuid.clone(),
                        memory_total_bytes: gpu.memory_total_bytes,
                        memory_free_bytes: gpu.memory_free_bytes,
                        mig: gpu.mig,
                        declared: gpu.declared,
                        driver_version: String::new(),
                        cuda_version: String::new(),
                        compute_capability: String::new(),
                    },
                }
            })
            .collect()
    }

    /// One line for the start-up log.
    pub fn describe_line(&self) -> String {
        let list = || {
            self.gpus
                .iter()
                .map(|g| match &g.uuid {
                    Some(uuid) => format!("{} {} ({uuid})", g.label(), g.name),
                    None => format!("{} {}", g.label(), g.name),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (self.source, self.gpus.is_empty()) {
            (Source::Off, _) => "GPUs: none (gpus: none)".to_owned(),
            (Source::Nvml, true) => "GPUs: none (NVML reports no GPU)".to_owned(),
            (Source::Nvml, false) => format!("GPUs from NVML: {}", list()),
            (Source::Declared, _) => {
                format!(
                    "GPUs declared by the gpus setting (NVML reports none): {}",
                    list()
                )
            }
        }
    }
}

fn detected(info: &GpuInfo) -> Gpu {
    Gpu {
        index: info.index,
        uuid: info.uuid.clone(),
        name: info.name.clone(),
        memory_total_bytes: info.memory_total_bytes,
        memory_free_bytes: info.memory_free_bytes,
        mig: info.mig,
        declared: false,
    }
}

/// NVML's GPUs that `list` names, in NVML's order; an entry naming none
/// of them is an error.
fn restrict(
    reported: &[GpuInfo],
    list: &[GpuRef],
    origin: &Origin,
) -> Result<Vec<Gpu>, InventoryError> {
    let named = |info: &GpuInfo, entry: &GpuRef| match entry {
        GpuRef::Index(index) => info.index == *index,
        GpuRef::Uuid(uuid) => info
            .uuid
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case(uuid)),
    };
    if let Some(missing) = list
        .iter()
        .find(|entry| !reported.iter().any(|info| named(info, entry)))
    {
        let with_uuids = matches!(missing, GpuRef::Uuid(_));
        return Err(InventoryError::NotReported {
            setting: setting_name(origin),
            entry: missing.to_string(),
            reported: reported_list(reported, with_uuids),
        });
    }
    Ok(reported
        .iter()
        .filter(|info| list.iter().any(|entry| named(info, entry)))
        .map(detected)
        .collect())
}

/// GPUs `list` declares: an index as given, a UUID at the lowest index no
/// other entry takes.
fn declare(list: &[GpuRef]) -> Vec<Gpu> {
    let mut taken: Vec<u32> = list
        .iter()
        .filter_map(|entry| match entry {
            GpuRef::Index(index) => Some(*index),
            GpuRef::Uuid(_) => None,
        })
        .collect();
    let mut gpus: Vec<Gpu> = list
        .iter()
        .map(|entry| {
            let (index, uuid) = match entry {
                GpuRef::Index(index) => (*index, None),
                GpuRef::Uuid(uuid) => {
                    let free = (0..).find(|i| !taken.contains(i)).unwrap_or(u32::MAX);
                    taken.push(free);
                    (free, Some(uuid.clone()))
                }
            };
            let mig = uuid.as_deref().is_some_and(|u| u.starts_with("MIG-"));
            Gpu {
                index,
                uuid,
                name: DECLARED_NAME.to_owned(),
                memory_total_bytes: 0,
                memory_free_bytes: 0,
                mig,
                declared: true,
            }
        })
        .collect();
    gpus.sort_by_key(|g| g.index);
    gpus
}

/// `CYBERWAVE_GPUS`, or `gpus from <file> line <n> (gpus)`.
fn setting_name(origin: &Origin) -> String {
    match origin {
        Origin::Env(var) => (*var).to_owned(),
        Origin::Flag(_)
        | Origin::DotEnv { .. }
        | Origin::Yaml { .. }
        | Origin::Credentials { .. }
        | Origin::Identity { .. }
        | Origin::Default
        | Origin::Derived(_) => format!("gpus from {origin}"),
    }
}

/// `0, 1`, or `0 (GPU-...), 1 (GPU-...)` when the bad entry was a UUID.
fn reported_list(reported: &[GpuInfo], with_uuids: bool) -> String {
    if reported.is_empty() {
        return "none".to_owned();
    }
    let mut entries: Vec<String> = reported
        .iter()
        .map(|info| match (&info.uuid, with_uuids) {
            (Some(uuid), true) => format!("{} ({uuid})", info.index),
            (Some(_) | None, _) => info.index.to_string(),
        })
        .collect();
    entries.dedup();
    entries.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nvml(index: u32, uuid: &str) -> GpuInfo {
        GpuInfo {
            index,
            name: "NVIDIA H100".into(),
            uuid: Some(uuid.into()),
            memory_total_bytes: 80 << 30,
            memory_free_bytes: 79 << 30,
            mig: uuid.starts_with("MIG-"),
            declared: false,
            driver_version: "550.54".into(),
            cuda_version: "12.4".into(),
            compute_capability: "9.0".into(),
        }
    }

    fn two() -> Vec<GpuInfo> {
        vec![nvml(0, "GPU-aaaa"), nvml(1, "GPU-bbbb")]
    }

    /// The setting as CYBERWAVE_GPUS would give it (parsing is config's,
    /// tested there).
    fn env(text: &str) -> Sourced<GpuSelection> {
        let value = match text {
            "all" => GpuSelection::Detected,
            "none" => GpuSelection::Off,
            list => GpuSelection::Only(
                list.split(',')
                    .map(|e| match e.parse() {
                        Ok(index) => GpuRef::Index(index),
                        Err(_) => GpuRef::Uuid(e.to_owned()),
                    })
                    .collect(),
            ),
        };
        Sourced::new(value, Origin::Env("CYBERWAVE_GPUS"))
    }

    fn indexes(inventory: &Inventory) -> Vec<u32> {
        inventory.gpus.iter().map(|g| g.index).collect()
    }

    #[test]
    fn unset_means_every_gpu_nvml_reports() {
        let all = Inventory::resolve(
            two(),
            &Sourced::new(GpuSelection::Detected, Origin::Default),
        );
        let all = all.unwrap();
        assert_eq!(indexes(&all), [0, 1]);
        assert_eq!(all.source, Source::Nvml);
        assert_eq!(all.gpus[1].uuid.as_deref(), Some("GPU-bbbb"));
        assert_eq!(all.gpus[1].memory_free_bytes, 79 << 30);
        assert!(!all.gpus[1].declared);
        let none = Inventory::resolve(Vec::new(), &env("all")).unwrap();
        assert!(none.gpus.is_empty());
        assert!(none.describe_line().contains("NVML reports no GPU"));
    }

    #[test]
    fn none_means_no_gpu_whatever_nvml_reports() {
        let off = Inventory::resolve(two(), &env("none")).unwrap();
        assert!(off.gpus.is_empty());
        assert_eq!(off.source, Source::Off);
    }

    #[test]
    fn a_list_restricts_to_those_by_index_or_uuid_in_nvml_order() {
        let mut reported = two();
        reported.push(nvml(2, "GPU-cccc"));
        let some = Inventory::resolve(reported.clone(), &env("GPU-cccc,0")).unwrap();
        assert_eq!(indexes(&some), [0, 2]);
        assert_eq!(some.source, Source::Nvml);
        let by_case = Inventory::resolve(reported, &env("GPU-BBBB")).unwrap();
        assert_eq!(indexes(&by_case), [1]);
    }

    #[test]
    fn an_index_names_every_mig_instance_of_that_gpu() {
        let reported = vec![
            nvml(0, "MIG-1111"),
            nvml(0, "MIG-2222"),
            nvml(1, "GPU-bbbb"),
        ];
        let gpu0 = Inventory::resolve(reported.clone(), &env("0")).unwrap();
        assert_eq!(gpu0.gpus.len(), 2);
        assert!(gpu0.gpus.iter().all(|g| g.mig));
        let one = Inventory::resolve(reported, &env("MIG-2222")).unwrap();
        assert_eq!(one.gpus[0].id(), "MIG-2222");
    }

    #[test]
    fn a_gpu_nvml_does_not_report_is_named_with_what_it_does() {
        let err = Inventory::resolve(two(), &env("0,5"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("CYBERWAVE_GPUS names GPU 5, but NVML reports 0, 1;"),
            "{err}"
        );
        let err = Inventory::resolve(two(), &env("GPU-ffff"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("names GPU GPU-ffff, but NVML reports 0 (GPU-aaaa), 1 (GPU-bbbb)"),
            "{err}"
        );
        let yaml = Sourced::new(
            env("3").value,
            Origin::Yaml {
                path: "/repo/cyberwave.yml".into(),
                key: "gpus",
                line: Some(4),
            },
        );
        let err = Inventory::resolve(two(), &yaml).unwrap_err().to_string();
        assert!(
            err.starts_with("gpus from /repo/cyberwave.yml line 4 (gpus) names GPU 3"),
            "{err}"
        );
    }

    #[test]
    fn without_nvml_a_list_declares_gpus() {
        let four = Inventory::resolve(Vec::new(), &env("0,1,2,3")).unwrap();
        assert_eq!(four.source, Source::Declared);
        assert_eq!(indexes(&four), [0, 1, 2, 3]);
        assert!(four.gpus.iter().all(|g| g.declared && g.uuid.is_none()));
        assert_eq!(four.gpus[0].name, DECLARED_NAME);
        let mixed = Inventory::resolve(Vec::new(), &env("GPU-x1,0,MIG-y2,3")).unwrap();
        let ids: Vec<String> = mixed.gpus.iter().map(Gpu::id).collect();
        assert_eq!(ids, ["0", "GPU-x1", "MIG-y2", "3"]);
        assert_eq!(indexes(&mixed), [0, 1, 2, 3]);
        assert!(mixed.gpus[2].mig);
        assert!(mixed.describe_line().contains("declared"));
    }

    #[test]
    fn info_describes_kept_gpus_with_nvml_facts_and_declared_ones_plainly() {
        let reported = two();
        let kept = Inventory::resolve(reported.clone(), &env("1")).unwrap();
        assert_eq!(kept.describe(&reported), vec![reported[1].clone()]);
        let declared = Inventory::resolve(Vec::new(), &env("2")).unwrap();
        let lines = declared.describe(&[]);
        assert!(lines[0].declared && lines[0].index == 2 && lines[0].driver_version.is_empty());
    }
}
