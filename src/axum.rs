//! axum in a herd worker (feature `axum`): [`Listener`] implements axum 0.8's
//! [`axum::serve::Listener`], so `axum::serve(listener, app)` is the whole integration.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//!
//! fn main() -> Result<(), herd::Error> {
//!     herd::Cluster::new().workers(2).port(3000).run_tokio(|worker| async move {
//!         let app = Router::new().route("/", get(|| async { "Hello World!" }));
//!         let stopped = worker.stopped();
//!         axum::serve(herd::axum::Listener::new(&worker), app)
//!             .with_graceful_shutdown(stopped)
//!             .await
//!     })
//! }
//! ```
//!
//! `ConnectInfo<SocketAddr>`: axum derives it only for its own listeners and for those wrapped
//! by [`axum::serve::ListenerExt::tap_io`], so [`Listener::with_connect_info`] gives the
//! wrapped one; then `app.into_make_service_with_connect_info::<SocketAddr>()` works.
//!
//! Graceful stop: when the primary tells the worker to go (shutdown, rolling reload, scale
//! down), [`crate::tokio::Worker::stopped`] resolves, axum stops accepting, lets in-flight
//! requests finish and closes idle keep-alive connections, and `serve` returns.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::serve::{ListenerExt, TapIo};
use axum::Router;
use tower_layer::Layer;
use tower_service::Service;

use crate::tokio::{Conn, Connections, Worker};

/// A herd worker's connections as an axum listener.
#[derive(Debug)]
pub struct Listener {
    conns: Connections,
    local: Option<SocketAddr>,
}

/// [`Listener`] wrapped for `ConnectInfo<SocketAddr>` (see [`Listener::with_connect_info`]).
pub type ConnectInfoListener = TapIo<Listener, fn(&mut Conn)>;

impl Listener {
    /// The listener of `worker`'s connections (take one per worker; see
    /// [`Worker::connections`]).
    pub fn new(worker: &Worker) -> Listener {
        Listener {
            conns: worker.connections(),
            local: None,
        }
    }

    /// This listener wrapped with axum's `tap_io` (doing nothing to the connection), for which
    /// axum implements `Connected`, so `ConnectInfo<SocketAddr>` carries the client's address.
    pub fn with_connect_info(self) -> ConnectInfoListener {
        fn keep(_: &mut Conn) {}
        self.tap_io(keep as fn(&mut Conn))
    }
}

impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = SocketAddr;

    /// The next connection. Once the worker is told to stop, it never resolves: axum stops
    /// asking when the future from [`Worker::stopped`] resolves.
    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.conns.accept().await {
            Some((conn, peer)) => {
                if self.local.is_none() {
                    self.local = conn.local_addr().ok();
                }
                (conn, peer)
            }
            None => std::future::pending().await,
        }
    }

    /// The address clients reached this worker at, known from its first connection on (the
    /// primary owns the listening socket).
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.local.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                "a herd worker learns its address from its first connection",
            )
        })
    }
}

/// `router` with every request counted and timed in the worker's statistics (the `requests`
/// column of the primary's report and its latency histogram; see [`Worker::record_request`]).
///
/// A plain tower layer rather than `axum::middleware::from_fn`: that one boxes a future and
/// a service and clones the router's route for every request, which costs about as much again
/// as the timing and the counting themselves.
pub fn counted<S>(router: Router<S>, worker: &Worker) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.layer(Count {
        worker: worker.clone(),
    })
}

/// The layer of [`counted`].
#[derive(Debug, Clone)]
struct Count {
    worker: Worker,
}

impl<I> Layer<I> for Count {
    type Service = Counting<I>;

    fn layer(&self, inner: I) -> Counting<I> {
        Counting {
            inner,
            worker: self.worker.clone(),
        }
    }
}

/// A route whose requests are counted and timed (see [`counted`]).
#[derive(Debug, Clone)]
struct Counting<I> {
    inner: I,
    worker: Worker,
}

impl<I> Service<Request> for Counting<I>
where
    I: Service<Request>,
    I::Future: Unpin,
{
    type Response = I::Response;
    type Error = I::Error;
    type Future = Timed<I::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), I::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Timed<I::Future> {
        Timed {
            start: Instant::now(),
            inner: self.inner.call(req),
            worker: self.worker.clone(),
        }
    }
}

/// The answer of a [`Counting`] route: recorded when it is ready.
#[derive(Debug)]
struct Timed<F> {
    inner: F,
    start: Instant,
    worker: Worker,
}

impl<F: Future + Unpin> Future for Timed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let out = Pin::new(&mut self.inner).poll(cx);
        if out.is_ready() {
            self.worker.record_request(self.start.elapsed());
        }
        out
    }
}
