//! Issue 18, HTTP limits: the request body limit (`--max-body-bytes`, `413`), the whole-body
//! deadline (`--body-timeout`, `408`) and the header-line cap (`--max-headers`, `431`), each on
//! a real server over real sockets.

mod common;

use std::io::{BufReader, Write};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// The default `--max-body-bytes`.
const MIB: usize = 1024 * 1024;

/// Reads what the server sends until it closes: exactly one response, which must be `status`
/// with `Connection: close`, and the close must come within `limit`.
fn assert_refused(s: &mut std::net::TcpStream, status: u16, limit: Duration, what: &str) {
    let (out, end) = read_to_close(s, limit);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(
        end,
        End::Eof,
        "{what}: not closed after the answer: {text:?}"
    );
    let rs = parse_responses(&out);
    assert_eq!(rs.len(), 1, "{what}: {text:?}");
    assert_eq!(rs[0].status, status, "{what}: {text:?}");
    assert_eq!(rs[0].header("connection"), Some("close"), "{what}");
}

/// A chunk of `n` bytes of body, framed.
fn chunk(n: usize) -> Vec<u8> {
    let mut c = format!("{n:x}\r\n").into_bytes();
    c.resize(c.len() + n, b'b');
    c.extend_from_slice(b"\r\n");
    c
}

#[test]
fn content_length_beyond_the_default_limit_is_refused_before_the_body() {
    let server = Server::start(&["--workers", "1"]);
    // Only the head is sent: the 413 comes at once, without waiting for a body (and without a
    // `100 Continue` inviting one), and the connection is closed after it.
    for (what, head) in [
        (
            "one byte over",
            format!(
                "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                MIB + 1
            ),
        ),
        (
            "with Expect",
            format!(
                "GET / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
                MIB + 1
            ),
        ),
        (
            "u64::MAX",
            format!(
                "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                u64::MAX
            ),
        ),
    ] {
        let mut s = connect(server.addr());
        s.write_all(head.as_bytes()).unwrap();
        let t = Instant::now();
        assert_refused(&mut s, 413, Duration::from_secs(5), what);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{what}: {:?}",
            t.elapsed()
        );
    }
    // An absurd value (beyond u64) stays a 400, as in nginx.
    let mut s = connect(server.addr());
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999\r\n\r\n")
        .unwrap();
    assert_refused(&mut s, 400, Duration::from_secs(5), "overflow");
    // A body of exactly the limit is read and the connection goes on.
    let mut s = connect(server.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut request =
        format!("GET / HTTP/1.1\r\nHost: t\r\nContent-Length: {MIB}\r\n\r\n").into_bytes();
    request.resize(request.len() + MIB, b'b');
    request.extend_from_slice(b"GET /bytes?n=3 HTTP/1.1\r\nHost: t\r\n\r\n");
    s.write_all(&request).unwrap();
    let at_limit = read_response(&mut r, false).unwrap();
    assert_eq!(
        (at_limit.status, at_limit.header("connection")),
        (200, Some("keep-alive"))
    );
    assert_eq!(read_response(&mut r, false).unwrap().body, b"xxx");
}

#[test]
fn chunked_bodies_are_refused_as_soon_as_they_pass_the_limit() {
    let server = Server::start(&["--workers", "1", "--max-body-bytes", "1000"]);
    // 600 + 400 bytes: exactly the limit, served, and the connection stays open.
    let mut s = connect(server.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    let head = b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    let body = [chunk(600), chunk(400), b"0\r\n\r\n".to_vec()].concat();
    s.write_all(&[&head[..], &body].concat()).unwrap();
    let ok = read_response(&mut r, false).unwrap();
    assert_eq!(
        (ok.status, ok.header("connection")),
        (200, Some("keep-alive"))
    );
    // 600 bytes, then a chunk-size line of 401: refused at that line, before its data, and
    // the request pipelined behind it is never answered.
    let mut s = connect(server.addr());
    s.write_all(&[&head[..], &chunk(600), b"191\r\n"].concat())
        .unwrap();
    assert_refused(
        &mut s,
        413,
        Duration::from_secs(5),
        "chunked past the limit",
    );
    // Also when the whole body and a next request arrive at once.
    let mut over = [&head[..], &chunk(1000), &chunk(1), b"0\r\n\r\n"].concat();
    over.extend_from_slice(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let (out, end) = exchange(server.addr(), &over, Duration::from_secs(5));
    let statuses: Vec<u16> = parse_responses(&out).iter().map(|r| r.status).collect();
    assert_eq!((statuses, end), (vec![413], End::Eof));

    // `--max-body-bytes 0` means no limit.
    let unlimited = Server::start(&["--workers", "1", "--max-body-bytes", "0"]);
    let mut big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        2 * MIB
    )
    .into_bytes();
    big.resize(big.len() + 2 * MIB, b'b');
    let (out, _) = exchange(unlimited.addr(), &big, DEADLINE);
    assert_eq!(parse_responses(&out).first().map(|r| r.status), Some(200));
}

/// Sends `head`, then a 3-byte chunk every `pace` from another thread until told to stop or
/// the server closes; returns the stop flag and the connection to read from.
fn trickle(
    addr: std::net::SocketAddr,
    pace: Duration,
) -> (
    Arc<AtomicBool>,
    std::net::TcpStream,
    std::thread::JoinHandle<()>,
) {
    let s = connect(addr);
    let mut w = s.try_clone().unwrap();
    w.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let writer = std::thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) && w.write_all(b"3\r\nabc\r\n").is_ok() {
            std::thread::sleep(pace); // the uploader's pace
        }
    });
    (stop, s, writer)
}

#[test]
fn a_body_that_never_pauses_still_ends_at_the_body_timeout() {
    let server = Server::start(&[
        "--workers",
        "1",
        "--header-timeout",
        "1s",
        "--body-timeout",
        "2s",
    ]);
    // A chunk every 300 ms: never a pause near the 1 s header timeout, yet cut off at 2 s.
    let t = Instant::now();
    let (stop, mut s, writer) = trickle(server.addr(), Duration::from_millis(300));
    assert_refused(&mut s, 408, Duration::from_secs(8), "endless trickle");
    let took = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");

    // The clock is per body: two bodies of 1.2 s each on one connection are both served.
    let mut s = connect(server.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    for i in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(300)); // the uploader's pace
            s.write_all(b"3\r\nabc\r\n").unwrap();
        }
        s.write_all(b"0\r\n\r\n").unwrap();
        let resp = read_response(&mut r, false).unwrap_or_else(|e| panic!("body {i}: {e}"));
        assert_eq!(resp.status, 200, "body {i}");
    }
}

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
        "--body-timeout",
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
fn body_and_header_flags_reject_bad_values() {
    for (flag, value) in [
        ("--max-body-bytes", "-1"),
        ("--max-body-bytes", "1MiB"),
        ("--max-body-bytes", "18446744073709551616"),
        ("--max-headers", "0"),
        ("--max-headers", "65536"),
        ("--max-headers", "many"),
        ("--body-timeout", "0"),
        ("--body-timeout", "0s"),
        ("--body-timeout", "soon"),
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
