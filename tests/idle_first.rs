//! `idle-first` (issue 13): a worker stuck in a long request gets none of the next connections
//! while another is idle, and gets them again once it is free. No timing assertion: the test
//! only looks at which worker answered, and checks that the long request was still running.
//! And what waits unread for a worker inside a long request moves to one that is free.

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;

use common::*;
use herd::procfs::Stat;

/// Quick requests sent while one worker is stuck.
const N: usize = 10;
/// Attempts, in case a very loaded machine finishes the one-second request before the N quick
/// ones are done (then the run proves nothing and is tried again).
const ATTEMPTS: usize = 5;

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

/// Waits until every one of `pids` is running (spinning in `/work`).
fn wait_running(pids: &[u32]) {
    wait_for("both workers inside a long request", DEADLINE, || {
        pids.iter()
            .all(|&p| Stat::read(p).is_some_and(|s| s.state == 'R'))
            .then_some(())
    });
}

/// Sends `path` on a new connection, without reading the answer.
fn send(server: &Server, path: &str) -> TcpStream {
    let mut s = connect(server.addr());
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    s
}

/// Reads the pid an answer names (`Hello World! <pid>` or `/work`'s `<pid> ...`).
fn answer_pid(s: TcpStream) -> u32 {
    let r = read_response(&mut BufReader::new(s), false).expect("an answer");
    assert_eq!(r.status, 200);
    r.text()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .next()
        .expect("a pid in the answer")
}

/// One long (1 s) and one medium (0.2 s) request keep both workers busy while six quick
/// connections come; once the medium one is answered, one more connection comes. Returns the
/// quick answers' pids and the pid of the worker that was free, or `None` if the long request
/// was over before they were answered (then the run proves nothing).
fn quick_behind_long_requests(server: &Server, workers: &[u32]) -> Option<(Vec<u32>, u32)> {
    workers.iter().for_each(|&w| wait_idle(w));
    let long = send(server, "/work?us=1000000");
    let medium = send(server, "/work?us=200000");
    wait_running(workers);
    // Both inside long requests: the quick connections are split between them.
    let quick: Vec<TcpStream> = (0..6).map(|_| send(server, "/")).collect();
    let free = answer_pid(medium);
    // The next connection wakes the primary, which sees one worker free and takes back what
    // waits unread for the other.
    let next = send(server, "/");
    let pids: Vec<u32> = quick.into_iter().chain([next]).map(answer_pid).collect();
    let still_running = unanswered(&long);
    answer_pid(long);
    still_running.then_some((pids, free))
}

#[test]
fn connections_waiting_behind_a_long_request_go_to_a_worker_that_is_free() {
    let mut server = Launch::herd(&["--workers", "2", "--policy", "idle-first"])
        .env("RUST_LOG", "herd=debug")
        .start();
    let workers = server.workers();
    let (pids, free) = (0..ATTEMPTS)
        .find_map(|_| quick_behind_long_requests(&server, &workers))
        .expect("the long request outlived the quick ones at least once");
    assert!(
        pids.iter().all(|&p| p == free),
        "every quick request answered by the free worker {free}: {pids:?}"
    );
    assert!(
        server.find_log("inside a long request").is_some(),
        "some were taken back from the busy worker's channel: {}",
        server.log_text()
    );
}
