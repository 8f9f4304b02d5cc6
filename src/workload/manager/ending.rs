//! The second half of a workload's life: cancel, exit, the terminal event,
//! live output, retention.
//!
//! A workload has ended when its supervisor has, and, after a cancel, when
//! every process of the workload has too ([`Unit::settle`]). Its exit
//! status comes from the supervisor's exit file or, where the disk could
//! not take that file, from the supervisor's own exit status; where neither
//! is known the terminal event says the outcome is unknown, and why.

use std::os::unix::process::ExitStatusExt;

use super::*;

/// What the node saw of a supervisor's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SupervisorEnd {
    /// It exited with the workload's status (code, or 128 + signal).
    Exited(i32),
    /// It was killed by this signal.
    Killed(i32),
    /// It was not this node's child (adopted after a restart): its status
    /// went to someone else.
    NotSeen,
}

impl SupervisorEnd {
    fn from(status: Option<ExitStatus>) -> SupervisorEnd {
        match status {
            Some(s) => match (s.code(), s.signal()) {
                (Some(code), _) => SupervisorEnd::Exited(code),
                (None, Some(signal)) => SupervisorEnd::Killed(signal),
                _ => SupervisorEnd::NotSeen,
            },
            None => SupervisorEnd::NotSeen,
        }
    }
}

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

    /// The supervisor is gone (`status`: its exit status, when the node is
    /// its parent). Returns the terminal event, or `None` while there is
    /// still something to wait for.
    pub fn on_exited(&mut self, request_id: &str, status: Option<ExitStatus>) -> Option<Terminal> {
        let entry = self
            .entries
            .get_mut(request_id)
            .filter(|e| e.record.state.is_active())?;
        let end = SupervisorEnd::from(status);
        // The watch on an orphaned workload knows nothing new: keep what
        // the supervisor's own end said.
        if entry.supervisor_end.is_none() || end != SupervisorEnd::NotSeen {
            entry.supervisor_end = Some(end);
        }
        let exit = read_json::<ExitFile>(&entry.paths.exit()).ok().flatten();
        let record = &entry.record;
        let workload = record.pid.zip(record.start_time);
        // A supervisor that exited on its own has waited for the workload.
        let may_run_on = !matches!(end, SupervisorEnd::Exited(_));
        if exit.is_none() && may_run_on && !entry.orphaned {
            if let Some((pid, start)) = workload.filter(|(p, s)| procfs::is_running(*p, *s)) {
                // The supervisor was killed but the workload runs on: watch it
                // directly (its exit code is lost with the supervisor).
                tracing::warn!(
                    pid,
                    request_id,
                    "the workload's supervisor died; watching the workload itself"
                );
                entry.orphaned = true;
                let events = self.events.clone();
                let id = request_id.to_owned();
                tokio::spawn(async move {
                    watch::process_exit(pid, start).await;
                    let _ = events.send(WorkloadEvent::Exited {
                        request_id: id,
                        status: None,
                    });
                });
                return None;
            }
        }
        if entry.settling {
            return None;
        }
        Some(self.finish(request_id, exit))
    }

    /// Every process of a cancelled workload is gone.
    pub fn on_settled(&mut self, request_id: &str) -> Option<Terminal> {
        let entry = self
            .entries
            .get_mut(request_id)
            .filter(|e| e.record.state.is_active())?;
        entry.settling = false;
        // The supervisor reaps the last process, writes the exit file and
        // exits: `Exited` follows in a moment and finishes.
        entry.supervisor_end?;
        let exit = read_json::<ExitFile>(&entry.paths.exit()).ok().flatten();
        Some(self.finish(request_id, exit))
    }

    /// Waits, off the event loop, for every process of the workload to end,
    /// SIGKILLing whatever is left from `kill_at_ms` on; then reports
    /// `Settled`.
    pub(super) fn settle(&self, request_id: &str, unit: Unit, kill_at_ms: u64) {
        let events = self.events.clone();
        let id = request_id.to_owned();
        tokio::task::spawn_blocking(move || {
            // A node that stops leaves the rest to the next one.
            unit.settle(kill_at_ms, &id, || !events.is_closed());
            let _ = events.send(WorkloadEvent::Settled { request_id: id });
        });
    }

    fn finish(&mut self, request_id: &str, exit: Option<ExitFile>) -> Terminal {
        let entry = self
            .entries
            .get_mut(request_id)
            .expect("checked by the caller");
        let from_status = exit.is_none();
        let (exit, unknown) = match (exit, entry.supervisor_end) {
            (Some(exit), _) => (Some(exit), None),
            (None, Some(SupervisorEnd::Exited(code))) => {
                tracing::warn!(
                    request_id,
                    "no exit file {}: the exit code {code} comes from the supervisor's own exit status",
                    entry.paths.exit().display()
                );
                (Some(ExitFile::from_shim_status(code)), None)
            }
            (None, end) => (None, Some(unknown_reason(&entry.record, &entry.paths, end))),
        };
        let ending = match unknown {
            Some(reason) if entry.record.cancel.is_none() => Ending {
                state: WorkloadState::Failed,
                error: Some(format!("the workload's outcome is unknown: {reason}")),
            },
            _ => classify(&entry.record, exit.as_ref()),
        };
        let messages = match entry.tail.as_mut() {
            Some(tail) => tail.poll(&entry.record, &entry.paths, true),
            None => OutputTail::load(&entry.paths).poll(&entry.record, &entry.paths, true),
        };
        let limit = self.config.max_result_bytes;
        let mut output = terminal_output(&entry.record, &entry.paths, exit.as_ref(), limit);
        if from_status {
            // Only the code survived: no resource figures to report.
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
            _ => self.stats.failed += 1,
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
    pub fn cancel(&mut self, params: &Map<String, Value>) -> Result<Value, String> {
        let cancel = CancelParams::parse(params)?;
        let entry = self.find(&cancel.target)?;
        let record = &entry.record;
        let mut unit = record.process().as_ref().map(Unit::of).ok_or_else(|| {
            format!(
                "workload {} is still starting; retry the cancel in a moment",
                record.request_id
            )
        })?;
        let pid = record.pid.unwrap_or_default();
        // Only processes this node started: the workload's cgroup, or the
        // supervisor's descendants identified by pid and start time.
        if unit.signal(cancel.signal) == 0 {
            return Err(format!(
                "workload {} (pid {pid}) has already ended; nothing was signalled",
                record.request_id
            ));
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

    fn find(&mut self, target: &CancelTarget) -> Result<&mut Entry, String> {
        let found = self.entries.values_mut().find(|e| match target {
            CancelTarget::Pid(pid) => e.record.pid == Some(*pid),
            CancelTarget::RequestId(id) => e.record.request_id == *id,
        });
        match found {
            Some(entry) if entry.record.state.is_active() => Ok(entry),
            Some(entry) => Err(format!(
                "workload {} already ended ({}); nothing was signalled",
                entry.record.request_id,
                entry.record.state.name()
            )),
            None => Err(format!(
                "no running workload with {target} was started by this node; nothing was signalled"
            )),
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

/// Why a workload's exit status is not known, in words for the event.
fn unknown_reason(
    record: &WorkloadRecord,
    paths: &WorkloadPaths,
    end: Option<SupervisorEnd>,
) -> String {
    let Some(pid) = record.supervisor_pid else {
        return "the node stopped while starting it, before its supervisor reported".into();
    };
    let supervisor = format!("its supervisor (pid {pid})");
    let exit_file = paths.exit();
    match end {
        Some(SupervisorEnd::Killed(signal)) => format!(
            "{supervisor} was killed by {} before it could record the exit status",
            crate::supervised::signal_name(signal)
        ),
        _ => format!(
            "{supervisor} ended without writing {} (check free space and permissions there), and its own exit status went to the process that reaped it, not to this node (restarted since the workload started)",
            exit_file.display()
        ),
    }
}
