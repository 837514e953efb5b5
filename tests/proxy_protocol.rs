//! `--proxy-protocol`, `/ip` and `/healthz` on one herd, with a test client that writes the
//! PROXY headers itself (HAProxy in front of three hosts is `tests/haproxy.rs`).

mod common;

use std::io::Write;
use std::net::SocketAddr;

use common::*;
use herd::proxy_protocol::{v1_header, v2_header, v2_local_header};
use nix::sys::signal::Signal;

/// `prefix` then a `Connection: close` request for `path`; the parsed answer (`None`: the
/// server closed without a byte).
fn ask(addr: SocketAddr, prefix: &[u8], path: &str) -> Option<Response> {
    let mut bytes = prefix.to_vec();
    write!(
        bytes,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let (out, end) = exchange(addr, &bytes, DEADLINE);
    assert_ne!(end, End::Open, "the server neither answered nor closed");
    if out.is_empty() {
        return None;
    }
    parse_responses(&out).into_iter().next()
}

fn client() -> SocketAddr {
    "127.0.0.9:41000".parse().unwrap()
}

#[test]
fn ip_is_the_header_s_client_in_both_versions() {
    let server = Server::start(&["--workers", "2", "--proxy-protocol"]);
    let addr = server.addr();
    for header in [v1_header(client(), addr), v2_header(client(), addr)] {
        for _ in 0..4 {
            let r = ask(addr, &header, "/ip").expect("an answer");
            assert_eq!((r.status, r.text()), (200, "127.0.0.9".to_string()));
        }
    }
    let six: SocketAddr = "[2001:db8::9]:5".parse().unwrap();
    let dst6: SocketAddr = "[::1]:80".parse().unwrap();
    let r = ask(addr, &v2_header(six, dst6), "/ip").expect("an answer");
    assert_eq!(r.text(), "2001:db8::9");
    // A balancer's own health check: LOCAL (v2) or UNKNOWN (v1), the socket's peer is the client.
    let r = ask(addr, &v2_local_header(), "/healthz").expect("an answer");
    assert_eq!((r.status, r.text()), (200, "ok\n".to_string()));
    let r = ask(addr, b"PROXY UNKNOWN\r\n", "/ip").expect("an answer");
    assert_eq!(r.text(), "127.0.0.1");
    // Keep-alive: the header comes once, then any number of requests.
    let mut bytes = v2_header(client(), addr);
    bytes.extend_from_slice(
        b"GET /ip HTTP/1.1\r\nHost: t\r\n\r\nGET /ip HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let (out, _) = exchange(addr, &bytes, DEADLINE);
    let answers = parse_responses(&out);
    assert_eq!(answers.len(), 3, "{}", String::from_utf8_lossy(&out));
    assert_eq!(answers[0].text(), "127.0.0.9");
    assert_eq!(answers[1].text(), "127.0.0.9");
    assert!(answers[2].text().starts_with("Hello World!"));
}

#[test]
fn without_a_valid_header_a_connection_is_closed_unanswered_and_counted() {
    let mut server = Server::start(&[
        "--workers",
        "1",
        "--proxy-protocol",
        "--header-timeout",
        "1s",
    ]);
    let addr = server.addr();
    let bad: [&[u8]; 4] = [
        b"",                                        // no header: a plain request
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n", // a port out of range
        b"PROXY TCP9 1.2.3.4 5.6.7.8 1 80\r\n",     // no such protocol
        b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",    // v2 signature, version 3
    ];
    for prefix in bad {
        assert!(
            ask(addr, prefix, "/").is_none(),
            "answered without a valid header: {prefix:?}"
        );
    }
    // A header that never completes: closed at the header timeout, without a byte.
    let mut slow = connect(addr);
    slow.write_all(b"PROXY TCP4 127.0.0.9 ").unwrap();
    let (out, end) = read_to_close(&mut slow, DEADLINE);
    // Closed with the bytes unread: a FIN, or a reset.
    assert_eq!(out.len(), 0);
    assert_ne!(end, End::Open);
    // The host still serves.
    let r = ask(addr, &v1_header(client(), addr), "/").expect("an answer");
    assert_eq!(r.status, 200);
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(DEADLINE).success());
    assert!(
        server
            .find_log("closed 5 connections without a valid PROXY header")
            .is_some(),
        "{}",
        server.log_text()
    );
}

#[test]
fn without_the_flag_ip_is_the_socket_s_peer_and_health_is_ok() {
    let server = Server::start(&["--workers", "1"]);
    let r = get(server.addr(), "/ip").unwrap();
    assert_eq!((r.status, r.text()), (200, "127.0.0.1".to_string()));
    let r = get(server.addr(), "/healthz").unwrap();
    assert_eq!((r.status, r.text()), (200, "ok\n".to_string()));
    // A PROXY header is not expected here: it is just a bad request.
    let r = ask(server.addr(), &v1_header(client(), server.addr()), "/ip").expect("an answer");
    assert_eq!(r.status, 400);
}

#[test]
fn the_access_log_has_one_combined_line_per_request_with_the_real_client() {
    let out = std::sync::Arc::new(Log::default());
    let server = Launch::herd(&["--workers", "2", "--proxy-protocol", "--access-log"])
        .stdout(Stdout::Apart(out.clone()))
        .start();
    let addr = server.addr();
    let mut bytes = v2_header(client(), addr);
    bytes.extend_from_slice(
        b"GET /ip HTTP/1.1\r\nHost: t\r\nUser-Agent: probe/1\r\nReferer: http://r/\r\n\r\n",
    );
    bytes.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let (answers, _) = exchange(addr, &bytes, DEADLINE);
    assert_eq!(parse_responses(&answers).len(), 2);
    let lines = wait_for("two access log lines", DEADLINE, || {
        let lines = out.lines();
        (lines.len() >= 2).then_some(lines)
    });
    assert_eq!(lines.len(), 2, "{lines:?}");
    let ip = &lines[0];
    assert!(ip.starts_with("127.0.0.9 - - ["), "{ip}");
    assert!(
        ip.ends_with(" +0000] \"GET /ip HTTP/1.1\" 200 9 \"http://r/\" \"probe/1\""),
        "{ip}"
    );
    assert!(
        lines[1].ends_with("\"GET /nope HTTP/1.1\" 404 10 \"-\" \"-\""),
        "{}",
        lines[1]
    );
}

#[test]
fn bench_sends_a_v2_header_on_every_new_connection() {
    // herd bench starts its clusters with --proxy-protocol: a connection opened without the
    // header would be closed unanswered and counted as an error.
    for workload in ["close", "keepalive"] {
        let json = std::env::temp_dir().join(format!(
            "herd-bench-pp-{}-{workload}.json",
            std::process::id()
        ));
        let out = std::process::Command::new(herd_bin())
            .args([
                "bench",
                "--proxy-protocol",
                "--duration",
                "1s",
                "--warmup",
                "0s",
            ])
            .args([
                "--workers",
                "2",
                "--connections",
                "4",
                "--policies",
                "round-robin",
            ])
            .args(["--workload", workload, "--json", json.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let r = &v["results"][0];
        assert_eq!(r["errors"].as_u64(), Some(0), "{workload}: {r}");
        assert!(r["requests"].as_u64().unwrap() > 0, "{workload}: {r}");
        let _ = std::fs::remove_file(json);
    }
}

#[test]
fn a_custom_handler_gets_the_header_s_client_from_its_context() {
    let mut server = Server::start_example("proxied", &["0"]);
    let addr = server.addr();
    for header in [v1_header(client(), addr), v2_header(client(), addr)] {
        let (out, end) = exchange(addr, &header, DEADLINE);
        assert_eq!(String::from_utf8_lossy(&out), "hello 127.0.0.9:41000\n");
        assert_eq!(end, End::Eof);
    }
    let (out, _) = exchange(addr, &v2_local_header(), DEADLINE);
    assert!(String::from_utf8_lossy(&out).starts_with("hello 127.0.0.1:"));
    let (out, end) = exchange(addr, b"hello?\r\n", DEADLINE);
    // Closed with the bytes unread: a FIN, or a reset.
    assert_eq!(out.len(), 0);
    assert_ne!(end, End::Open);
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(DEADLINE).success());
}
