//! Parsing one request head with `httparse`, and the framing rules that follow from it.

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
    /// Request target (path and query).
    pub target: String,
    /// Minor HTTP version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Whether the connection stays open after this request.
    pub keep_alive: bool,
    /// Body framing.
    pub body: Body,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// Length of the head in bytes, including the blank line.
    pub len: usize,
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

const fn reject(status: u16, why: &'static str) -> Reject {
    Reject { status, why }
}

/// Most header lines accepted in one request.
pub const MAX_HEADERS: usize = 64;

/// True when the request line ends in a well-formed `HTTP/x.y` with a major version other than 1
/// (worth a `505`); anything else that fails the version check is just malformed (`400`).
fn other_http_version(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(buf);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(v) = line.rsplit(|&b| b == b' ').next() else {
        return false;
    };
    matches!(v, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
        if major.is_ascii_digit() && minor.is_ascii_digit() && *major != b'1')
}

/// Parses a head from the start of `buf`. `Ok(None)`: not complete yet.
pub fn parse(buf: &[u8]) -> Result<Option<Head>, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(reject(431, "too many headers")),
        Err(httparse::Error::Version) if other_http_version(buf) => {
            return Err(reject(505, "unsupported version"))
        }
        Err(_) => return Err(reject(400, "malformed head")),
    };
    let minor = req.version.ok_or(reject(400, "no version"))?;
    let method = req.method.ok_or(reject(400, "no method"))?;
    let target = req.path.ok_or(reject(400, "no target"))?;
    let mut keep_alive = minor == 1;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut expect_continue = false;
    let mut host = 0;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).map_err(|_| reject(400, "bad content-length"))?;
            let v = v.trim();
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(reject(400, "bad content-length"));
            }
            let n: u64 = v
                .parse()
                .map_err(|_| reject(400, "content-length overflow"))?;
            if length.is_some_and(|prev| prev != n) {
                return Err(reject(400, "conflicting content-length"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let v =
                std::str::from_utf8(h.value).map_err(|_| reject(400, "bad transfer-encoding"))?;
            let last = v.rsplit(',').next().unwrap_or("").trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(reject(501, "unsupported transfer-encoding"));
            }
            if chunked || minor == 0 {
                return Err(reject(400, "bad transfer-encoding"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && minor == 0 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(reject(417, "unsupported expectation"));
            }
        } else if name.eq_ignore_ascii_case("host") {
            host += 1;
        }
    }
    if minor == 1 && host != 1 {
        return Err(reject(400, "HTTP/1.1 needs exactly one Host header"));
    }
    let body = match (chunked, length) {
        (true, Some(_)) => return Err(reject(400, "both Content-Length and Transfer-Encoding")),
        (true, None) => Body::Chunked,
        (false, Some(0)) | (false, None) => Body::None,
        (false, Some(n)) => Body::Length(n),
    };
    Ok(Some(Head {
        method: method.to_string(),
        target: target.to_string(),
        minor,
        keep_alive,
        body,
        expect_continue,
        len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(raw: &str) -> u16 {
        match parse(raw.as_bytes()) {
            Ok(Some(_)) => 200,
            Ok(None) => 0,
            Err(r) => r.status,
        }
    }

    #[test]
    fn keep_alive_rules() {
        let h = parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h = parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
    }

    #[test]
    fn framing_rejections() {
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\n"), 0);
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
            501
        );
        assert_eq!(status("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505);
        assert_eq!(status("NOT HTTP AT ALL\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400);
    }
}
