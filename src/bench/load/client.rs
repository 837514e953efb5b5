//! One event loop's clients: the state machine of each connection (connect, write the
//! request, read and frame the response, queue the next request) and the loop that drives
//! them until the end of the run.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::costs::XorShift;
use super::framing::{BadResponse, Parser, Response};
use super::{LoadConfig, LoadError, Progress, Stats, Timeline};
use crate::bench::Workload;

/// How often each loop looks for timed-out requests and connections due for a retry.
const SCAN_EVERY: Duration = Duration::from_millis(20);
/// Pause before a connection that failed is opened again (keeps a dead server from
/// turning the generator into a busy loop of errors).
const RETRY_AFTER: Duration = Duration::from_millis(10);
/// Bytes read per `read()` call.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No socket: waiting until `retry_at` to open one.
    Idle,
    /// `connect()` issued, not yet established.
    Connecting,
    /// Sending the request.
    Writing,
    /// Waiting for (the rest of) the response.
    Reading,
    /// Response complete; the next request goes out when this batch of events is handled.
    Queued,
}

/// Which error counter a failure goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Connect,
    Io,
    Timeout,
    Parse,
}

struct Conn {
    stream: Option<TcpStream>,
    state: State,
    /// When the request in flight started (on a new connection: the `connect()` call).
    started: Instant,
    retry_at: Instant,
    out: Vec<u8>,
    written: usize,
    buf: Vec<u8>,
    parser: Parser,
    eof: bool,
}

impl Conn {
    fn new(now: Instant) -> Conn {
        Conn {
            stream: None,
            state: State::Idle,
            started: now,
            retry_at: now,
            out: Vec::with_capacity(128),
            written: 0,
            buf: Vec::with_capacity(1024),
            parser: Parser::default(),
            eof: false,
        }
    }
}

/// One thread's clients.
struct Loop<'a> {
    cfg: &'a LoadConfig,
    poll: Poll,
    conns: Vec<Conn>,
    scratch: Vec<u8>,
    rng: XorShift,
    stats: Stats,
    measuring: bool,
    /// Responses and errors not yet added to the shared progress counters.
    unreported: (u64, u64),
    /// Connections in [`State::Queued`], in the order their responses completed.
    queued: Vec<usize>,
    progress: &'a Progress,
}

/// Runs `connections` clients on this thread until the end of the timeline.
pub(super) fn run_loop(
    cfg: &LoadConfig,
    connections: usize,
    seed: u64,
    tl: Timeline,
    progress: &Progress,
) -> Result<Stats, LoadError> {
    let poll = Poll::new().map_err(LoadError::CreateEventLoop)?;
    let now = Instant::now();
    let mut lp = Loop {
        cfg,
        poll,
        conns: (0..connections).map(|_| Conn::new(now)).collect(),
        scratch: vec![0; READ_CHUNK],
        rng: XorShift::new(seed),
        stats: Stats::new()?,
        measuring: now >= tl.measure_start,
        unreported: (0, 0),
        queued: Vec::with_capacity(connections),
        progress,
    };
    for i in 0..connections {
        lp.open(i);
    }
    lp.run(tl)?;
    Ok(lp.stats)
}

impl Loop<'_> {
    fn run(&mut self, tl: Timeline) -> Result<(), LoadError> {
        let mut events = Events::with_capacity(1024);
        let mut next_scan = Instant::now() + SCAN_EVERY;
        loop {
            let now = Instant::now();
            if now >= tl.end {
                break;
            }
            if !self.measuring && now >= tl.measure_start {
                self.stats = Stats::new()?;
                self.measuring = true;
            }
            let mut wake = next_scan.min(tl.end);
            if !self.measuring {
                wake = wake.min(tl.measure_start);
            }
            if let Err(e) = self.poll.poll(&mut events, Some(wake - now)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(LoadError::Poll(e));
                }
            }
            for ev in events.iter() {
                let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                self.on_event(ev.token().0, readable, ev.is_writable());
            }
            self.send_queued();
            let now = Instant::now();
            if now >= next_scan {
                self.scan(now);
                next_scan = now + SCAN_EVERY;
            }
            self.report_progress();
        }
        self.report_progress();
        Ok(())
    }

    fn report_progress(&mut self) {
        let (done, errors) = std::mem::take(&mut self.unreported);
        if done > 0 {
            self.progress.responses.fetch_add(done, Ordering::Relaxed);
        }
        if errors > 0 {
            self.progress.errors.fetch_add(errors, Ordering::Relaxed);
        }
    }

    /// Times out slow requests and reopens connections whose retry pause is over.
    fn scan(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            match c.state {
                State::Idle if now >= c.retry_at => self.open(i),
                State::Idle | State::Queued => {}
                _ if now.duration_since(c.started) > self.cfg.timeout => {
                    self.fail(i, Failure::Timeout)
                }
                _ => {}
            }
        }
    }

    /// Writes the next request into connection `i`'s output buffer.
    fn prepare_request(&mut self, i: usize) {
        let cfg = self.cfg;
        let c = &mut self.conns[i];
        c.out.clear();
        c.written = 0;
        let close = cfg.workload.new_connection_per_request();
        let _ = match cfg.workload {
            Workload::Mixed => write!(
                c.out,
                "GET /work?us={} HTTP/1.1\r\n",
                cfg.work.draw(&mut self.rng)
            ),
            Workload::Keepalive | Workload::Close => write!(c.out, "GET {} HTTP/1.1\r\n", cfg.path),
        };
        let _ = write!(c.out, "Host: {}\r\n", cfg.host);
        if close {
            c.out.extend_from_slice(b"Connection: close\r\n");
        }
        c.out.extend_from_slice(b"\r\n");
    }

    /// Opens a new connection for slot `i` and sends its request as soon as it can.
    fn open(&mut self, i: usize) {
        self.prepare_request(i);
        let now = Instant::now();
        let c = &mut self.conns[i];
        if let Some(header) = &self.cfg.proxy_header {
            c.out.splice(0..0, header.iter().copied());
        }
        c.started = now;
        c.buf.clear();
        c.parser = Parser::default();
        c.eof = false;
        let mut stream = match TcpStream::connect(self.cfg.addr) {
            Ok(s) => s,
            Err(_) => return self.fail(i, Failure::Connect),
        };
        if self
            .poll
            .registry()
            .register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            return self.fail(i, Failure::Connect);
        }
        c.stream = Some(stream);
        c.state = State::Connecting;
        // On loopback the handshake is usually done already: try to write at once.
        self.write(i);
    }

    fn on_event(&mut self, i: usize, readable: bool, writable: bool) {
        let Some(c) = self.conns.get(i) else {
            return;
        };
        if writable && matches!(c.state, State::Connecting | State::Writing) {
            self.write(i);
        }
        if readable && matches!(self.conns[i].state, State::Writing | State::Reading) {
            self.read(i);
        }
    }

    /// Sends what is left of the request. On a connecting socket the write itself tells:
    /// `NotConnected`/`WouldBlock` means not yet, any other error means the connect failed.
    /// (No `TCP_NODELAY`: a request is one small write with nothing else in flight, which
    /// Nagle's algorithm never holds back.)
    fn write(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(stream) = c.stream.as_mut() else {
            return;
        };
        while c.written < c.out.len() {
            match stream.write(&c.out[c.written..]) {
                Ok(0) => return self.fail(i, Failure::Io),
                Ok(n) => c.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if c.state == State::Connecting
                        && matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
                        ) =>
                {
                    return; // still connecting: the writable event will bring us back
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.state = State::Writing;
                    return;
                }
                Err(_) if c.state == State::Connecting => return self.fail(i, Failure::Connect),
                Err(_) => return self.fail(i, Failure::Io),
            }
        }
        if c.state == State::Connecting && self.measuring {
            self.stats.connects += 1;
        }
        c.state = State::Reading;
        if !c.buf.is_empty() || c.eof {
            let _ = self.process(i);
        }
    }

    /// Reads what is available and handles a complete response. A short read has emptied the
    /// socket's queue, so when it completes a response there is no need for one more `read()`
    /// to see `WouldBlock`: new data raises a new edge. Otherwise it reads until `WouldBlock`.
    fn read(&mut self, i: usize) {
        loop {
            let c = &mut self.conns[i];
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            match stream.read(&mut self.scratch) {
                Ok(0) => {
                    c.eof = true;
                    break;
                }
                Ok(n) => {
                    c.buf.extend_from_slice(&self.scratch[..n]);
                    let short = n < self.scratch.len();
                    if short && c.state == State::Reading && self.process(i) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.fail(i, Failure::Io),
            }
        }
        if self.conns[i].state == State::Reading {
            self.process(i);
        }
    }

    /// Handles a complete response in connection `i`'s buffer, if there is one. Returns
    /// `false` while the response is incomplete (and the connection unchanged).
    fn process(&mut self, i: usize) -> bool {
        let c = &mut self.conns[i];
        let parsed = c.parser.parse(&c.buf, c.eof);
        let eof = c.eof;
        match parsed {
            Err(BadResponse) => self.fail(i, Failure::Parse),
            Ok(None) if eof => self.fail(i, Failure::Io),
            Ok(None) => return false,
            Ok(Some(r)) => {
                let now = Instant::now();
                c.buf.drain(..r.used);
                let latency = now.duration_since(c.started);
                self.record(&r, latency);
                let again = !r.close && !eof && !self.cfg.workload.new_connection_per_request();
                if !again {
                    self.close(i);
                }
                self.conns[i].state = State::Queued;
                self.queued.push(i);
            }
        }
        true
    }

    /// Sends the next request of every connection whose response completed in this batch
    /// (on the same connection, or on a new one). Like wrk, requests go out together after
    /// the batch rather than one by one in the middle of it, so a worker woken by the first
    /// finds the others already there.
    fn send_queued(&mut self) {
        let mut queued = std::mem::take(&mut self.queued);
        for &i in &queued {
            if self.conns[i].state != State::Queued {
                continue;
            }
            if self.conns[i].stream.is_some() {
                self.prepare_request(i);
                self.conns[i].started = Instant::now();
                self.conns[i].state = State::Writing;
                self.write(i);
            } else {
                self.open(i);
            }
        }
        queued.clear();
        self.queued = queued;
    }

    fn record(&mut self, r: &Response, latency: Duration) {
        self.unreported.0 += 1;
        if r.status != 200 {
            self.unreported.1 += 1;
        }
        if !self.measuring {
            return;
        }
        if r.status != 200 {
            self.stats.errors.status += 1;
            return;
        }
        self.stats.requests += 1;
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.stats.latency.saturating_record(us.max(1));
        match r.pid {
            Some(pid) => *self.stats.per_pid.entry(pid).or_default() += 1,
            None => self.stats.unattributed += 1,
        }
    }

    /// Drops connection `i`'s socket (closing it also removes it from the poll set).
    fn close(&mut self, i: usize) {
        let c = &mut self.conns[i];
        c.stream = None;
        c.state = State::Idle;
    }

    /// Counts a failure and schedules connection `i` to be opened again shortly.
    fn fail(&mut self, i: usize, why: Failure) {
        self.unreported.1 += 1;
        if self.measuring {
            let e = &mut self.stats.errors;
            match why {
                Failure::Connect => e.connect += 1,
                Failure::Io => e.io += 1,
                Failure::Timeout => e.timeout += 1,
                Failure::Parse => e.parse += 1,
            }
        }
        self.close(i);
        self.conns[i].retry_at = Instant::now() + RETRY_AFTER;
    }
}
