//! Reading past a request body: `Content-Length` bytes, or a chunked body decoded strictly.
//!
//! Chunked framing is where request smuggling lives, so this decoder is stricter than
//! `httparse::parse_chunk_size` (which takes an empty line as a zero size): a chunk-size line is
//! `1*HEXDIG [ *WSP ";" ext ] CRLF` with no control bytes, chunk data is followed by exactly
//! CRLF, trailer lines are `name ":" value CRLF`, and a bare LF anywhere in the framing is an
//! error. Every violation ends the request with `400`.
//!
//! The decoder also enforces the body limit, counting decoded body bytes: a `Content-Length`
//! beyond it is refused before any body byte is read, a chunked body at the chunk-size line
//! that takes its total past it (before that chunk's data). Both are `413`.

use super::request::{reject, Body, Reject};

/// Longest chunk-size or trailer line accepted.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;

const TOO_LARGE: Reject = reject(413, "request body too large");

/// Where we are in the request body being discarded, and how much more the limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoder {
    state: State,
    /// Body bytes the limit allows beyond the chunks announced so far (`u64::MAX`: no limit).
    allowance: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not in a body (or the body is complete).
    Done,
    /// This many bytes of a `Content-Length` body remain.
    Length(u64),
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data remain.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// Reading trailer lines until the empty one; this many trailer bytes so far.
    Trailers(usize),
}

impl Default for Decoder {
    /// Not in a body.
    fn default() -> Self {
        Decoder {
            state: State::Done,
            allowance: 0,
        }
    }
}

impl Decoder {
    /// The decoder for a body framed as `body`, at most `max_body` bytes long (`0`: no limit);
    /// `Err` (`413`) for a `Content-Length` beyond the limit.
    pub fn new(body: Body, max_body: u64) -> Result<Decoder, Reject> {
        let allowance = match max_body {
            0 => u64::MAX,
            n => n,
        };
        let state = match body {
            Body::None => State::Done,
            Body::Length(n) if n > allowance => return Err(TOO_LARGE),
            Body::Length(n) => State::Length(n),
            Body::Chunked => State::Size,
        };
        Ok(Decoder { state, allowance })
    }

    /// True once the whole body has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes body bytes from the front of `buf` and returns how many; stops when the body is
    /// complete or more input is needed. `max_trailers` bounds the trailer section. `Err`: the
    /// status to refuse the request with (`400` for bad framing, `413` past the body limit).
    pub fn decode(&mut self, buf: &[u8], max_trailers: usize) -> Result<usize, Reject> {
        let mut used = 0;
        loop {
            let rest = buf.get(used..).unwrap_or_default();
            let (n, next) = match self.state {
                State::Done => return Ok(used),
                State::Length(left) => {
                    let n = take(left, rest);
                    let next = match left - n as u64 {
                        0 => State::Done,
                        l => State::Length(l),
                    };
                    (n, next)
                }
                State::Data(left) => {
                    let n = take(left, rest);
                    let next = match left - n as u64 {
                        0 => State::DataEnd,
                        l => State::Data(l),
                    };
                    (n, next)
                }
                State::DataEnd => match rest {
                    [b'\r', b'\n', ..] => (2, State::Size),
                    [] | [b'\r'] => return Ok(used),
                    _ => return Err(bad("chunk data not followed by CRLF")),
                },
                State::Size => match size_line(rest).map_err(bad)? {
                    None => return Ok(used),
                    Some((n, 0)) => (n, State::Trailers(0)),
                    Some((_, size)) if size > self.allowance => return Err(TOO_LARGE),
                    Some((n, size)) => {
                        self.allowance -= size;
                        (n, State::Data(size))
                    }
                },
                State::Trailers(total) => match trailer_line(rest).map_err(bad)? {
                    None => return Ok(used),
                    Some((n, _)) if total + n > max_trailers => {
                        return Err(bad("trailer section too large"))
                    }
                    Some((n, true)) => (n, State::Done),
                    Some((n, false)) => (n, State::Trailers(total + n)),
                },
            };
            if n == 0 && next == self.state {
                return Ok(used);
            }
            used += n;
            self.state = next;
        }
    }
}

/// Malformed framing: `400`.
fn bad(why: &'static str) -> Reject {
    reject(400, why)
}

/// How much of `left` remaining body bytes `rest` holds.
fn take(left: u64, rest: &[u8]) -> usize {
    usize::try_from(left).map_or(rest.len(), |l| l.min(rest.len()))
}

/// One line ending in CRLF within [`MAX_CHUNK_LINE`] bytes: `Ok(None)` if incomplete, else the
/// line without its CRLF and the bytes it used.
fn line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, &'static str> {
    let window = buf.get(..MAX_CHUNK_LINE).unwrap_or(buf);
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= MAX_CHUNK_LINE {
            return Err("chunk framing line too long");
        }
        return Ok(None);
    };
    let with_cr = window.get(..lf).unwrap_or_default();
    let text = with_cr
        .strip_suffix(b"\r")
        .ok_or("bare LF in chunked framing")?;
    if text.iter().any(|&b| is_ctl(b) && b != b'\t') {
        return Err("control byte in chunked framing");
    }
    Ok(Some((text, lf + 1)))
}

fn is_ctl(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// A chunk-size line: `Some((bytes used, size))`.
fn size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, &'static str> {
    let Some((text, used)) = line(buf)? else {
        return Ok(None);
    };
    let digits = text.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("missing chunk size");
    }
    let (hex, ext) = text.split_at(digits);
    let size = hex.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(16)
            .and_then(|n| n.checked_add(hex_value(d)))
            .ok_or("chunk size overflow")
    })?;
    if !ext.is_empty() && ext.trim_ascii_start().first() != Some(&b';') {
        return Err("junk after chunk size");
    }
    Ok(Some((used, size)))
}

fn hex_value(d: u8) -> u64 {
    u64::from(match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        b'A'..=b'F' => d - b'A' + 10,
        _ => 0,
    })
}

/// A trailer line: `Some((bytes used, is the final empty line))`.
fn trailer_line(buf: &[u8]) -> Result<Option<(usize, bool)>, &'static str> {
    let Some((text, used)) = line(buf)? else {
        return Ok(None);
    };
    if text.is_empty() {
        return Ok(Some((used, true)));
    }
    let name_len = text.iter().position(|&b| b == b':').unwrap_or(0);
    let name = text.get(..name_len).unwrap_or_default();
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err("malformed trailer field");
    }
    Ok(Some((used, false)))
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes with no body limit; `Ok(leftover)` once
    /// done.
    fn run(body: Body, input: &[u8], step: usize) -> Result<Vec<u8>, &'static str> {
        limited(body, 0, input, step).map_err(|r| r.why)
    }

    /// [`run`] with a body limit, keeping the refusal's status.
    fn limited(body: Body, max: u64, input: &[u8], step: usize) -> Result<Vec<u8>, Reject> {
        let mut d = Decoder::new(body, max)?;
        let mut buf = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            let n = d.decode(&buf, 1024)?;
            buf.drain(..n);
        }
        if d.is_done() {
            Ok(buf)
        } else {
            Err(reject(0, "incomplete"))
        }
    }

    #[test]
    fn chunked_bodies_decode_in_any_split() {
        let body = b"5\r\nhello\r\n1a;ext=1;x=\"y\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nT: v\r\n\r\nNEXT";
        for step in 1..body.len() {
            assert_eq!(run(Body::Chunked, body, step).as_deref(), Ok(&b"NEXT"[..]));
        }
        assert_eq!(
            run(Body::Length(3), b"abcdef", 2).as_deref(),
            Ok(&b"def"[..])
        );
        assert_eq!(
            run(Body::Chunked, b"0000\r\n\r\n", 3).as_deref(),
            Ok(&b""[..])
        );
    }

    #[test]
    fn chunked_framing_errors() {
        for bad in [
            &b"\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"-5\r\n",
            b"0x5\r\n",
            b"5\0\r\n",
            b"5\rx\r\n",
            b"11111111111111111\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            b"0\r\n: v\r\n\r\n",
            b"0\r\nT: v\n\r\n",
        ] {
            let r = run(Body::Chunked, bad, 1);
            assert!(
                r.is_err() && r != Err("incomplete"),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert_eq!(
            run(Body::Chunked, &long, 1000),
            Err("chunk framing line too long")
        );
        let mut many = b"0\r\n".to_vec();
        many.extend(b"T: vvvvvvvvvvvvvvv\r\n".repeat(100));
        assert_eq!(
            run(Body::Chunked, &many, 64),
            Err("trailer section too large")
        );
    }

    #[test]
    fn the_body_limit_counts_decoded_bytes() {
        let status = |body, max, input: &[u8]| limited(body, max, input, 3).map_err(|r| r.status);
        // Exactly at the limit: served, whatever the chunk framing adds.
        assert_eq!(status(Body::Length(5), 5, b"hello"), Ok(vec![]));
        let chunked = b"2\r\nhe\r\n3;x=y\r\nllo\r\n0\r\nT: v\r\n\r\n";
        assert_eq!(status(Body::Chunked, 5, chunked), Ok(vec![]));
        // One byte over: 413, for a length before any byte, for chunks at the size line.
        assert_eq!(status(Body::Length(6), 5, b""), Err(413));
        assert_eq!(status(Body::Chunked, 4, b"2\r\nhe\r\n3\r\n"), Err(413));
        assert_eq!(status(Body::Chunked, 4, b"ffffffffffffffff\r\n"), Err(413));
        // No limit; malformed framing stays 400 under a limit.
        assert_eq!(status(Body::Length(u64::MAX), 0, b"").map(|_| ()), Err(0));
        assert_eq!(status(Body::Chunked, 4, b"2\r\nhe\n"), Err(400));
    }
}
