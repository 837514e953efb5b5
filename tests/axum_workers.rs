//! axum and hyper in herd workers (feature `axum`): examples/axum.rs and examples/hyper.rs
//! under every policy, round-robin's rotation, ConnectInfo, messages both ways, a rolling
//! reload under load, a graceful stop that finishes a slow request, and a killed worker.
//!
//! Run with `cargo test --features axum` (the file needs the feature; `.ci/run` does it).

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use nix::sys::signal::Signal;

/// The axum example on 127.0.0.1, an ephemeral port, 2 workers, with `policy`.
fn axum(policy: &str) -> Server {
    Server::start_example(
        "axum",
        &[
            "0",
            "--host",
            "127.0.0.1",
            "--workers",
            "2",
            "--policy",
            policy,
        ],
    )
}

/// 200 requests from 8 concurrent clients (new connection each), then 200 on keep-alive
/// connections: none fails, both workers serve, and the primary's report counts them.
fn every_request_answered(name: &str, policy: &str) {
    let mut server = Server::start_example(
        name,
        &[
            "0",
            "--host",
            "127.0.0.1",
            "--workers",
            "2",
            "--policy",
            policy,
        ],
    );
    let workers = server.workers();
    assert_eq!(workers.len(), 2, "{}", server.log_text());
    for keepalive in [false, true] {
        let r = load(server.addr(), 8, 25, keepalive);
        assert_eq!(
            r.failed, 0,
            "{policy} keepalive={keepalive}: {:?}",
            r.errors
        );
        assert_eq!(r.ok, 200);
        assert!(
            r.by_pid.keys().all(|p| workers.contains(p)),
            "{policy}: answered by the workers: {:?}",
            r.by_pid
        );
        if !keepalive && policy != "shared" {
            // The kernel's shared queue may favour one worker; every other policy spreads.
            assert_eq!(
                r.by_pid.len(),
                2,
                "{policy}: both workers served: {:?}",
                r.by_pid
            );
        }
    }
    server.signal(Signal::SIGTERM);
    assert!(
        server.wait_exit(DEADLINE).success(),
        "{}",
        server.log_text()
    );
    let stats = server.last_stats();
    assert_eq!(stats.len(), 2, "{}", server.log_text());
    let connections: u64 = stats.iter().map(|r| r[3]).sum();
    assert!(
        connections >= 208,
        "{policy}: connections counted: {stats:?}"
    );
    assert!(
        stats.iter().all(|r| r[4] == 0),
        "{policy}: none left open: {stats:?}"
    );
    if name == "axum" {
        let requests: u64 = stats.iter().map(|r| r[5]).sum();
        assert_eq!(requests, 400, "{policy}: requests counted: {stats:?}");
    }
}

#[test]
fn axum_round_robin_answers_every_request() {
    every_request_answered("axum", "round-robin");
}

#[test]
fn axum_least_connections_answers_every_request() {
    every_request_answered("axum", "least-connections");
}

#[test]
fn axum_idle_first_answers_every_request() {
    every_request_answered("axum", "idle-first");
}

#[test]
fn axum_shared_answers_every_request() {
    every_request_answered("axum", "shared");
}

#[test]
fn axum_reuseport_answers_every_request() {
    every_request_answered("axum", "reuseport");
}

#[test]
fn hyper_answers_every_request() {
    every_request_answered("hyper", "round-robin");
    every_request_answered("hyper", "least-connections");
    every_request_answered("hyper", "idle-first");
}

#[test]
fn round_robin_rotates_exactly() {
    let mut server = axum("round-robin");
    let workers = server.workers();
    let pids: Vec<u32> = (0..10).map(|_| serving_pid(server.addr())).collect();
    assert!(pids.iter().all(|p| workers.contains(p)), "{pids:?}");
    for w in pids.windows(2) {
        assert_ne!(
            w[0], w[1],
            "the next connection goes to the other worker: {pids:?}"
        );
    }
}

#[test]
fn connect_info_gives_the_client_address() {
    let server = axum("round-robin");
    let mut s = connect(server.addr());
    let me = s.local_addr().unwrap();
    s.write_all(b"GET /json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let r = read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
    assert_eq!(v["message"], "Hello World!");
    assert_eq!(v["peer"], me.to_string(), "ConnectInfo<SocketAddr>: {v}");
    assert!(v["pid"].as_u64().is_some_and(|p| p > 0), "{v}");
    assert!(matches!(v["worker"].as_u64(), Some(1 | 2)), "{v}");
}

#[test]
fn messages_go_both_ways_from_async_code() {
    let server = axum("round-robin");
    // The example's primary pings every worker as it comes online; each answers from a task.
    wait_for("both workers' answers", DEADLINE, || {
        let got = server.log_lines("echo: ping");
        let both = ["worker 1:", "worker 2:"]
            .iter()
            .all(|w| got.iter().any(|l| l.contains(w)));
        both.then_some(())
    });
}

/// SIGHUP under load from keep-alive and new-connection clients: every request succeeds, and
/// both the old and the new workers served.
fn reload_under_load(name: &str, policy: &str) {
    let mut server = Server::start_example(
        name,
        &[
            "0",
            "--host",
            "127.0.0.1",
            "--workers",
            "2",
            "--policy",
            policy,
        ],
    );
    let before = server.workers();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = load_until(server.addr(), 2, 1_000_000, true, stop.clone());
    clients.extend(load_until(server.addr(), 4, 1_000_000, false, stop.clone()));
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
    assert_eq!(
        r.failed, 0,
        "{name} {policy}: no failed request: {:?}",
        r.errors
    );
    let served = |pids: &[u32]| pids.iter().all(|p| r.by_pid.contains_key(p));
    assert!(served(&before), "old pids served: {:?}", r.by_pid);
    assert!(served(&after), "new pids served: {:?}", r.by_pid);
}

#[test]
fn axum_reload_under_load_fails_no_request() {
    reload_under_load("axum", "round-robin");
    reload_under_load("axum", "least-connections");
    reload_under_load("axum", "idle-first");
}

#[test]
fn axum_reload_with_worker_listeners_fails_no_request() {
    reload_under_load("axum", "shared");
    reload_under_load("axum", "reuseport");
}

#[test]
fn hyper_reload_under_load_fails_no_request() {
    reload_under_load("hyper", "round-robin");
    reload_under_load("hyper", "idle-first");
}

#[test]
fn sigterm_lets_a_slow_request_finish() {
    let mut server = axum("round-robin");
    let workers = server.workers();
    let mut s = connect(server.addr());
    s.write_all(b"GET /sleep/1500 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    server.wait_log("sleeping 1500 ms", DEADLINE);
    server.signal(Signal::SIGTERM);
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false).expect("the slow request is answered");
    assert_eq!(resp.status, 200);
    assert!(resp.text().starts_with("slept 1500 ms"), "{}", resp.text());
    let (rest, end) = read_to_close(r.get_mut(), DEADLINE);
    assert_eq!(
        (rest.len(), end),
        (0, End::Eof),
        "then the connection closes"
    );
    assert!(
        server.wait_exit(DEADLINE).success(),
        "{}",
        server.log_text()
    );
    assert!(workers.iter().all(|&p| !alive(p)), "every worker exited");
}

#[test]
fn a_killed_worker_is_replaced_and_serves() {
    let mut server = axum("round-robin");
    let before = server.workers();
    send_signal(before[0], Signal::SIGKILL).unwrap();
    let now = wait_for("a replacement worker", DEADLINE, || {
        let now = server.workers();
        (now.len() == 2 && !now.contains(&before[0])).then_some(now)
    });
    let new_pid = *now.iter().find(|p| !before.contains(p)).unwrap();
    wait_for("the replacement to answer", DEADLINE, || {
        (0..4)
            .any(|_| get(server.addr(), "/").is_ok_and(|r| r.status == 200 && r.pid() == new_pid))
            .then_some(())
    });
    let r = load(server.addr(), 8, 25, false);
    assert_eq!(r.failed, 0, "{:?}", r.errors);
}

#[test]
fn workers_stop_when_the_primary_is_killed() {
    let mut server = axum("round-robin");
    let workers = server.workers();
    assert_eq!(get(server.addr(), "/").unwrap().status, 200);
    server.signal(Signal::SIGKILL);
    server.wait_exit(DEADLINE);
    wait_for("the orphaned workers to drain and exit", DEADLINE, || {
        workers.iter().all(|&p| !alive(p)).then_some(())
    });
}

/// An idle keep-alive connection: its pid, and the socket to keep it open.
fn open_idle(server: &Server) -> (u32, BufReader<TcpStream>) {
    let mut s = connect(server.addr());
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false).unwrap();
    assert_eq!(resp.status, 200);
    (resp.pid(), r)
}

/// Polls the primary's statistics (`SIGUSR2`) until `want(rows)` holds. A worker queues its
/// close count before its statistics, so once these show a close, the primary has counted it.
fn wait_stats(server: &Server, what: &str, want: impl Fn(&[[u64; 7]]) -> bool) {
    wait_for(what, DEADLINE, || {
        let before = server.count_log("worker statistics");
        server.signal(Signal::SIGUSR2);
        wait_for("a statistics table", DEADLINE, || {
            (server.count_log("worker statistics") > before).then_some(())
        });
        want(&server.last_stats()).then_some(())
    });
}

/// Closes of axum connections reach the primary: least-connections avoids the worker that holds
/// connections, and chooses it again once they are dropped.
#[test]
fn least_connections_counts_closed_axum_connections() {
    const K: usize = 3;
    let mut server = Server::start_example(
        "axum",
        &[
            "0",
            "--host",
            "127.0.0.1",
            "--workers",
            "3",
            "--policy",
            "least-connections",
        ],
    );
    let workers = server.workers();
    let conns: Vec<_> = (0..3 * K).map(|_| open_idle(&server)).collect();
    let a = conns[0].0;
    let (a_conns, others): (Vec<_>, Vec<_>) = conns.into_iter().partition(|(p, _)| *p == a);
    assert_eq!(a_conns.len(), K, "ties rotate evenly");
    drop(others);
    wait_stats(&server, "the others' closes to be reported", |rows| {
        rows.iter()
            .all(|r| r[4] == if r[1] == a as u64 { K as u64 } else { 0 })
    });
    let next: Vec<_> = (0..K).map(|_| open_idle(&server)).collect();
    assert!(
        next.iter().all(|(p, _)| *p != a),
        "A is avoided: {a} in {:?}",
        next.iter().map(|c| c.0).collect::<Vec<_>>()
    );
    drop(a_conns);
    wait_stats(&server, "A's closes to be reported", |rows| {
        rows.iter().any(|r| r[1] == a as u64 && r[4] == 0)
    });
    let (p, _c) = open_idle(&server);
    assert_eq!(p, a, "A is chosen again once free");
    assert!(workers.contains(&a));
}

/// Workers on multi-thread runtimes (`Cluster::run_tokio_on`): connections close from other
/// threads than the driver's, and reload still fails no request.
#[test]
fn multi_thread_workers_serve_and_reload() {
    let mut server = Server::start_example(
        "axum",
        &[
            "0",
            "--host",
            "127.0.0.1",
            "--workers",
            "2",
            "--threads",
            "2",
        ],
    );
    let r = load(server.addr(), 8, 25, false);
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert_eq!(r.by_pid.len(), 2, "{:?}", r.by_pid);
    let before = server.workers();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load_until(server.addr(), 4, 1_000_000, false, stop.clone());
    wait_for("traffic to flow", DEADLINE, || {
        (cpu_ticks(before[0]) > 1).then_some(())
    });
    server.signal(Signal::SIGHUP);
    server.wait_log("reload complete", DEADLINE);
    stop.store(true, Ordering::Relaxed);
    let r = merge(clients);
    assert_eq!(r.failed, 0, "no failed request: {:?}", r.errors);
    server.signal(Signal::SIGTERM);
    assert!(
        server.wait_exit(DEADLINE).success(),
        "{}",
        server.log_text()
    );
}

/// `Cluster::proxy_protocol` works for async workers too: the header is read by herd, and
/// `ConnectInfo` carries the client it names; a connection without one is closed.
#[test]
fn proxy_protocol_header_names_the_client() {
    let server = Server::start_example(
        "axum",
        &[
            "0",
            "--host",
            "127.0.0.1",
            "--workers",
            "2",
            "--proxy-protocol",
        ],
    );
    for _ in 0..2 {
        let mut s = connect(server.addr());
        s.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 80\r\n")
            .unwrap();
        s.write_all(b"GET /json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let r = read_response(&mut BufReader::new(s), false).unwrap();
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
        assert_eq!(v["peer"], "192.0.2.7:40001", "{v}");
    }
    let (out, end) = exchange(
        server.addr(),
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        DEADLINE,
    );
    assert!(
        out.is_empty(),
        "no answer without a header: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert_ne!(end, End::Open, "closed");
}
