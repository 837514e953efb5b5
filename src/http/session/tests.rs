//! The session's state machine, fed in pieces of every size.

use super::*;

/// Feeds `input` in `step`-byte pieces and returns all output and the session.
fn run(input: &[u8], step: usize, limits: Limits) -> (String, Session) {
    let mut s = Session::new(limits);
    let mut out = Vec::new();
    for piece in input.chunks(step.max(1)) {
        s.receive(piece);
        loop {
            s.advance(&Serving::plain());
            let o = s.output();
            if o.is_empty() {
                break;
            }
            out.extend_from_slice(o);
            let n = o.len();
            s.consume(n);
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), s)
}

fn statuses(out: &str) -> Vec<&str> {
    out.split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|r| r.get(..3))
        .collect()
}

#[test]
fn pipelined_bodies_in_any_split() {
    let input = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
        POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n\
        3\r\nabc\r\n0\r\n\r\n\
        GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    for step in [1, 2, 7, 64, input.len()] {
        let (out, s) = run(input, step, Limits::default());
        assert_eq!(statuses(&out), ["405", "100", "405", "200"], "step {step}");
        assert!(out.contains("Allow: GET, HEAD\r\n"));
        assert_eq!(s.closing(), Some(Closing::Asked));
        assert!(s.finished());
    }
}

#[test]
fn oversized_heads() {
    let limits = Limits {
        max_head: 64,
        ..Limits::default()
    };
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(100));
    let (out, s) = run(long_uri.as_bytes(), 1000, limits.clone());
    assert_eq!(statuses(&out), ["414"]);
    assert_eq!(s.closing(), Some(Closing::Refused));
    let big_head = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "b".repeat(60));
    assert_eq!(
        statuses(&run(big_head.as_bytes(), 1000, limits.clone()).0),
        ["431"]
    );
    assert_eq!(statuses(&run(big_head.as_bytes(), 3, limits).0), ["431"]);
}

#[test]
fn bodies_past_the_limit_get_413_and_nothing_else() {
    let limits = Limits {
        max_body: 4,
        ..Limits::default()
    };
    let next = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for input in [
        format!("GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n{next}"),
        format!("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n1\r\n{next}"),
    ] {
        for step in [1, input.len()] {
            let (out, s) = run(input.as_bytes(), step, limits.clone());
            assert_eq!(statuses(&out), ["413"], "{input:?} by {step}");
            assert!(out.contains("Connection: close\r\n"));
            assert_eq!(s.closing(), Some(Closing::Refused));
        }
    }
    let at_limit = format!("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nabcd{next}");
    assert_eq!(
        statuses(&run(at_limit.as_bytes(), 3, limits).0),
        ["200", "200"]
    );
}

#[test]
fn request_limit_and_bytes_streaming() {
    let limits = Limits {
        max_requests: 2,
        ..Limits::default()
    };
    let input = b"GET /bytes?n=100000 HTTP/1.1\r\nHost: a\r\n\r\n\
        HEAD /bytes?n=7 HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let (out, s) = run(input, input.len(), limits);
    assert_eq!(statuses(&out), ["200", "200"]);
    assert!(out.contains(&format!("\r\n\r\n{}HTTP/1.1 200", "x".repeat(100_000))));
    assert!(out.ends_with("Content-Length: 7\r\nConnection: close\r\n\r\n"));
    assert_eq!(s.requests(), 2);
}

#[test]
fn phases() {
    let mut s = Session::new(Limits::default());
    assert_eq!(s.phase(), Phase::Idle);
    s.receive(b"POST / HTTP/1.1\r\nHost: a\r\n");
    s.advance(&Serving::plain());
    assert_eq!(s.phase(), Phase::Head);
    s.receive(b"Content-Length: 3\r\n\r\nab");
    s.advance(&Serving::plain());
    assert_eq!(s.phase(), Phase::Body);
    s.reject(408, "test");
    assert_eq!(s.phase(), Phase::Output);
    assert!(String::from_utf8_lossy(s.output()).starts_with("HTTP/1.1 408 "));
}

#[test]
fn who_asked_to_close() {
    // The client: it sends nothing more, so the worker need not look for more before closing.
    for input in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.0\r\n\r\n",
    ] {
        let (out, s) = run(input, input.len(), Limits::default());
        assert_eq!(statuses(&out).len(), 1, "{out}");
        assert_eq!(s.closing(), Some(Closing::Asked), "{out}");
    }
    // The server (its request limit): the client may have sent more.
    let limits = Limits {
        max_requests: 1,
        ..Limits::default()
    };
    let (out, s) = run(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 64, limits);
    assert!(out.contains("Connection: close\r\n"), "{out}");
    assert_eq!(s.closing(), Some(Closing::Done));
    // Still open: a keep-alive request.
    let (_, s) = run(
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        64,
        Limits::default(),
    );
    assert_eq!(s.closing(), None);
}
