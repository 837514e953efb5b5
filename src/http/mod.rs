//! The HTTP/1.1 server every worker runs by default.
//!
//! Requests are parsed with `httparse`; responses are produced in order (pipelining), bodies are
//! read and discarded (`Content-Length` or chunked), keep-alive follows HTTP/1.0 and 1.1 rules.
//! Malformed input gets a `4xx`/`5xx` status and the connection is closed after a lingering
//! close; no client byte can panic the worker. The exact rules are in [`request`] (heads) and
//! [`body`] (bodies); [`Session`] is the socket-free state machine, [`HttpConn`] its socket.
//!
//! Sizes: a head larger than `max_head` bytes or with more than `max_headers` header lines is
//! answered `431` (`414` for a request line alone too long); a body larger than `max_body` is
//! answered `413` (at once for a `Content-Length` beyond it, at the chunk-size line that takes a
//! chunked body past it). Every refusal closes the connection after its answer.
//!
//! Timeouts, all checked by the worker's sweep: a new connection must send a complete head
//! within `header_timeout` of being accepted, a later request within `header_timeout` of its
//! first byte; a body may pause at most `header_timeout` between reads, and must be complete
//! within `body_timeout` of the end of its head; an idle keep-alive connection is closed after
//! `keepalive_timeout`; a response that makes no progress for 60 s is abandoned. An incomplete
//! head or body at its deadline is answered `408`.

pub mod access_log;
pub mod body;
mod conn;
pub mod request;
mod response;
mod routes;
mod session;

use std::time::Duration;

use mio::net::TcpStream;

pub use conn::HttpConn;
pub use request::{parse, Body, Head, Reject};
pub use response::{reason, DateCache};
pub use routes::MAX_WORK;
pub use session::{Closing, Phase, Serving, Session};

use crate::worker::{Context, Handler};

/// Limits and timeouts of the HTTP server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head (request line and headers); larger is answered `431` (`414` when
    /// the request line alone does not fit). Also bounds a chunked body's trailer section.
    pub max_head: usize,
    /// Most header lines in one request head; more is answered `431`. Heads of up to 64
    /// header lines are parsed on the stack; a larger cap costs a heap allocation only for
    /// the requests that have more (sized by the lines they actually hold).
    pub max_headers: usize,
    /// Largest request body in bytes, counted as decoded body bytes (chunk framing excluded);
    /// larger is answered `413` and the connection closed. A `Content-Length` beyond it is
    /// refused before any body byte is read, a chunked body as soon as a chunk-size line takes
    /// its total past it. `0`: no limit (as nginx's `client_max_body_size 0`).
    pub max_body: u64,
    /// Time allowed to send a complete request head (slowloris guard): from the accept for a
    /// connection's first request, from the first byte for later ones. Also the longest pause
    /// allowed inside a request body. Then `408` and close.
    pub header_timeout: Duration,
    /// Time a whole request body may take, from the end of its head, however steadily it
    /// moves (an endless slow upload is cut off). Then `408` and close.
    pub body_timeout: Duration,
    /// Time an idle keep-alive connection is kept open.
    pub keepalive_timeout: Duration,
    /// Requests served on one connection before it is closed (0: no limit).
    pub max_requests: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 8 * 1024,
            max_headers: request::DEFAULT_MAX_HEADERS,
            max_body: 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(5),
            max_requests: 0,
        }
    }
}

/// The default handler: `GET /` answers `Hello World! <pid>`, plus the benchmark workloads.
#[derive(Debug)]
pub struct HttpHandler {
    limits: Limits,
    shared: session::Shared,
}

impl HttpHandler {
    /// A server with the given limits.
    pub fn new(limits: Limits) -> HttpHandler {
        HttpHandler {
            shared: session::Shared::new(),
            limits,
        }
    }

    /// Writes an access log to stdout (`on`): one line per answered request in the combined
    /// log format, with the client's real address (see [`access_log`]).
    pub fn access_log(mut self, on: bool) -> HttpHandler {
        if on {
            self.shared = self.shared.with_access_log();
        }
        self
    }
}

impl Default for HttpHandler {
    fn default() -> Self {
        HttpHandler::new(Limits::default())
    }
}

impl Handler for HttpHandler {
    type Conn = HttpConn;

    fn connect(&mut self, stream: TcpStream, ctx: &mut Context) -> HttpConn {
        HttpConn::new(stream, self.limits.clone(), self.shared.clone(), ctx.now())
    }
}
