//! `--drain-delay`: on SIGTERM `/healthz` turns 503 while the host goes on accepting and
//! serving (answers say `Connection: close`), then it shuts down as without a delay.

mod common;

use std::io::{BufReader, Write};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

fn health(server: &Server) -> u16 {
    get(server.addr(), "/healthz").map_or(0, |r| r.status)
}

#[test]
fn sigterm_fails_health_and_keeps_serving_for_the_delay() {
    let delay = Duration::from_secs(5);
    let mut server = Server::start(&["--workers", "2", "--drain-delay", "5s"]);
    assert_eq!(health(&server), 200);
    // A keep-alive connection served before the signal.
    let mut kept = connect(server.addr());
    let mut reader = BufReader::new(kept.try_clone().unwrap());
    kept.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut reader, false).unwrap();
    assert_eq!(
        (r.status, r.header("connection")),
        (200, Some("keep-alive"))
    );

    let signalled = Instant::now();
    server.signal(Signal::SIGTERM);
    wait_for("/healthz to answer 503", DEADLINE, || {
        (health(&server) == 503).then_some(())
    });
    // New connections are still accepted and served, and closed after their answer.
    let mut ka = connect(server.addr());
    ka.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let (out, end) = read_to_close(&mut ka, DEADLINE);
    let answers = parse_responses(&out);
    assert_eq!(answers.len(), 1, "{}", String::from_utf8_lossy(&out));
    assert_eq!(answers[0].status, 200);
    assert_eq!(answers[0].header("connection"), Some("close"));
    assert_eq!(end, End::Eof);
    // The connection kept alive from before gets its answer, then is closed.
    kept.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut reader, false).unwrap();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));

    assert!(server.wait_exit(DEADLINE).success());
    assert!(
        signalled.elapsed() >= delay,
        "stopped before the drain delay was over"
    );
    let log = server.log_text();
    let leaving = log.find("leaving: health checks fail").expect(&log);
    let over = log.find("drain delay over").expect(&log);
    assert!(leaving < over, "{log}");
}

#[test]
fn a_second_signal_cuts_the_delay_short() {
    let mut server = Server::start(&["--workers", "1", "--drain-delay", "10m"]);
    server.signal(Signal::SIGTERM);
    wait_for("/healthz to answer 503", DEADLINE, || {
        (health(&server) == 503).then_some(())
    });
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(DEADLINE).success());
    assert!(server.find_log("the drain delay is cut short").is_some());
}

#[test]
fn a_bad_drain_delay_is_a_one_line_error() {
    let out = std::process::Command::new(herd_bin())
        .args(["serve", "--drain-delay", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--drain-delay"), "{err}");
}

#[test]
fn a_sigterm_to_every_process_as_systemd_sends_it_still_drains() {
    let mut server = Server::start(&["--workers", "2", "--drain-delay", "5s"]);
    let signalled = Instant::now();
    for pid in server.workers() {
        send_signal(pid, Signal::SIGTERM).unwrap();
    }
    server.signal(Signal::SIGTERM);
    wait_for("/healthz to answer 503", DEADLINE, || {
        (health(&server) == 503).then_some(())
    });
    // The workers took the signal as "leaving", not "stop": the host still serves.
    for _ in 0..4 {
        let r = get(server.addr(), "/").unwrap();
        assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    }
    assert!(server.wait_exit(DEADLINE).success());
    assert!(signalled.elapsed() >= Duration::from_secs(5));
    assert_eq!(
        server.count_log("host leaving (SIGTERM)"),
        2,
        "{}",
        server.log_text()
    );
}
