//! Issue 5: the HTTP limits, each set by its flag on a real server, and the framing rules
//! (bodies, `Expect: 100-continue`, HEAD, HTTP/1.0 keep-alive) over real sockets.

mod common;

use std::io::{BufReader, Write};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn keepalive_idle_timeout_closes_idle_connections() {
    let server = Server::start(&["--workers", "1", "--keepalive-timeout", "1s"]);
    let mut s = connect(server.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let first = read_response(&mut r, false).unwrap();
    assert_eq!(first.header("connection"), Some("keep-alive"));
    // Within the timeout the connection is reused.
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r, false).unwrap().pid(), first.pid());
    // Then idle: closed after about a second, not before.
    let idle = Instant::now();
    let (out, end) = read_to_close(&mut s, Duration::from_secs(5));
    let waited = idle.elapsed();
    assert_eq!((out.len(), end), (0, End::Eof));
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

#[test]
fn max_requests_per_conn_closes_after_the_last() {
    let server = Server::start(&["--workers", "1", "--max-requests-per-conn", "3"]);
    let mut s = connect(server.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    for i in 1..=3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let resp = read_response(&mut r, false).unwrap();
        let want = if i < 3 { "keep-alive" } else { "close" };
        assert_eq!(resp.header("connection"), Some(want), "request {i}");
    }
    assert_eq!(read_to_close(&mut s, DEADLINE).1, End::Eof);

    // Pipelined past the limit: three answers, then the close.
    let (out, end) = exchange(
        server.addr(),
        &b"GET / HTTP/1.1\r\nHost: t\r\n\r\n".repeat(5),
        DEADLINE,
    );
    assert_eq!(end, End::Eof);
    let rs = parse_responses(&out);
    assert_eq!(rs.len(), 3, "{:?}", String::from_utf8_lossy(&out));
    assert_eq!(rs[2].header("connection"), Some("close"));
}

#[test]
fn max_head_bytes_flag_sets_the_431_limit() {
    let server = Server::start(&["--workers", "1", "--max-head-bytes", "1024"]);
    let head = |pad: usize| {
        format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
            "p".repeat(pad)
        )
    };
    let (out, _) = exchange(server.addr(), head(900).as_bytes(), DEADLINE);
    assert_eq!(parse_responses(&out)[0].status, 200);
    let (out, _) = exchange(server.addr(), head(1100).as_bytes(), DEADLINE);
    assert_eq!(parse_responses(&out)[0].status, 431);
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "u".repeat(1100));
    let (out, _) = exchange(server.addr(), long_uri.as_bytes(), DEADLINE);
    assert_eq!(parse_responses(&out)[0].status, 414);
}

#[test]
fn header_timeout_applies_to_stalled_heads_and_bodies() {
    let server = Server::start(&["--workers", "1", "--header-timeout", "1s"]);
    for (what, partial) in [
        ("head", &b"GET / HTTP/1.1\r\nHost: t\r\n"[..]),
        (
            "body",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc",
        ),
        (
            "chunked body",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        ),
    ] {
        let t = Instant::now();
        let (out, end) = exchange(server.addr(), partial, Duration::from_secs(5));
        let took = t.elapsed();
        assert_eq!(end, End::Eof, "{what}");
        assert_eq!(parse_responses(&out)[0].status, 408, "{what}");
        assert!(took >= Duration::from_millis(900), "{what}: {took:?}");
        assert!(took < Duration::from_secs(3), "{what}: {took:?}");
    }
    // A connection that never sends anything is closed without a response.
    let (out, end) = exchange(server.addr(), b"", Duration::from_secs(5));
    assert_eq!((out.len(), end), (0, End::Eof));
}

#[test]
fn a_body_that_keeps_moving_is_not_cut_off() {
    let server = Server::start(&["--workers", "1", "--header-timeout", "1s"]);
    let mut s = connect(server.addr());
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    // Two and a half seconds of body, a chunk every half second: never idle for 1 s.
    for _ in 0..5 {
        s.write_all(b"3\r\nabc\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(500)); // the uploader's pace
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_response(&mut r, false).unwrap().status, 200);
}

#[test]
fn bodies_are_discarded_and_the_connection_goes_on() {
    let server = Server::start(&["--workers", "1"]);
    let mut s = connect(server.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
          GET /nope HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          4\r\nwiki\r\n5;ext\r\npedia\r\n0\r\nExpires: never\r\n\r\n\
          HEAD /bytes?n=10 HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /bytes?n=2 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    let a = read_response(&mut r, false).unwrap();
    let b = read_response(&mut r, false).unwrap();
    let c = read_response(&mut r, true).unwrap();
    let d = read_response(&mut r, false).unwrap();
    assert_eq!(
        [a.status, b.status, c.status, d.status],
        [200, 404, 200, 200]
    );
    assert_eq!(c.header("content-length"), Some("10"));
    assert_eq!(
        d.body, b"xx",
        "HEAD sent no body: the next response follows at once"
    );
    for resp in [&a, &b, &c, &d] {
        assert!(resp.header("date").is_some());
        assert_eq!(resp.header("connection"), Some("keep-alive"));
    }
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let server = Server::start(&["--workers", "1"]);
    let mut s = connect(server.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        .unwrap();
    let interim = read_response(&mut r, false).unwrap();
    assert_eq!(interim.status, 100);
    s.write_all(b"body").unwrap();
    assert_eq!(read_response(&mut r, false).unwrap().status, 200);
    // HTTP/1.0 clients never get a 100.
    let (out, _) = exchange(
        server.addr(),
        b"GET / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
        DEADLINE,
    );
    assert!(out.starts_with(b"HTTP/1.1 200 "));
}

#[test]
fn http10_keep_alive_when_asked() {
    let server = Server::start(&["--workers", "1"]);
    let mut s = connect(server.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let resp = read_response(&mut r, false).unwrap();
        assert_eq!(resp.header("connection"), Some("keep-alive"));
    }
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let last = read_response(&mut r, false).unwrap();
    assert_eq!(last.header("connection"), Some("close"));
    assert_eq!(read_to_close(&mut s, DEADLINE).1, End::Eof);
}

#[test]
fn keepalive_timeout_counts_idle_time_not_connection_age() {
    // A busy client keeps its connection past the idle timeout: every answered request
    // restarts the keep-alive clock, also one read and answered within one event.
    let server = Server::start(&["--workers", "1", "--keepalive-timeout", "1s"]);
    let mut s = connect(server.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    let until = Instant::now() + Duration::from_millis(2500);
    let mut served = 0;
    while Instant::now() < until {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let resp = read_response(&mut r, false)
            .unwrap_or_else(|e| panic!("request {} on a busy connection: {e}", served + 1));
        assert_eq!(resp.header("connection"), Some("keep-alive"));
        served += 1;
        // A short idle gap, far inside the timeout: the worker goes back to waiting between
        // requests (without it a fast worker may answer the next request in the same event).
        std::thread::sleep(Duration::from_millis(20)); // the client's idle gap, not a wait
    }
    assert!(served > 10, "only {served} requests in 2.5 s");
}
