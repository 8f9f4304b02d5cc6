//! The second half of a workload's life: cancel, exit, the terminal event,
//! live output, retention.

use super::*;

/// How often a cancelled workload's process group is checked for leftovers.
const SETTLE_POLL: Duration = Duration::from_millis(50);

/// True when process group `pid` is still the workload's: its leader is the
/// process that started at `start`, or the leader is gone and its group
/// lives on.
fn is_ours(pid: i32, start: u64) -> bool {
    if procfs::is_same_process(pid, start) {
        return true;
    }
    procfs::start_time(pid).is_none() && procfs::group_alive(pid)
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

    /// The supervisor is gone. Returns the terminal event, or `None` while
    /// there is still something to wait for.
    pub fn on_exited(&mut self, request_id: &str) -> Option<Terminal> {
        let entry = self
            .entries
            .get_mut(request_id)
            .filter(|e| e.record.state.is_active())?;
        let exit = read_json::<ExitFile>(&entry.paths.exit()).ok().flatten();
        let record = &entry.record;
        let workload = record.pid.zip(record.start_time);
        if exit.is_none() && !entry.orphaned {
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
                    let _ = events.send(WorkloadEvent::Exited { request_id: id });
                });
                return None;
            }
        }
        let cancelled = record
            .cancel
            .as_ref()
            .map(|c| (c.requested_unix_ms, c.grace_seconds));
        if let (Some((requested_ms, grace)), Some(pid)) = (cancelled, record.pid) {
            if procfs::group_alive(pid) {
                self.settle(request_id, pid, requested_ms, grace);
                return None;
            }
        }
        Some(self.finish(request_id, exit))
    }

    /// A cancelled workload's group is gone (or was killed).
    pub fn on_settled(&mut self, request_id: &str) -> Option<Terminal> {
        let entry = self
            .entries
            .get(request_id)
            .filter(|e| e.record.state.is_active())?;
        let exit = read_json::<ExitFile>(&entry.paths.exit()).ok().flatten();
        Some(self.finish(request_id, exit))
    }

    /// Waits for every process of the group to end, SIGKILLing whatever is
    /// left when the grace period is over; then reports `Settled`.
    fn settle(&self, request_id: &str, pgid: i32, requested_ms: u64, grace_seconds: f64) {
        let deadline_ms = requested_ms + (grace_seconds * 1000.0) as u64;
        let events = self.events.clone();
        let id = request_id.to_owned();
        tokio::spawn(async move {
            while procfs::group_alive(pgid) {
                if now_unix_ms() >= deadline_ms {
                    let _ = kill(Pid::from_raw(-pgid), Signal::SIGKILL);
                }
                tokio::time::sleep(SETTLE_POLL).await;
            }
            let _ = events.send(WorkloadEvent::Settled { request_id: id });
        });
    }

    fn finish(&mut self, request_id: &str, exit: Option<ExitFile>) -> Terminal {
        let entry = self
            .entries
            .get_mut(request_id)
            .expect("checked by the caller");
        let ending = classify(&entry.record, exit.as_ref());
        let messages = match entry.tail.as_mut() {
            Some(tail) => tail.poll(&entry.record, &entry.paths, true),
            None => OutputTail::load(&entry.paths).poll(&entry.record, &entry.paths, true),
        };
        let mut output = terminal_output(&entry.record, &entry.paths, exit.as_ref());
        if let (Some(bytes), Some(resources)) = (entry.gpu_memory_max, output.get_mut("resources"))
        {
            resources["gpu_memory_bytes"] = json!(bytes);
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

    /// Signals the workload's process group; `Ok` is the `cancel` output.
    pub fn cancel(&mut self, params: &Map<String, Value>) -> Result<Value, String> {
        let cancel = CancelParams::parse(params)?;
        let entry = self.find(&cancel.target)?;
        let record = &entry.record;
        let (pid, start) = record.pid.zip(record.start_time).ok_or_else(|| {
            format!(
                "workload {} is still starting; retry the cancel in a moment",
                record.request_id
            )
        })?;
        // Only the group of a process this node started: the leader is still
        // the same process, or it is gone and only its group lives on (Linux
        // never hands out a pid still used as a group id). A pid that now
        // names another process belongs to a stranger.
        if !is_ours(pid, start) {
            return Err(format!(
                "workload {} (pid {pid}) has already ended; nothing was signalled",
                record.request_id
            ));
        }
        kill(Pid::from_raw(-pid), cancel.signal).map_err(|e| {
            format!(
                "cannot signal workload {} (pid {pid}): {e}",
                record.request_id
            )
        })?;
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
        entry.record.cancel = Some(super::super::record::CancelRequest {
            signal: signal.to_owned(),
            requested_unix_ms: now_unix_ms(),
            grace_seconds: cancel.grace.as_secs_f64(),
        });
        if let Err(e) = entry.record.save(&entry.paths) {
            tracing::warn!("cannot save the cancel of {request_id}: {e}");
        }
        if cancel.signal != Signal::SIGKILL {
            let events = self.events.clone();
            tokio::spawn(async move {
                tokio::time::sleep(cancel.grace).await;
                let _ = events.send(WorkloadEvent::CancelDeadline { request_id });
            });
        }
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

    /// SIGKILL for a cancelled workload that outlived its grace period.
    pub fn on_cancel_deadline(&mut self, request_id: &str) {
        let Some(entry) = self
            .entries
            .get(request_id)
            .filter(|e| e.record.state.is_active())
        else {
            return;
        };
        let leader = entry.record.pid.zip(entry.record.start_time);
        if let Some((pid, _)) = leader.filter(|(pid, start)| is_ours(*pid, *start)) {
            tracing::warn!(
                pid,
                request_id,
                "the workload outlived its cancel grace period: sending SIGKILL"
            );
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
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
