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

use std::io;
use std::net::SocketAddr;

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::serve::{ListenerExt, TapIo};
use axum::Router;

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
pub fn counted<S>(router: Router<S>, worker: &Worker) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let worker = worker.clone();
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let worker = worker.clone();
            async move {
                let start = Instant::now();
                let response = next.run(req).await;
                worker.record_request(start.elapsed());
                response
            }
        },
    ))
}
