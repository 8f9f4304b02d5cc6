//! Where a workload's files live, and the file-name form of a request_id.
//!
//! Every file of a workload is `workload_logs/<type>_<rid>.<suffix>`, where
//! `<rid>` is the request_id's file-name form ([`rid`], in `fsutil::names`,
//! which deployments use too).

use std::path::{Path, PathBuf};

pub use crate::fsutil::names::rid;
pub use crate::supervised::logs_dir;
use crate::supervised::UnitFiles;

/// All files of one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadPaths {
    /// The shim's files, and the stem the workload's own ones share.
    unit: UnitFiles,
}

impl WorkloadPaths {
    pub fn new(logs_dir: &Path, workload_type: &str, request_id: &str) -> WorkloadPaths {
        WorkloadPaths {
            unit: UnitFiles::new(logs_dir, &format!("{workload_type}_{}", rid(request_id))),
        }
    }

    /// Rebuilds the paths from a record file `<base>.record.json`.
    pub fn from_record_file(path: &Path) -> Option<WorkloadPaths> {
        let name = path.file_name()?.to_str()?.strip_suffix(".record.json")?;
        Some(WorkloadPaths {
            unit: UnitFiles::new(path.parent()?, name),
        })
    }

    /// `<type>_<rid>`, the stem every file shares.
    pub fn base(&self) -> &Path {
        self.unit.base()
    }

    fn with(&self, suffix: &str) -> PathBuf {
        self.unit.with(suffix)
    }

    pub fn stdout(&self) -> PathBuf {
        self.unit.stdout()
    }
    pub fn stderr(&self) -> PathBuf {
        self.unit.stderr()
    }
    /// The params JSON (`{params_file}`, `CYBERWAVE_PARAMS_FILE`).
    pub fn params(&self) -> PathBuf {
        self.with(".params.json")
    }
    /// Where the workload may write its result (`CYBERWAVE_RESULT_FILE`).
    pub fn result(&self) -> PathBuf {
        self.with(".result.json")
    }
    /// JSON lines of progress (`CYBERWAVE_PROGRESS_FILE`).
    pub fn progress(&self) -> PathBuf {
        self.with(".progress.jsonl")
    }
    /// The node's record of the workload.
    pub fn record(&self) -> PathBuf {
        self.with(".record.json")
    }
    pub fn started(&self) -> PathBuf {
        self.unit.started()
    }
    pub fn exit(&self) -> PathBuf {
        self.unit.exit()
    }
    /// How far live output and progress have been published.
    pub fn offsets(&self) -> PathBuf {
        self.with(".offsets.json")
    }

    /// Every file of the workload, for retention.
    pub fn all(&self) -> Vec<PathBuf> {
        vec![
            self.stdout(),
            self.stderr(),
            self.params(),
            self.result(),
            self.progress(),
            self.started(),
            self.exit(),
            self.offsets(),
            self.record(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_kept() {
        assert_eq!(rid("r-1.ok_X"), "r-1.ok_X");
        assert_eq!(rid(&"a".repeat(128)), "a".repeat(128));
    }

    #[test]
    fn hostile_ids_stay_inside_the_dir_and_apart() {
        for id in [
            "..",
            ".",
            "../../etc/passwd",
            "a/b",
            "",
            "x y",
            "é",
            &"a".repeat(129),
        ] {
            let r = rid(id);
            assert!(
                !r.contains('/') && r != "." && r != ".." && !r.is_empty(),
                "{id:?} -> {r:?}"
            );
            let paths = WorkloadPaths::new(Path::new("/c/workload_logs"), "training", id);
            assert_eq!(paths.stdout().parent(), Some(Path::new("/c/workload_logs")));
        }
        let kib = "é/".repeat(341);
        assert!(rid(&kib).len() <= 81, "{}", rid(&kib).len());
        assert_ne!(rid(&kib), rid(&"é/".repeat(340)));
        assert_ne!(rid("a/b"), rid("a_b"));
        assert_ne!(rid("a/b"), rid("a\\b"));
    }

    #[test]
    fn record_file_round_trip() {
        let paths = WorkloadPaths::new(Path::new("/d"), "inference", "r1");
        assert_eq!(
            WorkloadPaths::from_record_file(&paths.record()),
            Some(paths.clone())
        );
        assert_eq!(paths.stdout(), Path::new("/d/inference_r1.stdout.log"));
    }
}
