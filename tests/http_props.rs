//! Issue 5: property tests of the request path, through [`herd::http::Session`] (the
//! connection's state machine without a socket).
//!
//! - Any bytes, split anywhere, never panic it; what it writes is always a sequence of
//!   well-formed HTTP/1.1 responses (status line, `Date`, `Content-Length`, `Connection`, the
//!   right body length), nothing follows a `Connection: close`, it holds a bounded amount of
//!   input, and a `408` on timeout is well-formed too.
//! - Valid pipelined requests get exactly their answers, in order, however the bytes are split.

use herd::http::{body::MAX_CHUNK_LINE, Closing, Limits, Phase, Session};
use proptest::prelude::*;
use proptest::sample::select;

/// One parsed response: status, `Connection: close`, body length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answer {
    status: u16,
    close: bool,
    body: usize,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned()
}

fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Result<&'a str, String> {
    let mut found = headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name));
    let value = found.next().ok_or(format!("no {name}"))?;
    if found.next().is_some() {
        return Err(format!("two {name} headers"));
    }
    std::str::from_utf8(value.value).map_err(|e| e.to_string())
}

fn is_next(rest: &[u8]) -> bool {
    rest.is_empty() || rest.starts_with(b"HTTP/1.1 ")
}

/// Parses one response off the front of `out`; `Ok((answer, bytes used))`.
fn parse_one(out: &[u8]) -> Result<(Option<Answer>, usize), String> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => return Err(format!("bad response head {other:?}: {}", lossy(out))),
    };
    if resp.version != Some(1) || resp.reason.is_none_or(str::is_empty) {
        return Err(format!("bad status line: {}", lossy(out)));
    }
    let status = resp.code.ok_or("no status")?;
    if status == 100 {
        return match resp.headers.is_empty() {
            true => Ok((None, n)),
            false => Err("headers on 100 Continue".into()),
        };
    }
    httpdate::parse_http_date(header(resp.headers, "date")?).map_err(|e| e.to_string())?;
    let len: usize = header(resp.headers, "content-length")?
        .parse()
        .map_err(|e| format!("content-length: {e}"))?;
    let close = match header(resp.headers, "connection")? {
        "close" => true,
        "keep-alive" => false,
        other => return Err(format!("connection: {other}")),
    };
    if status == 405 && header(resp.headers, "allow")? != "GET, HEAD" {
        return Err("405 without Allow".into());
    }
    // A response to HEAD has no body. No body this server sends starts with a status line, so
    // a status line (or the end) right after the head means no body; else `len` bytes follow.
    let after = &out[n..];
    let body = match after.get(len..) {
        _ if is_next(after) => 0,
        Some(rest) if is_next(rest) => len,
        _ => return Err(format!("body is not {len} bytes: {}", lossy(after))),
    };
    Ok((
        Some(Answer {
            status,
            close,
            body,
        }),
        n + body,
    ))
}

/// Checks that `out` is a sequence of well-formed responses; returns the final ones.
fn check_output(out: &[u8]) -> Result<Vec<Answer>, String> {
    let mut answers: Vec<Answer> = Vec::new();
    let mut rest = out;
    while !rest.is_empty() {
        if answers.last().is_some_and(|a| a.close) {
            return Err(format!("output after Connection: close: {}", lossy(rest)));
        }
        let (answer, used) = parse_one(rest)?;
        answers.extend(answer);
        rest = &rest[used..];
    }
    Ok(answers)
}

/// Takes all output the session has.
fn pump(s: &mut Session, out: &mut Vec<u8>) {
    loop {
        s.advance(&herd::http::Serving::plain());
        let o = s.output();
        if o.is_empty() {
            return;
        }
        out.extend_from_slice(o);
        let n = o.len();
        s.consume(n);
    }
}

/// Feeds `input` in pieces of the given sizes (cycled), as a socket would, until the session
/// closes or the input ends; checks the bounded-buffer invariant between pieces.
fn drive(limits: Limits, input: &[u8], pieces: &[usize]) -> (Vec<u8>, Session) {
    let bound = limits.max_head.max(MAX_CHUNK_LINE);
    let mut s = Session::new(limits);
    let mut out = Vec::new();
    let mut pos = 0;
    for k in 0.. {
        pump(&mut s, &mut out);
        if s.closing().is_some() || pos >= input.len() {
            break;
        }
        assert!(s.buffered() <= bound, "holds {} bytes", s.buffered());
        assert_ne!(s.phase(), Phase::Output);
        let n = pieces
            .get(k % pieces.len().max(1))
            .copied()
            .unwrap_or(input.len());
        let end = (pos + n.max(1)).min(input.len());
        s.receive(&input[pos..end]);
        pos = end;
    }
    (out, s)
}

/// A valid request and what it must get.
#[derive(Debug, Clone)]
struct Req {
    bytes: Vec<u8>,
    status: u16,
    /// Body length of the answer, where known (0 for HEAD, n for `/bytes?n=`).
    body: Option<usize>,
    continue_first: bool,
    close: bool,
}

#[allow(clippy::too_many_arguments)]
fn build(
    method: &str,
    target: &str,
    n: u32,
    http10: bool,
    connection: u8,
    framing: u8,
    body: Vec<u8>,
    chunks: Vec<usize>,
    expect: bool,
    extra: Vec<(String, String)>,
    bare_lf: bool,
) -> Req {
    let eol = if bare_lf { "\n" } else { "\r\n" };
    let target = target.replace("{n}", &n.to_string());
    let mut head = format!("{method} {target} HTTP/1.{}{eol}", u8::from(!http10));
    if !http10 {
        head += &format!("Host: example.com{eol}");
    }
    match connection {
        1 => head += &format!("Connection: close{eol}"),
        2 => head += &format!("Connection: keep-alive{eol}"),
        _ => {}
    }
    if expect {
        head += &format!("Expect: 100-continue{eol}");
    }
    for (k, v) in extra {
        head += &format!("X-{k}: {v}{eol}");
    }
    let chunked = framing == 2 && !http10;
    let mut payload = Vec::new();
    if chunked {
        head += &format!("Transfer-Encoding: chunked{eol}");
        let mut left = &body[..];
        let mut sizes = chunks.iter().cycle();
        while !left.is_empty() {
            let size = sizes.next().copied().unwrap_or(1).max(1);
            let (c, r) = left.split_at(size.min(left.len()));
            payload.extend(format!("{:x}\r\n", c.len()).bytes());
            payload.extend_from_slice(c);
            payload.extend(b"\r\n");
            left = r;
        }
        payload.extend(b"0\r\n\r\n");
    } else if framing != 0 {
        head += &format!("Content-Length: {}{eol}", body.len());
        payload = body.clone();
    }
    head += eol;
    let mut bytes = head.into_bytes();
    bytes.extend(payload);
    let status = match (method, target.as_str()) {
        ("GET" | "HEAD", "/nope") => 404,
        ("GET" | "HEAD", _) => 200,
        _ => 405,
    };
    let answer_body = match (method, status) {
        ("HEAD", _) => Some(0),
        (_, 200) if target.contains("n=") => Some(n as usize),
        _ => None,
    };
    Req {
        bytes,
        status,
        body: answer_body,
        continue_first: expect && !http10 && (chunked || (framing == 1 && !body.is_empty())),
        close: if http10 {
            connection != 2
        } else {
            connection == 1
        },
    }
}

fn valid_request() -> impl Strategy<Value = Req> {
    (
        (
            select(vec!["GET", "GET", "HEAD", "POST", "OPTIONS"]),
            select(vec![
                "/",
                "/nope",
                "/bytes?n={n}",
                "http://h:1/",
                "HTTP://h/bytes?n={n}",
            ]),
            0u32..3000,
            prop::bool::weighted(0.2),
            prop::sample::select(vec![0u8, 0, 0, 1, 2]),
            0u8..3,
        ),
        (
            prop::collection::vec(any::<u8>(), 0..40),
            prop::collection::vec(1usize..10, 1..4),
            prop::bool::weighted(0.2),
            prop::collection::vec(
                ("[A-Za-z][A-Za-z0-9-]{0,8}", "[!-~]([ -~]{0,16}[!-~])?"),
                0..3,
            ),
            prop::bool::weighted(0.1),
        ),
    )
        .prop_map(|((m, t, n, v10, c, f), (body, chunks, e, extra, lf))| {
            build(m, t, n, v10, c, f, body, chunks, e, extra, lf)
        })
}

/// Byte strings that make parsers and framers stumble.
const NASTY: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b"\0",
    b" ",
    b"\t",
    b":",
    b"\xff",
    b"Content-Length: 5\r\n",
    b"Content-Length: 99999999999999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"Host: x\r\n",
    b"GET / HTTP/1.1\r\n",
    b"HEAD /bytes?n=5 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HTTP/1.0",
    b"0\r\n\r\n",
    b"ffffffffffffffffff\r\n",
    b";ext=\"v\"",
    b" \r\n x",
];

fn mutate(mut base: Vec<u8>, edits: Vec<(usize, u8, u8)>) -> Vec<u8> {
    for (at, op, byte) in edits {
        let i = at % (base.len() + 1);
        match op % 4 {
            0 => base.insert(i, byte),
            1 if i < base.len() => base[i] = byte,
            2 if i < base.len() => {
                base.remove(i);
            }
            _ => {
                let frag = NASTY[byte as usize % NASTY.len()];
                base.splice(i..i, frag.iter().copied());
            }
        }
    }
    base
}

fn pipeline() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(valid_request(), 1..5)
        .prop_map(|rs| rs.into_iter().flat_map(|r| r.bytes).collect::<Vec<u8>>())
}

fn hostile_input() -> impl Strategy<Value = Vec<u8>> {
    let edit = (
        any::<usize>(),
        any::<u8>(),
        prop_oneof![
            any::<u8>(),
            select(b"\r\n\0 :\t;,0123456789abcdefxX-".to_vec())
        ],
    );
    let cut = (pipeline(), any::<prop::sample::Index>())
        .prop_map(|(b, i)| b[..i.index(b.len() + 1)].to_vec());
    prop_oneof![
        5 => (pipeline(), prop::collection::vec(edit, 0..6)).prop_map(|(b, e)| mutate(b, e)),
        2 => cut,
        1 => prop::collection::vec(any::<u8>(), 0..300),
        2 => prop::collection::vec(select(NASTY.to_vec()), 0..20).prop_map(|f| f.concat()),
    ]
}

fn limits() -> impl Strategy<Value = Limits> {
    (select(vec![64usize, 300, 8192]), 0u64..4).prop_map(|(max_head, max_requests)| Limits {
        max_head,
        max_requests,
        ..Limits::default()
    })
}

/// The output with every `Date` value blanked (it may tick between two runs).
fn without_dates(out: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(out);
    text.split("\r\n")
        .map(|l| {
            if l.starts_with("Date: ") {
                "Date: -"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
        .into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_bytes_get_well_formed_responses(
        input in hostile_input(),
        pieces in prop::collection::vec(1usize..80, 1..6),
        limits in limits(),
    ) {
        let (mut out, mut s) = drive(limits, &input, &pieces);
        let answers = check_output(&out).map_err(TestCaseError::fail)?;
        if s.closing().is_some() {
            prop_assert!(answers.last().is_some_and(|a| a.close), "closing without saying so");
            prop_assert!(s.finished());
        }
        // A timeout now answers 408 and closes, well-formed like everything else.
        if matches!(s.phase(), Phase::Head | Phase::Body) && s.closing().is_none() {
            s.reject(408, "test timeout");
            pump(&mut s, &mut out);
            let answers = check_output(&out).map_err(TestCaseError::fail)?;
            let last = answers.last().copied();
            prop_assert_eq!(last.map(|a| (a.status, a.close)), Some((408, true)));
            prop_assert_eq!(s.closing(), Some(Closing::Refused));
        }
    }

    #[test]
    fn valid_pipelines_are_answered_in_order_however_split(
        reqs in prop::collection::vec(valid_request(), 1..8),
        pieces in prop::collection::vec(1usize..50, 1..6),
        max_requests in 0u64..6,
    ) {
        let limits = Limits { max_requests, ..Limits::default() };
        let input: Vec<u8> = reqs.iter().flat_map(|r| r.bytes.iter().copied()).collect();
        let mut expected = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            let last = r.close || (max_requests > 0 && i as u64 + 1 == max_requests);
            expected.push((r.status, last));
            if last {
                break;
            }
        }
        let (out, s) = drive(limits.clone(), &input, &pieces);
        let answers = check_output(&out).map_err(TestCaseError::fail)?;
        let got: Vec<(u16, bool)> = answers.iter().map(|a| (a.status, a.close)).collect();
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(s.requests(), expected.len() as u64);
        for (answer, req) in answers.iter().zip(&reqs) {
            if let Some(len) = req.body {
                prop_assert_eq!(answer.body, len, "body length of {:?}", lossy(&req.bytes));
            }
        }
        let continues = out.windows(13).filter(|w| w == b"HTTP/1.1 100 ").count();
        let wanted = reqs.iter().take(expected.len()).filter(|r| r.continue_first).count();
        prop_assert_eq!(continues, wanted);
        // Splitting the input differently changes nothing.
        let (whole, _) = drive(limits, &input, &[input.len()]);
        prop_assert_eq!(without_dates(&out), without_dates(&whole));
    }
}
