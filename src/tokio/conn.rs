//! One connection herd gave the worker, as a tokio stream that tells the worker when it closes.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use ::tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use ::tokio::net::TcpStream;

use super::shared::Shared;
use crate::worker::intake::Taken;

/// A connection: a [`tokio::net::TcpStream`](::tokio::net::TcpStream) (through
/// [`Conn::stream`], or as `AsyncRead + AsyncWrite` itself) that reports its close to the
/// worker when dropped, so the primary's `least-connections` counts, the connection limit and
/// the worker's statistics stay right.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    /// The peer has been sent our FIN (`poll_shutdown`).
    shut: bool,
    handed: bool,
    report: CloseReport,
}

/// Reports the close once the socket itself is closed (it is dropped after the stream), and
/// the first read (see [`super::shared::State::fresh`]).
#[derive(Debug)]
struct CloseReport {
    shared: Shared,
    /// Nothing has been read from the connection yet.
    fresh: bool,
}

impl CloseReport {
    fn first_read(&mut self) {
        if std::mem::take(&mut self.fresh) {
            self.shared.lock().read_once();
        }
    }
}

impl Drop for CloseReport {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if std::mem::take(&mut self.fresh) {
            st.read_once();
        }
        if st.intake.closed() {
            st.kick();
        }
    }
}

impl Conn {
    /// Turns a taken socket into a tokio stream (made non-blocking first: tokio wants that)
    /// with its peer's address (the client a PROXY header named, if it named one). Must run inside the runtime. The caller has counted it as
    /// fresh.
    pub(crate) fn new(taken: Taken, shared: Shared) -> io::Result<(Conn, SocketAddr)> {
        let report = CloseReport {
            shared,
            fresh: true,
        };
        taken.stream.set_nonblocking(true)?;
        let peer = match taken.peer {
            Some(p) => p,
            None => taken.stream.peer_addr()?,
        };
        let stream = TcpStream::from_std(taken.stream)?;
        let conn = Conn {
            stream,
            shut: false,
            handed: taken.handed,
            report,
        };
        Ok((conn, peer))
    }

    /// The socket.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The socket's peer (behind a balancer speaking the PROXY protocol, the balancer: the
    /// client's address is the one [`super::Connections::accept`] gave).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// The local address (the address the cluster listens on, as the client reached it).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// Sets `TCP_NODELAY`.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.stream.set_nodelay(on)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.handed && !self.shut {
            // The primary may not have read our ack yet and still hold a copy: closing ours
            // would then leave the FIN to it, later. Send it now (as the worker's loop does).
            let _ = nix::sys::socket::shutdown(
                self.stream.as_raw_fd(),
                nix::sys::socket::Shutdown::Write,
            );
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if r.is_ready() && self.report.fresh {
            self.report.first_read();
        }
        r
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.stream).poll_shutdown(cx);
        if r.is_ready() {
            self.shut = true;
        }
        r
    }
}
