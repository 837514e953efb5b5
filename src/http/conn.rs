//! One HTTP/1.1 connection: moves bytes between the socket and its [`Session`], never blocking,
//! and keeps the clocks (header, body pause, whole body, keep-alive and send timeouts,
//! lingering close).

use std::io::{self, Read};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::session::{Closing, Phase, Session, Shared};
use super::Limits;
use crate::worker::{Connection, Context, Status};

/// Steps (reads, parsed requests, writes) one connection may take per turn of the worker's
/// loop before it yields to the others.
const STEP_BUDGET: usize = 64;
/// How long a closing connection waits for the peer to finish sending (lingering close).
const LINGER: Duration = Duration::from_secs(2);
/// How long a response may wait for a reader that takes nothing at all.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a served keep-alive connection that is idle when its worker starts to drain waits
/// for one more request (answered with `Connection: close`) before it is closed. Closing it at
/// once races a client that is sending its next request right then (it would see a reset, and
/// a load generator counts a failed request); this is what lets a reload or an upgrade of the
/// primary fail no keep-alive request.
const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);
/// Most bytes discarded per readiness event while lingering (the rest waits for the next
/// event or the deadline), so one fast sender cannot hold the loop.
const LINGER_READ_BUDGET: usize = 256 * 1024;

/// One client connection served by [`super::HttpHandler`].
#[derive(Debug)]
pub struct HttpConn {
    stream: TcpStream,
    session: Session,
    /// Output written, write side shut; discarding input until EOF or this deadline.
    lingering: Option<Instant>,
    /// The phase the timeout is measured for, and since when.
    phase: Phase,
    since: Instant,
    /// When the body being read started (the event that completed its head): the whole-body
    /// deadline runs from here, however steadily the body moves.
    body_since: Instant,
    /// Requests answered when the clock was last looked at: a request answered within one
    /// event (Idle -> Idle) restarts the keep-alive clock.
    answered: u64,
    /// Bytes moved during the current event (restart the body and send clocks).
    read_some: bool,
    wrote_some: bool,
    /// When the first byte of the request being answered was read (its latency runs from
    /// here to its answer).
    request_since: Option<Instant>,
    /// Idle when the drain began: closed at this time unless a request comes first.
    drain_idle_until: Option<Instant>,
}

/// What one step of the connection found.
enum Progress {
    /// Something changed: step again.
    More,
    /// Blocked on the socket: wait for the next event.
    Wait,
    /// The client closed its side (after everything it sent was answered).
    Eof,
    /// All output is written and the session has ended.
    Finished,
}

impl HttpConn {
    pub(super) fn new(stream: TcpStream, limits: Limits, shared: Shared, now: Instant) -> HttpConn {
        HttpConn {
            stream,
            session: Session::with_shared(limits, shared),
            lingering: None,
            phase: Phase::Idle,
            since: now,
            body_since: now,
            answered: 0,
            read_some: false,
            wrote_some: false,
            request_since: None,
            drain_idle_until: None,
        }
    }

    /// Writes output until there is none or the socket is full. `Ok(false)`: full.
    ///
    /// The last response of a connection that closes after it is written with `MSG_MORE`:
    /// the kernel holds its last segment until the write side is shut (or closed) a moment
    /// later, and the FIN leaves in that segment instead of one of its own (a packet less for
    /// both ends of every `Connection: close` request).
    fn flush(&mut self) -> io::Result<bool> {
        let last = self.session.closing().is_some();
        loop {
            let buf = self.session.output();
            if buf.is_empty() {
                return Ok(true);
            }
            match send(&self.stream, buf, last) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.session.consume(n);
                    self.wrote_some = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn step(&mut self, ctx: &mut Context) -> io::Result<Progress> {
        if !self.flush()? {
            return Ok(Progress::Wait);
        }
        if self.session.closing().is_some() {
            return Ok(Progress::Finished);
        }
        let stream = &self.stream;
        let proxied = ctx.proxied_addr();
        let peer = move || proxied.or_else(|| stream.peer_addr().ok());
        let serving = super::Serving {
            draining: ctx.draining(),
            leaving: ctx.leaving(),
            peer: &peer,
        };
        let answered = self.session.advance(&serving);
        if answered > 0 {
            let now = Instant::now();
            let took = now.saturating_duration_since(self.request_since.unwrap_or(now));
            for _ in 0..answered {
                ctx.record_request(took);
            }
            // A pipelined request already waiting started no later than now.
            self.request_since = (self.session.buffered() > 0).then_some(now);
        }
        if self.session.has_output() || self.session.closing().is_some() {
            return Ok(Progress::More);
        }
        match self.session.read_from(&mut self.stream) {
            Ok(0) => Ok(Progress::Eof),
            Ok(_) => {
                self.read_some = true;
                self.request_since.get_or_insert_with(Instant::now);
                Ok(Progress::More)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Progress::Wait),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Progress::More),
            Err(e) => Err(e),
        }
    }

    fn run(&mut self, ctx: &mut Context) -> Status {
        for _ in 0..STEP_BUDGET {
            match self.step(ctx) {
                Ok(Progress::More) => continue,
                Ok(Progress::Wait) => return Status::Open,
                Ok(Progress::Eof) => return Status::Close,
                Ok(Progress::Finished) => return self.finish(ctx.now()),
                Err(e) => {
                    log::debug!("connection error: {e}");
                    return Status::Close;
                }
            }
        }
        // Still busy (a client pipelining as fast as we answer): let the others have a turn.
        Status::Yield
    }

    /// Restarts the clock when the phase changes, when a request was answered, and while a
    /// body or a response moves. The header clock of a new connection runs from the accept,
    /// not from the first byte. The whole-body clock starts with each body: on entering the
    /// body phase, or staying in it past an answered request (a pipelined one's body).
    fn track(&mut self, now: Instant) {
        let phase = self.session.phase();
        let answered = self.session.requests();
        let first_head = self.phase == Phase::Idle && phase == Phase::Head && answered == 0;
        let moving = match phase {
            Phase::Body => self.read_some,
            Phase::Output => self.wrote_some,
            Phase::Idle | Phase::Head => false,
        };
        if (phase != self.phase && !first_head) || answered != self.answered || moving {
            self.since = now;
        }
        if phase == Phase::Body && (self.phase != Phase::Body || answered != self.answered) {
            self.body_since = now;
        }
        self.phase = phase;
        self.answered = answered;
        self.read_some = false;
        self.wrote_some = false;
    }

    /// All output is written and the session has ended: close now, or linger if the peer may
    /// still be sending (closing with unread input would reset the connection and could
    /// destroy the response before the client reads it).
    fn finish(&mut self, now: Instant) -> Status {
        let closing = self.session.closing();
        let refused = closing == Some(Closing::Refused);
        // A client that asked to close sends nothing more: no need to look (a syscall).
        let asked = closing == Some(Closing::Asked);
        if !refused && self.session.buffered() == 0 && (asked || !self.peer_sent_more()) {
            return Status::Close;
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        self.lingering = Some(now + LINGER);
        self.linger()
    }

    /// True if the peer sent bytes we have not read (or the socket failed: nothing to lose).
    fn peer_sent_more(&mut self) -> bool {
        let mut scratch = [0u8; 1];
        matches!(self.stream.peek(&mut scratch), Ok(n) if n > 0)
    }

    /// Discards input until EOF (then close) or the socket is empty (then wait).
    fn linger(&mut self) -> Status {
        let mut scratch = [0u8; 16 * 1024];
        let mut budget = LINGER_READ_BUDGET;
        while budget > 0 {
            match self.stream.read(&mut scratch) {
                Ok(0) => return Status::Close,
                Ok(n) => budget = budget.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Status::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Status::Close,
            }
        }
        Status::Open
    }
}

/// `send(2)` on the connection, with `MSG_MORE` when more (or the FIN) follows at once.
fn send(stream: &TcpStream, buf: &[u8], more: bool) -> io::Result<usize> {
    use nix::sys::socket::{send, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut flags = MsgFlags::MSG_NOSIGNAL;
    if more {
        // nix names no MSG_MORE.
        flags |= MsgFlags::from_bits_retain(nix::libc::MSG_MORE);
    }
    send(stream.as_raw_fd(), buf, flags).map_err(io::Error::from)
}

impl Connection for HttpConn {
    fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    fn ready(&mut self, ctx: &mut Context) -> Status {
        if self.lingering.is_some() {
            return self.linger();
        }
        let status = self.run(ctx);
        self.track(ctx.now());
        self.session.flush_log();
        status
    }

    fn deadline(&self) -> Option<Instant> {
        if let Some(d) = self.lingering {
            return Some(d);
        }
        let limits = self.session.limits();
        let limit = match self.phase {
            Phase::Output => SEND_TIMEOUT,
            Phase::Idle if self.session.requests() > 0 => limits.keepalive_timeout,
            Phase::Idle | Phase::Head | Phase::Body => limits.header_timeout,
        };
        let whole_body = match self.phase {
            Phase::Body => self.body_since.checked_add(limits.body_timeout),
            Phase::Idle | Phase::Head | Phase::Output => None,
        };
        let drain_idle = match self.phase {
            Phase::Idle => self.drain_idle_until,
            Phase::Head | Phase::Body | Phase::Output => None,
        };
        // A timeout too far off for an `Instant` is no timeout (not a panic).
        [self.since.checked_add(limit), whole_body, drain_idle]
            .into_iter()
            .flatten()
            .min()
    }

    fn timed_out(&mut self, ctx: &mut Context) -> Status {
        if self.lingering.is_some() {
            return Status::Close;
        }
        match self.phase {
            // A request head (or body) is incomplete after the timeout: answer 408.
            Phase::Head | Phase::Body => {
                self.session.reject(408, "request timeout");
                self.ready(ctx)
            }
            // Idle too long, or a reader that takes nothing.
            Phase::Idle | Phase::Output => Status::Close,
        }
    }

    fn drain(&mut self, ctx: &mut Context) -> Status {
        if self.lingering.is_some() {
            return Status::Close;
        }
        match self.phase {
            // An idle keep-alive connection that has been served: its next request may be on
            // its way. Answer it (with `Connection: close`) if it comes soon, else close.
            Phase::Idle if self.session.requests() > 0 => {
                self.drain_idle_until = Some(ctx.now() + DRAIN_IDLE_GRACE);
                Status::Open
            }
            // A fresh connection handed to us before the drain began has yet to send its first
            // request; or a request is arriving. Answer it, with `Connection: close`.
            Phase::Idle | Phase::Head | Phase::Body => Status::Open,
            // A response is being written: close once it is out.
            Phase::Output => {
                self.session.close_after_output();
                self.ready(ctx)
            }
        }
    }
}
