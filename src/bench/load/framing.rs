//! HTTP/1.x response framing for the load generator: where one response ends in a byte
//! stream (`Content-Length`, chunked encoding, or the end of the connection), its status,
//! whether the server closes after it, and the worker pid its body names.

/// Response headers parsed at most.
const MAX_HEADERS: usize = 64;
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// The worker pid in a response body: `Hello World! <pid>` (last word) or
/// `<pid> worked Nus` (first word).
pub fn pid_of(body: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(body).ok()?.trim();
    let word = if text.starts_with(|c: char| c.is_ascii_digit()) {
        text.split_whitespace().next()?
    } else {
        text.split_whitespace().next_back()?
    };
    word.parse().ok().filter(|&p| p > 0)
}

/// How the body of a response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    len: usize,
    status: u16,
    framing: Framing,
    close: bool,
}

/// A complete response found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Bytes of the buffer it used (head and body).
    pub used: usize,
    /// Status code.
    pub status: u16,
    /// The server will close the connection after it.
    pub close: bool,
    /// The worker pid named in the body, if any.
    pub pid: Option<u32>,
}

/// A response that cannot be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse;

/// Incremental parser of one response at a time.
#[derive(Debug, Default)]
pub struct Parser {
    head: Option<Head>,
}

impl Parser {
    /// Looks for a complete response at the start of `buf`; `eof` says the peer closed.
    /// Returns `Ok(None)` while more bytes are needed.
    pub fn parse(&mut self, buf: &[u8], eof: bool) -> Result<Option<Response>, BadResponse> {
        let head = match self.head {
            Some(h) => h,
            None => match parse_head(buf)? {
                Some(h) => h,
                None => return Ok(None),
            },
        };
        if (100..200).contains(&head.status) {
            // An interim response (100 Continue): skip it, the real one follows.
            return self.skip_interim(buf, head, eof);
        }
        self.head = Some(head);
        let body = &buf[head.len..];
        let done = match head.framing {
            Framing::Length(n) => (body.len() >= n).then(|| (n, pid_of(&body[..n]))),
            Framing::Chunked => {
                let mut out = Vec::new();
                decode_chunked(body, &mut out)?.map(|n| (n, pid_of(&out)))
            }
            Framing::UntilClose => eof.then(|| (body.len(), pid_of(body))),
        };
        let Some((n, pid)) = done else {
            return Ok(None);
        };
        self.head = None;
        Ok(Some(Response {
            used: head.len + n,
            status: head.status,
            close: head.close || head.framing == Framing::UntilClose,
            pid,
        }))
    }

    fn skip_interim(
        &mut self,
        buf: &[u8],
        head: Head,
        eof: bool,
    ) -> Result<Option<Response>, BadResponse> {
        let rest = &buf[head.len..];
        match self.parse(rest, eof)? {
            Some(mut r) => {
                r.used += head.len;
                Ok(Some(r))
            }
            None => {
                self.head = None;
                Ok(None)
            }
        }
    }
}

/// Parses a response head; `Ok(None)` while incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, BadResponse> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(BadResponse),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadResponse),
    };
    let status = r.code.ok_or(BadResponse)?;
    let mut close = r.version == Some(0);
    let mut framing = Framing::UntilClose;
    for h in r.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| BadResponse)?
            .trim();
        if h.name.eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
            framing = Framing::Length(value.parse().map_err(|_| BadResponse)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().ends_with("chunked")
        {
            framing = Framing::Chunked;
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                close = true;
            } else if v.contains("keep-alive") {
                close = false;
            }
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        framing = Framing::Length(0);
    }
    Ok(Some(Head {
        len,
        status,
        framing,
        close,
    }))
}

/// Decodes a chunked body at the start of `data` into `out`; returns the bytes it used once
/// the last chunk and the trailers are in, `Ok(None)` while incomplete.
fn decode_chunked(data: &[u8], out: &mut Vec<u8>) -> Result<Option<usize>, BadResponse> {
    let mut at = 0;
    loop {
        let Some(eol) = find_crlf(&data[at..]) else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&data[at..at + eol]).map_err(|_| BadResponse)?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| BadResponse)?;
        at += eol + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(eol) = find_crlf(&data[at..]) else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some(at));
                }
            }
        }
        if data.len() < at + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&data[at..at + size]);
        if &data[at + size..at + size + 2] != b"\r\n" {
            return Err(BadResponse);
        }
        at += size + 2;
    }
}

fn find_crlf(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8], eof: bool) -> Result<Option<Response>, BadResponse> {
        Parser::default().parse(input, eof)
    }

    #[test]
    fn content_length_framing_waits_for_the_whole_body() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\nHello World! 4242";
        for cut in 0..full.len() {
            assert_eq!(parse_all(&full[..cut], false), Ok(None), "cut at {cut}");
        }
        let r = parse_all(full, false).unwrap().unwrap();
        assert_eq!(
            (r.used, r.status, r.close, r.pid),
            (full.len(), 200, false, Some(4242))
        );
    }

    #[test]
    fn two_responses_in_one_buffer_are_taken_one_at_a_time() {
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let mut p = Parser::default();
        let a = p.parse(two, false).unwrap().unwrap();
        assert_eq!((a.status, a.used), (200, 41));
        let b = p.parse(&two[a.used..], false).unwrap().unwrap();
        assert_eq!((b.status, b.close), (404, true));
    }

    #[test]
    fn chunked_and_until_close_bodies() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nHello \r\n7\r\nWorld! \r\n2\r\n77\r\n0\r\n\r\n";
        assert_eq!(parse_all(&chunked[..chunked.len() - 1], false), Ok(None));
        let r = parse_all(chunked, false).unwrap().unwrap();
        assert_eq!((r.used, r.pid), (chunked.len(), Some(77)));
        let open = b"HTTP/1.0 200 OK\r\n\r\n12 worked 5us\n";
        assert_eq!(parse_all(open, false), Ok(None));
        let r = parse_all(open, true).unwrap().unwrap();
        assert_eq!((r.pid, r.close), (Some(12), true));
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert_eq!(
            parse_all(b"SSH-2.0-OpenSSH\r\n\r\n", false),
            Err(BadResponse)
        );
        let bad_len = b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n";
        assert_eq!(parse_all(bad_len, false), Err(BadResponse));
    }

    #[test]
    fn pids_come_from_either_body_shape() {
        assert_eq!(pid_of(b"Hello World! 1234"), Some(1234));
        assert_eq!(pid_of(b"99 worked 10us\n"), Some(99));
        assert_eq!(pid_of(b"Hello World!"), None);
        assert_eq!(pid_of(b""), None);
    }
}
