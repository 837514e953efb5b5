//! The four scheduling policies (issue 3): each serves concurrent load without error, the
//! per-worker counters add up, and each distributes the way it claims to.

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;

use common::*;
use nix::sys::signal::Signal;

const CLIENTS: usize = 4;
const EACH: usize = 50;

/// Runs 200 keep-alive and 200 new-connection requests, stops the server, and checks the final
/// statistics table against what was sent.
fn serves_and_counts(policy: &str) {
    let mut server = Server::start(&["--workers", "2", "--policy", policy]);
    assert!(
        server.find_log(&format!("({policy} policy)")).is_some(),
        "{}",
        server.log_text()
    );
    let keep = load(server.addr(), CLIENTS, EACH, true);
    let close = load(server.addr(), CLIENTS, EACH, false);
    for r in [&keep, &close] {
        assert_eq!(r.failed, 0, "{policy}: {:?}", r.errors);
        assert_eq!(r.ok, CLIENTS * EACH);
    }
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(DEADLINE).success());
    let rows = server.last_stats();
    assert_eq!(rows.len(), 2, "{}", server.log_text());
    let sum = |col: usize| rows.iter().map(|r| r[col]).sum::<u64>();
    let (handed, connections, requests) = (sum(2), sum(3), sum(5));
    assert_eq!(
        requests,
        (2 * CLIENTS * EACH) as u64,
        "{policy}: requests add up"
    );
    let conns_sent = (CLIENTS + CLIENTS * EACH) as u64;
    assert_eq!(connections, conns_sent, "{policy}: connections add up");
    if policy == "shared" || policy == "reuseport" {
        assert_eq!(
            handed, 0,
            "{policy}: the primary's accept path is never used"
        );
    } else {
        assert_eq!(
            handed, conns_sent,
            "{policy}: the primary handed every connection"
        );
    }
}

#[test]
fn round_robin_serves_and_counts() {
    serves_and_counts("round-robin");
}

#[test]
fn least_connections_serves_and_counts() {
    serves_and_counts("least-connections");
}

#[test]
fn shared_serves_and_counts() {
    serves_and_counts("shared");
}

#[test]
fn reuseport_serves_and_counts() {
    serves_and_counts("reuseport");
}

#[test]
fn node_policy_names_are_accepted() {
    let server = Launch::herd(&["--workers", "1"])
        .env("HERD_POLICY", "none")
        .start();
    assert!(
        server.find_log("(shared policy)").is_some(),
        "{}",
        server.log_text()
    );
    assert_eq!(get(server.addr(), "/").unwrap().status, 200);
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

/// Polls the primary's statistics until `want(rows)` holds.
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

#[test]
fn least_connections_avoids_the_busy_worker_until_it_frees_up() {
    const K: usize = 4;
    let mut server = Server::start(&[
        "--workers",
        "3",
        "--policy",
        "least-connections",
        "--keepalive-timeout",
        "60s",
    ]);
    let workers = server.workers();
    // 3K idle connections spread evenly (ties rotate), then keep only worker A's K.
    let conns: Vec<_> = (0..3 * K).map(|_| open_idle(&server)).collect();
    let a = conns[0].0;
    let (a_conns, others): (Vec<_>, Vec<_>) = conns.into_iter().partition(|(p, _)| *p == a);
    assert_eq!(a_conns.len(), K, "ties rotate evenly");
    drop(others);
    let row_of =
        |pid: u32| move |rows: &[[u64; 7]]| rows.iter().find(|r| r[1] == pid as u64).copied();
    wait_stats(&server, "the others' closes to be reported", |rows| {
        rows.iter().all(|r| {
            if r[1] == a as u64 {
                r[4] == K as u64
            } else {
                r[4] == 0
            }
        })
    });
    // Worker A holds K; the next K new connections go to the other two.
    let next: Vec<_> = (0..K).map(|_| open_idle(&server)).collect();
    assert!(
        next.iter().all(|(p, _)| *p != a),
        "A is avoided: {a} in {:?}",
        next.iter().map(|c| c.0).collect::<Vec<_>>()
    );
    // After A's connections close, A has the fewest and is chosen again.
    drop(a_conns);
    wait_stats(&server, "A's closes to be reported", |rows| {
        row_of(a)(rows).is_some_and(|r| r[4] == 0)
    });
    let (p, _c) = open_idle(&server);
    assert_eq!(p, a, "A is chosen again once free");
    assert!(workers.contains(&a));
}
