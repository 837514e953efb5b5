//! `idle-first` (issue 13): a worker stuck in a long request gets none of the next connections
//! while another is idle, and gets them again once it is free. No timing assertion: the test
//! only looks at which worker answered, and checks that the long request was still running.
//! While every worker is inside a long request, new connections wait in the overflow queue for
//! the first one that is free (not in a busy worker's channel), and what waits there when the
//! primary is told to stop is still served.

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;

use common::*;
use herd::procfs::Stat;
use nix::sys::signal::Signal;

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
/// was over before they were answered (then the run proves nothing). Without the overflow
/// queue (or, when it is full, the primary taking back what a busy worker has not read), half
/// the quick ones would wait for the long request.
fn quick_behind_long_requests(server: &Server, workers: &[u32]) -> Option<(Vec<u32>, u32)> {
    workers.iter().for_each(|&w| wait_idle(w));
    let long = send(server, "/work?us=1000000");
    let medium = send(server, "/work?us=200000");
    wait_running(workers);
    // Both inside long requests: the quick connections are split between them.
    let quick: Vec<TcpStream> = (0..6).map(|_| send(server, "/")).collect();
    let free = answer_pid(medium);
    // One more once a worker is free.
    let next = send(server, "/");
    let pids: Vec<u32> = quick.into_iter().chain([next]).map(answer_pid).collect();
    let still_running = unanswered(&long);
    answer_pid(long);
    still_running.then_some((pids, free))
}

#[test]
fn connections_waiting_behind_a_long_request_go_to_a_worker_that_is_free() {
    let mut server = Server::start(&["--workers", "2", "--policy", "idle-first"]);
    let workers = server.workers();
    let (pids, free) = (0..ATTEMPTS)
        .find_map(|_| quick_behind_long_requests(&server, &workers))
        .expect("the long request outlived the quick ones at least once");
    assert!(
        pids.iter().all(|&p| p == free),
        "every quick request answered by the free worker {free}: {pids:?}"
    );
}

/// Connections the kernel holds for the listener on `port` (its accept queue), from
/// `/proc/net/tcp`; `None` when no such listener is there.
fn accept_queue(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let local_port = f.get(1)?.rsplit(':').next()?;
        let listening = f.get(3) == Some(&"0A");
        (listening && u16::from_str_radix(local_port, 16).ok()? == port)
            .then(|| u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok())
            .flatten()
    })
}

#[test]
fn connections_in_the_overflow_queue_when_told_to_stop_are_served() {
    let mut server = Server::start(&["--workers", "2", "--policy", "idle-first"]);
    let workers = server.workers();
    workers.iter().for_each(|&w| wait_idle(w));
    let long: Vec<TcpStream> = (0..2).map(|_| send(&server, "/work?us=2000000")).collect();
    wait_running(&workers);
    // No worker is idle: these wait in the overflow queue once the primary has accepted them.
    let quick: Vec<TcpStream> = (0..4).map(|_| send(&server, "/")).collect();
    let port = server.addr().port();
    wait_for("the primary to accept them", DEADLINE, || {
        (accept_queue(port) == Some(0)).then_some(())
    });
    server.signal(Signal::SIGTERM);
    server.wait_log("shutting down", DEADLINE);
    let still_running = long.iter().all(unanswered);
    let pids: Vec<u32> = quick.into_iter().map(answer_pid).collect();
    assert!(pids.iter().all(|p| workers.contains(p)), "{pids:?}");
    long.into_iter().for_each(|l| {
        answer_pid(l);
    });
    assert!(server.wait_exit(DEADLINE).success());
    assert!(
        still_running,
        "the long requests were still running when the primary was told to stop"
    );
}
