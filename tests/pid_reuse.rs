//! A pid reused by a stranger after a workload ended while the node was
//! down: the next node neither adopts nor signals it.
//!
//! Its own test binary, so that nothing runs beside it: to hand the
//! workload's old pid to a stranger, the test rewinds the kernel's pid
//! counter (`ns_last_pid`) for the whole machine, and a test running in
//! parallel would get recently freed pids too, and could then take one of
//! its own ended processes for alive.

mod common;

use std::thread;
use std::time::Duration;

use common::restart::{
    active, ask_status, group_alive, kill_while_the_node_is_down, request, restart, start_workload,
    stop_gracefully, stranger_with_pid, terminal, training, wait_until, Reaper,
};
use serde_json::json;

#[test]
fn reused_pid_of_an_ended_workload_is_never_adopted_or_signalled() {
    const TEMPLATE: &str = "sleep 30";
    let s = training(TEMPLATE);
    let reaper = Reaper::new(&s);
    let pid = start_workload(&s, &reaper, "reuse-1")["pid"]
        .as_i64()
        .unwrap() as i32;
    stop_gracefully(&s);
    kill_while_the_node_is_down(&s, pid, "reuse-1");

    // Until its whole group is reaped, the number is still in use (as the
    // group's id) and cannot be handed out again.
    assert!(wait_until(Duration::from_secs(5), || !group_alive(pid)));
    // The same pid, now a stranger leading a process group of its own.
    let Some(mut stranger) = stranger_with_pid(pid) else {
        eprintln!("skipped: cannot make a process with pid {pid} (needs root for ns_last_pid)");
        return;
    };
    reaper.add(stranger.pid());

    let node = restart(&s, TEMPLATE);
    let failed = terminal(&s.client, &node, "reuse-1", Duration::from_secs(5));
    assert_eq!(failed["event"], "failed", "{failed}");
    assert_eq!(failed["output"]["signal"], "SIGKILL", "{failed}");
    let status = ask_status(&s, &node);
    assert!(active(&status).is_empty(), "{status}");

    for (n, params) in [
        json!({"pid": pid}),
        json!({"workload_request_id": "reuse-1"}),
    ]
    .into_iter()
    .enumerate()
    {
        let cancel = request(
            &s,
            &node,
            json!({"command": "cancel", "request_id": format!("cancel-{n}"), "params": params}),
        );
        assert_eq!(cancel["status"], "error", "{cancel}");
        assert!(
            cancel["error"]
                .as_str()
                .unwrap()
                .contains("nothing was signalled"),
            "{cancel}"
        );
    }
    thread::sleep(Duration::from_millis(200));
    assert!(
        stranger.alive(),
        "the stranger with the reused pid was signalled"
    );
}
