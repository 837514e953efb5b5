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
//!
//! This module is the driver (threads, warm-up and measured window, progress line, merged
//! statistics). Each thread's connections are in `client`, the framing of responses is in
//! `framing`, and the `mixed` workload's costs are in `costs`.

mod client;
mod costs;
mod framing;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::{AdditionError, CreationError, Histogram};

use super::Workload;
use client::run_loop;
pub use costs::{WorkMix, XorShift, DEFAULT_WORK};
pub use framing::{pid_of, BadResponse, Parser, Response};

/// Largest latency the histograms hold (larger values are clamped to it).
const MAX_LATENCY_US: u64 = 60_000_000;

/// Why the load could not be generated (the failures of single requests are counted in
/// [`Errors`] instead).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A latency histogram could not be created.
    #[error("latency histogram: {0}")]
    Histogram(#[from] CreationError),
    /// The threads' latency histograms could not be added up.
    #[error("merging histograms: {0}")]
    Merge(#[from] AdditionError),
    /// A load thread could not be started.
    #[error("cannot start a load thread: {0}")]
    Spawn(#[source] io::Error),
    /// A load thread panicked.
    #[error("a load thread panicked")]
    Panicked,
    /// A thread's event loop could not be created.
    #[error("cannot create an event loop: {0}")]
    CreateEventLoop(#[source] io::Error),
    /// Waiting for events failed.
    #[error("event loop: {0}")]
    Poll(#[source] io::Error),
}

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
    /// The `/work` costs of the `mixed` workload.
    pub work: WorkMix,
    /// Load before the measured window (nothing recorded).
    pub warmup: Duration,
    /// Measured window.
    pub duration: Duration,
    /// A request not answered in this time counts as an error and its connection is replaced.
    pub timeout: Duration,
    /// Seed of the `mixed` cost sequence.
    pub seed: u64,
    /// Bytes sent first on every new connection (a PROXY protocol header), if any.
    pub proxy_header: Option<Vec<u8>>,
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
    fn new() -> Result<Stats, LoadError> {
        let latency = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?;
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

    fn merge(&mut self, o: Stats) -> Result<(), LoadError> {
        self.latency.add(&o.latency)?;
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
) -> Result<Stats, LoadError> {
    let threads = cfg.threads.clamp(1, cfg.connections.max(1));
    let start = Instant::now();
    let measure_start = start + cfg.warmup;
    let timeline = Timeline {
        measure_start,
        end: measure_start + cfg.duration,
    };
    let progress = Progress::default();
    let results: Vec<Result<Stats, LoadError>> = std::thread::scope(|s| {
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
                Ok(h) => h.join().unwrap_or(Err(LoadError::Panicked)),
                Err(e) => Err(LoadError::Spawn(e)),
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
