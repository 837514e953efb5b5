//! The metrics endpoint: a TCP listener on the primary's loop answering `GET /metrics` with
//! what a render function gives, one request per connection (`Connection: close`). Bounded
//! clients and request heads, non-blocking I/O: a slow or silent scraper holds only its own
//! slot, and the answer never waits on a worker.

use std::io;
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use crate::admin::conns::{Conns, Incoming};

/// Most scrapers connected at once; more wait in the kernel's accept queue.
const MAX_CLIENTS: usize = 16;
/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// The Prometheus text format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the endpoint could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {source}")]
pub struct MetricsError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// What the OS said.
    #[source]
    pub source: io::Error,
}

/// The listening endpoint and its clients.
pub struct MetricsServer {
    listener: TcpListener,
    base: usize,
    clients: Conns<TcpStream>,
    paused: bool,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.listener.local_addr().ok())
            .field("clients", &self.clients.len())
            .finish()
    }
}

impl MetricsServer {
    /// Listens on `addr`, registered with tokens from `base` on.
    pub fn bind(addr: SocketAddr, registry: &Registry, base: usize) -> Result<Self, MetricsError> {
        let err = |source| MetricsError { addr, source };
        let mut listener = TcpListener::bind(addr).map_err(err)?;
        registry
            .register(&mut listener, Token(base), Interest::READABLE)
            .map_err(err)?;
        Ok(MetricsServer {
            listener,
            base,
            clients: Conns::new(base, MAX_CLIENTS, MAX_HEAD, b"\r\n\r\n"),
            paused: false,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// True when `token` is the listener's or a client's.
    pub fn owns(&self, token: Token) -> bool {
        token.0 == self.base || self.clients.owns(token)
    }

    /// Handles readiness of `token`; a complete request is answered at once with `render`.
    pub fn ready(&mut self, token: Token, registry: &Registry, render: impl FnOnce() -> String) {
        if token.0 == self.base {
            self.accept(registry);
            return;
        }
        let Some((client, incoming)) = self.clients.ready(token, registry) else {
            self.resume(registry);
            return;
        };
        let answer = match incoming {
            Incoming::TooLong => response(431, "text/plain", "request head too large\n"),
            Incoming::Request(head) => {
                let head = String::from_utf8_lossy(&head);
                let mut first = head.lines().next().unwrap_or("").split_whitespace();
                match (first.next(), first.next()) {
                    (Some("GET"), Some("/metrics")) => response(200, CONTENT_TYPE, &render()),
                    (Some("GET"), Some(_)) => response(404, "text/plain", "try /metrics\n"),
                    _ => response(405, "text/plain", "only GET /metrics\n"),
                }
            }
        };
        self.clients.send(client, answer.as_bytes(), true, registry);
        self.resume(registry);
    }

    /// When the next client times out, if any can.
    pub fn next_timeout(&self) -> Option<std::time::Instant> {
        self.clients.next_timeout()
    }

    /// Closes the clients that took too long to ask, or to take their answer (a silent
    /// connection holds a slot for a while, not for ever).
    pub fn expire(&mut self, now: std::time::Instant, registry: &Registry) {
        let n = self.clients.expire(now, registry);
        if n > 0 {
            log::debug!("metrics: closed {n} clients that sent no request in time");
            self.resume(registry);
        }
    }

    fn accept(&mut self, registry: &Registry) {
        while !self.clients.full() {
            match self.listener.accept() {
                Ok((s, _)) => {
                    self.clients.add(s, registry);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("metrics: accept: {e}");
                    return;
                }
            }
        }
        // Full: the kernel's queue holds the rest until a slot frees.
        if registry.deregister(&mut self.listener).is_ok() {
            self.paused = true;
        }
    }

    fn resume(&mut self, registry: &Registry) {
        if self.paused && !self.clients.full() {
            let token = Token(self.base);
            if registry
                .register(&mut self.listener, token, Interest::READABLE)
                .is_ok()
            {
                self.paused = false;
            }
        }
    }
}

fn response(status: u16, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        crate::http::reason(status),
        body.len()
    )
}
