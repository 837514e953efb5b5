//! The protocol core of one connection, with no socket: client bytes in, response bytes out.
//!
//! [`Session`] parses requests, discards their bodies, and queues the responses in order. It
//! never blocks and never panics on client bytes; [`super::HttpConn`] moves bytes between it
//! and a socket and keeps the clocks. Tests drive it directly.

use std::cell::RefCell;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::rc::Rc;

use super::access_log::AccessLog;
use super::body::Decoder;
use super::request::{self, Head, Reject};
use super::response::{self, DateCache};
use super::routes::{self, Reply};
use super::Limits;

/// Read granularity.
const READ_CHUNK: usize = 16 * 1024;
/// Stop producing responses once this much output waits (a slow reader holds us back).
const OUT_HIGH: usize = 64 * 1024;

/// State shared by the connections of one worker.
#[derive(Debug, Clone)]
pub(super) struct Shared {
    hello: Rc<[u8]>,
    date: Rc<RefCell<DateCache>>,
    /// Every read lands here first, then only the bytes received are copied to the
    /// connection's input: no 16 KiB zeroed per read, and a connection's input buffer holds
    /// what it received rather than a whole read chunk.
    scratch: Rc<RefCell<Box<[u8]>>>,
    /// The access log, when it is on.
    log: Option<Rc<RefCell<AccessLog>>>,
}

impl Shared {
    pub(super) fn new() -> Shared {
        Shared {
            hello: format!("Hello World! {}", std::process::id())
                .into_bytes()
                .into(),
            date: Rc::default(),
            scratch: Rc::new(RefCell::new(vec![0; READ_CHUNK].into_boxed_slice())),
            log: None,
        }
    }

    /// The same, with an access log on stdout.
    pub(super) fn with_access_log(mut self) -> Shared {
        self.log = Some(Rc::default());
        self
    }

    /// Writes the access log lines gathered so far.
    pub(super) fn flush_log(&self) {
        if let Some(log) = &self.log {
            log.borrow_mut().flush();
        }
    }
}

/// What the worker and the connection tell a session about the requests it answers now.
pub struct Serving<'a> {
    /// The worker is shutting down: answers say `Connection: close`.
    pub draining: bool,
    /// The host is leaving (drain delay): `/healthz` fails, answers say `Connection: close`.
    pub leaving: bool,
    /// Looks up the client's address (the PROXY header's, or the socket's peer); called at
    /// most once per session, by the first request that needs it.
    pub peer: &'a dyn Fn() -> Option<SocketAddr>,
}

fn no_peer() -> Option<SocketAddr> {
    None
}

impl Serving<'static> {
    /// Neither draining nor leaving, and no client address.
    pub fn plain() -> Serving<'static> {
        Serving {
            draining: false,
            leaving: false,
            peer: &no_peer,
        }
    }
}

/// Why a session ends once its output is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// The client asked to close (`Connection: close`, or HTTP/1.0 without keep-alive): it
    /// sends no further request (RFC 9112, 9.6), so nothing is left to linger for.
    Asked,
    /// The last response said `Connection: close` on the server's account (request limit,
    /// shutdown).
    Done,
    /// A request was refused (`4xx`/`5xx`); the client may still be sending, so the socket
    /// should linger before it is closed.
    Refused,
}

/// What a session is waiting for, which decides its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing buffered, nothing owed: waiting for a request.
    Idle,
    /// Part of a request head has arrived.
    Head,
    /// A request's body is being read.
    Body,
    /// Output is waiting to be written.
    Output,
}

/// One connection's HTTP/1.1 state machine.
#[derive(Debug)]
pub struct Session {
    limits: Limits,
    shared: Shared,
    input: Vec<u8>,
    /// Bytes of `input` already consumed.
    ipos: usize,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    opos: usize,
    /// Bytes of a `/bytes` body still to produce.
    streaming: u64,
    /// The request whose body we are reading; answered when the body ends.
    pending: Option<Head>,
    body: Decoder,
    closing: Option<Closing>,
    requests: u64,
    /// The client's address, once looked up.
    peer: Option<Option<SocketAddr>>,
}

impl Session {
    /// A session for a new connection.
    pub fn new(limits: Limits) -> Session {
        Session::with_shared(limits, Shared::new())
    }

    pub(super) fn with_shared(limits: Limits, shared: Shared) -> Session {
        Session {
            limits,
            shared,
            input: Vec::new(),
            ipos: 0,
            out: Vec::new(),
            opos: 0,
            streaming: 0,
            pending: None,
            body: Decoder::default(),
            closing: None,
            requests: 0,
            peer: None,
        }
    }

    /// Writes the access log lines gathered so far (none when the log is off).
    pub fn flush_log(&self) {
        self.shared.flush_log();
    }

    /// The limits this session enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Buffers bytes received from the client.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.compact();
        self.input.extend_from_slice(bytes);
    }

    /// Reads once from `r` into the input buffer; returns what `read` returned.
    pub fn read_from<R: Read>(&mut self, r: &mut R) -> io::Result<usize> {
        self.compact();
        let mut scratch = self.shared.scratch.borrow_mut();
        let n = r.read(&mut scratch[..])?;
        self.input
            .extend_from_slice(scratch.get(..n).unwrap_or_default());
        Ok(n)
    }

    fn compact(&mut self) {
        let done = self.ipos.min(self.input.len());
        self.input.drain(..done);
        self.ipos = 0;
    }

    fn unread(&self) -> &[u8] {
        self.input.get(self.ipos..).unwrap_or_default()
    }

    /// Parses buffered input and queues responses until the output is high, more input is
    /// needed, or the connection is to close. Returns how many requests were answered.
    ///
    /// When it returns with no output and not closing, it needs more input.
    pub fn advance(&mut self, serving: &Serving<'_>) -> u64 {
        let mut answered = 0;
        while self.closing.is_none() && self.out_len() < OUT_HIGH && self.streaming == 0 {
            if let Some(head) = self.pending.take() {
                let rest = self.input.get(self.ipos..).unwrap_or_default();
                match self.body.decode(rest, self.limits.max_head) {
                    Ok(n) => self.ipos += n,
                    Err(r) => {
                        self.reject(r.status, r.why);
                        break;
                    }
                }
                if !self.body.is_done() {
                    self.pending = Some(head);
                    break;
                }
                self.respond(&head, serving);
                answered += 1;
                continue;
            }
            if self.unread().is_empty() {
                break;
            }
            match self.parse_head() {
                Ok(Some(head)) => self.start(head),
                Ok(None) => break,
                Err(r) => self.reject(r.status, r.why),
            }
        }
        answered
    }

    fn parse_head(&self) -> Result<Option<Head>, Reject> {
        let buf = self.unread();
        let max = self.limits.max_head;
        match request::parse(buf, self.limits.max_headers)? {
            Some(head) if head.len > max => Err(request::too_large(buf, max)),
            None if buf.len() > max => Err(request::too_large(buf, max)),
            parsed => Ok(parsed),
        }
    }

    fn start(&mut self, head: Head) {
        self.ipos += head.len;
        self.body = match Decoder::new(head.body, self.limits.max_body) {
            Ok(d) => d,
            // A `Content-Length` beyond the limit: refused before any body byte is read (and
            // without a `100 Continue`).
            Err(r) => return self.reject(r.status, r.why),
        };
        if head.expect_continue && !self.body.is_done() {
            self.out.extend_from_slice(response::CONTINUE);
        }
        self.pending = Some(head);
    }

    fn respond(&mut self, head: &Head, serving: &Serving<'_>) {
        self.requests += 1;
        let max = self.limits.max_requests;
        let over_limit = max > 0 && self.requests >= max;
        let leaving = serving.leaving || serving.draining;
        let keep = head.keep_alive && !leaving && !over_limit;
        let cached = &mut self.peer;
        let mut peer = || *cached.get_or_insert_with(|| (serving.peer)());
        let host = routes::Host {
            leaving,
            peer: &mut peer,
        };
        let reply = routes::route(&head.method, &head.path, &self.shared.hello, host);
        if let Some(log) = &self.shared.log {
            let (status, bytes) = match &reply {
                _ if head.is_head() => (reply.status(), None),
                Reply::Text(status, body) => (*status, Some(body.len() as u64)),
                Reply::Bytes(n) => (200, Some(*n)),
            };
            let client = peer().map(|a| a.ip());
            let mut log = log.borrow_mut();
            log.record(client, head, status, bytes);
            if log.full() {
                log.flush();
            }
        }
        let mut date = self.shared.date.borrow_mut();
        match reply {
            Reply::Text(status, body) => response::write(
                &mut self.out,
                status,
                date.get(),
                keep,
                &body,
                head.is_head(),
            ),
            Reply::Bytes(n) => {
                response::write_head(&mut self.out, 200, date.get(), keep, n);
                if !head.is_head() {
                    self.streaming = n;
                }
            }
        }
        if !keep {
            let asked = !head.keep_alive;
            self.closing = Some(if asked { Closing::Asked } else { Closing::Done });
        }
    }

    /// Refuses the request in progress with `status` and closes after the response: no more
    /// input is read. Used for malformed requests and for timeouts (`408`).
    pub fn reject(&mut self, status: u16, why: &str) {
        log::debug!("rejecting request with {status}: {why}");
        self.closing = Some(Closing::Refused);
        self.input.clear();
        self.ipos = 0;
        self.pending = None;
        self.body = Decoder::default();
        if self.streaming > 0 {
            // A body is being produced; a status line cannot go in the middle of it.
            return;
        }
        let mut date = self.shared.date.borrow_mut();
        let body = format!("{}\n", response::reason(status));
        response::write(
            &mut self.out,
            status,
            date.get(),
            false,
            body.as_bytes(),
            false,
        );
    }

    /// Stops after the output already queued (the worker is shutting down).
    pub fn close_after_output(&mut self) {
        self.closing.get_or_insert(Closing::Done);
    }

    fn out_len(&self) -> usize {
        self.out.len().saturating_sub(self.opos)
    }

    /// True while output waits to be written.
    pub fn has_output(&self) -> bool {
        self.out_len() > 0 || self.streaming > 0
    }

    /// The next bytes to write (empty when there are none).
    pub fn output(&mut self) -> &[u8] {
        if self.out_len() == 0 {
            self.out.clear();
            self.opos = 0;
            if self.streaming > 0 {
                let n = self.streaming.min(OUT_HIGH as u64) as usize;
                self.out.resize(n, b'x');
                self.streaming -= n as u64;
            }
        }
        self.out.get(self.opos..).unwrap_or_default()
    }

    /// `n` bytes of [`Session::output`] were written.
    pub fn consume(&mut self, n: usize) {
        self.opos = (self.opos + n).min(self.out.len());
    }

    /// Why the session will end after its output, if it will.
    pub fn closing(&self) -> Option<Closing> {
        self.closing
    }

    /// True when the session has ended and all its output was taken.
    pub fn finished(&self) -> bool {
        self.closing.is_some() && !self.has_output()
    }

    /// Client bytes received but not consumed (for example requests after the last one).
    pub fn buffered(&self) -> usize {
        self.unread().len()
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// What the session is waiting for.
    pub fn phase(&self) -> Phase {
        if self.has_output() {
            Phase::Output
        } else if self.pending.is_some() {
            Phase::Body
        } else if !self.unread().is_empty() {
            Phase::Head
        } else {
            Phase::Idle
        }
    }
}

#[cfg(test)]
mod tests;
