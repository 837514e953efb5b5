//! The access log (`--access-log`): one line per answered request on stdout, in the combined
//! log format of Apache and nginx, with the real client address (the PROXY header's, behind a
//! balancer):
//!
//! ```text
//! 127.0.0.9 - - [25/Nov/2026:09:21:25 +0000] "GET /ip HTTP/1.1" 200 9 "-" "curl/8.5.0"
//! ```
//!
//! Lines are gathered in a per-worker buffer and written with one `write` per connection event
//! (so pipelined requests share it), times in UTC. A quote, a backslash or a control byte in
//! a logged field is written as `\xHH`, so a client cannot forge a line. Requests refused as
//! malformed (4xx before a route ran) are not logged here; they are in the debug log.

use std::io::{self, Write};
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use super::request::Head;

/// Bytes gathered before they are written even within one event.
const FLUSH_AT: usize = 32 * 1024;

/// One worker's access log.
#[derive(Debug, Default)]
pub struct AccessLog {
    out: Vec<u8>,
    /// The second the cached stamp is for, and the stamp (`25/Nov/2026:09:21:25 +0000`).
    stamp: (u64, String),
    /// Writing failed (stdout closed): stop trying.
    failed: bool,
}

impl AccessLog {
    /// Adds the line for one answered request. `bytes`: body bytes of the answer (`None`:
    /// none, written `-`).
    pub fn record(&mut self, peer: Option<IpAddr>, head: &Head, status: u16, bytes: Option<u64>) {
        if self.failed {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.stamp.0 != now || self.stamp.1.is_empty() {
            self.stamp = (now, stamp(SystemTime::now()));
        }
        let line = Line {
            peer,
            stamp: &self.stamp.1,
            method: &head.method,
            target: &head.target,
            minor: head.minor,
            status,
            bytes,
            referer: head.referer.as_deref(),
            user_agent: head.user_agent.as_deref(),
        };
        line.write(&mut self.out);
    }

    /// True when enough is gathered to write it now.
    pub fn full(&self) -> bool {
        self.out.len() >= FLUSH_AT
    }

    /// Writes what is gathered to `w` (stdout), in one call.
    pub fn flush_to(&mut self, w: &mut impl Write) {
        if self.out.is_empty() {
            return;
        }
        if let Err(e) = w.write_all(&self.out).and_then(|()| w.flush()) {
            log::warn!("access log: cannot write to stdout ({e}); no more lines");
            self.failed = true;
        }
        self.out.clear();
    }

    /// Writes what is gathered to this process's stdout.
    pub fn flush(&mut self) {
        if !self.out.is_empty() {
            self.flush_to(&mut io::stdout().lock());
        }
    }
}

/// The fields of one line.
struct Line<'a> {
    peer: Option<IpAddr>,
    stamp: &'a str,
    method: &'a str,
    target: &'a str,
    minor: u8,
    status: u16,
    bytes: Option<u64>,
    referer: Option<&'a str>,
    user_agent: Option<&'a str>,
}

impl Line<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self.peer {
            Some(ip) => {
                let _ = write!(out, "{ip}");
            }
            None => out.push(b'-'),
        }
        let _ = write!(out, " - - [{}] \"", self.stamp);
        escaped(out, self.method);
        out.push(b' ');
        escaped(out, self.target);
        let _ = write!(out, " HTTP/1.{}\" {} ", self.minor, self.status);
        match self.bytes {
            Some(n) if n > 0 => {
                let _ = write!(out, "{n}");
            }
            _ => out.push(b'-'),
        }
        for field in [self.referer, self.user_agent] {
            out.extend_from_slice(b" \"");
            escaped(out, field.unwrap_or("-"));
            out.push(b'"');
        }
        out.push(b'\n');
    }
}

/// Appends `s` with `"`, `\` and control bytes as `\xHH`.
fn escaped(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
}

/// `25/Nov/2026:09:21:25 +0000` for `t` (UTC), from its HTTP date
/// (`Wed, 25 Nov 2026 09:21:25 GMT`).
fn stamp(t: SystemTime) -> String {
    let http = httpdate::fmt_http_date(t);
    let f: Vec<&str> = http.split(' ').collect();
    match f.as_slice() {
        [_, day, month, year, time, _] => format!("{day}/{month}/{year}:{time} +0000"),
        _ => http,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse;

    #[test]
    fn combined_format_with_escapes() {
        let raw = b"GET /ip?a=\"b HTTP/1.1\r\nHost: a\r\nUser-Agent: x\"y\r\n\r\n";
        let head = parse(raw, 10).unwrap().unwrap();
        let mut out = Vec::new();
        Line {
            peer: Some("127.0.0.9".parse().unwrap()),
            stamp: "25/Nov/2026:09:21:25 +0000",
            method: &head.method,
            target: &head.target,
            minor: head.minor,
            status: 200,
            bytes: Some(9),
            referer: head.referer.as_deref(),
            user_agent: head.user_agent.as_deref(),
        }
        .write(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "127.0.0.9 - - [25/Nov/2026:09:21:25 +0000] \"GET /ip?a=\\x22b HTTP/1.1\" 200 9 \
             \"-\" \"x\\x22y\"\n"
        );
    }

    #[test]
    fn stamps_are_utc_in_clf_order() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_764_062_485);
        assert_eq!(stamp(t), "25/Nov/2025:09:21:25 +0000");
    }

    #[test]
    fn records_gather_until_flushed() {
        let head = parse(b"HEAD / HTTP/1.0\r\n\r\n", 10).unwrap().unwrap();
        let mut log = AccessLog::default();
        log.record(None, &head, 200, None);
        log.record(None, &head, 404, Some(0));
        let mut out = Vec::new();
        log.flush_to(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.starts_with("- - - ["), "{text}");
        assert!(text.contains("\"HEAD / HTTP/1.0\" 200 - \"-\" \"-\"\n"));
        log.flush_to(&mut Vec::new());
        assert!(!log.full());
    }
}
