//! Writing responses: status line, `Date`, `Content-Length`, `Connection`, body.

use std::io::Write;
use std::time::{Duration, SystemTime};

/// The reason phrase for the statuses this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Caches the formatted `Date` header value; it changes once a second.
#[derive(Debug)]
pub struct DateCache {
    second: u64,
    value: String,
}

impl Default for DateCache {
    fn default() -> Self {
        DateCache {
            second: u64::MAX,
            value: String::new(),
        }
    }
}

impl DateCache {
    /// The current date in IMF-fixdate form.
    pub fn get(&mut self) -> &str {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        if second != self.second {
            self.second = second;
            self.value = httpdate::fmt_http_date(now);
        }
        &self.value
    }
}

/// Appends a whole response to `out`. `head_only` leaves the body out (for `HEAD`), keeping the
/// `Content-Length` the body would have had.
pub fn write(
    out: &mut Vec<u8>,
    status: u16,
    date: &str,
    keep_alive: bool,
    body: &[u8],
    head_only: bool,
) {
    write_head(out, status, date, keep_alive, body.len() as u64);
    if !head_only {
        out.extend_from_slice(body);
    }
}

/// The methods every route answers, sent in `Allow` with a `405`.
pub const ALLOWED_METHODS: &str = "GET, HEAD";

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Appends a status line and headers for a body of `len` bytes (written separately).
pub fn write_head(out: &mut Vec<u8>, status: u16, date: &str, keep_alive: bool, len: u64) {
    let conn = if keep_alive { "keep-alive" } else { "close" };
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nDate: {date}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len}\r\nConnection: {conn}\r\n",
        reason(status)
    );
    if status == 405 {
        let _ = write!(out, "Allow: {ALLOWED_METHODS}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}
