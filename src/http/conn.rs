//! One HTTP/1.1 connection: read, parse, answer in order, write without blocking.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::request::{self, Body, Head};
use super::response::{self, DateCache};
use super::routes::{self, Reply};
use super::Limits;
use crate::worker::{Connection, Context, Status};

/// Read granularity.
const READ_CHUNK: usize = 16 * 1024;
/// Stop producing responses once this much output waits (a slow reader holds us back).
const WBUF_HIGH: usize = 64 * 1024;
/// Longest chunk-size or trailer line accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// How long a closing connection waits for the peer to finish sending (lingering close).
const LINGER: Duration = Duration::from_secs(2);
/// How long a response may wait for a reader that takes nothing at all.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// State shared by the connections of one worker.
#[derive(Debug, Clone)]
pub(super) struct Shared {
    hello: Rc<[u8]>,
    date: Rc<RefCell<DateCache>>,
}

impl Shared {
    pub(super) fn new() -> Shared {
        Shared {
            hello: format!("Hello World! {}", std::process::id())
                .into_bytes()
                .into(),
            date: Rc::default(),
        }
    }
}

/// Where we are in the request body being discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// Not in a body.
    Done,
    /// This many bytes of a `Content-Length` body remain.
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// This many bytes of chunk data remain.
    ChunkData(u64),
    /// Expecting the CRLF after chunk data.
    ChunkEnd,
    /// Reading trailer lines until the empty one.
    Trailers,
}

/// One client connection served by [`super::HttpHandler`].
#[derive(Debug)]
pub struct HttpConn {
    stream: TcpStream,
    limits: Limits,
    shared: Shared,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    /// Bytes of a `/bytes` body still to produce.
    streaming: u64,
    /// The request whose body we are reading; answered when the body ends.
    pending: Option<Head>,
    body: BodyState,
    /// Close once the output is written.
    close_after: bool,
    /// Output written, write side shut; discarding input until EOF or the deadline.
    lingering: Option<Instant>,
    requests: u64,
    /// When the current request head (or the wait for one) started.
    head_started: Instant,
    /// Last time output made progress.
    last_write: Instant,
}

enum Progress {
    /// Something changed: loop again.
    More,
    /// Blocked on the socket: wait for the next event.
    Wait,
    /// The connection is finished.
    Close,
}

impl HttpConn {
    pub(super) fn new(stream: TcpStream, limits: Limits, shared: Shared, now: Instant) -> HttpConn {
        HttpConn {
            stream,
            limits,
            shared,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            streaming: 0,
            pending: None,
            body: BodyState::Done,
            close_after: false,
            lingering: None,
            requests: 0,
            head_started: now,
            last_write: now,
        }
    }

    fn out_empty(&self) -> bool {
        self.wpos == self.wbuf.len() && self.streaming == 0
    }

    /// True between requests: nothing buffered, nothing owed.
    fn idle(&self) -> bool {
        self.out_empty() && self.pending.is_none() && self.rbuf.is_empty()
    }

    fn write_out(&mut self, now: Instant) -> io::Result<bool> {
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.wpos += n;
                    self.last_write = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        Ok(true)
    }

    fn refill_stream(&mut self) {
        let n = self.streaming.min(WBUF_HIGH as u64) as usize;
        self.wbuf.resize(n, b'x');
        self.streaming -= n as u64;
    }

    /// Reads what is available. `Ok(false)`: peer closed its side.
    fn read_in(&mut self) -> io::Result<Progress> {
        let start = self.rbuf.len();
        self.rbuf.resize(start + READ_CHUNK, 0);
        let r = self.stream.read(&mut self.rbuf[start..]);
        let n = *r.as_ref().unwrap_or(&0);
        self.rbuf.truncate(start + n);
        match r {
            Ok(0) => Ok(Progress::Close),
            Ok(_) => Ok(Progress::More),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Progress::Wait),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Progress::More),
            Err(e) => Err(e),
        }
    }

    fn respond(&mut self, head: &Head, ctx: &mut Context) {
        self.requests += 1;
        ctx.count_request();
        let over_limit = self.limits.max_requests > 0 && self.requests >= self.limits.max_requests;
        let keep = head.keep_alive && !ctx.draining() && !over_limit;
        let mut date = self.shared.date.borrow_mut();
        match routes::route(&head.method, &head.path, &self.shared.hello) {
            Reply::Text(status, body) => response::write(
                &mut self.wbuf,
                status,
                date.get(),
                keep,
                &body,
                head.is_head(),
            ),
            Reply::Bytes(n) => {
                response::write_head(&mut self.wbuf, 200, date.get(), keep, n);
                if !head.is_head() {
                    self.streaming = n;
                }
            }
        }
        if !keep {
            self.close_after = true;
        }
    }

    fn reject(&mut self, status: u16, why: &str) {
        log::debug!("rejecting request with {status}: {why}");
        let mut date = self.shared.date.borrow_mut();
        let body = format!("{}\n", response::reason(status));
        response::write(
            &mut self.wbuf,
            status,
            date.get(),
            false,
            body.as_bytes(),
            false,
        );
        self.close_after = true;
        self.rbuf.clear();
        self.pending = None;
        self.body = BodyState::Done;
    }

    /// Parses and answers buffered requests until output is high or input runs out.
    fn process(&mut self, ctx: &mut Context) -> bool {
        let mut progressed = false;
        while !self.close_after && self.wbuf.len() < WBUF_HIGH && self.streaming == 0 {
            if self.pending.is_some() {
                match self.discard_body() {
                    Ok(true) => {
                        if let Some(head) = self.pending.take() {
                            self.respond(&head, ctx);
                            self.head_started = ctx.now();
                            progressed = true;
                        }
                        continue;
                    }
                    Ok(false) => break,
                    Err(why) => {
                        self.reject(400, why);
                        return true;
                    }
                }
            }
            if self.rbuf.is_empty() {
                break;
            }
            match request::parse(&self.rbuf) {
                Ok(Some(head)) => {
                    self.rbuf.drain(..head.len);
                    self.body = match head.body {
                        Body::None => BodyState::Done,
                        Body::Length(n) => BodyState::Length(n),
                        Body::Chunked => BodyState::ChunkSize,
                    };
                    if head.expect_continue && self.body != BodyState::Done {
                        self.wbuf.extend_from_slice(response::CONTINUE);
                    }
                    self.pending = Some(head);
                    progressed = true;
                }
                Ok(None) => {
                    if self.rbuf.len() > self.limits.max_head {
                        self.reject(431, "request head too large");
                        return true;
                    }
                    break;
                }
                Err(r) => {
                    self.reject(r.status, r.why);
                    return true;
                }
            }
        }
        progressed
    }

    /// Consumes body bytes from `rbuf`. `Ok(true)` when the body is complete.
    fn discard_body(&mut self) -> Result<bool, &'static str> {
        loop {
            match self.body {
                BodyState::Done => return Ok(true),
                BodyState::Length(n) | BodyState::ChunkData(n) => {
                    let take = n.min(self.rbuf.len() as u64);
                    self.rbuf.drain(..take as usize);
                    let left = n - take;
                    self.body = match (self.body, left) {
                        (BodyState::Length(_), 0) => BodyState::Done,
                        (BodyState::Length(_), l) => BodyState::Length(l),
                        (_, 0) => BodyState::ChunkEnd,
                        (_, l) => BodyState::ChunkData(l),
                    };
                    if left > 0 {
                        return Ok(false);
                    }
                }
                BodyState::ChunkSize => match httparse::parse_chunk_size(&self.rbuf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.rbuf.drain(..used);
                        self.body = if size == 0 {
                            BodyState::Trailers
                        } else {
                            BodyState::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.rbuf.len() > MAX_CHUNK_LINE {
                            return Err("chunk size line too long");
                        }
                        return Ok(false);
                    }
                    Err(_) => return Err("bad chunk size"),
                },
                BodyState::ChunkEnd => {
                    if self.rbuf.len() < 2 {
                        return Ok(false);
                    }
                    if &self.rbuf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF");
                    }
                    self.rbuf.drain(..2);
                    self.body = BodyState::ChunkSize;
                }
                BodyState::Trailers => {
                    let Some(end) = self.rbuf.windows(2).position(|w| w == b"\r\n") else {
                        if self.rbuf.len() > MAX_CHUNK_LINE {
                            return Err("trailer line too long");
                        }
                        return Ok(false);
                    };
                    self.rbuf.drain(..end + 2);
                    if end == 0 {
                        self.body = BodyState::Done;
                    }
                }
            }
        }
    }

    /// All output is written and we promised to close: close now, or linger if the peer is
    /// still sending (closing with unread input would reset the connection and could destroy
    /// the response before the client reads it).
    fn finish(&mut self, now: Instant) -> Status {
        let mut scratch = [0u8; 1024];
        match self.stream.read(&mut scratch) {
            Ok(n) if n > 0 => {
                let _ = self.stream.shutdown(Shutdown::Write);
                self.lingering = Some(now + LINGER);
                Status::Open
            }
            _ => Status::Close,
        }
    }

    fn linger(&mut self) -> Status {
        let mut scratch = [0u8; 4096];
        loop {
            match self.stream.read(&mut scratch) {
                Ok(0) => return Status::Close,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Status::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Status::Close,
            }
        }
    }

    fn step(&mut self, ctx: &mut Context) -> io::Result<Progress> {
        if !self.write_out(ctx.now())? {
            return Ok(Progress::Wait);
        }
        if self.streaming > 0 {
            self.refill_stream();
            return Ok(Progress::More);
        }
        if self.close_after {
            return Ok(Progress::Close);
        }
        if self.process(ctx) {
            return Ok(Progress::More);
        }
        let was_idle = self.idle();
        let r = self.read_in()?;
        if was_idle && !self.rbuf.is_empty() {
            self.head_started = ctx.now();
        }
        Ok(r)
    }
}

impl Connection for HttpConn {
    fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    fn ready(&mut self, ctx: &mut Context) -> Status {
        if self.lingering.is_some() {
            return self.linger();
        }
        loop {
            match self.step(ctx) {
                Ok(Progress::More) => continue,
                Ok(Progress::Wait) => return Status::Open,
                Ok(Progress::Close) if self.close_after => return self.finish(ctx.now()),
                Ok(Progress::Close) => return Status::Close,
                Err(e) => {
                    log::debug!("connection error: {e}");
                    return Status::Close;
                }
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        if let Some(d) = self.lingering {
            return Some(d);
        }
        if !self.out_empty() {
            return Some(self.last_write + SEND_TIMEOUT);
        }
        if self.idle() && self.requests > 0 {
            return Some(self.head_started + self.limits.keepalive_timeout);
        }
        Some(self.head_started + self.limits.header_timeout)
    }

    fn timed_out(&mut self, ctx: &mut Context) -> Status {
        if self.lingering.is_some() || !self.out_empty() || self.idle() {
            return Status::Close;
        }
        // A request head (or body) is incomplete after the header timeout: answer 408.
        self.reject(408, "request timeout");
        self.ready(ctx)
    }

    fn drain(&mut self, ctx: &mut Context) -> Status {
        if self.idle() || self.lingering.is_some() {
            return Status::Close;
        }
        if self.out_empty() {
            // A request is arriving: let it finish; its response will say close.
            return Status::Open;
        }
        // A response is being written: close once it is out.
        self.close_after = true;
        self.ready(ctx)
    }
}
