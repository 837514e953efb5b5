//! Never lose a connection (issue 4): acked handoff with reclaim, respawn with backoff,
//! graceful shutdown, zero-downtime reload, and no descriptor leaks in the primary.

mod common;

use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

#[test]
fn connections_a_worker_never_acked_are_served_by_another() {
    // Worker 1 reads nothing more from its channel after 4 connections, and dies once those are
    // done: what waits unread in its channel (given, so only there) is read back.
    let server = Launch::herd(&["--workers", "2"])
        .env("HERD_FAULT_EXIT_AFTER", "1:5")
        .start();
    let r = load(server.addr(), 4, 25, false);
    assert_eq!(r.failed, 0, "every connection answered: {:?}", r.errors);
    assert_eq!(r.ok, 100);
    server.wait_log("exiting on purpose", DEADLINE);
    server.wait_log("connections unacked; handing them to others", DEADLINE);
}

#[test]
fn a_killed_worker_is_respawned_and_only_its_own_requests_fail() {
    const CLIENTS: usize = 4;
    let mut server = Server::start(&["--workers", "2"]);
    let before = server.workers();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load_until(server.addr(), CLIENTS, 100_000, false, stop.clone());
    wait_for("traffic to flow", DEADLINE, || {
        (cpu_ticks(before[0]) > 2).then_some(())
    });
    send_signal(before[0], Signal::SIGKILL).unwrap();
    let replacement = wait_for("a replacement worker", DEADLINE, || {
        let now = server.workers();
        (now.len() == 2 && !now.contains(&before[0])).then_some(now)
    });
    let new_pid = *replacement.iter().find(|p| !before.contains(p)).unwrap();
    // Let it serve under load before stopping the clients.
    wait_for("the new worker to serve", DEADLINE, || {
        (cpu_ticks(new_pid) > 2).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let r = merge(clients);
    assert!(r.ok > 100, "load ran: {r:?}");
    assert!(
        r.failed <= CLIENTS,
        "only requests the dead worker had accepted may fail (at most one per client): {:?}",
        r.errors
    );
    assert!(r.by_pid.contains_key(&new_pid), "the replacement served");
}

/// Reloads a 2-worker cluster under load from `keepalive` keep-alive clients and `close`
/// new-connection clients: every request succeeds and every pid is replaced.
fn reload_under_load(policy: &str, keepalive: usize, close: usize) {
    let mut server = Server::start(&["--workers", "2", "--policy", policy]);
    let before = server.workers();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = load_until(server.addr(), keepalive, 1_000_000, true, stop.clone());
    clients.extend(load_until(
        server.addr(),
        close,
        1_000_000,
        false,
        stop.clone(),
    ));
    wait_for("traffic to flow", DEADLINE, || {
        (cpu_ticks(before[0]) > 1).then_some(())
    });
    server.signal(Signal::SIGHUP);
    server.wait_log("reload complete", DEADLINE);
    let after = wait_for("old workers to exit", DEADLINE, || {
        let now = server.workers();
        (now.len() == 2 && now.iter().all(|p| !before.contains(p))).then_some(now)
    });
    wait_for("new workers to serve", DEADLINE, || {
        after.iter().all(|&p| cpu_ticks(p) > 1).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let r = merge(clients);
    assert_eq!(r.failed, 0, "{policy}: no failed request: {:?}", r.errors);
    let served = |pids: &[u32]| pids.iter().all(|p| r.by_pid.contains_key(p));
    assert!(served(&before), "{policy}: old pids served");
    assert!(served(&after), "{policy}: new pids served");
}

#[test]
fn sighup_replaces_every_worker_without_a_failed_request() {
    reload_under_load("round-robin", 2, 2);
}

/// Sends a one-second `/work` request to the only worker and returns once the worker is busy
/// with it (its CPU time has started to climb). Returns the worker's pid and the connection.
fn start_slow_request(server: &mut Server) -> (u32, std::net::TcpStream) {
    let worker = server.workers()[0];
    // Read before sending: a starved test thread that looked only afterwards could find the
    // worker nearly done and never see it climb by five more ticks.
    let start_ticks = cpu_ticks(worker);
    let mut s = connect(server.addr());
    s.write_all(b"GET /work?us=1000000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    wait_for("the worker to be busy", DEADLINE, || {
        (cpu_ticks(worker) >= start_ticks + 5).then_some(())
    });
    (worker, s)
}

#[test]
fn sigterm_lets_a_slow_request_finish_then_exits() {
    let mut server = Server::start(&["--workers", "1"]);
    let (worker, s) = start_slow_request(&mut server);
    server.signal(Signal::SIGTERM);
    let resp = read_response(&mut BufReader::new(s), false).expect("the slow request completes");
    assert_eq!(resp.status, 200);
    assert!(resp.text().contains("worked"), "{}", resp.text());
    assert!(server.wait_exit(DEADLINE).success());
    assert!(!alive(worker));
}

#[test]
fn a_worker_that_always_fails_at_start_is_backed_off() {
    let start = Instant::now();
    let mut server = Launch::herd(&["--workers", "1"])
        .env("HERD_FAULT_FAIL_START", "1")
        .spawn();
    server.wait_log("crash-looping", DEADLINE);
    // Backoff 100, 150, 225, 338 ms before the fifth death: at least ~0.8 s, never a spin.
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "{:?}",
        start.elapsed()
    );
    assert!(server.find_log("before coming online").is_some());
    wait_for("five seconds of crash loop", DEADLINE, || {
        (start.elapsed() >= Duration::from_secs(5)).then_some(())
    });
    let deaths = server.count_log("died (exit code 3)");
    assert!(
        (5..=12).contains(&deaths),
        "bounded restarts in 5 s: {deaths}"
    );
    assert!(alive(server.pid()), "the primary stays up");
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(DEADLINE).success());
}

#[test]
fn the_primary_does_not_leak_descriptors() {
    let server = Server::start(&["--workers", "2"]);
    let baseline = fd_count(server.pid());
    let r = load(server.addr(), 4, 2_500, false);
    assert_eq!(r.failed, 0, "{:?}", &r.errors[..r.errors.len().min(5)]);
    assert_eq!(r.ok, 10_000);
    wait_for(
        "the primary's descriptors to return to baseline",
        DEADLINE,
        || (fd_count(server.pid()) == baseline).then_some(()),
    );
}

/// Opens a keep-alive connection, has it served once, and keeps it open: with
/// `--max-connections 1` it occupies the worker's only slot until dropped.
fn occupy(server: &Server) -> BufReader<std::net::TcpStream> {
    let mut s = connect(server.addr());
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_response(&mut r, false).unwrap().status, 200);
    r
}

#[test]
fn overload_is_held_in_a_bounded_queue_and_nothing_is_dropped() {
    // One worker that serves one connection at a time; the primary may queue 8 more.
    let server = Server::start(&[
        "--workers",
        "1",
        "--max-connections",
        "1",
        "--handoff-window",
        "1",
        "--max-pending",
        "8",
        "--keepalive-timeout",
        "60s",
    ]);
    let baseline = fd_count(server.pid());
    let busy = occupy(&server);
    // 60 clients queue up behind the busy connection.
    let waiting = load_until(
        server.addr(),
        60,
        1,
        false,
        Arc::new(AtomicBool::new(false)),
    );
    // It accepts 8, hands 1 to the worker (given: the worker's is the only copy) and pauses
    // until its queue is half empty: 7 held at least.
    wait_for("the primary to stop accepting", DEADLINE, || {
        (fd_count(server.pid()) >= baseline + 7).then_some(())
    });
    // Held: at most 8 in the queue and 1 in the worker's window (kept until acked when the
    // worker is near its descriptor limit); the kernel's backlog holds the rest.
    let held = fd_count(server.pid()) - baseline;
    assert!(
        held <= 9,
        "the primary's queue is bounded: {held} sockets held"
    );
    drop(busy);
    let r = merge(waiting);
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert_eq!(r.ok, 60);
}

#[test]
fn reload_works_for_every_policy() {
    for policy in ["least-connections", "shared", "reuseport"] {
        reload_under_load(policy, 1, 3);
    }
}

#[test]
fn a_second_sigint_stops_at_once() {
    let mut server = Server::start(&["--workers", "1", "--shutdown-timeout", "60s"]);
    let (worker, s) = start_slow_request(&mut server);
    server.signal(Signal::SIGINT);
    server.wait_log("shutting down", DEADLINE);
    server.signal(Signal::SIGINT);
    server.wait_log("asked twice to stop", DEADLINE);
    assert!(server.wait_exit(DEADLINE).success());
    assert!(!alive(worker));
    assert!(
        read_response(&mut BufReader::new(s), false).is_err(),
        "the request in flight was cut off, not finished"
    );
}

#[test]
fn a_worker_at_its_limit_leaves_connections_in_the_kernel_queue() {
    for policy in ["shared", "reuseport"] {
        let server = Server::start(&[
            "--workers",
            "1",
            "--policy",
            policy,
            "--max-connections",
            "1",
            "--keepalive-timeout",
            "60s",
        ]);
        let busy = occupy(&server);
        let stop = Arc::new(AtomicBool::new(false));
        let waiting = load_until(server.addr(), 10, 1, false, stop);
        // While the worker is full, nothing is answered (and nothing is accepted and dropped).
        let mut probe = connect(server.addr());
        probe
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        probe
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut byte = [0u8; 1];
        let early = std::io::Read::read(&mut probe, &mut byte);
        assert!(
            early.is_err(),
            "{policy}: a full worker answered early: {early:?}"
        );
        drop(busy);
        let r = merge(waiting);
        assert_eq!(r.failed, 0, "{policy}: {:?}", r.errors);
        assert_eq!(r.ok, 10, "{policy}");
        probe
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let resp = read_response(&mut BufReader::new(probe), false).unwrap();
        assert_eq!(
            resp.status, 200,
            "{policy}: the probe is served once there is room"
        );
    }
}

#[test]
fn running_out_of_descriptors_pauses_accepting_without_spinning() {
    // A primary with 24 descriptors: a few for itself, the rest fill up with clients waiting
    // for a worker that serves one connection at a time.
    let server = Launch::herd(&[
        "--workers",
        "1",
        "--max-connections",
        "1",
        "--handoff-window",
        "1",
        "--keepalive-timeout",
        "60s",
    ])
    .nofile(24)
    .start();
    let busy = occupy(&server);
    let waiting = load_until(
        server.addr(),
        40,
        1,
        false,
        Arc::new(AtomicBool::new(false)),
    );
    server.wait_log("pausing the listener", DEADLINE);
    // Out of descriptors, the primary rests between retries instead of spinning on accept.
    let ticks = cpu_ticks(server.pid());
    let start = Instant::now();
    wait_for("a second of EMFILE", DEADLINE, || {
        (start.elapsed() >= Duration::from_secs(1)).then_some(())
    });
    let used = cpu_ticks(server.pid()) - ticks;
    assert!(
        used < 30,
        "the primary spun: {used} ticks of CPU in one second"
    );
    drop(busy);
    let r = merge(waiting);
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert_eq!(r.ok, 40);
}

#[test]
fn the_exit_report_names_each_worker_and_a_planned_exit_is_no_death() {
    let mut server = Server::start(&["--workers", "2"]);
    let mut pids = server.workers();
    for _ in 0..4 {
        get(server.addr(), "/").expect("served");
    }
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(DEADLINE).success());
    let mut reported: Vec<u32> = server.last_stats().iter().map(|r| r[1] as u32).collect();
    pids.sort_unstable();
    reported.sort_unstable();
    assert_eq!(reported, pids, "{}", server.log_text());
    assert_eq!(server.count_log("died"), 0, "{}", server.log_text());
    assert_eq!(
        server.count_log("exited (exit code 0)"),
        2,
        "{}",
        server.log_text()
    );
}
