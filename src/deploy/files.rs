//! The files of one deployment, in `<config dir>/deployments/`:
//!
//! - `<id>.json`: the node's record (what was asked, the processes, what has
//!   been reported); it is how a restarted node finds its deployments.
//! - `<id>.spec.json`: what the model server loads, written by the node.
//! - `<id>.state.json`: written by the model server: `ready` with the specs,
//!   or `failed` with the loader's error.
//! - `<id>.sock`: the model server's Unix socket; `<hash>.sock` when the
//!   config dir is too long for that (a socket path has at most 107 bytes).
//!
//! The server's output goes to `workload_logs/deploy_<id>.stdout.log` and
//! `.stderr.log`, next to the supervisor's exit file, like a workload's.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::fsutil::names::{fnv1a, rid};
use crate::fsutil::{load_json, write_json};
use crate::protocol::Event;
use crate::supervised::StartedFile;
use crate::supervised::{logs_dir, UnitFiles};

/// The longest Unix socket path: `sun_path` holds 108 bytes with its NUL.
const MAX_SOCKET_PATH: usize = 107;

/// The directory of every deployment's files.
pub fn deployments_dir(config_dir: &Path) -> PathBuf {
    config_dir.join("deployments")
}

/// Where one deployment's files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployPaths {
    dir: PathBuf,
    name: String,
    /// The supervisor's files and the server's logs.
    pub supervised: UnitFiles,
}

impl DeployPaths {
    pub fn new(config_dir: &Path, deployment_id: &str) -> DeployPaths {
        let logs = logs_dir(config_dir);
        DeployPaths {
            dir: deployments_dir(config_dir),
            name: rid(deployment_id),
            supervised: UnitFiles::new(&logs, &format!("deploy_{}", rid(deployment_id))),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn record(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.name))
    }
    pub fn spec(&self) -> PathBuf {
        self.dir.join(format!("{}.spec.json", self.name))
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join(format!("{}.state.json", self.name))
    }
    pub fn socket(&self) -> PathBuf {
        let named = self.dir.join(format!("{}.sock", self.name));
        if named.as_os_str().len() <= MAX_SOCKET_PATH {
            return named;
        }
        let hash = fnv1a(self.name.as_bytes());
        self.dir.join(format!("{hash:016x}.sock"))
    }
    /// The outbox name of one event of this deployment: with the deploy's
    /// request_id, so a redeploy under the same id never overwrites an
    /// event of the earlier one that still waits for its ack.
    pub fn event_name(&self, request_id: &str, event: Event) -> String {
        format!("deploy_{}_{}.{event}", self.name, rid(request_id))
    }
}

/// What the model server is told to load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploySpec {
    pub deployment_id: String,
    /// Resolved and checked against `model_roots` by the node.
    pub model: PathBuf,
    pub format: Option<String>,
    #[serde(default)]
    pub options: Map<String, Value>,
    pub socket: PathBuf,
    pub state_file: PathBuf,
    #[serde(default)]
    pub onnxruntime_path: Option<PathBuf>,
}

/// What the model server writes once loading has succeeded or failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum ServerState {
    /// `model` is [`crate::runners::Model::describe`] plus `pid`, `loaded_at`.
    Ready {
        model: Value,
    },
    Failed {
        error: String,
    },
}

/// Where a deployment stands, as the node records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployState {
    /// The server is loading the model.
    Starting,
    Ready,
    /// `undeploy` was asked; the server is on its way out.
    Stopping,
    Stopped,
    Failed,
}

impl DeployState {
    pub fn name(self) -> &'static str {
        match self {
            DeployState::Starting => "starting",
            DeployState::Ready => "ready",
            DeployState::Stopping => "stopping",
            DeployState::Stopped => "stopped",
            DeployState::Failed => "failed",
        }
    }

    /// Whether a server process may still be alive.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            DeployState::Starting | DeployState::Ready | DeployState::Stopping
        )
    }
}

/// The node's record of one deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub deployment_id: String,
    /// The `deploy` command's request_id: its events go there.
    pub request_id: String,
    pub model: PathBuf,
    pub format: Option<String>,
    pub options: Map<String, Value>,
    pub state: DeployState,
    pub created_unix_ms: u64,
    pub supervisor_pid: Option<i32>,
    pub supervisor_start_time: Option<u64>,
    pub pid: Option<i32>,
    pub start_time: Option<u64>,
    /// What the server reported when ready (specs, memory, format).
    #[serde(default)]
    pub loaded: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub ended_unix_ms: Option<u64>,
    /// The GPUs its server holds (their ids); `None`: it asked for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Vec<String>>,
}

impl DeploymentRecord {
    pub fn save(&self, paths: &DeployPaths) -> std::io::Result<()> {
        write_json(&paths.record(), self)
    }

    /// Saves the record; a failure is logged with what it costs (the node
    /// keeps serving from memory; a restarted one sees the older record).
    pub fn save_or_log(&self, paths: &DeployPaths) {
        if let Err(e) = self.save(paths) {
            tracing::warn!(
                deployment_id = %self.deployment_id,
                "cannot save the deployment record {}: {e}; the node goes on, but after a restart it would see the deployment as it was before ({}); check free space and permissions of the config dir",
                paths.record().display(),
                self.state.name()
            );
        }
    }

    /// The model server's process under its shim, once reported.
    pub fn process(&self) -> Option<StartedFile> {
        StartedFile::from_ids(
            self.supervisor_pid.zip(self.supervisor_start_time),
            self.pid.zip(self.start_time),
            self.created_unix_ms,
            None,
        )
    }

    /// Fills in what the shim reported.
    pub fn apply_started(&mut self, started: &StartedFile) {
        self.pid = Some(started.pid);
        self.start_time = Some(started.start_time);
        self.supervisor_pid = Some(started.supervisor_pid);
        self.supervisor_start_time = Some(started.supervisor_start_time);
    }
}

/// Every record in the deployments dir, skipping (and naming) broken ones.
pub fn scan(config_dir: &Path) -> Vec<(DeployPaths, DeploymentRecord)> {
    let dir = deployments_dir(config_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for path in entries.flatten().map(|e| e.path()) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let is_record = name.ends_with(".json")
            && !name.ends_with(".spec.json")
            && !name.ends_with(".state.json")
            && !name.starts_with('.');
        if !is_record {
            continue;
        }
        match load_json::<DeploymentRecord>(&path) {
            Ok(Some(record)) => {
                let paths = DeployPaths::new(config_dir, &record.deployment_id);
                found.push((paths, record));
            }
            Ok(None) => {}
            Err(problem) => tracing::warn!("skipping a deployment record: {problem}"),
        }
    }
    found.sort_by_key(|(_, r)| r.created_unix_ms);
    found
}

/// A file of a new deployment (`what`, in `dir`) could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {what} in {}: {source}; check free space and permissions of the config dir", dir.display())]
pub struct FilesError {
    what: &'static str,
    dir: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Writes the record and the spec of a new deployment, clearing the files
/// an ended deployment of the same id left.
pub fn prepare_files(
    paths: &DeployPaths,
    record: &DeploymentRecord,
    spec: &DeploySpec,
) -> Result<(), FilesError> {
    let fail = |what: &'static str, source: std::io::Error| FilesError {
        what,
        dir: paths.dir().to_owned(),
        source,
    };
    crate::fsutil::create_private_dir(paths.dir()).map_err(|e| fail("the deployments dir", e))?;
    if let Some(logs) = paths.supervised.base().parent() {
        crate::fsutil::create_private_dir(logs).map_err(|e| fail("the workload log dir", e))?;
    }
    remove_files(paths);
    write_json(&paths.spec(), spec).map_err(|e| fail("the deployment spec", e))?;
    record
        .save(paths)
        .map_err(|e| fail("the deployment record", e))
}

/// Every file of a deployment but its logs.
pub fn remove_files(paths: &DeployPaths) {
    for path in [
        paths.record(),
        paths.spec(),
        paths.state(),
        paths.socket(),
        paths.supervised.started(),
        paths.supervised.exit(),
    ] {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_fit_a_unix_socket() {
        let id = "d".repeat(64);
        let short = DeployPaths::new(Path::new("/c"), &id);
        assert_eq!(
            short.socket(),
            Path::new("/c/deployments").join(format!("{id}.sock"))
        );
        let deep = Path::new("/home/a-rather-long-user-name/projects/cyberwave/.cyberwave");
        let long = DeployPaths::new(deep, &id);
        assert!(long.socket().as_os_str().len() <= MAX_SOCKET_PATH);
        assert_eq!(long.socket().parent(), Some(long.dir()));
        assert_ne!(long.socket(), DeployPaths::new(deep, "other").socket());
    }
}
