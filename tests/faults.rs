//! Faults an adversarial run found (issue 18): each test fails on the code before its fix.

mod common;

use std::io::{BufReader, Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// Bug 2: connections the primary accepted and queued on a full channel at SIGTERM were put
/// back in the pending queue after it had been checked, and silently dropped.
#[test]
fn a_shutdown_serves_every_connection_the_primary_accepted() {
    const N: usize = 6000;
    let mut server = Launch::herd(&["--workers", "1", "--shutdown-timeout", "60s"])
        .nofile(20_000)
        .start();
    // A stopped worker takes nothing: the primary's pending queue fills.
    let worker = server.workers()[0];
    send_signal(worker, Signal::SIGSTOP).expect("stop the worker");
    let primary = server.pid();
    let base_fds = fd_count(primary);
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        let mut c = connect(server.addr());
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .expect("send");
        clients.push(c);
    }
    // The primary holds what it accepted (up to --max-pending) while the worker is busy.
    wait_for("the primary to accept a few thousand", DEADLINE, || {
        (fd_count(primary) >= base_fds + 4000).then_some(())
    });
    // Told to stop, the primary sends everything to the worker it has: more than its channel
    // holds, so most of it waits in the primary's queue for the worker to read.
    server.signal(Signal::SIGTERM);
    server.wait_log("shutting down", DEADLINE);
    send_signal(worker, Signal::SIGCONT).expect("continue the worker");
    let mut answered = 0;
    for mut c in clients {
        c.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        if out.starts_with(b"HTTP/1.1 200") {
            answered += 1;
        }
    }
    assert_eq!(answered, N, "{}", server.log_text());
    assert!(server.wait_exit(DEADLINE).success());
}

/// Bug 4: with --max-pending 1 the listener never resumed after the first connection.
#[test]
fn max_pending_one_keeps_serving() {
    let server = Server::start(&["--workers", "2", "--max-pending", "1"]);
    for i in 0..20 {
        let r = get(server.addr(), "/").unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200);
    }
}

/// Bug 3: a reload whose spawn fails said "reload complete", then the primary spun at 100% CPU.
#[test]
fn a_reload_that_cannot_start_workers_keeps_the_old_ones_and_sleeps() {
    let dir = std::env::temp_dir().join(format!("herd-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let exe = dir.join("herd");
    std::fs::copy(herd_bin(), &exe).expect("copy herd");
    let mut server = Launch::herd(&["--workers", "2"]).program(exe).start();
    let before = server.workers();
    std::fs::remove_dir_all(&dir).expect("delete the binary");
    server.signal(Signal::SIGHUP);
    server.wait_log("reload failed", DEADLINE);
    assert!(
        server.find_log("reload complete").is_none(),
        "{}",
        server.log_text()
    );
    let ticks = cpu_ticks(server.pid());
    let start = Instant::now();
    wait_for("a second of idle primary", DEADLINE, || {
        (start.elapsed() >= Duration::from_secs(1)).then_some(())
    });
    let used = cpu_ticks(server.pid()) - ticks;
    assert!(used < 30, "the primary used {used} ticks in 1 s: it spins");
    assert_eq!(server.workers(), before, "the old workers stay");
    assert_eq!(get(server.addr(), "/").expect("still serving").status, 200);
}

/// Bug 1: a worker out of descriptors crashed (nix's cmsgs() errors on MSG_CTRUNC) and cut every
/// connection it held. It must keep serving them and give back what it could not take.
#[test]
fn a_worker_at_its_descriptor_limit_keeps_serving_and_returns_the_rest() {
    let mut server = Server::start(&["--workers", "2"]);
    let victim = server.workers()[0];
    let limit = fd_count(victim) + 4;
    let status = Command::new("prlimit")
        .args([
            "--pid",
            &victim.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .expect("run prlimit");
    assert!(status.success());
    // Keep-alive connections hold the worker's descriptors; 40 over 2 workers.
    let mut held = Vec::new();
    for i in 0..40 {
        let mut c = connect(server.addr());
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send");
        let r = read_response(&mut BufReader::new(c.try_clone().expect("clone")), false)
            .unwrap_or_else(|e| panic!("connection {i} got no answer: {e}\n{}", server.log_text()));
        assert_eq!(r.status, 200);
        held.push(c);
    }
    assert!(alive(victim), "the limited worker lives on");
    assert_eq!(server.count_log("died"), 0, "{}", server.log_text());
    assert!(
        server.find_log("arrived without their sockets").is_some(),
        "the limit was reached and said: {}",
        server.log_text()
    );
    for (i, c) in held.iter_mut().enumerate() {
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send");
        let r = read_response(&mut BufReader::new(c.try_clone().expect("clone")), false)
            .unwrap_or_else(|e| panic!("held connection {i} was cut: {e}"));
        assert_eq!(r.status, 200);
    }
}

/// A worker whose channel says something the primary cannot read is killed and replaced
/// (before: the slot served nothing, was never replaced, and SIGTERM waited the full timeout).
#[test]
fn a_malformed_packet_gets_the_worker_replaced() {
    // Every worker of this server sends garbage once online: each is replaced in turn.
    let mut server = Launch::herd(&["--workers", "1", "--shutdown-timeout", "30s"])
        .env("HERD_FAULT_GARBAGE", "1")
        .spawn();
    let pids = wait_for("two workers replaced for garbage", DEADLINE, || {
        let mut pids: Vec<String> = server
            .log_lines("sent a malformed message")
            .iter()
            .filter_map(|l| {
                l.split("worker ")
                    .nth(1)?
                    .split(' ')
                    .next()
                    .map(String::from)
            })
            .collect();
        pids.dedup();
        (pids.len() >= 2).then_some(pids)
    });
    assert_ne!(pids[0], pids[1], "a new process each time");
    server.signal(Signal::SIGTERM);
    let start = Instant::now();
    assert!(server.wait_exit(DEADLINE).success());
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "no wait for the 30 s timeout"
    );
}

/// A worker whose primary was killed finishes within the shutdown timeout, even while a client
/// keeps its request alive by dripping bytes (each pause shorter than the header timeout).
#[test]
fn an_orphaned_worker_exits_within_the_shutdown_timeout() {
    let mut server = Server::start(&["--workers", "1", "--shutdown-timeout", "1s"]);
    let worker = server.workers()[0];
    let mut drip = connect(server.addr());
    drip.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
        .expect("send head");
    server.signal(Signal::SIGKILL);
    let start = Instant::now();
    while alive(worker) && start.elapsed() < Duration::from_secs(8) {
        let _ = drip.write_all(b"x");
        std::thread::sleep(Duration::from_millis(100)); // the client's drip pace, not a wait
    }
    assert!(
        !alive(worker),
        "the orphan outlived its 1 s grace by far ({:?})",
        start.elapsed()
    );
}

/// A hung worker (SIGSTOP here; a deadlock or an endless handler alike) swallowed up to a
/// window of new connections and nothing noticed. Now: what it never read goes to the other
/// worker after --worker-timeout, SIGUSR2 still answers and marks it, and after six timeouts
/// it is killed and replaced.
#[test]
fn a_frozen_worker_is_routed_around_then_replaced() {
    let mut server = Server::start(&["--workers", "2", "--worker-timeout", "1s"]);
    let first = server.workers();
    let frozen = first[0];
    send_signal(frozen, Signal::SIGSTOP).expect("freeze a worker");
    for i in 0..20 {
        let r = get(server.addr(), "/")
            .unwrap_or_else(|e| panic!("request {i} was swallowed: {e}\n{}", server.log_text()));
        assert_eq!(r.status, 200);
        assert_ne!(r.pid(), frozen, "the frozen worker cannot have answered");
    }
    server.wait_log("marked unresponsive", DEADLINE);
    server.signal(Signal::SIGUSR2);
    let row = server.wait_log("unresponsive", DEADLINE);
    let marked = wait_for("the table's row for the frozen worker", DEADLINE, || {
        server
            .log_lines(&format!(" {frozen} "))
            .into_iter()
            .find(|l| l.trim_end().ends_with("unresponsive"))
    });
    assert!(!marked.is_empty(), "{row}");
    server.wait_log(&format!("killing worker {frozen}"), DEADLINE);
    wait_for("the frozen worker's replacement", DEADLINE, || {
        let now = server.workers();
        (now.len() == 2 && !now.contains(&frozen)).then_some(())
    });
    assert_eq!(get(server.addr(), "/").expect("served").status, 200);
}

/// Under reuseport the kernel keeps hashing connections onto a dead worker's own socket, where
/// they waited out its restart backoff (50 timeouts in 10 s for a crash-looping worker). While
/// the slot has no worker, the primary accepts there and hands them to the live one.
#[test]
fn a_crash_looping_reuseport_worker_loses_no_connection() {
    let marker = std::env::temp_dir().join(format!("herd-fail-start-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let mut server = Launch::herd(&["--workers", "2", "--policy", "reuseport"])
        .env(
            "HERD_FAULT_FAIL_START",
            marker.to_str().expect("utf-8 path"),
        )
        .start();
    let workers = server.workers();
    std::fs::write(&marker, b"fail").expect("arm the fault");
    send_signal(workers[0], Signal::SIGKILL).expect("kill a worker");
    server.wait_log("crash-looping", DEADLINE);
    // New connections from new source ports: about half hash to the dead worker's socket.
    for i in 0..40 {
        let r = get(server.addr(), "/").unwrap_or_else(|e| {
            panic!(
                "request {i} waited on the dead worker's queue: {e}\n{}",
                server.log_text()
            )
        });
        assert_eq!(r.status, 200);
        assert_eq!(r.pid(), workers[1], "only one worker is alive");
    }
    std::fs::remove_file(&marker).expect("disarm");
    server.wait_log("accepts on its socket meanwhile", DEADLINE);
}

/// The cheaper handoff (issue 13): the primary closes its copy of a socket right after sending
/// it, so the connections queued in the channel of a frozen worker exist only there. Killed,
/// the worker takes them nowhere: the primary reads them back from its handle on the worker's
/// end of the channel and another worker serves every one.
#[test]
fn reclaim_from_the_channel_of_a_killed_frozen_worker_loses_nothing() {
    const CLIENTS: usize = 10;
    // Round-robin keeps handing the frozen worker its share; the watchdog stays out of it.
    let mut server = Server::start(&["--workers", "2", "--worker-timeout", "60s"]);
    let frozen = server.workers()[0];
    send_signal(frozen, Signal::SIGSTOP).expect("freeze a worker");
    let answers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut c = connect(server.addr());
            c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .expect("send");
            std::thread::spawn(move || {
                c.set_read_timeout(Some(DEADLINE)).expect("timeout");
                read_response(&mut BufReader::new(c), false)
            })
        })
        .collect();
    // The live worker answers its share; the frozen one's share sits unread in its channel.
    wait_for("the live worker's share to be answered", DEADLINE, || {
        (answers.iter().filter(|h| h.is_finished()).count() >= CLIENTS / 2).then_some(())
    });
    assert!(
        answers.iter().any(|h| !h.is_finished()),
        "some wait in the frozen worker's channel"
    );
    send_signal(frozen, Signal::SIGKILL).expect("kill the frozen worker");
    for (i, h) in answers.into_iter().enumerate() {
        let r = h
            .join()
            .expect("reader thread")
            .unwrap_or_else(|e| panic!("connection {i} was lost: {e}\n{}", server.log_text()));
        assert_eq!(r.status, 200);
        assert_ne!(r.pid(), frozen);
    }
    server.wait_log("handing them to others", DEADLINE);
}
