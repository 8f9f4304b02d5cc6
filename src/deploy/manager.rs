//! The node's deployments: starting model servers, learning when they are
//! ready or gone, and stopping them; `infer` and the listings are in
//! [`super::calls`]. Owned by the node task like
//! [`crate::workload::Workloads`]; everything slow runs in spawned tasks
//! that report back as [`DeployEvent`]s, which [`Deployments::handle`]
//! turns into what the node publishes. The processes are supervised units
//! (`crate::supervised`): launched under the shim, watched, stopped with a
//! grace period then SIGKILL, and found again after a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::files::{
    prepare_files, remove_files, scan, DeployPaths, DeploySpec, DeployState, DeploymentRecord,
    FilesError, ServerState,
};
use super::gpus;
use super::request::{self, RequestError};
use super::wire::WireError;
use crate::fsutil::{load_json, tail_text};
use crate::gpus::SharedPool;
use crate::protocol::{Answer, Event, Outgoing};
use crate::supervised::{
    launch::{self, shell_quote, LaunchError},
    now_unix_ms, ExitStatus, Notifier, ProcessEvent, ShimEnd, StartedFile, Unit,
};

/// How long a stopping model server gets before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

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

/// What the deployments' background work reports back, through the node
/// task to [`Deployments::handle`].
#[derive(Debug)]
pub enum DeployEvent {
    Launched {
        deployment_id: String,
        request_id: String,
        outcome: Result<StartedFile, LaunchError>,
    },
    /// The server wrote its state file.
    Loaded {
        deployment_id: String,
        state: ServerState,
    },
    /// Its shim ended, or a stop finished.
    Process(String, ProcessEvent),
    /// A streamed piece of an `infer` (a `token` event).
    Streamed { request_id: String, output: Value },
    /// The one response of an `infer` or `deployments` command.
    Answer {
        request_id: String,
        outcome: Result<Value, DeployError>,
    },
}

/// Why a deployment command was refused, or a call to a model server
/// failed. Its text is the response's `error`.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error("request_id {request_id} already started deployment {deployment_id} (state {state}); a redelivered deploy never starts a second server")]
    Redelivered {
        request_id: String,
        deployment_id: String,
        state: &'static str,
    },
    #[error("deployment {deployment_id} already exists (state {state}, model {}); undeploy it first or choose another deployment_id", model.display())]
    Exists {
        deployment_id: String,
        state: &'static str,
        model: PathBuf,
    },
    /// `known`: the ids this node has, or "none".
    #[error("no deployment {deployment_id} on this node (deployments: {known})")]
    NotFound {
        deployment_id: String,
        known: String,
    },
    #[error("deployment {deployment_id} is still loading its model; wait for its ready event")]
    Loading { deployment_id: String },
    #[error("deployment {deployment_id} failed: {}", error.as_deref().unwrap_or("unknown error"))]
    Failed {
        deployment_id: String,
        error: Option<String>,
    },
    /// Stopping or stopped.
    #[error("deployment {deployment_id} is {state}; deploy it again to use it")]
    Ended {
        deployment_id: String,
        state: &'static str,
    },
    #[error("deployment {deployment_id} vanished while starting")]
    Vanished { deployment_id: String },
    #[error("the model server could not be started: {0}")]
    Launch(#[source] LaunchError),
    #[error("params.gpus must be a whole number of GPUs from 0 to 64, got {got}")]
    BadGpus { got: String },
    /// Not enough GPUs, and the options do not allow the CPU.
    #[error("{0}; set \"allow_cpu_fallback\": true in the options to serve it on the CPU instead")]
    Gpus(crate::gpus::GpuError),
    /// The model server answered with an error of its own.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Wire(#[from] WireError),
}

pub struct Deployments {
    config: DeployConfig,
    pub(super) entries: HashMap<String, (DeployPaths, DeploymentRecord)>,
    /// The servers' shims, stops, loads and calls report here.
    pub(super) units: Notifier<DeployEvent>,
    /// The node's GPUs, shared with the workloads.
    pub(super) gpus: SharedPool,
}

impl Deployments {
    /// Loads the records of earlier runs and watches what still runs; a
    /// stop an earlier run began is seen through.
    pub fn open(
        config: DeployConfig,
        events: mpsc::UnboundedSender<DeployEvent>,
        gpus: SharedPool,
    ) -> Deployments {
        let mut deployments = Deployments {
            entries: HashMap::new(),
            config,
            units: Notifier::new(events, DeployEvent::Process),
            gpus,
        };
        for (paths, mut record) in scan(&deployments.config.config_dir) {
            if record.supervisor_pid.is_none() {
                // The node died between the launch and saving the pids: the
                // shim's started file has them.
                match load_json::<StartedFile>(&paths.supervised.started()) {
                    Ok(Some(started)) => {
                        record.apply_started(&started);
                        record.save_or_log(&paths);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(deployment_id = %record.deployment_id, "{e}; the model server's pid stays unknown")
                    }
                }
            }
            if record.state.is_active() {
                tracing::info!(
                    pid = record.pid,
                    "reconnecting to deployment {} ({})",
                    record.deployment_id,
                    record.state.name()
                );
                let shim = record.supervisor_pid.zip(record.supervisor_start_time);
                deployments.units.watch(record.deployment_id.clone(), shim);
                if let Some(ids) = &record.gpus {
                    deployments.reserve_gpus(&record.deployment_id, ids);
                }
                deployments.watch_loading(&paths, &record);
                if record.state == DeployState::Stopping {
                    deployments.stop(&record);
                }
            }
            deployments
                .entries
                .insert(record.deployment_id.clone(), (paths, record));
        }
        deployments
    }

    /// Checks a `deploy` and starts its server; `Launched` follows.
    pub fn deploy(
        &mut self,
        request_id: &str,
        params: &Map<String, Value>,
    ) -> Result<(), DeployError> {
        if let Some((_, existing)) = self
            .entries
            .values()
            .find(|(_, r)| r.request_id == request_id)
        {
            return Err(DeployError::Redelivered {
                request_id: request_id.to_owned(),
                deployment_id: existing.deployment_id.clone(),
                state: existing.state.name(),
            });
        }
        let config = &self.config;
        let checked = request::deploy(params, &config.working_dir, &config.model_roots, || {
            format!("d-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
        })?;
        if let Some((_, existing)) = self.entries.get(&checked.deployment_id) {
            if existing.state.is_active() {
                return Err(DeployError::Exists {
                    deployment_id: existing.deployment_id.clone(),
                    state: existing.state.name(),
                    model: existing.model.clone(),
                });
            }
        }
        let count = gpus::gpu_count(params, &checked.options)?;
        let paths = DeployPaths::new(&config.config_dir, &checked.deployment_id);
        let granted = self.take_gpus(&checked.deployment_id, count, &checked.options)?;
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
            gpus: granted.ids,
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
        if let Err(e) = prepare_files(&paths, &record, &spec) {
            self.release_gpus(&record.deployment_id);
            return Err(e.into());
        }
        self.spawn_launch(&paths, &spec, request_id, granted.env);
        self.entries
            .insert(record.deployment_id.clone(), (paths, record));
        Ok(())
    }

    fn spawn_launch(
        &self,
        paths: &DeployPaths,
        spec: &DeploySpec,
        request_id: &str,
        gpu_env: Vec<(String, String)>,
    ) {
        let command = format!(
            "exec {} {} {}",
            shell_quote(&self.config.exe.to_string_lossy()),
            super::server::MODE,
            shell_quote(&paths.spec().to_string_lossy())
        );
        let mut env = self.config.base_env.clone();
        env.extend(gpu_env);
        let (shim, cwd) = (self.config.shim.clone(), self.config.working_dir.clone());
        let (supervised, units) = (paths.supervised.clone(), self.units.clone());
        let (deployment_id, request_id) = (spec.deployment_id.clone(), request_id.to_owned());
        tokio::spawn(async move {
            let launched = launch::spawn(launch::Spec {
                shim: &shim,
                base: supervised.base(),
                cwd: &cwd,
                command: &command,
                env,
                cgroup: None,
            })
            .await;
            let (outcome, child) = match launched {
                Ok((started, child)) => (Ok(started), Some(child)),
                Err(error) => (Err(error), None),
            };
            units.send(DeployEvent::Launched {
                deployment_id: deployment_id.clone(),
                request_id,
                outcome,
            });
            if let Some(child) = child {
                units.reap(deployment_id, child).await;
            }
        });
    }

    /// Handles what the background work reported; returns what the node
    /// must publish.
    pub fn handle(&mut self, event: DeployEvent) -> Option<Outgoing> {
        match event {
            DeployEvent::Launched {
                deployment_id,
                request_id,
                outcome,
            } => {
                let outcome = self.on_launched(&deployment_id, outcome);
                let answer = match outcome {
                    Ok(output) => Answer::ok(&request_id, output).with_event(Event::Started),
                    Err(error) => Answer::error(&request_id, error),
                };
                Some(Outgoing::Launched(answer))
            }
            DeployEvent::Loaded {
                deployment_id,
                state,
            } => self.on_loaded(&deployment_id, state),
            DeployEvent::Process(deployment_id, ProcessEvent::Exited(end)) => {
                self.on_exited(&deployment_id, end)
            }
            DeployEvent::Process(deployment_id, ProcessEvent::Settled) => {
                tracing::debug!(deployment_id, "every process of the model server has ended");
                None
            }
            DeployEvent::Streamed { request_id, output } => Some(Outgoing::Reply(
                Answer::ok(&request_id, output).with_event(Event::Token),
            )),
            DeployEvent::Answer {
                request_id,
                outcome,
            } => Some(Outgoing::Reply(Answer::of(&request_id, outcome))),
        }
    }

    /// The `started` response, or the launch error.
    fn on_launched(
        &mut self,
        deployment_id: &str,
        outcome: Result<StartedFile, LaunchError>,
    ) -> Result<Value, DeployError> {
        let Some((paths, record)) = self.entries.get_mut(deployment_id) else {
            return Err(DeployError::Vanished {
                deployment_id: deployment_id.to_owned(),
            });
        };
        match outcome {
            Ok(started) => {
                record.apply_started(&started);
                record.save_or_log(paths);
                let (paths, record) = (paths.clone(), record.clone());
                self.watch_loading(&paths, &record);
                if record.state == DeployState::Stopping {
                    // Undeployed while the shim was still starting it: the
                    // stop found no process then; it has one now.
                    self.stop(&record);
                }
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
                self.gpus
                    .lock()
                    .release(&crate::gpus::Holder::Deployment(deployment_id.to_owned()));
                record.state = DeployState::Failed;
                record.error = Some(error.to_string());
                record.ended_unix_ms = Some(now_unix_ms());
                record.save_or_log(paths);
                Err(DeployError::Launch(error))
            }
        }
    }

    /// While the server loads, watches for its state file: `Loaded`.
    fn watch_loading(&self, paths: &DeployPaths, record: &DeploymentRecord) {
        let id = record.deployment_id.clone();
        let events = self.units.clone();
        if record.state == DeployState::Starting {
            let state_file = paths.state();
            tokio::spawn(async move {
                let mut pause = Duration::from_millis(2);
                loop {
                    // Missing until the server writes it; never torn (written
                    // atomically), so an unreadable one is not waited on.
                    if let Ok(Some(state)) = load_json::<ServerState>(&state_file) {
                        events.send(DeployEvent::Loaded {
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
    fn on_loaded(&mut self, deployment_id: &str, state: ServerState) -> Option<Outgoing> {
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
        record.save_or_log(paths);
        Some(report)
    }

    /// A server is gone: `stopped` after an undeploy, `failed` otherwise
    /// (unless its failure was already reported).
    fn on_exited(&mut self, deployment_id: &str, end: ShimEnd) -> Option<Outgoing> {
        self.release_gpus(deployment_id);
        let (paths, record) = self.entries.get_mut(deployment_id)?;
        if !record.state.is_active() {
            return None;
        }
        let _ = std::fs::remove_file(paths.socket());
        let status = ExitStatus::read(
            &paths.supervised.exit(),
            record.process().as_ref(),
            Some(end),
        );
        let exit = status.exit();
        record.ended_unix_ms = Some(now_unix_ms());
        let output = json!({
            "deployment_id": deployment_id,
            "model": record.model,
            "pid": record.pid,
            "exit_code": exit.and_then(|e| e.exit_code),
            "signal": exit.and_then(|e| e.signal.clone()),
            "stderr_tail": tail_text(&paths.supervised.stderr(), 4096),
        });
        let report = match record.state {
            DeployState::Stopping => {
                record.state = DeployState::Stopped;
                report(paths, record, Event::Stopped, output, None)
            }
            state => {
                let loader_error = match load_json::<ServerState>(&paths.state()) {
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
                        status.describe(),
                        paths.supervised.stderr().display()
                    )
                });
                tracing::warn!(deployment_id, "{error}");
                record.state = DeployState::Failed;
                record.error = Some(error.clone());
                report(paths, record, Event::Failed, output, Some(error))
            }
        };
        record.save_or_log(paths);
        Some(report)
    }

    /// `undeploy`: stops a running server, or forgets an ended deployment.
    pub fn undeploy(&mut self, params: &Map<String, Value>) -> Result<Value, DeployError> {
        let id = request::deployment_id(params)?;
        let known = self.known_ids();
        let Some((paths, record)) = self.entries.get_mut(&id) else {
            return Err(DeployError::NotFound {
                deployment_id: id,
                known,
            });
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
            record.save_or_log(paths);
            let record = record.clone();
            self.stop(&record);
        }
        let (_, record) = &self.entries[&id];
        Ok(json!({
            "message": format!("Deployment {id} is stopping"),
            "deployment_id": id,
            "state": "stopping",
            "pid": record.pid,
        }))
    }

    /// Stops a model server: SIGTERM to every process of it now, SIGKILL
    /// to what is left after [`STOP_GRACE`] (the unit's one stop).
    fn stop(&self, record: &DeploymentRecord) {
        let Some(started) = record.process() else {
            return;
        };
        let mut unit = Unit::of(&started);
        unit.signal(Signal::SIGTERM);
        let kill_at = now_unix_ms() + STOP_GRACE.as_millis() as u64;
        let what = format!("model server of deployment {}", record.deployment_id);
        self.units
            .stop(record.deployment_id.clone(), unit, kill_at, what);
    }
}

/// A deployment event on its `deploy` request_id, through the outbox.
fn report(
    paths: &DeployPaths,
    record: &DeploymentRecord,
    event: Event,
    mut output: Value,
    error: Option<String>,
) -> Outgoing {
    output["deployment_id"] = json!(record.deployment_id);
    let answer = match error {
        None => Answer::ok(&record.request_id, output),
        Some(error) => Answer::error(&record.request_id, error).with_output(output),
    };
    Outgoing::Durable {
        outbox_name: paths.event_name(&record.request_id, event),
        answer: answer.with_event(event),
    }
}
