//! The node's deployments: starting model servers, learning when they are
//! ready or gone, stopping them, and forwarding `infer` to their sockets.
//! Owned by the node task like [`crate::workload::Workloads`]; everything
//! slow runs in spawned tasks that report back as [`DeployEvent`]s.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::files::{
    prepare_files, remove_files, scan, DeployPaths, DeploySpec, DeployState, DeploymentRecord,
    ServerState,
};
use super::listing::{format_of, listing};
use super::{request, wire};
use crate::protocol::Event;
use crate::supervised::{launch, procfs, watch};
use crate::workload::output;
use crate::workload::record::{now_unix_ms, read_json, ExitFile, StartedFile};
use crate::workload::template::shell_quote;

/// How long a stopping model server gets before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long `deployments` waits for each server's figures.
const INFO_TIMEOUT: Duration = Duration::from_secs(2);

/// What the deployments need from the node's settings.
#[derive(Debug, Clone)]
pub struct DeployConfig {
    pub config_dir: PathBuf,
    pub working_dir: PathBuf,
    pub model_roots: Vec<PathBuf>,
    pub onnxruntime_path: Option<PathBuf>,
    /// The node's own binary: it serves the models.
    pub exe: PathBuf,
    /// The shim every model server runs under.
    pub shim: PathBuf,
    /// The environment a model server starts with (secrets withheld).
    pub base_env: Vec<(String, String)>,
}

/// Progress reported back to the node task.
#[derive(Debug)]
pub enum DeployEvent {
    Launched {
        deployment_id: String,
        outcome: Result<StartedFile, String>,
    },
    /// The server wrote its state file.
    Loaded {
        deployment_id: String,
        state: ServerState,
    },
    /// The supervisor (and so the server) is gone.
    Exited {
        deployment_id: String,
    },
    StopDeadline {
        deployment_id: String,
    },
    /// A streamed piece of an `infer` (a `token` event).
    Streamed {
        request_id: String,
        output: Value,
    },
    /// The one response of an `infer` or `deployments` command.
    Answer {
        request_id: String,
        outcome: Result<Value, String>,
    },
}

/// An event the node must publish durably on a deploy request_id.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub request_id: String,
    /// Unique per event, for the outbox.
    pub outbox_name: String,
    pub event: Event,
    pub output: Value,
    pub error: Option<String>,
}

pub struct Deployments {
    config: DeployConfig,
    entries: HashMap<String, (DeployPaths, DeploymentRecord)>,
    events: mpsc::UnboundedSender<DeployEvent>,
}

impl Deployments {
    /// Loads the records of earlier runs and watches what still runs.
    pub fn open(config: DeployConfig, events: mpsc::UnboundedSender<DeployEvent>) -> Deployments {
        let mut deployments = Deployments {
            entries: HashMap::new(),
            config,
            events,
        };
        for (paths, mut record) in scan(&deployments.config.config_dir) {
            if record.supervisor_pid.is_none() {
                // The node died between the launch and saving the pids: the
                // supervisor's started file has them.
                if let Ok(Some(started)) = read_json::<StartedFile>(&paths.supervised.started()) {
                    apply_started(&mut record, &started);
                    let _ = record.save(&paths);
                }
            }
            if record.state.is_active() {
                tracing::info!(pid = ?record.pid, "reconnecting to deployment {} ({})", record.deployment_id, record.state.name());
                deployments.watch(&paths, &record);
            }
            deployments
                .entries
                .insert(record.deployment_id.clone(), (paths, record));
        }
        deployments
    }

    /// Checks a `deploy` and starts its server; `Launched` follows.
    pub fn deploy(&mut self, request_id: &str, params: &Map<String, Value>) -> Result<(), String> {
        if let Some((_, existing)) = self
            .entries
            .values()
            .find(|(_, r)| r.request_id == request_id)
        {
            return Err(format!(
                "request_id {request_id} already started deployment {} (state {}); a redelivered deploy never starts a second server",
                existing.deployment_id,
                existing.state.name()
            ));
        }
        let config = &self.config;
        let checked = request::deploy(params, &config.working_dir, &config.model_roots, || {
            format!("d-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
        })?;
        if let Some((_, existing)) = self.entries.get(&checked.deployment_id) {
            if existing.state.is_active() {
                return Err(format!(
                    "deployment {} already exists (state {}, model {}); undeploy it first or choose another deployment_id",
                    existing.deployment_id,
                    existing.state.name(),
                    existing.model.display()
                ));
            }
        }
        let paths = DeployPaths::new(&config.config_dir, &checked.deployment_id);
        let record = DeploymentRecord {
            deployment_id: checked.deployment_id.clone(),
            request_id: request_id.to_owned(),
            model: checked.model.clone(),
            format: checked.format.clone(),
            options: checked.options.clone(),
            state: DeployState::Starting,
            created_unix_ms: now_unix_ms(),
            supervisor_pid: None,
            supervisor_start_time: None,
            pid: None,
            start_time: None,
            loaded: None,
            error: None,
            ended_unix_ms: None,
        };
        let spec = DeploySpec {
            deployment_id: checked.deployment_id.clone(),
            model: checked.model,
            format: checked.format,
            options: checked.options,
            socket: paths.socket(),
            state_file: paths.state(),
            onnxruntime_path: config.onnxruntime_path.clone(),
        };
        prepare_files(&paths, &record, &spec)?;
        self.spawn_launch(&paths, &spec);
        self.entries
            .insert(record.deployment_id.clone(), (paths, record));
        Ok(())
    }

    fn spawn_launch(&self, paths: &DeployPaths, spec: &DeploySpec) {
        let command = format!(
            "exec {} {} {}",
            shell_quote(&self.config.exe.to_string_lossy()),
            super::server::MODE,
            shell_quote(&paths.spec().to_string_lossy())
        );
        let (shim, cwd, env) = (
            self.config.shim.clone(),
            self.config.working_dir.clone(),
            self.config.base_env.clone(),
        );
        let (supervised, events, id) = (
            paths.supervised.clone(),
            self.events.clone(),
            spec.deployment_id.clone(),
        );
        tokio::spawn(async move {
            let outcome = launch::spawn(launch::Spec {
                shim: &shim,
                base: supervised.base(),
                cwd: &cwd,
                command: &command,
                env,
                cgroup: None,
            })
            .await
            .map_err(|e| e.to_string());
            let child = match outcome {
                Ok((started, child)) => {
                    let _ = events.send(DeployEvent::Launched {
                        deployment_id: id.clone(),
                        outcome: Ok(started),
                    });
                    child
                }
                Err(error) => {
                    let _ = events.send(DeployEvent::Launched {
                        deployment_id: id,
                        outcome: Err(error),
                    });
                    return;
                }
            };
            // Reaps the supervisor; `watch` reports its exit.
            let _ = child.wait_with_output().await;
        });
    }

    /// The `deploy` request_id of a deployment.
    pub fn request_id_of(&self, deployment_id: &str) -> Option<String> {
        self.entries
            .get(deployment_id)
            .map(|(_, r)| r.request_id.clone())
    }

    /// The `started` response, or the launch error.
    pub fn on_launched(
        &mut self,
        deployment_id: &str,
        outcome: Result<StartedFile, String>,
    ) -> Result<Value, String> {
        let Some((paths, record)) = self.entries.get_mut(deployment_id) else {
            return Err(format!(
                "deployment {deployment_id} vanished while starting"
            ));
        };
        match outcome {
            Ok(started) => {
                apply_started(record, &started);
                let _ = record.save(paths);
                let (paths, record) = (paths.clone(), record.clone());
                self.watch(&paths, &record);
                Ok(json!({
                    "message": format!("Deployment {deployment_id} is loading {}", record.model.display()),
                    "deployment_id": deployment_id,
                    "model": record.model,
                    "pid": started.pid,
                    "stdout_log": paths.supervised.stdout(),
                    "stderr_log": paths.supervised.stderr(),
                }))
            }
            Err(error) => {
                record.state = DeployState::Failed;
                record.error = Some(error.clone());
                record.ended_unix_ms = Some(now_unix_ms());
                let _ = record.save(paths);
                Err(format!("the model server could not be started: {error}"))
            }
        }
    }

    /// Watches the supervisor's exit and, while loading, the state file.
    fn watch(&self, paths: &DeployPaths, record: &DeploymentRecord) {
        let id = record.deployment_id.clone();
        let events = self.events.clone();
        let supervisor = record.supervisor_pid.zip(record.supervisor_start_time);
        let exited = id.clone();
        let exit_events = events.clone();
        tokio::spawn(async move {
            match supervisor {
                Some((pid, start)) => watch::process_exit(pid, start).await,
                None => tokio::time::sleep(Duration::from_secs(2)).await,
            }
            let _ = exit_events.send(DeployEvent::Exited {
                deployment_id: exited,
            });
        });
        if record.state == DeployState::Starting {
            let state_file = paths.state();
            tokio::spawn(async move {
                let mut pause = Duration::from_millis(2);
                loop {
                    if let Ok(Some(state)) = read_json::<ServerState>(&state_file) {
                        let _ = events.send(DeployEvent::Loaded {
                            deployment_id: id,
                            state,
                        });
                        return;
                    }
                    if events.is_closed() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
            });
        }
    }

    /// The `ready` or `failed` event of a server that finished loading.
    pub fn on_loaded(&mut self, deployment_id: &str, state: ServerState) -> Option<Report> {
        let (paths, record) = self.entries.get_mut(deployment_id)?;
        if record.state != DeployState::Starting {
            return None;
        }
        let report = match state {
            ServerState::Ready { model } => {
                record.state = DeployState::Ready;
                record.loaded = Some(model.clone());
                report(paths, record, Event::Ready, model, None)
            }
            ServerState::Failed { error } => {
                record.state = DeployState::Failed;
                record.error = Some(error.clone());
                record.ended_unix_ms = Some(now_unix_ms());
                let output = json!({"deployment_id": deployment_id, "model": record.model});
                report(paths, record, Event::Failed, output, Some(error))
            }
        };
        let _ = record.save(paths);
        Some(report)
    }

    /// A server is gone: `stopped` after an undeploy, `failed` otherwise
    /// (unless its failure was already reported).
    pub fn on_exited(&mut self, deployment_id: &str) -> Option<Report> {
        let (paths, record) = self.entries.get_mut(deployment_id)?;
        if !record.state.is_active() {
            return None;
        }
        let _ = std::fs::remove_file(paths.socket());
        let exit = read_json::<ExitFile>(&paths.supervised.exit())
            .ok()
            .flatten();
        record.ended_unix_ms = Some(now_unix_ms());
        let output = json!({
            "deployment_id": deployment_id,
            "model": record.model,
            "pid": record.pid,
            "exit_code": exit.as_ref().and_then(|e| e.exit_code),
            "signal": exit.as_ref().and_then(|e| e.signal.clone()),
            "stderr_tail": output::tail(&paths.supervised.stderr(), 4096),
        });
        let report = match record.state {
            DeployState::Stopping => {
                record.state = DeployState::Stopped;
                report(paths, record, Event::Stopped, output, None)
            }
            state => {
                let loader_error = match read_json::<ServerState>(&paths.state()) {
                    Ok(Some(ServerState::Failed { error })) if state == DeployState::Starting => {
                        Some(error)
                    }
                    _ => None,
                };
                let error = loader_error.unwrap_or_else(|| {
                    let when = if state == DeployState::Starting {
                        "while loading the model"
                    } else {
                        "unexpectedly"
                    };
                    format!(
                        "the model server stopped {when} ({}); see {}",
                        describe_exit(exit.as_ref()),
                        paths.supervised.stderr().display()
                    )
                });
                tracing::warn!(deployment_id, "{error}");
                record.state = DeployState::Failed;
                record.error = Some(error.clone());
                report(paths, record, Event::Failed, output, Some(error))
            }
        };
        let _ = record.save(paths);
        Some(report)
    }

    /// `undeploy`: stops a running server, or forgets an ended deployment.
    pub fn undeploy(&mut self, params: &Map<String, Value>) -> Result<Value, String> {
        let id = request::deployment_id(params)?;
        let known = self.known_ids();
        let Some((paths, record)) = self.entries.get_mut(&id) else {
            return Err(format!(
                "no deployment {id} on this node (deployments: {known})"
            ));
        };
        if !record.state.is_active() {
            let (paths, record) = self.entries.remove(&id).expect("present");
            remove_files(&paths);
            return Ok(
                json!({"message": format!("Deployment {id} removed (it was {})", record.state.name()), "deployment_id": id, "state": "removed"}),
            );
        }
        if record.state != DeployState::Stopping {
            record.state = DeployState::Stopping;
            let _ = record.save(paths);
            signal_server(record, Signal::SIGTERM);
            let (events, deployment_id) = (self.events.clone(), id.clone());
            tokio::spawn(async move {
                tokio::time::sleep(STOP_GRACE).await;
                let _ = events.send(DeployEvent::StopDeadline { deployment_id });
            });
        }
        Ok(json!({
            "message": format!("Deployment {id} is stopping"),
            "deployment_id": id,
            "state": "stopping",
            "pid": record.pid,
        }))
    }

    pub fn on_stop_deadline(&mut self, deployment_id: &str) {
        if let Some((_, record)) = self.entries.get(deployment_id) {
            if record.state == DeployState::Stopping {
                tracing::warn!(
                    deployment_id,
                    "the model server ignored SIGTERM for {} s; sending SIGKILL",
                    STOP_GRACE.as_secs()
                );
                signal_server(record, Signal::SIGKILL);
            }
        }
    }

    /// Forwards an `infer` to its server; the answer comes as `Answer`.
    pub fn infer(&self, request_id: &str, params: &Map<String, Value>) -> Result<(), String> {
        let id = request::deployment_id(params)?;
        let timeout = request::infer_timeout(params)?;
        let Some((paths, record)) = self.entries.get(&id) else {
            return Err(format!(
                "no deployment {id} on this node (deployments: {})",
                self.known_ids()
            ));
        };
        match record.state {
            DeployState::Ready => {}
            DeployState::Starting => {
                return Err(format!(
                    "deployment {id} is still loading its model; wait for its ready event"
                ))
            }
            DeployState::Failed => {
                return Err(format!(
                    "deployment {id} failed: {}",
                    record.error.as_deref().unwrap_or("unknown error")
                ))
            }
            state => {
                return Err(format!(
                    "deployment {id} is {}; deploy it again to use it",
                    state.name()
                ))
            }
        }
        let mut forwarded = params.clone();
        forwarded.remove("deployment_id");
        forwarded.remove("timeout_seconds");
        let call = json!({"op": "infer", "request": forwarded});
        let (socket, events, request_id) =
            (paths.socket(), self.events.clone(), request_id.to_owned());
        tokio::spawn(async move {
            let (stream_events, stream_id) = (events.clone(), request_id.clone());
            let on_event = move |output: Value| {
                let request_id = stream_id.clone();
                let _ = stream_events.send(DeployEvent::Streamed { request_id, output });
            };
            let outcome = wire::call_streaming(&socket, &call, timeout, on_event)
                .await
                .and_then(|reply| {
                    if reply["ok"] == true {
                        let mut output = reply["output"].clone();
                        output["deployment_id"] = json!(id);
                        Ok(output)
                    } else {
                        Err(reply["error"]
                            .as_str()
                            .unwrap_or("the model server refused the request")
                            .to_owned())
                    }
                });
            let _ = events.send(DeployEvent::Answer {
                request_id,
                outcome,
            });
        });
        Ok(())
    }

    /// Lists every deployment with its server's figures; answers as `Answer`.
    pub fn list(&self, request_id: &str) {
        let mut entries: Vec<(PathBuf, DeploymentRecord)> = self
            .entries
            .values()
            .map(|(p, r)| (p.socket(), r.clone()))
            .collect();
        entries.sort_by_key(|(_, r)| r.created_unix_ms);
        let (events, request_id) = (self.events.clone(), request_id.to_owned());
        tokio::spawn(async move {
            let mut queries = tokio::task::JoinSet::new();
            for (index, (socket, record)) in entries.into_iter().enumerate() {
                queries.spawn(async move {
                    let info = match record.state {
                        DeployState::Ready => {
                            wire::call(&socket, &json!({"op": "info"}), INFO_TIMEOUT)
                                .await
                                .ok()
                        }
                        _ => None,
                    };
                    (index, listing(&record, info.as_ref().map(|i| &i["info"])))
                });
            }
            let mut list = Vec::new();
            while let Some(Ok(row)) = queries.join_next().await {
                list.push(row);
            }
            list.sort_by_key(|(index, _)| *index);
            let list: Vec<Value> = list.into_iter().map(|(_, row)| row).collect();
            let _ = events.send(DeployEvent::Answer {
                request_id,
                outcome: Ok(json!({"deployments": list})),
            });
        });
    }

    /// The `deployments` summary of `status`.
    pub fn summary(&self) -> Vec<Value> {
        let mut records: Vec<&DeploymentRecord> = self.entries.values().map(|(_, r)| r).collect();
        records.sort_by_key(|r| r.created_unix_ms);
        records
            .iter()
            .map(|r| json!({"deployment_id": r.deployment_id, "model": r.model, "format": format_of(r), "state": r.state.name(), "pid": r.pid}))
            .collect()
    }

    fn known_ids(&self) -> String {
        let mut ids: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        ids.sort_unstable();
        if ids.is_empty() {
            "none".into()
        } else {
            ids.join(", ")
        }
    }
}

fn apply_started(record: &mut DeploymentRecord, started: &StartedFile) {
    record.pid = Some(started.pid);
    record.start_time = Some(started.start_time);
    record.supervisor_pid = Some(started.supervisor_pid);
    record.supervisor_start_time = Some(started.supervisor_start_time);
}

fn report(
    paths: &DeployPaths,
    record: &DeploymentRecord,
    event: Event,
    mut output: Value,
    error: Option<String>,
) -> Report {
    output["deployment_id"] = json!(record.deployment_id);
    Report {
        request_id: record.request_id.clone(),
        outbox_name: paths.event_name(&record.request_id, event),
        event,
        output,
        error,
    }
}

fn describe_exit(exit: Option<&ExitFile>) -> String {
    match exit {
        Some(ExitFile {
            signal: Some(signal),
            ..
        }) => format!("killed by {signal}"),
        Some(ExitFile {
            exit_code: Some(code),
            ..
        }) => format!("exit code {code}"),
        _ => "no exit status recorded: its supervisor died too".into(),
    }
}

/// Signals the server's process group, only if it is still the process
/// this node started (pid and start time), never a recycled pid.
fn signal_server(record: &DeploymentRecord, signal: Signal) {
    if let (Some(pid), Some(start)) = (record.pid, record.start_time) {
        if procfs::is_same_process(pid, start) {
            let _ = kill(Pid::from_raw(-pid), signal);
        }
    }
}
