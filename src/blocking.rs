//! Serving connections as blocking `std::net::TcpStream`s, one thread each.
//!
//! [`serve`] turns a function of a [`TcpStream`] into a [`Handler`]: every connection the worker
//! is given runs that function on a thread of a small pool inside the worker, with ordinary
//! blocking reads and writes. The worker's `mio` loop still owns the channel to the primary
//! (acks, messages, drain): it keeps a watch on each connection and counts it as closed when the
//! function returns, so statistics, `least-connections` and graceful shutdown work as they do
//! for [`Handler`]s that run on the loop.
//!
//! ```no_run
//! use std::io::{BufRead, BufReader, Write};
//! use std::net::TcpStream;
//!
//! fn main() -> Result<(), herd::Error> {
//!     herd::Cluster::new().workers(2).port(4000).run(|| {
//!         herd::blocking::serve(|stream: TcpStream| {
//!             let mut out = match stream.try_clone() {
//!                 Ok(s) => s,
//!                 Err(_) => return,
//!             };
//!             for line in BufReader::new(stream).lines() {
//!                 let Ok(line) = line else { return };
//!                 if writeln!(out, "{line}").is_err() {
//!                     return;
//!                 }
//!             }
//!         })
//!     })
//! }
//! ```
//!
//! Threads are started on demand, up to [`Blocking::max_threads`] (then new connections wait for
//! a free thread) and kept for the next connection. They inherit the worker's signal mask, so
//! the worker's `signalfd` still sees `SIGTERM`.

use std::collections::VecDeque;
use std::fmt;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::worker::{Connection, Context, Handler, Status};

/// Default bound on threads per worker.
pub const DEFAULT_MAX_THREADS: usize = 256;

static DRAINING: AtomicBool = AtomicBool::new(false);

/// True once this worker is shutting down. A function serving a long-lived connection (for
/// example keep-alive) should check it between requests and return: the worker exits only
/// when every connection's function has returned (or the primary's shutdown timeout kills it).
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

type OnMessage = Box<dyn FnMut(Vec<u8>, &mut Context)>;
type Serve = Arc<dyn Fn(TcpStream) + Send + Sync>;

/// A [`Handler`] that runs a blocking function per connection; made by [`serve`].
pub struct Blocking {
    f: Serve,
    pool: Arc<Pool>,
    max_threads: usize,
    on_message: Option<OnMessage>,
}

/// Serves every connection with `f`, on a thread of its own (from a pool), as a blocking
/// [`TcpStream`]. The connection counts as closed when `f` returns; herd then shuts the socket
/// down, so `f` should not hand the stream to another thread that outlives it. A panic in `f`
/// is logged and ends only that connection.
pub fn serve<F>(f: F) -> Blocking
where
    F: Fn(TcpStream) + Send + Sync + 'static,
{
    Blocking {
        f: Arc::new(f),
        pool: Arc::new(Pool::default()),
        max_threads: DEFAULT_MAX_THREADS,
        on_message: None,
    }
}

impl Blocking {
    /// At most `n` threads (at least 1) serve connections at once; more connections wait for a
    /// free thread.
    pub fn max_threads(mut self, n: usize) -> Self {
        self.max_threads = n.max(1);
        self
    }

    /// Calls `f` on the worker's loop for every message from the primary; it may answer with
    /// [`Context::send`].
    pub fn on_message(mut self, f: impl FnMut(Vec<u8>, &mut Context) + 'static) -> Self {
        self.on_message = Some(Box::new(f));
        self
    }
}

impl fmt::Debug for Blocking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blocking")
            .field("max_threads", &self.max_threads)
            .field("on_message", &self.on_message.is_some())
            .finish()
    }
}

impl Drop for Blocking {
    fn drop(&mut self) {
        self.pool.close();
    }
}

/// The loop's side of a blocking connection: a watch on the socket until the function returns.
#[derive(Debug)]
pub struct BlockingConn {
    /// The loop's copy of the socket; registered only to be woken, never read or written.
    stream: mio::net::TcpStream,
    done: Arc<AtomicBool>,
    started: Instant,
}

impl BlockingConn {
    fn status(&self, ctx: &Context) -> Status {
        if ctx.draining() {
            DRAINING.store(true, Ordering::Relaxed);
        }
        if self.done.load(Ordering::Acquire) {
            Status::Close
        } else {
            Status::Open
        }
    }
}

impl Connection for BlockingConn {
    fn stream(&mut self) -> &mut mio::net::TcpStream {
        &mut self.stream
    }

    fn ready(&mut self, ctx: &mut Context) -> Status {
        self.status(ctx)
    }

    /// Once the function has returned this is already due, so the loop's periodic sweep
    /// collects the connection even if the wake-up from the shutdown were missed.
    fn deadline(&self) -> Option<Instant> {
        self.done.load(Ordering::Acquire).then_some(self.started)
    }

    fn timed_out(&mut self, ctx: &mut Context) -> Status {
        self.status(ctx)
    }

    /// The function keeps running; [`draining`] tells it to finish.
    fn drain(&mut self, ctx: &mut Context) -> Status {
        self.status(ctx)
    }
}

impl Handler for Blocking {
    type Conn = BlockingConn;

    fn connect(&mut self, stream: mio::net::TcpStream, ctx: &mut Context) -> BlockingConn {
        let done = Arc::new(AtomicBool::new(false));
        match Job::new(&stream, done.clone(), self.f.clone()) {
            Ok(job) => self.pool.run(job, self.max_threads),
            Err(e) => {
                log::warn!("cannot hand a connection to a thread: {e}; closing it");
                done.store(true, Ordering::Release);
            }
        }
        BlockingConn {
            stream,
            done,
            started: ctx.now(),
        }
    }

    fn message(&mut self, payload: Vec<u8>, ctx: &mut Context) {
        if let Some(f) = self.on_message.as_mut() {
            f(payload, ctx);
        }
    }
}

/// One connection for the pool: the function's own blocking copy of the socket, and what tells
/// the loop that it is finished.
struct Job {
    stream: TcpStream,
    finish: Finish,
    run: Serve,
}

impl Job {
    fn new(
        stream: &mio::net::TcpStream,
        done: Arc<AtomicBool>,
        run: Serve,
    ) -> std::io::Result<Job> {
        let own = TcpStream::from(stream.as_fd().try_clone_to_owned()?);
        // The copies share one open file description, so the loop's copy becomes blocking too;
        // the loop never reads or writes it, it only waits for events on it.
        own.set_nonblocking(false)?;
        let watch = own.try_clone()?;
        Ok(Job {
            stream: own,
            finish: Finish { watch, done },
            run,
        })
    }

    fn run(self) {
        let Job {
            stream,
            finish,
            run,
        } = self;
        if catch_unwind(AssertUnwindSafe(|| run(stream))).is_err() {
            log::error!("a blocking connection handler panicked; that connection is closed");
        }
        drop(finish);
    }
}

/// Marks the job done and wakes the loop, also when the function panics.
struct Finish {
    watch: TcpStream,
    done: Arc<AtomicBool>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        // Shutting the socket down is a state change every copy's poller sees: the loop wakes
        // and drops its copy. It fails harmlessly (ENOTCONN) if the peer already reset it.
        let _ = self.watch.shutdown(Shutdown::Both);
    }
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    idle: usize,
    threads: usize,
    closed: bool,
}

/// Threads started on demand and kept for the next job.
#[derive(Default)]
struct Pool {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A job never runs under the lock, so a poisoned lock still holds a consistent queue.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(self: &Arc<Self>, job: Job, max_threads: usize) {
        let mut q = self.lock();
        q.jobs.push_back(job);
        if q.jobs.len() <= q.idle {
            self.wake.notify_one();
            return;
        }
        if q.threads >= max_threads {
            log::debug!("all {} threads busy; a connection waits for one", q.threads);
            return;
        }
        let pool = self.clone();
        match std::thread::Builder::new()
            .name("herd-blocking".into())
            .spawn(move || pool.work())
        {
            Ok(_) => q.threads += 1,
            Err(e) => {
                log::error!("cannot start a thread: {e}");
                if q.threads == 0 {
                    // Nobody would ever take it: close it now (dropping it wakes the loop).
                    q.jobs.pop_back();
                }
            }
        }
    }

    fn work(&self) {
        loop {
            let job = {
                let mut q = self.lock();
                loop {
                    if let Some(job) = q.jobs.pop_front() {
                        break job;
                    }
                    if q.closed {
                        q.threads -= 1;
                        return;
                    }
                    q.idle += 1;
                    q = self.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                    q.idle -= 1;
                }
            };
            job.run();
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }
}
