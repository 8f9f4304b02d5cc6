//! The second half of a workload's life: cancel, exit, the terminal event,
//! live output, retention.
//!
//! A workload has ended when its shim has, and, after a cancel, when every
//! process of the workload has too (the unit's stop, `supervised::unit`).
//! Its exit status is read by `supervised::ExitStatus`: the shim's exit
//! file, else the shim's own status; where neither is known the terminal
//! event says the outcome is unknown, and why.

use super::*;

impl Workloads {
    /// Saves every running workload's live-output offsets (before a stop),
    /// so the next node goes on exactly where this one stopped.
    pub fn save_offsets(&mut self) {
        for entry in self.entries.values_mut() {
            if let Some(tail) = entry.tail.as_mut() {
                tail.save(&entry.paths, true);
            }
        }
    }

    /// The shim is gone (`end`: what the node saw of it). Returns the
    /// terminal event, or `None` while there is still something to wait for.
    pub(super) fn on_exited(&mut self, request_id: &str, end: ShimEnd) -> Option<Terminal> {
        let entry = self
            .entries
            .get_mut(request_id)
            .filter(|e| e.record.state.is_active())?;
        // The watch on an orphaned workload knows nothing new: keep what
        // the shim's own end said.
        if entry.shim_end.is_none() || end != ShimEnd::NotSeen {
            entry.shim_end = Some(end);
        }
        let exit_written = entry.paths.exit().exists();
        let workload = entry.record.pid.zip(entry.record.start_time);
        // A shim that exited on its own has waited for the workload.
        let may_run_on = !matches!(end, ShimEnd::Exited(_));
        if !exit_written && may_run_on && !entry.orphaned {
            if let Some((pid, start)) = workload.filter(|(p, s)| procfs::is_running(*p, *s)) {
                // The shim was killed but the workload runs on: watch it
                // directly (its exit code is lost with the shim).
                tracing::warn!(
                    pid,
                    request_id,
                    "the workload's supervisor died; watching the workload itself"
                );
                entry.orphaned = true;
                self.units.watch(request_id.to_owned(), Some((pid, start)));
                return None;
            }
        }
        if entry.settling {
            return None;
        }
        Some(self.finish(request_id))
    }

    /// Every process of a cancelled workload is gone.
    pub(super) fn on_settled(&mut self, request_id: &str) -> Option<Terminal> {
        let entry = self
            .entries
            .get_mut(request_id)
            .filter(|e| e.record.state.is_active())?;
        entry.settling = false;
        // The shim reaps the last process, writes the exit file and exits:
        // `Exited` follows in a moment and finishes.
        entry.shim_end?;
        Some(self.finish(request_id))
    }

    /// Stops every process of the workload: `Settled` once they are gone.
    pub(super) fn settle(&self, request_id: &str, unit: Unit, kill_at_ms: u64) {
        let what = format!("workload {request_id}");
        self.units
            .stop(request_id.to_owned(), unit, kill_at_ms, what);
    }

    fn finish(&mut self, request_id: &str) -> Terminal {
        // Its processes are gone: its GPUs are free for the next one, as
        // its slot is, while its end is reported.
        self.release_gpus(request_id);
        let entry = self
            .entries
            .get_mut(request_id)
            .expect("checked by the caller");
        entry.finished = true;
        let status = ExitStatus::read(
            &entry.paths.exit(),
            entry.record.process().as_ref(),
            entry.shim_end,
        );
        let with_figures = matches!(status, ExitStatus::File(_));
        let exit = status.exit().cloned();
        let ending = match &status {
            ExitStatus::Unknown(reason) if entry.record.cancel.is_none() => Ending {
                state: WorkloadState::Failed,
                error: Some(format!("the workload's outcome is unknown: {reason}")),
            },
            ExitStatus::Unknown(_) | ExitStatus::File(_) | ExitStatus::ShimStatus(_) => {
                classify(&entry.record, exit.as_ref())
            }
        };
        let messages = match entry.tail.as_mut() {
            Some(tail) => tail.poll(&entry.record, &entry.paths, true),
            None => OutputTail::load(&entry.paths).poll(&entry.record, &entry.paths, true),
        };
        let limit = self.config.max_result_bytes;
        let mut output = terminal_output(&entry.record, &entry.paths, exit.as_ref(), limit);
        if !with_figures {
            // Only the code survived, if that: no resource figures to report.
            if let Some(fields) = output.as_object_mut() {
                fields.remove("resources");
            }
        } else if let (Some(bytes), Some(resources)) =
            (entry.gpu_memory_max, output.get_mut("resources"))
        {
            resources["gpu_memory_bytes"] = json!(bytes);
        }
        if let Some(dir) = &entry.record.cgroup {
            // Empty unless the workload left processes behind.
            let _ = cgroup::remove(dir);
        }
        let outbox_name = format!(
            "{}.{}",
            entry
                .paths
                .base()
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            ending.event()
        );
        Terminal {
            request_id: request_id.to_owned(),
            outbox_name,
            ending,
            output,
            messages,
        }
    }

    /// The terminal event is safely in the outbox: record the end.
    pub fn reported(&mut self, request_id: &str, ending: &Ending) {
        if self.forget_dequeued(request_id) {
            return;
        }
        let Some(entry) = self.entries.get_mut(request_id) else {
            return;
        };
        entry.record.state = ending.state;
        let now = now_unix_ms();
        entry.record.finished_unix_ms = Some(now);
        let started = entry
            .record
            .started_unix_ms
            .unwrap_or(entry.record.created_unix_ms);
        self.stats.seconds += now.saturating_sub(started) as f64 / 1000.0;
        match ending.state {
            WorkloadState::Completed => self.stats.completed += 1,
            WorkloadState::Cancelled => self.stats.cancelled += 1,
            // `classify` ends a workload only as one of the three; an
            // active state here would be a bug, counted as a failure.
            WorkloadState::Failed | WorkloadState::Starting | WorkloadState::Running => {
                self.stats.failed += 1
            }
        }
        // The tail stays until its last output is out (`end_output`).
        if let Some(tail) = entry.tail.as_mut() {
            tail.save(&entry.paths, true);
        }
        if let Err(e) = entry.record.save(&entry.paths) {
            tracing::warn!("cannot save the record of {request_id}: {e}");
        }
        tracing::info!(
            request_id,
            "{} workload {}",
            entry.record.workload_type,
            ending.event()
        );
    }

    /// Signals every process of the workload (its cgroup, or its process
    /// tree); `Ok` is the `cancel` output.
    pub fn cancel(&mut self, params: &Map<String, Value>) -> Result<Value, CancelError> {
        let cancel = CancelParams::parse(params)?;
        if let CancelTarget::RequestId(id) = &cancel.target {
            if !self.queue.is_launching(id) && self.queue.get(id).is_some() {
                return self.cancel_queued(id);
            }
        }
        let entry = self.find(&cancel.target)?;
        let record = &entry.record;
        let mut unit =
            record
                .process()
                .as_ref()
                .map(Unit::of)
                .ok_or_else(|| CancelError::Starting {
                    request_id: record.request_id.clone(),
                })?;
        let pid = record.pid.unwrap_or_default();
        // Only processes this node started: the workload's cgroup, or the
        // supervisor's descendants identified by pid and start time.
        if unit.signal(cancel.signal) == 0 {
            return Err(CancelError::Gone {
                request_id: record.request_id.clone(),
                pid,
            });
        }
        let signal = cancel.signal.as_str();
        tracing::info!(pid, request_id = %record.request_id, "cancelled with {signal}");
        let output = json!({
            "message": format!("Workload cancelled with {signal}"),
            "pid": pid,
            "workload_type": record.workload_type,
            "workload_request_id": record.request_id,
            "signal": signal,
        });
        let request_id = record.request_id.clone();
        let now = now_unix_ms();
        entry.record.cancel = Some(super::super::record::CancelRequest {
            signal: signal.to_owned(),
            requested_unix_ms: now,
            grace_seconds: cancel.grace.as_secs_f64(),
        });
        if let Err(e) = entry.record.save(&entry.paths) {
            tracing::warn!("cannot save the cancel of {request_id}: {e}");
        }
        entry.settling = true;
        let kill_at = match cancel.signal {
            Signal::SIGKILL => now,
            _ => now + cancel.grace.as_millis() as u64,
        };
        self.settle(&request_id, unit, kill_at);
        Ok(output)
    }

    fn find(&mut self, target: &CancelTarget) -> Result<&mut Entry, CancelError> {
        let found = self.entries.values_mut().find(|e| match target {
            CancelTarget::Pid(pid) => e.record.pid == Some(*pid),
            CancelTarget::RequestId(id) => e.record.request_id == *id,
        });
        match found {
            Some(entry) if entry.record.state.is_active() => Ok(entry),
            Some(entry) => Err(CancelError::Ended {
                request_id: entry.record.request_id.clone(),
                state: entry.record.state.name(),
            }),
            None => Err(CancelError::NotFound {
                target: target.clone(),
            }),
        }
    }

    /// Removes the files of workloads that ended more than the retention
    /// period ago; running ones are never touched.
    pub fn prune(&mut self) {
        let cutoff = now_unix_ms().saturating_sub(self.config.retention.as_millis() as u64);
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.record.state.is_active())
            .filter(|(_, e)| {
                e.record
                    .finished_unix_ms
                    .unwrap_or(e.record.created_unix_ms)
                    < cutoff
            })
            .map(|(id, _)| id.clone())
            .collect();
        for entry in self.entries.values() {
            if let (false, Some(dir)) = (entry.record.state.is_active(), &entry.record.cgroup) {
                // Left behind by processes that outlived their workload.
                let _ = cgroup::remove(dir);
            }
        }
        for id in expired {
            if let Some(entry) = self.entries.remove(&id) {
                tracing::info!(request_id = %id, "removing the files of a workload past the retention period");
                for path in entry.paths.all() {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}
