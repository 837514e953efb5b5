//! Issue 18, HTTP limits, each on a real server over real sockets.

mod common;

use std::io::{BufReader, Write};
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn timeouts_too_long_for_the_clock_mean_no_timeout() {
    // 500 billion years overflows an `Instant`: the worker used to panic at its next sweep
    // (every 250 ms) over a connection waiting with such a deadline.
    let forever = "500000000000y";
    let server = Server::start(&[
        "--workers",
        "1",
        "--header-timeout",
        forever,
        "--keepalive-timeout",
        forever,
    ]);
    let mut s = connect(server.addr());
    for (phase, bytes) in [
        (
            "head",
            &b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"[..],
        ),
        ("body", b"\r\nab"),
    ] {
        s.write_all(bytes).unwrap();
        // Over two sweeps pass: the connection just waits.
        let (out, end) = read_to_close(&mut s, Duration::from_millis(600));
        assert_eq!(
            (out.len(), end),
            (0, End::Open),
            "{phase}: {}",
            server.log_text()
        );
    }
    s.write_all(b"c").unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert_eq!(read_response(&mut r, false).unwrap().status, 200);
    // Idle on keep-alive, then served again.
    let (out, end) = read_to_close(&mut s, Duration::from_millis(600));
    assert_eq!((out.len(), end), (0, End::Open), "{}", server.log_text());
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r, false).unwrap().status, 200);
    assert_eq!(server.count_log("died"), 0, "{}", server.log_text());
}

/// A request with `lines` header lines in all (`Host` and `Connection` included).
fn with_headers(lines: usize) -> Vec<u8> {
    let mut req = String::from("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for i in 2..lines {
        req += &format!("X-Header-{i:04}: v\r\n");
    }
    req += "\r\n";
    req.into_bytes()
}

fn status_with_headers(server: &Server, lines: usize) -> u16 {
    let (out, end) = exchange(server.addr(), &with_headers(lines), Duration::from_secs(5));
    assert_eq!(end, End::Eof, "{lines} header lines");
    parse_responses(&out).first().map_or(0, |r| r.status)
}

#[test]
fn header_lines_are_capped_by_max_headers() {
    // By default 100 header lines: a 65-line, 1.4 KB head is served (it was 431 at 64).
    let server = Server::start(&["--workers", "1"]);
    assert!(with_headers(65).len() < 1500);
    for (lines, want) in [(65, 200), (100, 200), (101, 431)] {
        assert_eq!(status_with_headers(&server, lines), want, "{lines} lines");
    }
    let small = Server::start(&["--workers", "1", "--max-headers", "10"]);
    for (lines, want) in [(10, 200), (11, 431)] {
        assert_eq!(
            status_with_headers(&small, lines),
            want,
            "{lines} lines, cap 10"
        );
    }
    let large = Server::start(&[
        "--workers",
        "1",
        "--max-headers",
        "2000",
        "--max-head-bytes",
        "65536",
    ]);
    for (lines, want) in [(1500, 200), (2000, 200), (2001, 431)] {
        assert_eq!(
            status_with_headers(&large, lines),
            want,
            "{lines} lines, cap 2000"
        );
    }
}

#[test]
fn limit_flags_reject_bad_values() {
    for (flag, value) in [
        ("--max-headers", "0"),
        ("--max-headers", "65536"),
        ("--max-headers", "many"),
    ] {
        let out = Command::new(herd_bin())
            .arg("serve")
            .arg(format!("{flag}={value}"))
            .output()
            .expect("run herd");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}={value}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{flag}={value}: {err}");
        assert!(
            err.starts_with(&format!("error: invalid value '{value}' for '{flag}")),
            "{flag}={value}: {err}"
        );
    }
}
