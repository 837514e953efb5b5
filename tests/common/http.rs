//! Talking HTTP over real sockets: requests, raw exchanges, and parsing what comes back.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The worker pid in a `Hello World! <pid>` body.
    pub fn pid(&self) -> u32 {
        self.text()
            .rsplit(' ')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Reads one response from a buffered stream (`head` true: a response to HEAD, no body).
pub fn read_response<R: BufRead>(r: &mut R, head: bool) -> std::io::Result<Response> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; if head || status == 100 { 0 } else { len }];
    r.read_exact(&mut body)?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Connects with a timeout on reads and writes.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// One request on a new connection with `Connection: close`.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    read_response(&mut BufReader::new(s), false)
}

/// Sends raw bytes on a new connection and reads everything until the server closes.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = connect(addr);
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses every complete response in `bytes` (none of them answers a HEAD).
pub fn parse_responses(bytes: &[u8]) -> Vec<Response> {
    let mut r = std::io::Cursor::new(bytes);
    let mut out = Vec::new();
    while let Ok(resp) = read_response(&mut r, false) {
        out.push(resp);
    }
    out
}

/// How a connection ended when read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer closed (FIN).
    Eof,
    /// The peer reset the connection.
    Reset,
    /// Still open when the time ran out.
    Open,
}

/// Reads until the peer closes or resets, or `limit` passes; returns what was read.
pub fn read_to_close(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, End) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let Some(left) = limit.checked_sub(start.elapsed()).filter(|d| !d.is_zero()) else {
            return (out, End::Open);
        };
        let _ = s.set_read_timeout(Some(left.min(Duration::from_millis(200))));
        match s.read(&mut buf) {
            Ok(0) => return (out, End::Eof),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (out, End::Reset),
        }
    }
}

/// Sends raw bytes on a new connection, reads until the server closes (at most `limit`).
pub fn exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> (Vec<u8>, End) {
    let mut s = connect(addr);
    let _ = s.write_all(bytes);
    read_to_close(&mut s, limit)
}

/// The pid of the worker that answers `GET /` (panics unless it answers 200).
pub fn serving_pid(addr: SocketAddr) -> u32 {
    let r = get(addr, "/").expect("GET / answered");
    assert_eq!(r.status, 200, "GET / status");
    r.pid()
}

/// True while `s` has no answer yet (peeks without waiting).
pub fn unanswered(s: &TcpStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut b = [0u8; 1];
    let pending = matches!(s.peek(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock);
    s.set_nonblocking(false).expect("blocking");
    pending
}
