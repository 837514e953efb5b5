//! Every scheduling policy with Node workers (`herd run`), `NODE_CLUSTER_SCHED_POLICY`, and
//! the O_NONBLOCK pitfall: a slow reader must not block its worker.

mod common;
use common::*;

use std::io::{Read, Write};

fn hello() -> String {
    node_fixture("hello.js")
}

#[test]
fn every_policy_serves_200_requests_from_8_clients() {
    for policy in [
        "round-robin",
        "least-connections",
        "shared",
        "reuseport",
        "idle-first",
    ] {
        let s =
            Launch::herd_run(&["--workers", "2", "--policy", policy], &["node", &hello()]).start();
        assert!(
            s.find_log(&format!("({policy} policy)")).is_some(),
            "{}",
            s.log_text()
        );
        let r = load(s.addr(), 8, 25, false);
        assert_eq!((r.ok, r.failed), (200, 0), "{policy}: {:?}", r.errors);
        if matches!(policy, "round-robin" | "least-connections" | "idle-first") {
            assert_eq!(r.by_pid.len(), 2, "{policy}: both workers served");
        }
        let k = load(s.addr(), 8, 25, true);
        assert_eq!(
            (k.ok, k.failed),
            (200, 0),
            "{policy} keep-alive: {:?}",
            k.errors
        );
    }
}

#[test]
fn node_cluster_sched_policy_is_honoured_unless_policy_is_given() {
    let mut s = Launch::herd_run(&["--workers", "1"], &["node", &hello()])
        .env("NODE_CLUSTER_SCHED_POLICY", "none")
        .start();
    assert!(s.find_log("(shared policy)").is_some(), "{}", s.log_text());
    assert_eq!(serving_pid(s.addr()), s.workers()[0]);
    drop(s);
    let s = Launch::herd_run(
        &["--workers", "1", "--policy", "reuseport"],
        &["node", &hello()],
    )
    .env("NODE_CLUSTER_SCHED_POLICY", "rr")
    .start();
    assert!(
        s.find_log("(reuseport policy)").is_some(),
        "{}",
        s.log_text()
    );
}

/// One worker; a client asks for 8 MiB and reads nothing. Other connections to that worker
/// are still served (every socket the worker gets is non-blocking).
fn slow_reader_does_not_block(policy: &str) {
    let s = Launch::herd_run(&["--workers", "1", "--policy", policy], &["node", &hello()])
        .env("BIG_BYTES", &(8 * 1024 * 1024).to_string())
        .start();
    let mut slow = connect(s.addr());
    slow.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // The response has started: the worker has written what the socket buffers take (far
    // less than 8 MiB) and, with a blocking socket, would now be stuck in write().
    let mut first = [0u8; 1];
    slow.read_exact(&mut first).expect("the response starts");
    for _ in 0..20 {
        let r = get(s.addr(), "/").expect("served while the slow reader stalls");
        assert_eq!(r.status, 200);
    }
    drop(slow);
}

#[test]
fn a_slow_reader_does_not_block_round_robin() {
    slow_reader_does_not_block("round-robin");
}

#[test]
fn a_slow_reader_does_not_block_shared() {
    slow_reader_does_not_block("shared");
}

#[test]
fn a_slow_reader_does_not_block_idle_first() {
    slow_reader_does_not_block("idle-first");
}
