//! Who starts when: the one check a workload passes to start now
//! ([`Workloads::can_start`]), the queue for those that cannot
//! (`max_queued_workloads`, see `workload::queue`), starting the queue's
//! head as soon as it can, cancelling a queued one, and the answer to a
//! launch.
//!
//! The queue is strictly first in, first out: a new command never overtakes
//! a queued one, and the head is never skipped.

use super::*;

/// What became of an accepted workload command.
#[derive(Debug, Clone, PartialEq)]
pub enum Admitted {
    /// Launching: the `started` answer follows (and then the ack).
    Launching,
    /// Waiting in the queue, on disk: this is the `queued` output.
    Queued(Value),
}

impl Workloads {
    /// Whether a workload with these params can start now; `Err` says what
    /// it waits for. The one check both a new command and the queue's head
    /// pass.
    pub fn can_start(&self, request_id: &str, params: &Map<String, Value>) -> Result<(), Wait> {
        // A workload whose end is being reported holds no slot: its
        // processes are gone.
        let active = self
            .entries
            .values()
            .filter(|e| e.record.state.is_active() && !e.finished)
            .count();
        if active >= self.config.max_concurrent {
            return Err(Wait::Concurrency {
                active,
                max: self.config.max_concurrent,
            });
        }
        if let Ok(ask) = self.gpu_ask(params) {
            self.gpus_free(request_id, ask)?;
        }
        Ok(())
    }

    /// A new command starts now only if it can and nothing waits before it.
    pub(super) fn admit(&self, request_id: &str, params: &Map<String, Value>) -> Result<(), Wait> {
        self.can_start(request_id, params)?;
        match self.queue.waiting() {
            0 => Ok(()),
            waiting => Err(Wait::Behind { waiting }),
        }
    }

    /// The refusal of a request_id that is in the queue already.
    pub(super) fn refuse_queued(&self, request_id: &str) -> Option<Refusal> {
        let queued = self.queue.get(request_id)?;
        let position = self.queue.position(request_id);
        let kind = queued.file.workload_type;
        Some(Refusal {
            error: Box::new(StartRefusal::Queued {
                request_id: request_id.to_owned(),
                kind,
                position,
                waiting: self.queue.waiting(),
            }),
            output: Some(json!({
                "workload_request_id": request_id,
                "workload_type": kind,
                "pid": null,
                "state": "queued",
                "position": position,
            })),
        })
    }

    /// Queues a command that cannot start now (`wait` says why), on disk
    /// before it is answered; `Ok` is the `queued` output.
    pub(super) fn enqueue(
        &mut self,
        kind: WorkloadKind,
        request_id: &str,
        template: &str,
        params: Map<String, Value>,
        token: Option<String>,
        wait: Wait,
    ) -> Result<Value, Refusal> {
        let refuse = |error: StartRefusal| Refusal {
            error: Box::new(error),
            output: None,
        };
        let (waiting, max) = (self.queue.waiting(), self.queue.capacity());
        if max == 0 {
            return Err(refuse(StartRefusal::Busy { wait }));
        }
        if waiting >= max {
            return Err(refuse(StartRefusal::QueueFull { wait, waiting, max }));
        }
        // A command that could never be rendered is refused now, not when
        // its turn comes.
        let paths = WorkloadPaths::new(&self.config.logs_dir, kind.name(), request_id);
        let params_json = Value::Object(params.clone()).to_string();
        render(template, &params_json, &paths.params().to_string_lossy())
            .map_err(|e| refuse(e.into()))?;
        let position = self
            .queue
            .push(kind, request_id, params, token)
            .map_err(|e| {
                tracing::warn!(request_id, "{e}");
                refuse(StartRefusal::NotQueued {
                    problem: e.to_string(),
                })
            })?;
        tracing::info!(request_id, position, "{kind} workload queued: {wait}");
        Ok(json!({
            "message": format!("{kind} workload queued at position {position}: {wait}; it starts as soon as it can"),
            "position": position,
            "workload_request_id": request_id,
            "workload_type": kind,
            "queued": self.queue.waiting(),
        }))
    }

    /// Starts the queue's head while it can start, oldest first. Returns
    /// the terminal events of those whose turn came but that could not be
    /// launched (no template any more, a command too long).
    pub fn start_queued(&mut self) -> Vec<Terminal> {
        let mut ended = Vec::new();
        while let Some(head) = self.queue.head() {
            if self.can_start(&head.request_id, &head.params).is_err() {
                break;
            }
            let request_id = head.request_id.clone();
            if self.entries.contains_key(&request_id) {
                // Refused when it was queued, dropped at start: never here,
                // and never started twice if it were.
                tracing::warn!(
                    request_id,
                    "a queued request_id already has a workload; removed from the queue"
                );
                self.queue.launched(&request_id);
                continue;
            }
            let Some((file, token)) = self.queue.begin_launch(&request_id) else {
                break;
            };
            let kind = file.workload_type;
            let launched = match self.config.templates.get(&kind).cloned() {
                Some(template) => self.launch_now(kind, &request_id, &template, file.params, token),
                None => Err(StartRefusal::NotConfigured { kind }),
            };
            match launched {
                Ok(()) => tracing::info!(request_id, "starting the queued {kind} workload"),
                Err(refusal) => {
                    let error = format!("the workload could not be started: {refusal}");
                    ended.extend(self.leave_queue(&request_id, error));
                }
            }
        }
        ended
    }

    /// At start: drops queue entries an earlier run already started (their
    /// record exists, perhaps damaged), reports the ends it did not finish
    /// reporting, and has the node start what can start.
    pub(super) fn open_queue(&mut self) {
        let (entries, damaged) = (&self.entries, &self.damaged);
        self.queue
            .drop_started(|id| entries.contains_key(id) || damaged.contains_key(&rid(id)));
        for request_id in self.queue.ended() {
            self.units.send(WorkloadEvent::Dequeued(request_id));
        }
        let waiting = self.queue.waiting();
        if waiting > 0 {
            tracing::info!("{waiting} queued workload(s) left by an earlier run wait for a slot");
            self.units.send(WorkloadEvent::Admit);
        }
    }

    /// `cancel` of a queued request: it leaves the queue, never having run;
    /// its `cancelled` event follows (`Dequeued`). `Ok` is the cancel output.
    pub(super) fn cancel_queued(&mut self, request_id: &str) -> Result<Value, CancelError> {
        let Some(queued) = self.queue.get(request_id) else {
            return Err(CancelError::NotFound {
                target: CancelTarget::RequestId(request_id.to_owned()),
            });
        };
        if queued.file.ended.is_some() {
            return Err(CancelError::Ended {
                request_id: request_id.to_owned(),
                state: "cancelled while queued",
            });
        }
        let kind = queued.file.workload_type;
        let position = self.queue.position(request_id);
        let end = QueueEnd::Cancelled {
            at_unix_ms: now_unix_ms(),
        };
        self.queue
            .end(request_id, end)
            .map_err(|source| CancelError::QueueFile {
                request_id: request_id.to_owned(),
                source,
            })?;
        self.units
            .send(WorkloadEvent::Dequeued(request_id.to_owned()));
        tracing::info!(
            request_id,
            "queued {kind} workload cancelled; it never started"
        );
        Ok(json!({
            "message": "Workload removed from the queue; it never started",
            "pid": null,
            "workload_type": kind,
            "workload_request_id": request_id,
            "signal": null,
            "position": position,
        }))
    }

    /// A queued workload whose turn came could not be launched: marked so
    /// on disk, and its `failed` event.
    fn leave_queue(&mut self, request_id: &str, error: String) -> Option<Terminal> {
        tracing::warn!(request_id, "queued workload not started: {error}");
        let end = QueueEnd::Failed {
            at_unix_ms: now_unix_ms(),
            error,
        };
        if let Err(e) = self.queue.end(request_id, end) {
            tracing::warn!(request_id, "cannot record in its queue file that it failed: {e}; a restarted node tries it again");
        }
        self.dequeued_terminal(request_id)
    }

    /// The terminal event of a queued workload that ended without running:
    /// no process, so no pid, exit code, logs or result.
    pub(super) fn dequeued_terminal(&self, request_id: &str) -> Option<Terminal> {
        let file = &self.queue.get(request_id)?.file;
        let (ending, message, at) = match file.ended.as_ref()? {
            QueueEnd::Cancelled { at_unix_ms } => (
                Ending {
                    state: WorkloadState::Cancelled,
                    error: Some("Workload cancelled while queued; it never started".into()),
                },
                "removed from the queue by a cancel before it started; no process was started",
                *at_unix_ms,
            ),
            QueueEnd::Failed { at_unix_ms, error } => (
                Ending {
                    state: WorkloadState::Failed,
                    error: Some(error.clone()),
                },
                "its turn in the queue came but it could not be started; no process ran",
                *at_unix_ms,
            ),
        };
        let paths =
            WorkloadPaths::new(&self.config.logs_dir, file.workload_type.name(), request_id);
        let base = paths
            .base()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        Some(Terminal {
            request_id: request_id.to_owned(),
            outbox_name: format!("{}.{}", base.unwrap_or_default(), ending.event()),
            output: json!({
                "workload_type": file.workload_type,
                "workload_request_id": request_id,
                "pid": null,
                "exit_code": null,
                "signal": null,
                "duration_seconds": 0.0,
                "stdout_tail": "",
                "stderr_tail": "",
                "result": null,
                "queued_for_seconds": at.saturating_sub(file.queued_unix_ms) as f64 / 1000.0,
                "message": message,
            }),
            ending,
            messages: Vec::new(),
        })
    }

    /// The terminal event of a dequeued workload is in the outbox: its
    /// queue file goes. `false` when `request_id` is not such a one.
    pub(super) fn forget_dequeued(&mut self, request_id: &str) -> bool {
        !self.entries.contains_key(request_id) && self.queue.remove_ended(request_id)
    }

    /// `queued_workloads` of the status output, oldest first.
    pub fn queued_summaries(&self) -> Vec<Value> {
        self.queue.summaries(now_unix_ms())
    }

    /// How many workload commands wait in the queue.
    pub fn queued_count(&self) -> usize {
        self.queue.waiting()
    }

    /// The launch answered. A direct start's answer is the command's reply
    /// (then its ack); a queued one's command was acknowledged when it was
    /// queued, so its `started` is a plain reply and its failure a `failed`
    /// event through the outbox.
    pub(super) fn answer_started(
        &mut self,
        request_id: &str,
        outcome: Result<Box<WorkloadRecord>, LaunchFailure>,
    ) -> Option<Handled> {
        let queued = self.queue.is_launching(request_id);
        let outgoing = match self.on_started(request_id, outcome) {
            Ok(output) if queued => {
                // The record is synced: the queue file may go.
                self.queue.launched(request_id);
                Outgoing::Reply(Answer::ok(request_id, output).with_event(Event::Started))
            }
            Ok(output) => {
                Outgoing::Launched(Answer::ok(request_id, output).with_event(Event::Started))
            }
            Err(error) => {
                let error = format!("the workload could not be started: {error}");
                if queued {
                    return self.leave_queue(request_id, error).map(Handled::Ended);
                }
                Outgoing::Launched(Answer::error(request_id, error))
            }
        };
        Some(Handled::Out(outgoing))
    }

    /// The launch finished; `Ok` is the `started` output.
    fn on_started(
        &mut self,
        request_id: &str,
        outcome: Result<Box<WorkloadRecord>, LaunchFailure>,
    ) -> Result<Value, StartError> {
        let Some(entry) = self.entries.get_mut(request_id) else {
            return Err(StartError::Vanished);
        };
        match outcome {
            Ok(record) => {
                self.stats.started += 1;
                entry.record = *record;
                entry.tail = Some(OutputTail::load(&entry.paths));
                let r = &entry.record;
                tracing::info!(
                    pid = r.pid,
                    request_id,
                    "{} workload started",
                    r.workload_type
                );
                let mut output = json!({
                    "message": format!("{} workload started", r.workload_type),
                    "pid": r.pid,
                    "workload_type": r.workload_type,
                    "workload_request_id": r.request_id,
                    "stdout_log": r.stdout_log,
                    "stderr_log": r.stderr_log,
                });
                if let Some(gpus) = &r.gpus {
                    output["gpus"] = json!(gpus);
                }
                if !entry.warnings.is_empty() {
                    output["warnings"] = json!(entry.warnings);
                }
                Ok(output)
            }
            Err(error) => {
                // Nothing ran: forget it, so the backend may retry the same id.
                self.release_gpus(request_id);
                if let Some(entry) = self.entries.remove(request_id) {
                    let _ = std::fs::remove_file(entry.paths.record());
                }
                tracing::warn!(request_id, "workload did not start: {error}");
                Err(error.into())
            }
        }
    }
}
