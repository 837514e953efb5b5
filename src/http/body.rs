//! Reading past a request body: `Content-Length` bytes, or a chunked body decoded strictly.
//!
//! Chunked framing is where request smuggling lives, so this decoder is stricter than
//! `httparse::parse_chunk_size` (which takes an empty line as a zero size): a chunk-size line is
//! `1*HEXDIG [ *WSP ";" ext ] CRLF` with no control bytes, chunk data is followed by exactly
//! CRLF, trailer lines are `name ":" value CRLF`, and a bare LF anywhere in the framing is an
//! error. Every violation ends the request with `400`.

use super::request::Body;

/// Longest chunk-size or trailer line accepted.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Where we are in the request body being discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
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

impl Decoder {
    /// The decoder for a body framed as `body`.
    pub fn new(body: Body) -> Decoder {
        match body {
            Body::None => Decoder::Done,
            Body::Length(n) => Decoder::Length(n),
            Body::Chunked => Decoder::Size,
        }
    }

    /// True once the whole body has been consumed.
    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// Consumes body bytes from the front of `buf` and returns how many; stops when the body is
    /// complete or more input is needed. `max_trailers` bounds the trailer section.
    pub fn decode(&mut self, buf: &[u8], max_trailers: usize) -> Result<usize, &'static str> {
        let mut used = 0;
        loop {
            let rest = buf.get(used..).unwrap_or_default();
            let (n, next) = match *self {
                Decoder::Done => return Ok(used),
                Decoder::Length(left) => {
                    let n = take(left, rest);
                    let next = match left - n as u64 {
                        0 => Decoder::Done,
                        l => Decoder::Length(l),
                    };
                    (n, next)
                }
                Decoder::Data(left) => {
                    let n = take(left, rest);
                    let next = match left - n as u64 {
                        0 => Decoder::DataEnd,
                        l => Decoder::Data(l),
                    };
                    (n, next)
                }
                Decoder::DataEnd => match rest {
                    [b'\r', b'\n', ..] => (2, Decoder::Size),
                    [] | [b'\r'] => return Ok(used),
                    _ => return Err("chunk data not followed by CRLF"),
                },
                Decoder::Size => match size_line(rest)? {
                    None => return Ok(used),
                    Some((n, 0)) => (n, Decoder::Trailers(0)),
                    Some((n, size)) => (n, Decoder::Data(size)),
                },
                Decoder::Trailers(total) => match trailer_line(rest)? {
                    None => return Ok(used),
                    Some((n, _)) if total + n > max_trailers => {
                        return Err("trailer section too large")
                    }
                    Some((n, true)) => (n, Decoder::Done),
                    Some((n, false)) => (n, Decoder::Trailers(total + n)),
                },
            };
            if n == 0 && next == *self {
                return Ok(used);
            }
            used += n;
            *self = next;
        }
    }
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

    /// Decodes `input` fed in pieces of `step` bytes; `Ok(leftover)` once done.
    fn run(body: Body, input: &[u8], step: usize) -> Result<Vec<u8>, &'static str> {
        let mut d = Decoder::new(body);
        let mut buf = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            let n = d.decode(&buf, 1024)?;
            buf.drain(..n);
        }
        if d.is_done() {
            Ok(buf)
        } else {
            Err("incomplete")
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
}
