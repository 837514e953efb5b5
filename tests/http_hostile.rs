//! Issue 5: malformed and hostile requests against a real worker. Each gets its status, a
//! well-formed response and a close; after each one the same worker still serves `GET /`.

mod common;

use std::time::Duration;

use common::*;

/// `(what, raw request, expected status)`.
fn cases() -> Vec<(&'static str, Vec<u8>, u16)> {
    let ok = |s: &str| s.as_bytes().to_vec();
    let many_headers: String = (0..120).map(|i| format!("X-{i}: v\r\n")).collect();
    let big_headers: String = (0..100)
        .map(|i| format!("X-{i}: {}\r\n", "v".repeat(90)))
        .collect();
    vec![
        ("bad method byte", ok("G(T / HTTP/1.1\r\nHost: a\r\n\r\n"), 400),
        ("empty method", ok(" / HTTP/1.1\r\nHost: a\r\n\r\n"), 400),
        ("double space in request line", ok("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), 400),
        ("tab as separator", ok("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400),
        ("unknown method", ok("BREW / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), 405),
        ("POST is not allowed", ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"), 405),
        ("bad version", ok("GET / HTTP/1.x\r\nHost: a\r\n\r\n"), 400),
        ("lowercase version", ok("GET / http/1.1\r\nHost: a\r\n\r\n"), 400),
        ("HTTP/2.0 over h1", ok("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505),
        ("HTTP/1.2", ok("GET / HTTP/1.2\r\nHost: a\r\n\r\n"), 505),
        ("HTTP/0.9 request", ok("GET /\r\n\r\n"), 400),
        ("not HTTP (TLS hello)", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), 400),
        ("relative target", ok("GET foo HTTP/1.1\r\nHost: a\r\n\r\n"), 400),
        ("asterisk target with GET", ok("GET * HTTP/1.1\r\nHost: a\r\n\r\n"), 400),
        ("absolute target without host", ok("GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n"), 400),
        ("NUL in target", ok("GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n"), 400),
        ("invalid UTF-8 in target", b"GET /\xff\xfe HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 400),
        ("very long URI", format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(20_000)).into_bytes(), 414),
        ("missing Host in HTTP/1.1", ok("GET / HTTP/1.1\r\n\r\n"), 400),
        ("two Host headers", ok("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400),
        ("Host with a slash", ok("GET / HTTP/1.1\r\nHost: a/../b\r\n\r\n"), 400),
        ("space before colon", ok("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), 400),
        ("obs-fold", ok("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n"), 400),
        ("whitespace before first header", ok("GET / HTTP/1.1\r\n Host: a\r\n\r\n"), 400),
        ("empty header name", ok("GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n"), 400),
        ("NUL in header value", ok("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"), 400),
        ("NUL in header name", ok("GET / HTTP/1.1\r\nHost: a\r\nX\0Y: v\r\n\r\n"), 400),
        ("control byte in header value", ok("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n"), 400),
        ("DEL in header value", ok("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n"), 400),
        ("bare CR line ends", ok("GET / HTTP/1.1\rHost: a\r\r"), 400),
        ("bare CR inside a value", ok("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"), 400),
        ("oversized head", format!("GET / HTTP/1.1\r\nHost: a\r\n{big_headers}\r\n").into_bytes(), 431),
        ("too many headers", format!("GET / HTTP/1.1\r\nHost: a\r\n{many_headers}\r\n").into_bytes(), 431),
        ("negative Content-Length", ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"), 400),
        ("Content-Length with a sign", ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc"), 400),
        ("Content-Length list", ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc"), 400),
        ("duplicate Content-Length", ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"), 400),
        ("conflicting Content-Length", ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"), 400),
        ("Content-Length overflow", ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 184467440737095516160\r\n\r\n"), 400),
        ("Content-Length not a number", ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n"), 400),
        ("CL and TE together", ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
        ("TE then CL", ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"), 400),
        ("unsupported transfer coding", ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"), 501),
        ("coding list ending in chunked", ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"), 501),
        ("chunked twice", ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
        ("chunked in HTTP/1.0", ok("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
        ("chunk size not hex", ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"), 400),
        ("empty chunk size line", ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n"), 400),
        ("negative chunk size", ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n"), 400),
        ("chunk size overflow", ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n"), 400),
        ("space after chunk size", ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n"), 400),
        ("bare LF after chunk size", ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"), 400),
        ("chunk longer than its size", ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n"), 400),
        ("NUL in chunk extension", ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\0\r\nhello\r\n0\r\n\r\n"), 400),
        ("malformed trailer", ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nno colon here\r\n\r\n"), 400),
        ("unknown expectation", ok("POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 0\r\n\r\n"), 417),
    ]
}

fn assert_well_formed(what: &str, out: &[u8], want: u16) {
    let text = String::from_utf8_lossy(out);
    let responses = parse_responses(out);
    assert_eq!(
        responses.len(),
        1,
        "{what}: one response expected, got {text:?}"
    );
    let r = &responses[0];
    assert_eq!(r.status, want, "{what}: {text:?}");
    assert!(r.header("date").is_some(), "{what}: no Date: {text:?}");
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str()),
        "{what}"
    );
    assert_eq!(r.header("connection"), Some("close"), "{what}: {text:?}");
    if want == 405 {
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{what}");
    }
}

#[test]
fn hostile_requests_get_their_status_and_the_worker_keeps_serving() {
    let mut server = Server::start(&["--workers", "1"]);
    let workers = server.workers();
    let pid = serving_pid(server.addr());
    let cases = cases();
    assert!(cases.len() >= 25, "{} cases", cases.len());
    for (what, raw, want) in cases {
        let (out, end) = exchange(server.addr(), &raw, Duration::from_secs(5));
        assert_ne!(end, End::Open, "{what}: the server must close");
        assert_well_formed(what, &out, want);
        assert_eq!(
            serving_pid(server.addr()),
            pid,
            "{what}: same worker serves"
        );
    }
    assert_eq!(server.workers(), workers, "no worker died or was replaced");
    assert_eq!(server.count_log("died"), 0, "{}", server.log_text());
}

#[test]
fn lenient_but_unambiguous_forms_are_served() {
    let server = Server::start(&["--workers", "1"]);
    for (what, raw) in [
        ("bare LF line ends", &b"GET / HTTP/1.1\nHost: a\nConnection: close\n\n"[..]),
        ("empty lines before the request", b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        ("absolute-form target", b"GET http://x:1/bytes?n=4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        ("obs-text in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\nConnection: close\r\n\r\n"),
        ("UTF-8 in the path", "GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".as_bytes()),
        ("chunked with extensions and trailers", b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;x=\"y\"\r\nhello\r\n0\r\nT: 1\r\n\r\n"),
        ("Content-Length with leading zeros", b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 003\r\nConnection: close\r\n\r\nabc"),
    ] {
        let (out, end) = exchange(server.addr(), raw, Duration::from_secs(5));
        assert_eq!(end, End::Eof, "{what}");
        let responses = parse_responses(&out);
        assert_eq!(responses.len(), 1, "{what}: {:?}", String::from_utf8_lossy(&out));
        let want = if what == "UTF-8 in the path" { 404 } else { 200 };
        assert_eq!(responses[0].status, want, "{what}");
    }
}
