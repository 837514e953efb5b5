//! `idle-first` with async workers (feature `axum`): each tokio worker publishes on its status
//! page whether its thread runs (busy) or is parked (idle), and how many connections it serves.
//! No timing assertion: the test only looks at which worker answered, and checks that the long
//! request was still running.
//!
//! Run with `cargo test --features axum` (the file needs the feature; `.ci/run` does it).

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;

use common::*;

/// Quick requests sent while one worker is stuck.
const N: usize = 8;
/// Idle keep-alive connections held on the idle worker: more than the stuck one serves.
const HELD: usize = 3;
/// Attempts, in case a very loaded machine finishes the one-second request before the quick
/// ones are done (then the run proves nothing and is tried again).
const ATTEMPTS: usize = 5;

/// An idle keep-alive connection: its pid, and the socket to keep it open.
fn open_idle(server: &Server) -> (u32, BufReader<TcpStream>) {
    let mut s = connect(server.addr());
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false).unwrap();
    assert_eq!(resp.status, 200);
    (resp.pid(), r)
}

/// Sends a one-second `/spin` on `stuck`'s connection, then `N` quick requests, each once the
/// worker that answered the previous one is idle again. Returns the quick answers' pids, or
/// `None` if the long request was over before the quick ones were.
fn quick_while_stuck(server: &Server, stuck: &mut BufReader<TcpStream>) -> Option<Vec<u32>> {
    stuck
        .get_mut()
        .write_all(b"GET /spin/1000 HTTP/1.1\r\nHost: t\r\n\r\n")
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
    let still_running = unanswered(stuck.get_ref());
    let r = read_response(stuck, false).expect("the long answer");
    assert_eq!(r.status, 200);
    still_running.then_some(pids)
}

/// One worker serves `HELD` idle keep-alive connections and waits; the other serves one, and
/// is stuck in a long request on it. Fewest connections alone would pick the stuck one: the
/// quick requests all go to the idle one, because the stuck one says it is busy.
#[test]
fn the_idle_async_worker_is_chosen_over_the_busy_one() {
    let mut server = Server::start_example(
        "axum",
        &[
            "0",
            "--host",
            "127.0.0.1",
            "--workers",
            "2",
            "--policy",
            "idle-first",
        ],
    );
    let workers = server.workers();
    assert_eq!(workers.len(), 2, "{}", server.log_text());
    let (idle, busy) = (workers[0], workers[1]);
    // Idle workers take connections in rotation: open until each has what it needs.
    let mut on_idle = Vec::new();
    let mut on_busy = None;
    wait_for("connections on both workers", DEADLINE, || {
        workers.iter().for_each(|&w| wait_idle(w));
        let (pid, conn) = open_idle(&server);
        if pid == idle && on_idle.len() < HELD {
            on_idle.push(conn);
        } else if pid == busy && on_busy.is_none() {
            on_busy = Some(conn);
        }
        (on_idle.len() == HELD && on_busy.is_some()).then_some(())
    });
    let mut stuck = on_busy.expect("a connection on the other worker");
    let quick = (0..ATTEMPTS)
        .find_map(|_| {
            workers.iter().for_each(|&w| wait_idle(w));
            quick_while_stuck(&server, &mut stuck)
        })
        .expect("the long request outlived the quick ones at least once");
    assert!(
        quick.iter().all(|&p| p == idle),
        "the busy worker {busy} got none of {quick:?} (the idle one is {idle})"
    );
    drop(on_idle);
}
