//! Events and output that must survive outages: the terminal event of a
//! workload that ends while the broker is down (kept in the on-disk outbox
//! and sent once it returns), an undelivered event that survives a node
//! crash, and live output that resumes where it stopped across a restart.
//!
//! Every process a test leaves running (workloads and their supervisors) is
//! SIGKILLed by process group when the test ends, pass or fail: see
//! [`Reaper`].

mod common;

use std::time::{Duration, Instant};

use common::restart::{
    alive, client_back, collect_stdout, go, logs_dir, more_terminals, outbox_files, restart,
    spawn_again, start_workload, stop_gracefully, terminal, training, wait_until, Gate, Reaper,
};
use common::scenario::Scenario;
use common::{Broker, FakeBackend};

// ---------------------------------------------------------------------------
// The outbox: broker outages and crashes

/// A workload that ends (exit 0) once the test says [`go`], so that it
/// surely ends while the broker is down, however slow the machine.
const UNTIL_GO_THEN_EXIT_0: &str = "while [ ! -e go ]; do sleep 0.05; done; exit 0";

#[test]
fn event_of_a_workload_ending_while_the_broker_is_down_arrives_after_it_returns() {
    let broker = Broker::start();
    let gate = Gate::start(broker.port());
    let mut s = Scenario::start_with(broker, FakeBackend::start(), |n| {
        n.env_var("CYBERWAVE_TRAINING_CMD", UNTIL_GO_THEN_EXIT_0)
            .env_var("CYBERWAVE_MQTT_PORT", gate.port().to_string())
    });
    let reaper = Reaper::new(&s);
    let pid = start_workload(&s, &reaper, "out-1")["pid"]
        .as_i64()
        .unwrap() as i32;
    let connections = s.client.connections();

    gate.close();
    s.broker.stop();
    go(&s);
    assert!(
        wait_until(Duration::from_secs(3), || !alive(pid)),
        "the workload did not end"
    );
    assert!(
        wait_until(Duration::from_secs(3), || outbox_files(&s).len() == 1),
        "the outbox holds {:?}; node log:\n{}",
        outbox_files(&s),
        s.node.stderr()
    );
    assert!(s.node.try_status().is_none(), "the node must keep running");

    s.broker.restart();
    client_back(&s, connections);
    gate.open();
    let completed = terminal(&s.client, &s.node, "out-1", Duration::from_secs(10));
    assert_eq!(completed["event"], "completed", "{completed}");
    assert_eq!(completed["output"]["exit_code"], 0);
    assert!(
        wait_until(Duration::from_secs(3), || outbox_files(&s).is_empty()),
        "the outbox was not emptied after the PUBACK: {:?}",
        outbox_files(&s)
    );
}

#[test]
fn undelivered_event_survives_a_node_crash() {
    const TEMPLATE: &str = "while [ ! -e go ]; do sleep 0.05; done; exit 5";
    let mut s = training(TEMPLATE);
    let reaper = Reaper::new(&s);
    let pid = start_workload(&s, &reaper, "crash-1")["pid"]
        .as_i64()
        .unwrap() as i32;
    let connections = s.client.connections();
    s.broker.stop();
    go(&s);
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
    assert!(
        wait_until(Duration::from_secs(3), || outbox_files(&s).len() == 1),
        "the outbox holds {:?}; node log:\n{}",
        outbox_files(&s),
        s.node.stderr()
    );
    s.node.kill9();

    s.broker.restart();
    client_back(&s, connections);
    let node = spawn_again(&s, TEMPLATE);
    let failed = terminal(&s.client, &node, "crash-1", Duration::from_secs(10));
    assert_eq!(failed["event"], "failed", "{failed}");
    assert_eq!(failed["output"]["exit_code"], 5, "{failed}");
    assert_eq!(failed["output"]["pid"], pid);
    let extra = more_terminals(&s.client, "crash-1", Duration::from_secs(1));
    assert!(extra.is_empty(), "a second terminal event: {extra:?}");
    assert!(
        wait_until(Duration::from_secs(3), || outbox_files(&s).is_empty()),
        "the outbox was not emptied after the PUBACK: {:?}",
        outbox_files(&s)
    );
}

// ---------------------------------------------------------------------------
// Live output across a restart

/// Assembles `chunks` by offset. `strict`: each chunk must start exactly
/// where the previous one ended (no gap, no overlap). Otherwise overlaps
/// are allowed as long as the repeated bytes are the ones already placed
/// (a receiver that places chunks by offset gets the file either way);
/// gaps never are. Returns a description of the first problem.
fn assemble(chunks: &[(u64, String)], expected: &str, strict: bool) -> Result<(), String> {
    let mut sorted = chunks.to_vec();
    sorted.sort_by_key(|(offset, _)| *offset);
    let mut assembled = String::new();
    for (offset, data) in &sorted {
        let at = assembled.len() as u64;
        let offset_usize = *offset as usize;
        if *offset > at {
            return Err(format!("gap: bytes {at}..{offset} were never sent"));
        }
        if *offset < at {
            let repeated = (at - offset) as usize;
            if strict {
                return Err(format!(
                    "overlap: a chunk at offset {offset} ({} bytes) repeats bytes {offset}..{at}",
                    data.len()
                ));
            }
            let overlap = repeated.min(data.len());
            if data.as_bytes()[..overlap]
                != assembled.as_bytes()[offset_usize..offset_usize + overlap]
            {
                return Err(format!(
                    "a repeated chunk at offset {offset} disagrees with the bytes sent before"
                ));
            }
            assembled.push_str(&data[overlap..]);
            continue;
        }
        assembled.push_str(data);
    }
    if assembled != expected {
        return Err(format!(
            "assembled {} bytes differ from the {}-byte log file",
            assembled.len(),
            expected.len()
        ));
    }
    Ok(())
}

/// Runs a workload printing 30 numbered lines over ~3 s, restarts the node
/// (SIGTERM, new process) `restart_after` into it, and returns the stdout
/// chunks received from both nodes (arrival order) and the log file.
fn live_output_across_a_restart(restart_after: Duration) -> (Vec<(u64, String)>, String) {
    const TEMPLATE: &str = "for i in $(seq 1 30); do echo line-$i; sleep 0.1; done";
    let s = training(TEMPLATE);
    s.client.subscribe(&s.topic(&s.uuid, "logs"));
    let reaper = Reaper::new(&s);
    start_workload(&s, &reaper, "live-1");

    let mut chunks = Vec::new();
    let early = collect_stdout(&s, "live-1", Instant::now() + restart_after, &mut chunks);
    assert!(early.is_none(), "ended too soon: {early:?}");
    let before_restart = chunks.len();
    assert!(before_restart > 0, "no live output before the restart");
    stop_gracefully(&s);
    let node = restart(&s, TEMPLATE);

    let done = collect_stdout(
        &s,
        "live-1",
        Instant::now() + Duration::from_secs(10),
        &mut chunks,
    )
    .unwrap_or_else(|| panic!("no terminal event; node log:\n{}", node.stderr()));
    assert_eq!(done["event"], "completed", "{done}");
    // Anything published just before the terminal event but delivered after.
    collect_stdout(
        &s,
        "live-1",
        Instant::now() + Duration::from_millis(500),
        &mut chunks,
    );
    assert!(
        chunks.len() > before_restart,
        "the restarted node published no live output"
    );

    let file = std::fs::read_to_string(logs_dir(&s).join("training_live-1.stdout.log")).unwrap();
    let expected: String = (1..=30).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(file, expected);
    (chunks, file)
}

#[test]
fn live_output_survives_a_restart_without_gaps() {
    let (chunks, file) = live_output_across_a_restart(Duration::from_millis(1200));
    if let Err(problem) = assemble(&chunks, &file, false) {
        panic!("{problem}\nchunks in arrival order: {chunks:?}");
    }
}

/// The restart comes 0.8 s in: before the first node's first save of its
/// offsets (at most one a second), so only a save at the graceful stop can
/// keep the next node from sending the same bytes again.
#[test]
fn live_output_resumes_after_a_restart_without_gaps_or_repeats() {
    let (chunks, file) = live_output_across_a_restart(Duration::from_millis(800));
    if let Err(problem) = assemble(&chunks, &file, true) {
        panic!("{problem}\nchunks in arrival order: {chunks:?}");
    }
}
