//! `idle-first` (issue 13): a worker stuck in a long request gets none of the next connections
//! while another is idle, and gets them again once it is free. No timing assertion: the test
//! only looks at which worker answered, and checks that the long request was still running.

mod common;

use std::io::{BufReader, ErrorKind, Write};
use std::net::TcpStream;

use common::*;
use herd::procfs::Stat;

/// Quick requests sent while one worker is stuck.
const N: usize = 10;
/// Attempts, in case a very loaded machine finishes the one-second request before the N quick
/// ones are done (then the run proves nothing and is tried again).
const ATTEMPTS: usize = 5;

/// Waits until `pid` sleeps (its loop waits in epoll: idle).
fn wait_idle(pid: u32) {
    wait_for(&format!("worker {pid} to be idle"), DEADLINE, || {
        Stat::read(pid)
            .is_some_and(|s| s.state == 'S')
            .then_some(())
    });
}

/// True while `s` has no answer yet.
fn unanswered(s: &TcpStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut b = [0u8; 1];
    let pending = matches!(s.peek(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock);
    s.set_nonblocking(false).expect("blocking");
    pending
}

/// Starts a one-second `/work` request, then sends `N` quick requests, each once the worker
/// that answered the previous one is idle again. Returns the quick answers' pids, the stuck
/// worker's pid, or `None` if the long request was over before the quick ones were.
fn quick_while_stuck(server: &Server) -> Option<(Vec<u32>, u32)> {
    let mut slow = connect(server.addr());
    slow.write_all(b"GET /work?us=1000000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("send the long request");
    let mut pids = Vec::new();
    for i in 0..N {
        if let Some(&last) = pids.last() {
            wait_idle(last);
        }
        let r = get(server.addr(), "/").unwrap_or_else(|e| panic!("quick request {i}: {e}"));
        assert_eq!(r.status, 200);
        pids.push(r.pid());
    }
    let still_running = unanswered(&slow);
    let r = read_response(&mut BufReader::new(slow), false).expect("the long answer");
    assert_eq!(r.status, 200);
    let stuck: u32 = r
        .text()
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a pid in the /work answer");
    still_running.then_some((pids, stuck))
}

#[test]
fn a_worker_stuck_in_a_long_request_gets_nothing_until_it_is_free() {
    let mut server = Server::start(&["--workers", "2", "--policy", "idle-first"]);
    let workers = server.workers();
    let (quick, stuck) = (0..ATTEMPTS)
        .find_map(|_| {
            workers.iter().for_each(|&w| wait_idle(w));
            quick_while_stuck(&server)
        })
        .expect("the long request outlived the quick ones at least once");
    assert!(workers.contains(&stuck));
    assert!(
        quick.iter().all(|&p| p != stuck),
        "the stuck worker {stuck} got none of {quick:?}"
    );
    // Free again: both idle, so the rotation among idle workers reaches it.
    let mut after = Vec::new();
    for _ in 0..4 {
        workers.iter().for_each(|&w| wait_idle(w));
        after.push(get(server.addr(), "/").expect("served").pid());
    }
    assert!(
        after.contains(&stuck),
        "once free, {stuck} gets connections again: {after:?}"
    );
}

#[test]
fn idle_first_is_listed_and_parsed() {
    let server = Server::start(&["--workers", "2", "--policy", "idle-first"]);
    assert!(server.find_log("(idle-first policy)").is_some());
    assert_eq!(get(server.addr(), "/").expect("served").status, 200);
}
