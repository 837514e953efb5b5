//! `herd run -- node app.js`: unmodified Node.js cluster apps under herd's primary, with real
//! `node` processes.

mod common;
use common::*;

use std::collections::HashMap;

/// Pids of `n` new connections, counted.
fn spread(addr: std::net::SocketAddr, n: usize) -> HashMap<u32, usize> {
    let mut by_pid = HashMap::new();
    for _ in 0..n {
        *by_pid.entry(serving_pid(addr)).or_default() += 1;
    }
    by_pid
}

#[test]
fn the_seed_program_verbatim_gets_10_10_10() {
    let seed = seed_app();
    let mut s = Launch::herd_run(&["--workers", "3"], &["node", &seed]).start();
    let by_pid = spread(s.addr(), 30);
    let mut counts: Vec<usize> = by_pid.values().copied().collect();
    counts.sort();
    assert_eq!(counts, [10, 10, 10], "{by_pid:?}\n{}", s.log_text());
    let workers = s.workers();
    assert!(
        by_pid.keys().all(|p| workers.contains(p)),
        "served by herd's workers"
    );
    assert_eq!(
        s.count_log("Worker "),
        3,
        "each worker ran the seed's worker branch"
    );
    assert_eq!(s.count_log("listening on http://"), 1);
}

#[test]
fn the_listening_line_waits_for_every_worker_to_listen() {
    let s = Launch::herd_run(&["--workers", "2"], &["node", &node_fixture("hello.js")]).start();
    let line = s
        .find_log("listening on http://127.0.0.1:")
        .expect("the line");
    assert!(line.ends_with(&format!(":{}", s.port)), "{line}");
    let r = get(s.addr(), "/").expect("served");
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("Hello World! "), "{}", r.text());
}
