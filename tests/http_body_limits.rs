//! Issue 18, HTTP limits, each on a real server over real sockets.

mod common;

use std::io::{BufReader, Write};
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
