//! Issue 5: slow and rude clients. Slowloris, a slow reader of a large body, half-closed
//! sockets and resets must neither block the worker's loop nor lose a response.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::*;

const SLOW_CLIENTS: usize = 200;

/// What a slowloris connection has seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Nothing,
    Got408,
    Closed,
}

/// Non-blocking look at what the server sent a slow connection.
fn look(s: &mut TcpStream, got: &mut Vec<u8>) -> Seen {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return seen(got, false),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    seen(got, true)
}

fn seen(got: &[u8], closed: bool) -> Seen {
    if got.starts_with(b"HTTP/1.1 408 ") {
        Seen::Got408
    } else if closed {
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(got));
        Seen::Closed
    } else {
        Seen::Nothing
    }
}

#[test]
fn slowloris_does_not_starve_a_normal_client_and_gets_408() {
    let server = Server::start(&["--workers", "1", "--header-timeout", "3s"]);
    let addr = server.addr();
    let head =
        b"GET / HTTP/1.1\r\nHost: slow\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut slow: Vec<TcpStream> = (0..SLOW_CLIENTS).map(|_| connect(addr)).collect();
    for s in &slow {
        s.set_nonblocking(true).unwrap();
    }
    let mut got = vec![Vec::new(); SLOW_CLIENTS];
    let mut state = [Seen::Nothing; SLOW_CLIENTS];
    let start = Instant::now();
    let mut byte = 0;
    let mut fast_served = 0;
    // One header byte per second to every slow connection until each got 408 or was closed.
    while state.contains(&Seen::Nothing) {
        assert!(
            start.elapsed() < Duration::from_secs(12),
            "slow connections still open: {}",
            state.iter().filter(|&&s| s == Seen::Nothing).count()
        );
        for (i, s) in slow.iter_mut().enumerate() {
            if state[i] == Seen::Nothing {
                let _ = s.write(&head[byte % head.len()..][..1]);
                state[i] = look(s, &mut got[i]);
            }
        }
        byte += 1;
        if start.elapsed() < Duration::from_millis(2500) {
            assert!(
                !state.contains(&Seen::Got408),
                "408 before the header timeout"
            );
        }
        // Meanwhile a normal client is served at once.
        let t = Instant::now();
        assert_eq!(get(addr, "/").expect("normal client served").status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "took {:?}",
            t.elapsed()
        );
        fast_served += 1;
        std::thread::sleep(Duration::from_secs(1)); // the drip rate itself, not a wait
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2),
        "cut off too early: {elapsed:?}"
    );
    assert!(fast_served >= 3, "{fast_served}");
    let answered = state.iter().filter(|&&s| s == Seen::Got408).count();
    assert_eq!(answered, SLOW_CLIENTS, "every slow client gets a 408");
    assert_eq!(serving_pid(addr), serving_pid(addr));
}

/// Asks for `size` bytes (`close`: with `Connection: close`) and reads the head, then the body
/// in small pieces with pauses (letting the server's socket buffer fill: it must stop and
/// resume, not block), checking that another client is served meanwhile.
fn read_large_body_slowly(server: &Server, size: usize, close: bool) -> BufReader<TcpStream> {
    let s = connect(server.addr());
    let mut w = s.try_clone().unwrap();
    let connection = if close { "Connection: close\r\n" } else { "" };
    write!(
        w,
        "GET /bytes?n={size} HTTP/1.1\r\nHost: t\r\n{connection}\r\n"
    )
    .unwrap();
    let mut r = BufReader::with_capacity(4096, s);
    let mut line = String::new();
    let mut head = String::new();
    while line != "\r\n" {
        line.clear();
        r.read_line(&mut line).unwrap();
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {size}\r\n")),
        "{head}"
    );
    let start = Instant::now();
    let mut seen = 0;
    let mut piece = [0u8; 4096];
    let mut pauses = 0;
    while seen < size {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "read {seen} bytes"
        );
        let want = piece.len().min(size - seen);
        let n = r.read(&mut piece[..want]).unwrap();
        assert!(n > 0, "connection closed after {seen} bytes");
        assert!(piece[..n].iter().all(|&b| b == b'x'));
        seen += n;
        if seen % (512 * 1024) < n {
            pauses += 1;
            let t = Instant::now();
            assert_eq!(get(server.addr(), "/").unwrap().status, 200);
            assert!(t.elapsed() < Duration::from_secs(1));
            std::thread::sleep(Duration::from_millis(50)); // the slow reader's pace
        }
    }
    assert_eq!(seen, size);
    assert!(pauses >= size / (1024 * 1024));
    r
}

#[test]
fn slow_reader_of_a_large_body_gets_every_byte() {
    let server = Server::start(&["--workers", "1"]);
    let mut r = read_large_body_slowly(&server, 8 * 1024 * 1024, false);
    // The connection is still good for another request.
    write!(r.get_mut(), "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r, false).unwrap().status, 200);
}

/// The last response of a connection is written with `MSG_MORE` so that the FIN leaves with
/// its last segment: whatever the kernel held back must still come, and then the end.
#[test]
fn slow_reader_of_a_large_closing_response_gets_every_byte_then_the_end() {
    let server = Server::start(&["--workers", "1"]);
    let mut r = read_large_body_slowly(&server, 4 * 1024 * 1024 + 1234, true);
    r.get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest)
        .expect("the server closes after the body");
    assert!(rest.is_empty(), "{} bytes after the body", rest.len());
    // And a small one: the whole response, then the end.
    for _ in 0..20 {
        let mut s = connect(server.addr());
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("response, then the end");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let pid = body.strip_prefix("Hello World! ").unwrap_or("");
        assert!(pid.parse::<u32>().is_ok(), "{text}");
    }
}

#[test]
fn half_closed_clients_still_get_their_responses() {
    let server = Server::start(&["--workers", "1"]);
    // One request, then shutdown(Write): the response arrives, then the server closes.
    let mut s = connect(server.addr());
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (out, end) = read_to_close(&mut s, DEADLINE);
    assert_eq!(end, End::Eof);
    let rs = parse_responses(&out);
    assert_eq!(rs.len(), 1, "{:?}", String::from_utf8_lossy(&out));
    assert_eq!(rs[0].status, 200);

    // Pipelined requests with a large body among them, then shutdown(Write): all answered.
    let mut s = connect(server.addr());
    s.write_all(
        b"GET /bytes?n=3000000 HTTP/1.1\r\nHost: t\r\n\r\n\
          POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc\
          GET / HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (out, end) = read_to_close(&mut s, DEADLINE);
    assert_eq!(end, End::Eof);
    let rs = parse_responses(&out);
    let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 405, 200]);
    assert_eq!(rs[0].body.len(), 3_000_000);

    // A half-closed client in the middle of a head gets no answer, just a close.
    let (out, end) = {
        let mut s = connect(server.addr());
        s.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        read_to_close(&mut s, DEADLINE)
    };
    assert_eq!((out.len(), end), (0, End::Eof));
}

#[test]
fn client_resets_do_not_hurt_the_worker() {
    let mut server = Server::start(&["--workers", "1"]);
    let workers = server.workers();
    let pid = serving_pid(server.addr());
    let baseline = fd_count(pid);
    for round in 0..5 {
        // Mid-response: read a little of a large body, then close with unread data (RST).
        let mut s = connect(server.addr());
        write!(s, "GET /bytes?n=33554432 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut buf = [0u8; 1000];
        s.read_exact(&mut buf).unwrap();
        drop(s);
        // Mid-request: half a head, then a reset.
        let mut s = connect(server.addr());
        s.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nab")
            .unwrap();
        drop(s);
        // Mid-pipeline: many requests, read nothing, close.
        let mut s = connect(server.addr());
        s.write_all(&b"GET /bytes?n=100000 HTTP/1.1\r\nHost: t\r\n\r\n".repeat(50))
            .unwrap();
        drop(s);
        assert_eq!(serving_pid(server.addr()), pid, "round {round}");
    }
    assert_eq!(server.workers(), workers);
    // The worker let go of every reset connection.
    wait_for("reset connections to be released", DEADLINE, || {
        (fd_count(pid) <= baseline).then_some(())
    });
}
