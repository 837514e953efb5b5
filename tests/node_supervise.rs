//! herd's supervision over Node workers (`herd run`): respawn, rolling reload, graceful
//! shutdown, a dead primary, a worker that leaves on its own, bad commands and bad lines.

mod common;

use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use nix::sys::signal::Signal;

fn hello() -> String {
    node_fixture("hello.js")
}

/// Waits until `pid` answers a request (round-robin reaches every worker).
fn wait_served_by(s: &Server, pid: u32) {
    wait_for(&format!("worker {pid} to serve"), DEADLINE, || {
        get(s.addr(), "/").ok().filter(|r| r.pid() == pid)
    });
}

#[test]
fn a_killed_node_worker_is_replaced_and_only_its_own_requests_fail() {
    const CLIENTS: usize = 4;
    let mut s = Launch::herd_run(&["--workers", "2"], &["node", &hello()]).start();
    let before = s.workers();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load_until(s.addr(), CLIENTS, 100_000, false, stop.clone());
    wait_served_by(&s, before[0]);
    send_signal(before[0], Signal::SIGKILL).unwrap();
    let replacement = wait_for("a replacement worker", DEADLINE, || {
        let now = s.workers();
        (now.len() == 2 && !now.contains(&before[0])).then_some(now)
    });
    let new_pid = *replacement.iter().find(|p| !before.contains(p)).unwrap();
    wait_served_by(&s, new_pid);
    stop.store(true, Ordering::Relaxed);
    let r = merge(clients);
    assert!(r.ok > 20, "load ran: {r:?}");
    assert!(
        r.failed <= CLIENTS,
        "only requests the dead worker had taken may fail: {:?}",
        r.errors
    );
}

#[test]
fn sighup_reloads_node_workers_under_load_without_a_failed_request() {
    let mut s = Launch::herd_run(&["--workers", "2"], &["node", &hello()]).start();
    let before = s.workers();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = load_until(s.addr(), 2, 1_000_000, true, stop.clone());
    clients.extend(load_until(s.addr(), 2, 1_000_000, false, stop.clone()));
    wait_served_by(&s, before[0]);
    s.signal(Signal::SIGHUP);
    s.wait_log("reload complete", DEADLINE);
    let after = wait_for("old workers to exit", DEADLINE, || {
        let now = s.workers();
        (now.len() == 2 && now.iter().all(|p| !before.contains(p))).then_some(now)
    });
    for &p in &after {
        wait_served_by(&s, p);
    }
    stop.store(true, Ordering::Relaxed);
    let r = merge(clients);
    assert_eq!(r.failed, 0, "no failed request: {:?}", r.errors);
    assert!(r.ok > 20, "load ran: {r:?}");
}

#[test]
fn sigterm_lets_a_slow_node_request_finish_then_exits_0() {
    let mut s = Launch::herd_run(&["--workers", "1"], &["node", &hello()])
        .env("SLOW_MS", "1500")
        .start();
    let worker = s.workers()[0];
    let mut c = connect(s.addr());
    c.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // The request is in the worker's hands once the primary's copy is acked: wait for it.
    wait_for("the worker to take the slow request", DEADLINE, || {
        s.signal(Signal::SIGUSR2);
        s.last_stats().first().filter(|row| row[3] >= 1).map(|_| ())
    });
    s.signal(Signal::SIGTERM);
    let r = read_response(&mut BufReader::new(c), false).expect("the slow request completes");
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("slow "), "{}", r.text());
    assert!(s.wait_exit(DEADLINE).success(), "{}", s.log_text());
    wait_for("the worker to be gone", DEADLINE, || {
        (!alive(worker)).then_some(())
    });
}

#[test]
fn sigkill_of_the_primary_ends_every_node_worker() {
    let mut s = Launch::herd_run(&["--workers", "3"], &["node", &hello()]).start();
    let workers = s.workers();
    assert_eq!(workers.len(), 3);
    s.signal(Signal::SIGKILL);
    s.wait_exit(DEADLINE);
    wait_for("every node worker to exit", DEADLINE, || {
        workers.iter().all(|&p| !alive(p)).then_some(())
    });
}

#[test]
fn a_worker_that_disconnects_itself_is_no_crash_and_not_replaced() {
    let mut s = Launch::herd_run(&["--workers", "2"], &["node", &hello()])
        .env("LEAVE_AFTER_MS", "300")
        .start();
    let workers = s.workers();
    wait_for("both workers to leave", DEADLINE, || {
        workers.iter().all(|&p| !alive(p)).then_some(())
    });
    for p in &workers {
        s.wait_log(&format!("worker {p} exited (exit code 0)"), DEADLINE);
    }
    assert_eq!(s.count_log("died"), 0, "{}", s.log_text());
    assert_eq!(
        s.count_log("restarting"),
        0,
        "not replaced: {}",
        s.log_text()
    );
    assert!(s.workers().is_empty());
}

#[test]
fn a_command_that_does_not_exist_is_one_line_and_a_failure() {
    let out = std::process::Command::new(herd_bin())
        .args(["run", "--port", "0", "--", "no-such-program-herd-12"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: cannot run 'no-such-program-herd-12'"),
        "{err}"
    );
}

#[test]
fn a_command_that_exits_at_once_gives_up_after_backing_off() {
    let mut s = Launch::herd_run(&["--workers", "1"], &["node", "-e", "process.exit(3)"]).spawn();
    let status = s.wait_exit(DEADLINE);
    assert!(!status.success());
    let text = s.log_text();
    assert!(text.contains("restarting in"), "backed off: {text}");
    let last = s.find_log("error: ").expect("an error line");
    assert!(last.contains("exited 5 times before listening"), "{last}");
}

#[test]
fn lines_that_are_not_json_are_logged_and_ignored() {
    let s = Launch::herd_run(&["--workers", "1"], &["node", &hello()])
        .env("GARBAGE", "1")
        .start();
    s.wait_log("not JSON", DEADLINE);
    s.wait_log("sent NODE_WHAT; ignored", DEADLINE);
    let r = load(s.addr(), 4, 10, false);
    assert_eq!((r.ok, r.failed), (40, 0), "{:?}", r.errors);
}

#[test]
fn a_worker_that_never_listens_is_reported_after_the_start_timeout() {
    let quiet = node_fixture("quiet.js");
    let s = Launch::herd_run(
        &["--workers", "1", "--start-timeout", "300ms"],
        &["node", &quiet],
    )
    .spawn();
    s.wait_log("has not listened on a server within 300ms", DEADLINE);
}
