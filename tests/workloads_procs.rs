//! Workload processes that misbehave the way real ones do (issue 11): a
//! disk that cannot take the exit file, orphans nobody reaps, grandchildren
//! that leave the workload's session. Each test asserts what a user checks:
//! the true exit code, exactly one terminal event, every process gone.
//!
//! The disk tests mount a tmpfs or a read-only bind mount and need root;
//! they skip with a message otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::mounts::{is_root, Mounted};
use common::restart::{
    logs_dir, more_terminals, read_record, restart, start_workload, terminal, wait_until, Reaper,
};
use common::scenario::Scenario;
use serde_json::{json, Value};

/// The process exists and is not a zombie (a zombie is dead: it only waits
/// for its parent to collect its status).
fn live(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat[stat.rfind(')').unwrap() + 2..].chars().next();
    !matches!(state, Some('Z' | 'X'))
}

/// Every live process whose process group or session is `id`.
fn live_members(id: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        let (state, pgid, sid) = (fields[0], fields[2], fields[3]);
        if state != "Z" && (pgid == id.to_string() || sid == id.to_string()) {
            found.push(pid);
        }
    }
    found
}

fn wait_file(path: &Path) -> String {
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(path)
            .is_ok_and(|t| t.ends_with('\n'))),
        "{} never appeared",
        path.display()
    );
    std::fs::read_to_string(path).unwrap()
}

/// The one terminal event of `id`, and a check that no second follows.
fn only_terminal(s: &Scenario, id: &str, timeout: Duration) -> Value {
    let first = terminal(&s.client, &s.node, id, timeout);
    let more = more_terminals(&s.client, id, Duration::from_millis(1500));
    assert!(
        more.is_empty(),
        "more than one terminal event: {first} {more:?}"
    );
    first
}

// ---------------------------------------------------------------------------
// Case 3: the exit status survives a disk that cannot take the exit file.

#[test]
fn a_full_config_dir_keeps_the_true_exit_code() {
    needs_root!("a full config dir (tmpfs)");
    let config = tempfile::tempdir().unwrap();
    let _tmpfs = Mounted::tmpfs(config.path(), "2m");
    // Waits until it is told (the node has recorded it), fills the disk,
    // exits 3.
    let template = r#"while [ ! -e go ]; do sleep 0.02; done; cat /dev/zero > "$(dirname "$CYBERWAVE_PARAMS_FILE")/filler" 2>/dev/null; exit 3"#;
    let s = Scenario::start(|n| {
        n.env_var("CYBERWAVE_CONFIG_DIR", config.path().to_str().unwrap())
            .env_var("CYBERWAVE_TRAINING_CMD", template)
    });
    let reaper = Reaper::new(&s);
    start_workload(&s, &reaper, "full");
    std::fs::write(s.node.workdir().join("go"), "").unwrap();
    let ended = only_terminal(&s, "full", Duration::from_secs(10));
    assert!(
        !logs_dir(&s).join("training_full.exit.json").exists(),
        "the disk took the exit file: the test proves nothing"
    );
    assert_eq!(ended["event"], "failed", "{ended}");
    assert_eq!(ended["output"]["exit_code"], 3, "{ended}");
    let error = ended["error"].as_str().unwrap();
    assert!(
        error.contains("code 3") && !error.contains("killed"),
        "{ended}"
    );
}

#[test]
fn a_read_only_log_dir_keeps_exit_code_zero() {
    needs_root!("a read-only log dir (bind mount)");
    let template = "while [ ! -e go ]; do sleep 0.02; done; exit 0";
    let s = Scenario::start(|n| n.env_var("CYBERWAVE_TRAINING_CMD", template));
    let reaper = Reaper::new(&s);
    start_workload(&s, &reaper, "ro");
    let logs = logs_dir(&s);
    let read_only = Mounted::read_only(&logs);
    std::fs::write(s.node.workdir().join("go"), "").unwrap();
    let ended = only_terminal(&s, "ro", Duration::from_secs(10));
    assert!(!logs.join("training_ro.exit.json").exists());
    drop(read_only);
    assert_eq!(ended["event"], "completed", "{ended}");
    assert_eq!(ended["output"]["exit_code"], 0, "{ended}");
}

/// A node restarted after the exit file could not be written cannot know
/// the outcome: it says so, and why, instead of guessing.
#[test]
fn an_outcome_lost_with_the_node_is_unknown_not_killed() {
    needs_root!("a read-only log dir (bind mount)");
    let template = "while [ ! -e go ]; do sleep 0.02; done; exit 0";
    let s = Scenario::start(|n| n.env_var("CYBERWAVE_TRAINING_CMD", template));
    let reaper = Reaper::new(&s);
    start_workload(&s, &reaper, "lost");
    let supervisor = read_record(&s, "lost")["supervisor_pid"].as_i64().unwrap() as i32;
    reaper.add(supervisor);
    s.node.kill9();
    let read_only = Mounted::read_only(&logs_dir(&s));
    std::fs::write(s.node.workdir().join("go"), "").unwrap();
    assert!(wait_until(Duration::from_secs(5), || !live(supervisor)));
    drop(read_only);
    let node = restart(&s, template);
    let ended = terminal(&s.client, &node, "lost", Duration::from_secs(10));
    assert_eq!(ended["event"], "failed", "{ended}");
    assert_eq!(ended["output"]["exit_code"], Value::Null, "{ended}");
    let error = ended["error"].as_str().unwrap();
    assert!(
        error.contains("unknown") && !error.contains("killed"),
        "{ended}"
    );
    assert!(more_terminals(&s.client, "lost", Duration::from_secs(1)).is_empty());
}

// ---------------------------------------------------------------------------
// Case 13: `cancelled` follows the exit at once, even when nobody reaps.

/// Makes the node a child subreaper that never waits for strangers: every
/// orphan of its workloads that nothing else reaps stays a zombie for good,
/// as under a container's init that never reaps.
fn no_reaper(n: common::Node) -> common::Node {
    n.pre_exec(|| {
        // SAFETY: a plain prctl in the forked child.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    })
}

#[test]
fn cancel_is_reported_at_once_when_nobody_reaps_orphans() {
    // On SIGTERM the shell dies at once; the subshell outlives it by 0.2 s,
    // so it ends as an orphan, and no one collects its exit.
    let template =
        "echo $$ > group.pid; (trap 'sleep 0.2; exit 0' TERM; while :; do sleep 0.05; done) & sleep 1000";
    let s = Scenario::start(|n| no_reaper(n).env_var("CYBERWAVE_TRAINING_CMD", template));
    let reaper = Reaper::new(&s);
    let pid = start_workload(&s, &reaper, "orphans")["pid"]
        .as_i64()
        .unwrap() as i32;
    wait_file(&s.node.workdir().join("group.pid"));
    std::thread::sleep(Duration::from_millis(100));
    let sent = Instant::now();
    let answer =
        s.request(json!({"command": "cancel", "params": {"workload_request_id": "orphans"}}));
    assert_eq!(answer["status"], "ok", "{answer}");
    let cancelled = terminal(&s.client, &s.node, "orphans", Duration::from_secs(5));
    let took = sent.elapsed();
    eprintln!("cancel -> cancelled with an orphan nobody reaps: {took:?}");
    assert_eq!(cancelled["event"], "cancelled", "{cancelled}");
    assert!(more_terminals(&s.client, "orphans", Duration::from_secs(1)).is_empty());
    assert!(
        took < Duration::from_millis(1200),
        "cancelled {took:?} after the cancel"
    );
    assert_eq!(live_members(pid), Vec::<i32>::new(), "left running");
}

/// A node stopped while a cancel waits out its grace period stops at once;
/// the next node goes on with the cancel (SIGKILL when the grace period is
/// over) and reports it once.
#[test]
fn a_cancel_outlives_a_node_restart() {
    // SIGTERM is ignored by the shell and, inherited, by every child.
    // `trapped` says the trap is set: a cancel sent before it would end the
    // shell at once, whatever the node does.
    let template = "trap '' TERM; : > trapped; while :; do sleep 0.1; done";
    let s = Scenario::start(|n| n.env_var("CYBERWAVE_TRAINING_CMD", template));
    let reaper = Reaper::new(&s);
    let pid = start_workload(&s, &reaper, "stubborn")["pid"]
        .as_i64()
        .unwrap() as i32;
    let trapped = s.node.workdir().join("trapped");
    assert!(
        wait_until(Duration::from_secs(5), || trapped.exists()),
        "the workload never set its trap"
    );
    let sent = Instant::now();
    let answer = s.request(json!({"command": "cancel", "params": {
        "workload_request_id": "stubborn", "grace_seconds": 3}}));
    assert_eq!(answer["status"], "ok", "{answer}");
    common::restart::stop_gracefully(&s);
    assert!(
        !live_members(pid).is_empty(),
        "SIGKILLed before the grace period"
    );
    let node = restart(&s, template);
    let cancelled = terminal(&s.client, &node, "stubborn", Duration::from_secs(10));
    assert_eq!(cancelled["event"], "cancelled", "{cancelled}");
    assert!(
        sent.elapsed() >= Duration::from_millis(2900),
        "killed before the grace period: {:?}",
        sent.elapsed()
    );
    assert_eq!(live_members(pid), Vec::<i32>::new(), "left running");
    assert!(more_terminals(&s.client, "stubborn", Duration::from_secs(1)).is_empty());
}

// ---------------------------------------------------------------------------
// Case 7: a grandchild that calls setsid is stopped by cancel too.

const SETSID_TEMPLATE: &str = "setsid sh -c 'echo $$ > escaped.pid; exec sleep 1000' & sleep 1000";

fn cancel_reaches_a_setsid_grandchild(s: &Scenario) {
    let reaper = Reaper::new(s);
    start_workload(s, &reaper, "escape");
    let escaped: i32 = wait_file(&s.node.workdir().join("escaped.pid"))
        .trim()
        .parse()
        .unwrap();
    reaper.add(escaped);
    assert!(live(escaped));
    let grace = Duration::from_secs(3);
    let sent = Instant::now();
    let answer = s.request(json!({"command": "cancel", "params": {
        "workload_request_id": "escape", "grace_seconds": grace.as_secs()}}));
    assert_eq!(answer["status"], "ok", "{answer}");
    let cancelled = only_terminal(s, "escape", grace + Duration::from_secs(5));
    assert_eq!(cancelled["event"], "cancelled", "{cancelled}");
    assert!(
        wait_until(grace.saturating_sub(sent.elapsed()), || !live(escaped)),
        "the setsid grandchild {escaped} outlived the grace period"
    );
}

fn containment(s: &Scenario) -> String {
    let status = s.status();
    status["output"]["containment"]
        .as_str()
        .unwrap_or_else(|| panic!("no containment in {status}"))
        .to_owned()
}

#[test]
fn cancel_stops_a_setsid_grandchild() {
    let s = Scenario::start(|n| n.env_var("CYBERWAVE_TRAINING_CMD", SETSID_TEMPLATE));
    let kind = containment(&s);
    assert!(
        s.node.stderr().contains(&format!("containment: {kind}")),
        "{}",
        s.node.stderr()
    );
    if is_root() && cgroup2_writable() {
        assert_eq!(kind, "cgroup");
    }
    cancel_reaches_a_setsid_grandchild(&s);
}

/// Where the node cannot create cgroups (here: every cgroup2 mount
/// read-only in a mount namespace of its own, as in an unprivileged
/// container), it tracks the workload's descendants through /proc.
#[test]
fn cancel_stops_a_setsid_grandchild_without_cgroups() {
    needs_root!("a mount namespace with read-only cgroups");
    let mounts: Vec<std::ffi::CString> = cgroup2_mounts()
        .into_iter()
        .map(|p| std::ffi::CString::new(p.into_os_string().into_encoded_bytes()).unwrap())
        .collect();
    let s = Scenario::start(|n| {
        n.env_var("CYBERWAVE_TRAINING_CMD", SETSID_TEMPLATE)
            .pre_exec(move || read_only_cgroups(&mounts))
    });
    assert_eq!(containment(&s), "process-tree");
    cancel_reaches_a_setsid_grandchild(&s);
}

fn cgroup2_mounts() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|r| r.starts_with("cgroup2 "))
        })
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .collect()
}

fn cgroup2_writable() -> bool {
    cgroup2_mounts().iter().any(|m| {
        let probe = m.join(format!("cw-probe-{}", std::process::id()));
        std::fs::create_dir(&probe).is_ok() && std::fs::remove_dir(&probe).is_ok()
    })
}

/// In the forked child: a mount namespace of its own, every cgroup2 mount
/// in it read-only.
fn read_only_cgroups(mounts: &[std::ffi::CString]) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: plain syscalls with NUL-terminated strings made before fork.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        for mount in mounts {
            check(libc::mount(
                std::ptr::null(),
                mount.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                std::ptr::null(),
            ))?;
        }
    }
    Ok(())
}
