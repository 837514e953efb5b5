//! Async workers on tokio (feature `tokio`): the connections herd gives a worker, as a stream
//! of tokio sockets with their peer addresses, on the worker's own tokio runtime.
//!
//! [`Cluster::run_tokio`] is [`Cluster::run`] for async code: in the primary it supervises as
//! always; in a worker it builds a tokio runtime (current-thread by default: one process per
//! core, one thread each, like Node) and runs your future with a [`Worker`]. Every policy
//! works the same way: connections the primary hands over (round-robin, least-connections) and
//! connections the worker accepts on its listeners (shared, reuseport) all come out of
//! [`Connections::accept`].
//!
//! ```no_run
//! use tokio::io::AsyncWriteExt;
//!
//! fn main() -> Result<(), herd::Error> {
//!     herd::Cluster::new().workers(2).port(4000).run_tokio(|worker| async move {
//!         let mut conns = worker.connections();
//!         // `None` once the primary says stop (shutdown, reload, scale down).
//!         while let Some((mut conn, peer)) = conns.accept().await {
//!             tokio::spawn(async move {
//!                 let _ = conn.write_all(format!("hello {peer}\n").as_bytes()).await;
//!             });
//!         }
//!         Ok(())
//!     })
//! }
//! ```
//!
//! Underneath, the worker's channel to the primary, its signals and its listeners stay on the
//! worker's own `mio` loop (the same code as for a [`crate::Handler`]: acks before serving,
//! close reports, statistics, messages, drain); tokio watches that loop's epoll descriptor and
//! runs a turn of it whenever it is ready.

mod busy;
mod conn;
mod driver;
mod shared;

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

pub use conn::Conn;

use crate::event::WorkerId;
use crate::ipc::IpcError;
use crate::worker::intake::Intake;
use crate::worker::WorkerError;
use crate::{Cluster, Error};
use driver::drive;
use shared::{add_waker, set_waker, Shared};

impl Cluster {
    /// Runs the cluster with an async worker on a current-thread tokio runtime: in the primary
    /// it supervises (exactly as [`Cluster::run`]); in a worker it runs `serve` with this
    /// worker's [`Worker`] and returns when that future does (or when the primary has been
    /// gone for its shutdown timeout). The future should end soon after [`Worker::stopped`]
    /// (axum: `with_graceful_shutdown`), or the primary kills the worker at its shutdown
    /// timeout.
    pub fn run_tokio<F, Fut>(self, serve: F) -> Result<(), Error>
    where
        F: FnOnce(Worker) -> Fut,
        Fut: Future<Output = io::Result<()>>,
    {
        self.run_tokio_on(::tokio::runtime::Builder::new_current_thread(), serve)
    }

    /// [`Cluster::run_tokio`] on a runtime of your making (for example a multi-thread one);
    /// herd enables its I/O and time drivers, and sets its thread park hooks
    /// (`on_thread_park`, `on_thread_unpark`) to publish whether the worker is busy. The runtime is built only in a worker, after the
    /// worker has set its signal mask (so the runtime's threads inherit it).
    pub fn run_tokio_on<F, Fut>(
        self,
        mut runtime: ::tokio::runtime::Builder,
        serve: F,
    ) -> Result<(), Error>
    where
        F: FnOnce(Worker) -> Fut,
        Fut: Future<Output = io::Result<()>>,
    {
        if crate::is_primary() {
            let (config, hook) = self.into_config()?;
            crate::primary::Primary::new(config, hook)?.run()?;
            return Ok(());
        }
        let intake = Intake::new()?;
        if let Some(page) = intake.status_page() {
            busy::flip_on_park(&mut runtime, page);
        }
        let rt = runtime.enable_all().build().map_err(WorkerError::Io)?;
        let shared = Shared::new(intake);
        let outcome = rt.block_on(serve_worker(shared.clone(), serve));
        // Tasks still running (connections of a future that did not wait for them) are
        // dropped here, reporting their closes.
        rt.shutdown_background();
        shared.lock().intake.finish();
        outcome.map_err(|e| Error::Worker(WorkerError::Io(e)))
    }
}

/// Runs the user's future next to the driver.
async fn serve_worker<F, Fut>(shared: Shared, serve: F) -> io::Result<()>
where
    F: FnOnce(Worker) -> Fut,
    Fut: Future<Output = io::Result<()>>,
{
    let epoll = shared.lock().intake.poll_fd().try_clone_to_owned()?;
    let fd = crate::sys::tokio_readable(epoll)?;
    let worker = Worker {
        shared: shared.clone(),
    };
    let mut user = pin!(serve(worker));
    let mut driver = pin!(drive(shared, &fd));
    poll_fn(|cx| {
        if let Poll::Ready(r) = user.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if driver.as_mut().poll(cx).is_ready() {
            log::warn!(
                "worker {}: primary gone and the grace period is over; exiting",
                std::process::id()
            );
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    })
    .await
}

/// This worker, from async code: its connections, messages to and from the primary, and
/// whether it is told to stop. Cheap to clone; usable from any task of the runtime.
#[derive(Debug, Clone)]
pub struct Worker {
    shared: Shared,
}

impl Worker {
    /// This worker's id (1-based slot number, as in [`crate::worker_id`]).
    pub fn id(&self) -> WorkerId {
        self.shared.lock().intake.worker_id()
    }

    /// The connections herd gives this worker. Take it once: dropping it tells herd that the
    /// worker takes no more connections (those still handed over are given to other workers).
    pub fn connections(&self) -> Connections {
        Connections {
            shared: self.shared.clone(),
            stop: self.stopped(),
        }
    }

    /// Sends a message to the primary, where it arrives as a `message` event (Node's
    /// `process.send`); see [`crate::Context::send`] for the limits.
    pub fn send(&self, payload: impl Into<Vec<u8>>) -> Result<(), IpcError> {
        let mut st = self.shared.lock();
        st.intake.send(payload.into())?;
        st.kick();
        Ok(())
    }

    /// The next message from the primary (`Control::send` there), in the order sent; `None`
    /// once the primary is gone.
    pub async fn recv(&self) -> Option<Vec<u8>> {
        poll_fn(|cx| {
            let mut st = self.shared.lock();
            if let Some(m) = st.intake.message() {
                return Poll::Ready(Some(m));
            }
            if st.intake.primary_gone() {
                return Poll::Ready(None);
            }
            add_waker(&mut st.message, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Resolves once the primary tells this worker to stop (shutdown, rolling reload, scale
    /// down; or `SIGTERM`, or the primary is gone) and every connection herd took for it has
    /// been accepted and has sent its first bytes (at most [`FIRST_READ_GRACE`] later). Give it to `axum::serve(..).with_graceful_shutdown(..)`: in-flight
    /// requests finish, then the server returns.
    pub fn stopped(&self) -> Stopped {
        Stopped {
            shared: self.shared.clone(),
            grace: None,
        }
    }

    /// True once the worker is told to stop.
    pub fn draining(&self) -> bool {
        self.shared.lock().intake.draining()
    }

    /// True once the host is leaving (a `SIGTERM` to the primary with a drain delay,
    /// `--drain-delay`) or the worker is told to stop: a health check should fail now, and
    /// connections should close after each answer, so that a balancer moves its traffic away.
    pub fn leaving(&self) -> bool {
        self.shared.lock().intake.leaving()
    }

    /// Counts one served request in the worker's statistics (the `requests` column of the
    /// primary's report); herd cannot see requests inside your protocol.
    pub fn count_request(&self) {
        self.shared.lock().intake.count_requests(1);
    }

    /// Counts one served request that took `took` (from its first byte to its answer), also in
    /// the primary's `herd_request_duration_seconds` histogram.
    pub fn record_request(&self, took: Duration) {
        self.shared.lock().intake.record_request(took);
    }
}

/// The stream of connections of one worker (see [`Worker::connections`]): a
/// `futures_core::Stream` of [`Conn`] and peer address, or [`Connections::accept`].
#[derive(Debug)]
pub struct Connections {
    shared: Shared,
    stop: Stopped,
}

impl Connections {
    /// The next connection and its peer's address; `None` once [`Worker::stopped`] would
    /// resolve: the worker is told to stop and every connection it took has been given out
    /// and has sent its first bytes. Then ask your connections to finish (hyper:
    /// `graceful_shutdown`).
    pub async fn accept(&mut self) -> Option<(Conn, std::net::SocketAddr)> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// [`Connections::accept`] as a poll function.
    pub fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(Conn, std::net::SocketAddr)>> {
        loop {
            let mut st = self.shared.lock();
            if let Some(taken) = st.intake.next() {
                st.fresh += 1;
                drop(st);
                match Conn::new(taken, self.shared.clone()) {
                    Ok(c) => return Poll::Ready(Some(c)),
                    Err(e) => {
                        log::debug!("a connection closed before it was served: {e}");
                        continue;
                    }
                }
            }
            set_waker(&mut st.accept, cx.waker());
            let ended = st.intake.ended();
            drop(st);
            if ended && Pin::new(&mut self.stop).poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            return Poll::Pending;
        }
    }
}

/// The same as [`Connections::accept`], for `StreamExt` and friends.
impl futures_core::Stream for Connections {
    type Item = (Conn, std::net::SocketAddr);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_accept(cx)
    }
}

impl Drop for Connections {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.intake.close();
        st.wake_waiters();
    }
}

/// How long a stop waits for connections that have sent nothing yet: hyper's graceful
/// shutdown would close them as idle, failing the request that was on its way.
pub const FIRST_READ_GRACE: Duration = Duration::from_secs(2);

/// A future that resolves when the worker is told to stop (see [`Worker::stopped`]).
#[derive(Debug)]
pub struct Stopped {
    shared: Shared,
    /// Started once the stream has ended while connections still wait for their first bytes.
    grace: Option<Pin<Box<::tokio::time::Sleep>>>,
}

impl Future for Stopped {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        let over = st.intake.ended()
            && match self.grace.as_mut() {
                Some(sleep) => sleep.as_mut().poll(cx).is_ready(),
                None => {
                    let mut sleep = Box::pin(::tokio::time::sleep(FIRST_READ_GRACE));
                    let done = sleep.as_mut().poll(cx).is_ready();
                    self.grace = Some(sleep);
                    done
                }
            };
        if st.stopped() || over {
            // From now on connections handed over go to other workers.
            st.intake.close();
            return Poll::Ready(());
        }
        add_waker(&mut st.stop, cx.waker());
        Poll::Pending
    }
}
