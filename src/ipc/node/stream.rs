//! The socket under a Node channel: the primary's end of a non-blocking `SOCK_STREAM` Unix
//! pair. Writes may be partial (a stream has no packets); a descriptor rides on the first
//! byte of its line.

use std::io::{self, IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// The primary's end of a Node worker's channel.
#[derive(Debug)]
pub struct Stream {
    sock: UnixStream,
}

impl Stream {
    /// A connected pair: the primary's end (non-blocking) and the worker's end (blocking, as
    /// libuv expects to find it; close-on-exec until it is installed as fd 3 in the child).
    pub fn pair() -> io::Result<(Stream, UnixStream)> {
        let (mine, theirs) = UnixStream::pair()?;
        mine.set_nonblocking(true)?;
        Ok((Stream { sock: mine }, theirs))
    }

    /// Writes what the socket takes of `bytes`, with `fd` attached to the first byte; returns
    /// how many bytes went. Never blocks: `WouldBlock` when nothing went.
    pub fn send(&self, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<usize> {
        let iov = [IoSlice::new(bytes)];
        let raw: [RawFd; 1] = [fd.map_or(-1, |f| f.as_raw_fd())];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if fd.is_some() { &cmsg } else { &[] };
        loop {
            match sendmsg::<()>(
                self.sock.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => return Ok(n),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads what waits into `buf`. `Ok(0)`: the worker closed its end.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match (&self.sock).read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// Bytes written that the worker has not read yet.
    pub fn unread_by_peer(&self) -> usize {
        crate::sys::unread_by_peer(self.sock.as_fd()).unwrap_or(0)
    }

    /// The raw descriptor (for `mio`).
    pub fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}
