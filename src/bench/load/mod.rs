//! The load generator: closed-loop HTTP/1.1 clients on `mio` loops, one loop per thread.
//!
//! Each of the `C` connections has exactly one request in flight: when its response is complete
//! (framed by `Content-Length`, chunked encoding, or the end of the connection) the next request
//! goes out at once, on the same connection (`keepalive`) or on a new one (`close`, `mixed`).
//! On a new connection the latency is timed from the `connect()` call, so the time a connection
//! waits in an accept queue and in the primary's handoff is part of it.
//!
//! Failures (refused or reset connections, early ends, unparsable responses, non-`200` statuses,
//! requests slower than the timeout) are counted and never stop the run.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::Workload;

/// Largest latency the histograms hold (larger values are clamped to it).
const MAX_LATENCY_US: u64 = 60_000_000;
/// How often each loop looks for timed-out requests and connections due for a retry.
const SCAN_EVERY: Duration = Duration::from_millis(20);
/// Pause before a connection that failed is opened again (keeps a dead server from
/// turning the generator into a busy loop of errors).
const RETRY_AFTER: Duration = Duration::from_millis(10);
/// Bytes read per `read()` call.
const READ_CHUNK: usize = 64 * 1024;
/// Response headers parsed at most.
const MAX_HEADERS: usize = 64;
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// The `/work` costs of the `mixed` workload: (weight out of 1000, microseconds of CPU).
/// Most requests are cheap, a few are expensive: mean 77 us, 1% cost 5 ms.
pub const MIXED_COSTS: [(u32, u64); 3] = [(900, 10), (90, 200), (10, 5000)];

/// What to run, against which address.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Server address.
    pub addr: SocketAddr,
    /// Value of the `Host` header.
    pub host: String,
    /// Path requested by `keepalive` and `close`.
    pub path: String,
    /// Connections kept busy at once (each with one request in flight).
    pub connections: usize,
    /// Event-loop threads the connections are spread over.
    pub threads: usize,
    /// Request pattern.
    pub workload: Workload,
    /// Load before the measured window (nothing recorded).
    pub warmup: Duration,
    /// Measured window.
    pub duration: Duration,
    /// A request not answered in this time counts as an error and its connection is replaced.
    pub timeout: Duration,
    /// Seed of the `mixed` cost sequence.
    pub seed: u64,
}

/// The moments of a run the caller may want to sample something at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The measured window starts now.
    MeasureStart,
    /// The measured window ends now.
    MeasureEnd,
}

/// Failures, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Errors {
    /// `connect()` failed or was refused.
    pub connect: u64,
    /// Read or write errors (resets), or the connection ended before a full response.
    pub io: u64,
    /// Responses with a status other than `200`.
    pub status: u64,
    /// Requests not answered within the timeout.
    pub timeout: u64,
    /// Responses that are not valid HTTP/1.x.
    pub parse: u64,
}

impl Errors {
    /// All errors.
    pub fn total(&self) -> u64 {
        self.connect + self.io + self.status + self.timeout + self.parse
    }

    fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.io += o.io;
        self.status += o.status;
        self.timeout += o.timeout;
        self.parse += o.parse;
    }
}

/// What a run measured (in the measured window only).
#[derive(Debug, Clone)]
pub struct Stats {
    /// Latency of successful requests, in microseconds.
    pub latency: Histogram<u64>,
    /// Successful (`200`) responses.
    pub requests: u64,
    /// Failures.
    pub errors: Errors,
    /// Successful responses per server pid, read from the body.
    pub per_pid: HashMap<u32, u64>,
    /// Successful responses whose body named no pid.
    pub unattributed: u64,
    /// Connections established.
    pub connects: u64,
    /// Length of the measured window.
    pub window: Duration,
}

impl Stats {
    fn new() -> Result<Stats, String> {
        let latency = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .map_err(|e| format!("latency histogram: {e}"))?;
        Ok(Stats {
            latency,
            requests: 0,
            errors: Errors::default(),
            per_pid: HashMap::new(),
            unattributed: 0,
            connects: 0,
            window: Duration::ZERO,
        })
    }

    fn merge(&mut self, o: Stats) -> Result<(), String> {
        self.latency
            .add(&o.latency)
            .map_err(|e| format!("merging histograms: {e}"))?;
        self.requests += o.requests;
        self.errors.add(&o.errors);
        for (pid, n) in o.per_pid {
            *self.per_pid.entry(pid).or_default() += n;
        }
        self.unattributed += o.unattributed;
        self.connects += o.connects;
        Ok(())
    }

    /// Successful requests per second over the window.
    pub fn rate(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }
}

/// Counters every loop adds to as it goes, read by the progress line.
#[derive(Debug, Default)]
struct Progress {
    responses: AtomicU64,
    errors: AtomicU64,
}

/// The timeline shared by every loop.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    measure_start: Instant,
    end: Instant,
}

/// Runs the load: warm-up, then the measured window. `on_phase` is called (on this thread)
/// when the window starts and ends; `label` prefixes the progress line printed every second.
pub fn run(
    cfg: &LoadConfig,
    label: &str,
    on_phase: &mut dyn FnMut(Phase),
) -> Result<Stats, String> {
    let threads = cfg.threads.clamp(1, cfg.connections.max(1));
    let start = Instant::now();
    let measure_start = start + cfg.warmup;
    let timeline = Timeline {
        measure_start,
        end: measure_start + cfg.duration,
    };
    let progress = Progress::default();
    let results: Vec<Result<Stats, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let n = cfg.connections / threads + usize::from(t < cfg.connections % threads);
                let seed = cfg.seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let progress = &progress;
                std::thread::Builder::new()
                    .name(format!("load-{t}"))
                    .spawn_scoped(s, move || run_loop(cfg, n, seed, timeline, progress))
            })
            .collect();
        watch(cfg, label, start, timeline, &progress, on_phase);
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err("a load thread panicked".into())),
                Err(e) => Err(format!("cannot start a load thread: {e}")),
            })
            .collect()
    });
    let mut total = Stats::new()?;
    for r in results {
        total.merge(r?)?;
    }
    total.window = cfg.duration;
    Ok(total)
}

/// The caller's thread during a run: phase callbacks and a progress line every second.
fn watch(
    cfg: &LoadConfig,
    label: &str,
    start: Instant,
    tl: Timeline,
    progress: &Progress,
    on_phase: &mut dyn FnMut(Phase),
) {
    let mut started = false;
    let mut next_tick = start + Duration::from_secs(1);
    let mut last = (0u64, start);
    loop {
        let now = Instant::now();
        if !started && now >= tl.measure_start {
            on_phase(Phase::MeasureStart);
            started = true;
        }
        if now >= tl.end {
            on_phase(Phase::MeasureEnd);
            return;
        }
        if now >= next_tick {
            let done = progress.responses.load(Ordering::Relaxed);
            let errors = progress.errors.load(Ordering::Relaxed);
            let rate = (done - last.0) as f64 / now.duration_since(last.1).as_secs_f64();
            last = (done, now);
            let (what, t, of) = if now < tl.measure_start {
                ("warmup", now - start, cfg.warmup)
            } else {
                ("measure", now - tl.measure_start, cfg.duration)
            };
            eprintln!(
                "[{label}] {what} {:>3.0}s/{:.0}s  {:>9.0} req/s  {errors} errors",
                t.as_secs_f64(),
                of.as_secs_f64(),
                rate
            );
            next_tick += Duration::from_secs(1);
        }
        let mut wake = next_tick.min(tl.end);
        if !started {
            wake = wake.min(tl.measure_start);
        }
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    }
}

/// A tiny xorshift64* generator: reproducible costs without a dependency.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (0 is replaced: xorshift must not start at 0).
    pub fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 {
            0x2545_F491_4F6C_DD1D
        } else {
            seed
        })
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A `/work` cost drawn from [`MIXED_COSTS`].
    pub fn mixed_cost(&mut self) -> u64 {
        let total: u32 = MIXED_COSTS.iter().map(|c| c.0).sum();
        let mut pick = (self.next_u64() % u64::from(total)) as u32;
        for (weight, us) in MIXED_COSTS {
            if pick < weight {
                return us;
            }
            pick -= weight;
        }
        MIXED_COSTS[0].1
    }
}

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

// ---- response parsing ----

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

// ---- one event loop ----

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

fn run_loop(
    cfg: &LoadConfig,
    connections: usize,
    seed: u64,
    tl: Timeline,
    progress: &Progress,
) -> Result<Stats, String> {
    let poll = Poll::new().map_err(|e| format!("cannot create an event loop: {e}"))?;
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
    fn run(&mut self, tl: Timeline) -> Result<(), String> {
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
                    return Err(format!("event loop: {e}"));
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
            Workload::Mixed => write!(c.out, "GET /work?us={} HTTP/1.1\r\n", self.rng.mixed_cost()),
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

    #[test]
    fn mixed_costs_follow_the_weights_and_the_seed() {
        let mut a = XorShift::new(7);
        let mut b = XorShift::new(7);
        let draws: Vec<u64> = (0..100_000).map(|_| a.mixed_cost()).collect();
        assert!(draws.iter().all(|&d| d == b.mixed_cost()));
        let expensive = draws.iter().filter(|&&d| d == 5000).count();
        assert!((700..1300).contains(&expensive), "{expensive}");
        let cheap = draws.iter().filter(|&&d| d == 10).count();
        assert!((88_000..92_000).contains(&cheap), "{cheap}");
    }
}
