//! The node's workloads: starting them (each in a cgroup of its own where
//! the node can make one) or queueing them until they can start
//! (`admission.rs`), learning of their ends, cancelling, and what `status`
//! shows. Owned by the node task; everything slow (disk writes,
//! spawning, waiting) runs in spawned tasks that report back as
//! [`WorkloadEvent`]s.
//!
//! A record that cannot be read keeps its request_id: a workload that still
//! runs is adopted from a record rebuilt out of its started file, and every
//! other damaged one refuses its request_id by file name (the name a
//! redelivered command computes again), so nothing is ever started twice.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::cancel::{CancelError, CancelParams, CancelTarget};
use super::launch::{launch, LaunchFailure, LaunchSpec, StartError, StartRefusal, Wait};
use super::output::{classify, terminal_output, Ending};
use super::paths::{rid, WorkloadPaths};
use super::queue::{QueueEnd, WorkloadQueue};
use super::record::{load_json, now_unix_ms, scan, Damaged, WorkloadRecord, WorkloadState};
use super::tail::{OutputTail, TailMessage};
use super::template::{render, take_workload_token};
use crate::gpus::SharedPool;
use crate::protocol::{Answer, Event, Outgoing, Stream, WorkloadKind};
use crate::supervised::cgroup::{self, CgroupRoot};
use crate::supervised::containment::{Kind, Unit};
use crate::supervised::{procfs, ExitStatus, Notifier, ProcessEvent, ShimEnd};

/// What the manager needs from the node's settings.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub logs_dir: PathBuf,
    pub working_dir: PathBuf,
    /// Workload type → template.
    pub templates: HashMap<WorkloadKind, String>,
    pub max_concurrent: usize,
    /// How many may wait in the queue (`max_queued_workloads`).
    pub max_queued: usize,
    /// The environment every workload starts from (secrets withheld).
    pub base_env: Vec<(String, String)>,
    /// The node's API token, handed to workloads without a token of their own.
    pub api_token: Option<String>,
    /// The shim every workload runs under.
    pub shim: PathBuf,
    pub retention: Duration,
    /// The most of a result file the terminal event may carry.
    pub max_result_bytes: u64,
    /// GPUs a workload holds unless its request says; `None`: every GPU,
    /// none exclusively (`gpus_per_workload: all`).
    pub gpus_per_workload: Option<usize>,
}

/// What the workloads' background work reports back, through the node
/// task to [`Workloads::handle`].
#[derive(Debug)]
pub enum WorkloadEvent {
    Started {
        request_id: String,
        outcome: Result<Box<WorkloadRecord>, LaunchFailure>,
    },
    /// Its shim ended, or a stop finished.
    Process(String, ProcessEvent),
    /// A queued workload left the queue without running (a cancel, or an
    /// end an earlier run did not finish reporting): its terminal event.
    Dequeued(String),
    /// Queued workloads left by an earlier run: start what can start.
    Admit,
}

/// What the node must do after [`Workloads::handle`].
#[derive(Debug)]
pub enum Handled {
    /// Publish this.
    Out(Outgoing),
    /// Publish the workload's last output, then its terminal event.
    Ended(Terminal),
}

/// A refused workload command.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// Boxed: the refusals that name a workload carry its details.
    pub error: Box<StartRefusal>,
    /// Names the existing workload when the request_id was seen before.
    pub output: Option<Value>,
}

/// What the node publishes when a workload has ended: `messages` (the last
/// output) first, then the terminal event, through the outbox.
#[derive(Debug)]
pub struct Terminal {
    pub request_id: String,
    pub outbox_name: String,
    pub ending: Ending,
    pub output: Value,
    pub messages: Vec<TailMessage>,
}

struct Entry {
    record: WorkloadRecord,
    paths: WorkloadPaths,
    tail: Option<OutputTail>,
    /// Watching the workload itself because its supervisor died.
    orphaned: bool,
    /// Peak GPU memory NVML reported for the workload's processes.
    gpu_memory_max: Option<u64>,
    /// What the node saw of the supervisor's end, once it has ended.
    shim_end: Option<ShimEnd>,
    /// A cancel is waiting for every process of the workload to end.
    settling: bool,
    /// The damaged record file this entry was rebuilt around.
    rebuilt: Option<PathBuf>,
    /// Its terminal event is made and being reported: its process is gone,
    /// so it holds no slot (the queue's next one may start meanwhile).
    finished: bool,
    /// What its `started` answer must say (a CPU fallback).
    warnings: Vec<String>,
}

impl Entry {
    fn new(record: WorkloadRecord, paths: WorkloadPaths, tail: Option<OutputTail>) -> Entry {
        Entry {
            record,
            paths,
            tail,
            orphaned: false,
            gpu_memory_max: None,
            shim_end: None,
            settling: false,
            rebuilt: None,
            finished: false,
            warnings: Vec::new(),
        }
    }
}

pub struct Workloads {
    config: WorkloadConfig,
    /// Where workload cgroups are made; `None`: process-tree containment.
    cgroups: Option<CgroupRoot>,
    entries: HashMap<String, Entry>,
    /// Unreadable records not adopted, by the file-name form of their
    /// request_id ([`rid`]); never pruned, so the request_id stays taken
    /// until the operator removes the file.
    damaged: HashMap<String, Damaged>,
    /// The workloads' shims and stops report here.
    units: Notifier<WorkloadEvent>,
    /// Workload commands waiting for a slot, on disk.
    queue: WorkloadQueue,
    /// The node's GPUs, shared with the deployments (`gpus` module here).
    gpus: SharedPool,
    /// Counts since this node process started, for the metrics.
    pub stats: WorkloadStats,
}

/// What this node process has run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WorkloadStats {
    pub started: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Run time of the workloads that ended.
    pub seconds: f64,
}

impl Workloads {
    /// Loads the records left by earlier runs and adopts what still runs.
    pub fn open(
        config: WorkloadConfig,
        events: mpsc::UnboundedSender<WorkloadEvent>,
        gpus: SharedPool,
    ) -> Workloads {
        // The hash part of the sanitized name: short, and stable per node.
        let rid = super::paths::rid(&config.logs_dir.to_string_lossy());
        let node = rid.rsplit('-').next().unwrap_or(&rid);
        let cgroups = match CgroupRoot::detect(node) {
            Ok(root) => {
                tracing::info!(
                    "workload containment: cgroup (one per workload, in {})",
                    root.dir().display()
                );
                root.sweep();
                Some(root)
            }
            Err(e) => {
                tracing::info!("workload containment: process-tree (no cgroups: {e})");
                None
            }
        };
        let queue = WorkloadQueue::open(&config.logs_dir, config.max_queued);
        let mut workloads = Workloads {
            queue,
            config,
            cgroups,
            entries: HashMap::new(),
            damaged: HashMap::new(),
            units: Notifier::new(events, WorkloadEvent::Process),
            gpus,
            stats: WorkloadStats::default(),
        };
        let (records, damaged) = scan(&workloads.config.logs_dir);
        for (paths, record) in records {
            workloads.adopt(paths, record);
        }
        for damaged in damaged {
            workloads.keep_damaged(damaged);
        }
        workloads.open_queue();
        workloads.prune();
        workloads
    }

    /// Adopts the workload of a damaged record if it still runs; else keeps
    /// its request_id taken. The damaged file is left as it is.
    fn keep_damaged(&mut self, damaged: Damaged) {
        let file = damaged.paths.record();
        if let Some(record) = damaged.running_record() {
            tracing::warn!(
                "{}; the workload still runs: adopted from {}",
                damaged.problem,
                damaged.paths.started().display()
            );
            self.adopt(damaged.paths, record);
            if let Some(entry) = self.entries.values_mut().find(|e| e.paths.record() == file) {
                entry.rebuilt = Some(file);
            }
            return;
        }
        tracing::warn!(
            "{}; {}. Its request_id is not run again; remove {} to allow it",
            damaged.problem,
            damaged.story(),
            file.display()
        );
        self.damaged.insert(damaged.rid.clone(), damaged);
    }

    fn adopt(&mut self, paths: WorkloadPaths, mut record: WorkloadRecord) {
        let request_id = record.request_id.clone();
        if record.state == WorkloadState::Starting {
            match load_json::<super::record::StartedFile>(&paths.started()) {
                Ok(Some(started)) => {
                    super::launch::apply_started(&mut record, &started);
                    if let Err(e) = record.save(&paths) {
                        tracing::warn!(request_id = %request_id, "cannot save the record {}: {e}; the workload is adopted from its started file all the same", paths.record().display());
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(request_id = %request_id, "{e}; the workload's pid stays unknown")
                }
            }
        }
        let active = record.state.is_active();
        if active {
            tracing::info!(
                pid = record.pid,
                request_id = %request_id,
                "adopting {} workload left by an earlier run", record.workload_type
            );
            self.watch_supervisor(&record);
            self.reserve_gpus(&record);
        }
        let tail = active.then(|| OutputTail::load(&paths));
        let mut entry = Entry::new(record, paths, tail);
        // A cancel the earlier run did not see through: go on with it,
        // SIGKILL included once its grace period is over.
        if let (true, Some(cancel), Some(unit)) = (
            active,
            entry.record.cancel.as_ref(),
            entry.record.process().as_ref().map(Unit::of),
        ) {
            let kill_at = cancel.requested_unix_ms + (cancel.grace_seconds * 1000.0) as u64;
            entry.settling = true;
            self.settle(&request_id, unit, kill_at);
        }
        self.entries.insert(request_id, entry);
    }

    /// Reports `Exited` when the shim is gone (at once if it already is).
    fn watch_supervisor(&self, record: &WorkloadRecord) {
        let shim = record.supervisor_pid.zip(record.supervisor_start_time);
        self.units.watch(record.request_id.clone(), shim);
    }

    /// Which containment new workloads get: `cgroup` or `process-tree`.
    pub fn containment(&self) -> &'static str {
        match self.cgroups {
            Some(_) => Kind::Cgroup.name(),
            None => Kind::ProcessTree.name(),
        }
    }

    pub fn active_count(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.record.state.is_active())
            .count()
    }

    pub fn is_busy(&self) -> bool {
        self.active_count() >= self.config.max_concurrent
    }

    /// `active_workloads` of the status output.
    pub fn active_summaries(&self) -> Vec<Value> {
        let now = now_unix_ms();
        let mut active: Vec<&Entry> = self
            .entries
            .values()
            .filter(|e| e.record.state.is_active())
            .collect();
        active.sort_by_key(|e| e.record.created_unix_ms);
        active
            .iter()
            .map(|e| {
                json!({
                    "pid": e.record.pid,
                    "type": e.record.workload_type,
                    "request_id": e.record.request_id,
                    "running_for_seconds": e.record.age_seconds(now).round(),
                    "containment": match e.record.cgroup {
                        Some(_) => Kind::Cgroup.name(),
                        None => Kind::ProcessTree.name(),
                    },
                    "stdout_log": e.record.stdout_log,
                    "stderr_log": e.record.stderr_log,
                })
            })
            .collect()
    }

    /// Adds per-process GPU memory (pid → bytes, from NVML) to the running
    /// workloads whose process group holds those pids, keeping each peak.
    pub fn note_gpu_memory(&mut self, by_pid: &HashMap<u32, u64>) {
        let mut per_group: HashMap<i32, u64> = HashMap::new();
        for (pid, bytes) in by_pid {
            if let Some(group) = procfs::process_group(*pid as i32) {
                *per_group.entry(group).or_default() += bytes;
            }
        }
        for entry in self
            .entries
            .values_mut()
            .filter(|e| e.record.state.is_active())
        {
            if let Some(bytes) = entry.record.pid.and_then(|pid| per_group.get(&pid)) {
                entry.gpu_memory_max = Some(entry.gpu_memory_max.unwrap_or(0).max(*bytes));
            }
        }
    }

    /// One line per running workload, for the shutdown log.
    pub fn describe_active(&self) -> Vec<String> {
        self.entries
            .values()
            .filter(|e| e.record.state.is_active())
            .map(|e| {
                format!(
                    "{} {} (pid {}) keeps running; logs: {} {}",
                    e.record.workload_type,
                    e.record.request_id,
                    e.record
                        .pid
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "?".into()),
                    e.record.stdout_log.display(),
                    e.record.stderr_log.display()
                )
            })
            .collect()
    }

    /// Checks a workload command, then begins it (the outcome arrives as
    /// `Started`), or queues it when it cannot start now and the queue has
    /// room.
    pub fn start(
        &mut self,
        kind: WorkloadKind,
        request_id: &str,
        mut params: Map<String, Value>,
    ) -> Result<Admitted, Refusal> {
        let refuse = |error: StartRefusal| Refusal {
            error: Box::new(error),
            output: None,
        };
        let Some(template) = self.config.templates.get(&kind).cloned() else {
            return Err(refuse(StartRefusal::NotConfigured { kind }));
        };
        if let Some(existing) = self.entries.get(request_id) {
            return Err(duplicate(existing));
        }
        if let Some(damaged) = self.damaged.get(&rid(request_id)) {
            return Err(refuse_damaged(request_id, damaged));
        }
        if let Some(queued) = self.refuse_queued(request_id) {
            return Err(queued);
        }
        let token = take_workload_token(&mut params);
        let ask = self.gpu_ask(&params).map_err(refuse)?;
        self.gpus_possible(request_id, ask).map_err(refuse)?;
        if let Err(wait) = self.admit(request_id, &params) {
            return self
                .enqueue(kind, request_id, &template, params, token, wait)
                .map(Admitted::Queued);
        }
        self.launch_now(kind, request_id, &template, params, token)
            .map_err(refuse)?;
        Ok(Admitted::Launching)
    }

    /// Renders the command and begins the launch: the record goes in now,
    /// the outcome arrives as `Started`.
    fn launch_now(
        &mut self,
        kind: WorkloadKind,
        request_id: &str,
        template: &str,
        params: Map<String, Value>,
        token: Option<String>,
    ) -> Result<(), StartRefusal> {
        let ask = self.gpu_ask(&params)?;
        let params_json = Value::Object(params).to_string();
        let paths = WorkloadPaths::new(&self.config.logs_dir, kind.name(), request_id);
        let command = render(template, &params_json, &paths.params().to_string_lossy())?;
        let grant = self.take_gpus(request_id, ask)?;
        let mut record = WorkloadRecord::starting(request_id, kind, &paths);
        record.gpus = grant
            .gpus
            .as_ref()
            .map(|gpus| gpus.iter().map(|g| g.id()).collect());
        let cgroup = self.new_cgroup(&paths, &record);
        let mut env = self.workload_env(kind, request_id, &paths, token);
        env.extend(gpus::gpu_env(&grant));
        let spec = LaunchSpec {
            shim: self.config.shim.clone(),
            paths: paths.clone(),
            cwd: self.config.working_dir.clone(),
            command,
            env,
            params_json,
            record: record.clone(),
            cgroup,
        };
        self.spawn_launch(request_id, spec);
        let mut entry = Entry::new(record, paths, None);
        entry.warnings = grant.warnings;
        self.entries.insert(request_id.to_owned(), entry);
        Ok(())
    }

    /// An empty cgroup for a new workload: named after its files and the
    /// moment its record was made, so a rerun of a request_id whose old
    /// cgroup still holds leftovers gets a fresh one.
    fn new_cgroup(&self, paths: &WorkloadPaths, record: &WorkloadRecord) -> Option<PathBuf> {
        let root = self.cgroups.as_ref()?;
        let stem = paths.base().file_name()?.to_string_lossy();
        match root.create(&format!("{stem}.{}", record.created_unix_ms)) {
            Ok(dir) => Some(dir),
            Err(e) => {
                tracing::warn!(request_id = %record.request_id, "{e}; tracking the workload's processes through /proc instead");
                None
            }
        }
    }

    /// Launches in the background: `Started` when the pid is known, then
    /// `Exited` when the shim (this process's child) ends.
    fn spawn_launch(&self, request_id: &str, spec: LaunchSpec) {
        let units = self.units.clone();
        let id = request_id.to_owned();
        tokio::spawn(async move {
            match launch(spec).await {
                Ok((record, child)) => {
                    units.send(WorkloadEvent::Started {
                        request_id: id.clone(),
                        outcome: Ok(Box::new(record)),
                    });
                    units.reap(id, child).await;
                }
                Err(error) => units.send(WorkloadEvent::Started {
                    request_id: id,
                    outcome: Err(error),
                }),
            }
        });
    }

    /// Handles what the background work reported; returns what the node
    /// must publish.
    pub fn handle(&mut self, event: WorkloadEvent) -> Option<Handled> {
        match event {
            WorkloadEvent::Started {
                request_id,
                outcome,
            } => self.answer_started(&request_id, outcome),
            WorkloadEvent::Process(request_id, ProcessEvent::Exited(end)) => {
                self.on_exited(&request_id, end).map(Handled::Ended)
            }
            WorkloadEvent::Process(request_id, ProcessEvent::Settled) => {
                self.on_settled(&request_id).map(Handled::Ended)
            }
            WorkloadEvent::Dequeued(request_id) => {
                self.dequeued_terminal(&request_id).map(Handled::Ended)
            }
            // The node starts what can start after every event.
            WorkloadEvent::Admit => None,
        }
    }

    /// What a workload sees: the node's environment without its broker
    /// password, the API token (the workload's own when the backend sent
    /// one), and the five `CYBERWAVE_*` variables of the contract.
    fn workload_env(
        &self,
        kind: WorkloadKind,
        request_id: &str,
        paths: &WorkloadPaths,
        token: Option<String>,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .config
            .base_env
            .iter()
            .filter(|(k, _)| k != "CYBERWAVE_API_TOKEN" && k != "CYBERWAVE_API_KEY")
            .cloned()
            .collect();
        if let Some(token) = token.or_else(|| self.config.api_token.clone()) {
            env.push(("CYBERWAVE_API_TOKEN".into(), token.clone()));
            env.push(("CYBERWAVE_API_KEY".into(), token));
        }
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        env.extend([
            ("CYBERWAVE_REQUEST_ID".into(), request_id.to_owned()),
            ("CYBERWAVE_WORKLOAD_TYPE".into(), kind.name().to_owned()),
            ("CYBERWAVE_PARAMS_FILE".into(), path(paths.params())),
            ("CYBERWAVE_RESULT_FILE".into(), path(paths.result())),
            ("CYBERWAVE_PROGRESS_FILE".into(), path(paths.progress())),
        ]);
        env
    }
}

fn duplicate(entry: &Entry) -> Refusal {
    let record = &entry.record;
    Refusal {
        error: Box::new(StartRefusal::Duplicate {
            request_id: record.request_id.clone(),
            kind: record.workload_type,
            pid: record.pid,
            state: record.state.name(),
            rebuilt: entry.rebuilt.clone(),
        }),
        output: Some(json!({
            "workload_request_id": record.request_id,
            "workload_type": record.workload_type,
            "pid": record.pid,
            "state": record.state.name(),
        })),
    }
}

/// A request_id whose record is damaged: refused, naming the file.
fn refuse_damaged(request_id: &str, damaged: &Damaged) -> Refusal {
    let file = damaged.paths.record();
    Refusal {
        error: Box::new(StartRefusal::Damaged {
            request_id: request_id.to_owned(),
            workload_type: damaged.workload_type.clone(),
            problem: damaged.problem.to_string(),
            story: damaged.story(),
            file: file.clone(),
        }),
        output: Some(json!({
            "workload_request_id": request_id,
            "workload_type": damaged.workload_type,
            "pid": damaged.started.as_ref().map(|s| s.pid),
            "state": "unknown",
            "record_file": file,
        })),
    }
}

mod admission;
mod ending;
mod gpus;
mod live;
mod view;

pub use admission::Admitted;
