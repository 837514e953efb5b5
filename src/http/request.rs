//! Parsing one request head with `httparse`, and the framing rules that follow from it.
//!
//! The rules, checked against RFC 9112 and with nginx as the bar:
//!
//! - Lines end in CRLF; a bare LF is accepted as a line end (RFC 9112 §2.2 allows it, nginx
//!   does it), a bare CR anywhere is `400`. Empty lines before the request line are skipped.
//! - Whitespace before a header's colon, obs-fold (a line starting with SP/HTAB), an empty header
//!   name, or a control byte (NUL, DEL, ...) in a name or value is `400` (`httparse`).
//! - The method must be a token; the target must be valid bytes and UTF-8. Origin-form
//!   (`/path`) is served; absolute-form (`http://host/path`) is served by its path;
//!   `*` only with `OPTIONS` and authority-form only with `CONNECT` (both then `405`);
//!   any other target is `400`.
//! - `HTTP/1.0` and `HTTP/1.1` are served; another well-formed `HTTP/x.y` is `505`; anything
//!   else is `400`.
//! - HTTP/1.1 requests need exactly one `Host`; more than one is `400` in any version; a `Host`
//!   value must be a plausible authority (no `/`, spaces, `@`, control bytes...).
//! - `Content-Length` must be one header with one decimal number: a list (`5, 5`), a sign, a
//!   duplicate header (even with an equal value, as nginx) or a number that overflows is `400`.
//! - `Transfer-Encoding` must be exactly `chunked` (else `501`), at most once, not in HTTP/1.0,
//!   and never together with `Content-Length` (all `400`): no request smuggling.
//! - `Expect: 100-continue` is honoured in HTTP/1.1 and ignored in HTTP/1.0; any other
//!   expectation is `417`.
//! - A head larger than the limit is `431`, or `414` when the request line alone is too long;
//!   a head with more header lines than its cap (`max_headers`) is `431`.

use std::mem::MaybeUninit;

/// How the request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body.
    None,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The parts of a request head the server acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Request method, as sent.
    pub method: String,
    /// Request target, as sent.
    pub target: String,
    /// The path and query to route on (origin-form, also for an absolute-form target).
    pub path: String,
    /// Minor HTTP version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Whether the connection stays open after this request.
    pub keep_alive: bool,
    /// Body framing.
    pub body: Body,
    /// `Expect: 100-continue` was sent (only set for HTTP/1.1).
    pub expect_continue: bool,
    /// Length of the head in bytes, including the blank line.
    pub len: usize,
    /// The `Referer` header, if sent (for the access log).
    pub referer: Option<String>,
    /// The `User-Agent` header, if sent (for the access log).
    pub user_agent: Option<String>,
}

impl Head {
    /// True for `HEAD` requests (the response has no body).
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// A request the server must refuse, with the status to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    /// HTTP status code.
    pub status: u16,
    /// Short reason, logged at debug level.
    pub why: &'static str,
}

pub(super) const fn reject(status: u16, why: &'static str) -> Reject {
    Reject { status, why }
}

/// Default cap on the header lines of one request (`Limits::max_headers`): browsers send 10 to
/// 20, nginx accepts any number that fits its buffers.
pub const DEFAULT_MAX_HEADERS: usize = 100;

/// Header lines parsed into an array on the stack; a cap above it falls back to the heap for
/// the requests that need more, so the common request pays nothing for a large cap.
const STACK_HEADERS: usize = 64;

const TOO_MANY_HEADERS: Reject = reject(431, "too many headers");

/// The refusal for a head that does not fit in `max_head` bytes: `414` when the request line
/// alone does not fit, `431` otherwise.
pub fn too_large(buf: &[u8], max_head: usize) -> Reject {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let rest = buf.get(start..).unwrap_or_default();
    match rest.iter().position(|&b| b == b'\n') {
        Some(end) if end <= max_head => reject(431, "request head too large"),
        _ => reject(414, "request line too long"),
    }
}

/// True when the request line ends in a well-formed `HTTP/x.y` other than 1.0 and 1.1 (worth a
/// `505`); anything else that fails the version check is just malformed (`400`).
fn other_http_version(buf: &[u8]) -> bool {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let rest = buf.get(start..).unwrap_or_default();
    let line = rest.split(|&b| b == b'\n').next().unwrap_or(rest);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(v) = line.rsplit(|&b| b == b' ').next() else {
        return false;
    };
    matches!(v, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
        if major.is_ascii_digit() && minor.is_ascii_digit() && !(*major == b'1' && *minor <= b'1'))
}

/// What the header fields of one request say, gathered in one pass.
#[derive(Debug, Default)]
struct Fields {
    length: Option<u64>,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
    hosts: usize,
    referer: Option<String>,
    user_agent: Option<String>,
}

impl Fields {
    fn add(&mut self, name: &str, value: &[u8], minor: u8) -> Result<(), Reject> {
        if name.eq_ignore_ascii_case("content-length") {
            if self.length.is_some() {
                return Err(reject(400, "duplicate content-length"));
            }
            self.length = Some(content_length(value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !value.eq_ignore_ascii_case(b"chunked") {
                return Err(reject(501, "unsupported transfer-encoding"));
            }
            if self.chunked || minor == 0 {
                return Err(reject(400, "bad transfer-encoding"));
            }
            self.chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                self.close |= t.eq_ignore_ascii_case(b"close");
                self.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case(b"100-continue") {
                return Err(reject(417, "unsupported expectation"));
            }
            self.expect_continue = minor == 1;
        } else if name.eq_ignore_ascii_case("host") {
            if !valid_host(value) {
                return Err(reject(400, "invalid host"));
            }
            self.hosts += 1;
        } else if name.eq_ignore_ascii_case("referer") {
            self.referer = Some(String::from_utf8_lossy(value).into_owned());
        } else if name.eq_ignore_ascii_case("user-agent") {
            self.user_agent = Some(String::from_utf8_lossy(value).into_owned());
        }
        Ok(())
    }

    fn body(&self) -> Result<Body, Reject> {
        Ok(match (self.chunked, self.length) {
            (true, Some(_)) => {
                return Err(reject(400, "both Content-Length and Transfer-Encoding"))
            }
            (true, None) => Body::Chunked,
            (false, Some(0)) | (false, None) => Body::None,
            (false, Some(n)) => Body::Length(n),
        })
    }
}

/// `Content-Length = 1*DIGIT`, nothing else (no sign, no list, no overflow).
fn content_length(value: &[u8]) -> Result<u64, Reject> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(reject(400, "bad content-length"));
    }
    value.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(reject(400, "content-length overflow"))
    })
}

/// A `Host` value: empty, or a reg-name / IP literal with an optional port.
fn valid_host(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b))
}

/// The path to route on, from the request target (see the module documentation).
fn route_path(method: &str, target: &str) -> Result<String, Reject> {
    if target.starts_with('/') {
        return Ok(target.to_string());
    }
    if target == "*" && method == "OPTIONS" {
        return Ok(target.to_string());
    }
    if method == "CONNECT" {
        return Ok(target.to_string());
    }
    let rest = strip_prefix_ci(target, "http://")
        .or_else(|| strip_prefix_ci(target, "https://"))
        .ok_or(reject(400, "bad request target"))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || !valid_host(authority.as_bytes()) {
        return Err(reject(400, "bad authority in request target"));
    }
    Ok(match path.as_bytes().first() {
        Some(b'/') => path.to_string(),
        _ => format!("/{path}"),
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

/// Parses a head from the start of `buf`, with at most `max_headers` header lines (more:
/// `431`). `Ok(None)`: not complete yet.
///
/// The caller enforces the size limit (see [`too_large`]).
pub fn parse(buf: &[u8], max_headers: usize) -> Result<Option<Head>, Reject> {
    let mut stack = [MaybeUninit::uninit(); STACK_HEADERS];
    let small = stack
        .get_mut(..max_headers.min(STACK_HEADERS))
        .unwrap_or_default();
    match parse_into(buf, small) {
        Err(r) if r == TOO_MANY_HEADERS && max_headers > STACK_HEADERS => {
            // Each header takes a line of its own: the lines in `buf` bound what can be needed,
            // so a huge cap never means a huge allocation.
            let lines = buf.iter().filter(|&&b| b == b'\n').count();
            let cap = max_headers.min(lines);
            let mut heap = Vec::with_capacity(cap);
            let spare = heap.spare_capacity_mut().get_mut(..cap).unwrap_or_default();
            parse_into(buf, spare)
        }
        parsed => parsed,
    }
}

/// [`parse`] with room for `headers.len()` header lines.
fn parse_into<'b>(
    buf: &'b [u8],
    headers: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<Head>, Reject> {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(TOO_MANY_HEADERS),
        Err(httparse::Error::Version) if other_http_version(buf) => {
            return Err(reject(505, "unsupported version"))
        }
        Err(_) => return Err(reject(400, "malformed head")),
    };
    let minor = req.version.ok_or(reject(400, "no version"))?;
    let method = req.method.ok_or(reject(400, "no method"))?;
    let target = req.path.ok_or(reject(400, "no target"))?;
    let mut fields = Fields::default();
    for h in req.headers.iter() {
        fields.add(h.name, h.value, minor)?;
    }
    if fields.hosts > 1 || (minor == 1 && fields.hosts == 0) {
        return Err(reject(400, "HTTP/1.1 needs exactly one Host header"));
    }
    let body = fields.body()?;
    let keep_alive = if minor == 1 {
        !fields.close
    } else {
        fields.keep_alive && !fields.close
    };
    Ok(Some(Head {
        path: route_path(method, target)?,
        method: method.to_string(),
        target: target.to_string(),
        minor,
        keep_alive: keep_alive && method != "CONNECT",
        body,
        expect_continue: fields.expect_continue,
        len,
        referer: fields.referer,
        user_agent: fields.user_agent,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(raw: &str) -> u16 {
        match parse(raw.as_bytes(), DEFAULT_MAX_HEADERS) {
            Ok(Some(_)) => 200,
            Ok(None) => 0,
            Err(r) => r.status,
        }
    }

    fn head(raw: &str) -> Head {
        match parse(raw.as_bytes(), DEFAULT_MAX_HEADERS) {
            Ok(Some(h)) => h,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn keep_alive_rules() {
        assert!(head("GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nHost: a\r\nConnection: x, Close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
        assert!(!head("CONNECT a:1 HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive);
    }

    #[test]
    fn framing_rejections() {
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\n"), 0);
        for (raw, want) in [
            ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", 400),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
                400,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                400,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            ("GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            ("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            ("GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", 417),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
            ("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
            ("GET / HTTP/1.1x\r\nHost: a\r\n\r\n", 400),
            ("NOT HTTP AT ALL\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
            ("GET foo HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", 400),
            ("GET / HTTP/1.1\rHost: a\r\r", 400),
        ] {
            assert_eq!(status(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(head("GET / HTTP/1.1\nHost: a\n\n").len, 24);
        assert_eq!(head("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").path, "/");
        assert_eq!(
            head("GET http://a:80/bytes?n=1 HTTP/1.1\r\nHost: b\r\n\r\n").path,
            "/bytes?n=1"
        );
        assert_eq!(
            head("GET HTTP://a?x HTTP/1.1\r\nHost: b\r\n\r\n").path,
            "/?x"
        );
        assert_eq!(head("OPTIONS * HTTP/1.1\r\nHost: b\r\n\r\n").path, "*");
        assert_eq!(head("GET / HTTP/1.1\r\nHost:\r\n\r\n").path, "/");
        let h = head("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(h.body, Body::Chunked);
        let h = head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n");
        assert_eq!(h.body, Body::Length(7));
        assert!(head("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\r\n").expect_continue);
        assert!(!head("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    }

    #[test]
    fn header_line_cap_on_the_stack_and_the_heap() {
        let raw = |lines: usize| {
            let fields: String = (1..lines).map(|i| format!("X-{i}: v\r\n")).collect();
            format!("GET / HTTP/1.1\r\nHost: a\r\n{fields}\r\n")
        };
        let status = |lines: usize, cap: usize| match parse(raw(lines).as_bytes(), cap) {
            Ok(Some(_)) => 200,
            Ok(None) => 0,
            Err(r) => r.status,
        };
        for (lines, cap, want) in [
            (3, 3, 200),
            (4, 3, 431),
            (STACK_HEADERS, STACK_HEADERS, 200),
            (STACK_HEADERS + 1, STACK_HEADERS, 431),
            (STACK_HEADERS + 1, DEFAULT_MAX_HEADERS, 200),
            (DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEADERS, 200),
            (DEFAULT_MAX_HEADERS + 1, DEFAULT_MAX_HEADERS, 431),
            (500, usize::MAX, 200),
        ] {
            assert_eq!(status(lines, cap), want, "{lines} lines, cap {cap}");
        }
        // An incomplete head past the stack array is still just incomplete.
        let partial = raw(80);
        let partial = partial.get(..partial.len() - 20).unwrap_or_default();
        assert_eq!(parse(partial.as_bytes(), DEFAULT_MAX_HEADERS), Ok(None));
    }

    #[test]
    fn size_refusals() {
        assert_eq!(too_large(b"GET /aaaaaaaa", 8).status, 414);
        assert_eq!(too_large(b"GET / HTTP/1.1\r\nHost: aaaaa", 20).status, 431);
        assert_eq!(
            too_large(b"\r\n\r\nGET / HTTP/1.1\r\nX: aaaaa", 20).status,
            431
        );
        assert_eq!(too_large(b"", 0).status, 414);
    }
}
