//! The socket under a channel: one end of a non-blocking, close-on-exec `SOCK_SEQPACKET` pair,
//! sending and receiving whole packets with descriptors attached.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};

use super::wire::{MAX_CONN_BATCH, MAX_PACKET};
use crate::sys;

/// One end of a channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

/// One received packet: its length in the caller's buffer and the descriptors that came with it.
#[derive(Debug)]
pub struct Packet {
    /// Bytes of the packet at the start of the receive buffer.
    pub len: usize,
    /// Descriptors attached with `SCM_RIGHTS`, already close-on-exec, in order.
    pub fds: Vec<OwnedFd>,
    /// The kernel dropped some of the packet's descriptors (`MSG_CTRUNC`: this process is out
    /// of descriptors); `fds` holds the ones that arrived, which were the first ones sent.
    pub fds_truncated: bool,
}

impl Channel {
    /// Creates a connected pair of channel ends, both non-blocking and close-on-exec.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Takes the descriptor number a primary passed across `exec`: checks that it is a
    /// `SOCK_SEQPACKET` socket, then makes it non-blocking and close-on-exec again.
    pub fn from_inherited(fd: RawFd) -> io::Result<Channel> {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
        let fd = sys::own_inherited_seqpacket(fd)?;
        let raw = fd.as_raw_fd();
        let fl = OFlag::from_bits_truncate(fcntl(raw, FcntlArg::F_GETFL).map_err(io::Error::from)?);
        fcntl(raw, FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
        fcntl(raw, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
        Ok(Channel { fd })
    }

    /// Takes a descriptor that arrived in a message (with `SCM_RIGHTS`, already close-on-exec):
    /// checks that it is a `SOCK_SEQPACKET` socket and makes it non-blocking.
    pub fn from_owned(fd: OwnedFd) -> io::Result<Channel> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        use nix::sys::socket::{getsockopt, sockopt};
        if getsockopt(&fd, sockopt::SockType).map_err(io::Error::from)? != SockType::SeqPacket {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a SOCK_SEQPACKET socket",
            ));
        }
        let raw = fd.as_raw_fd();
        let fl = OFlag::from_bits_truncate(fcntl(raw, FcntlArg::F_GETFL).map_err(io::Error::from)?);
        fcntl(raw, FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
        Ok(Channel { fd })
    }

    /// Sends one packet with `fds` attached (`SCM_RIGHTS`, at most [`MAX_CONN_BATCH`]). Never
    /// blocks.
    ///
    /// `Err(WouldBlock)` means the socket buffer is full: keep the packet and retry when writable.
    /// A closed peer shows as `BrokenPipe` or `ConnectionReset` (never `SIGPIPE`).
    pub fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if fds.len() > MAX_CONN_BATCH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "more descriptors than a receiver takes",
            ));
        }
        let iov = [IoSlice::new(bytes)];
        let mut raw = [-1 as RawFd; MAX_CONN_BATCH];
        for (r, f) in raw.iter_mut().zip(fds) {
            *r = f.as_raw_fd();
        }
        let cmsgs = [ControlMessage::ScmRights(&raw[..fds.len()])];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
        loop {
            match sendmsg::<()>(
                self.fd.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives one packet into `buf` (which should hold [`MAX_PACKET`] bytes). `Ok(None)`
    /// means the peer closed the channel; `Err(WouldBlock)` that nothing is waiting; a packet
    /// larger than `buf` is `InvalidData`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Packet>> {
        debug_assert!(buf.len() >= MAX_PACKET);
        let r = sys::recv_with_fds(self.fd.as_fd(), buf)?;
        if r.data_truncated {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "packet larger than the largest message",
            ));
        }
        if r.len == 0 && r.fds.is_empty() {
            // End of file and an empty packet both read as 0 bytes: only a hung-up peer is EOF.
            if self.peer_hung_up()? {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::InvalidData, "empty packet"));
        }
        Ok(Some(Packet {
            len: r.len,
            fds: r.fds,
            fds_truncated: r.fds_truncated,
        }))
    }

    /// True once the peer has closed its end (`POLLHUP`: for a Unix socket pair, the peer's
    /// close shuts both directions down).
    fn peer_hung_up(&self) -> io::Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::empty())];
        poll(&mut fds, PollTimeout::ZERO).map_err(io::Error::from)?;
        Ok(fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP)))
    }

    /// Bytes sent from this end that the peer has not read yet.
    pub fn unread_by_peer(&self) -> io::Result<usize> {
        sys::unread_by_peer(self.fd.as_fd())
    }

    /// A second handle on this end (close-on-exec), for reading what the peer left unread.
    pub fn try_clone(&self) -> io::Result<Channel> {
        Ok(Channel {
            fd: self.fd.try_clone()?,
        })
    }

    /// The raw descriptor.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn fds_travel_with_their_packet_close_on_exec() {
        let (a, b) = Channel::pair().unwrap();
        let pairs: Vec<_> = (0..3).map(|_| UnixStream::pair().unwrap()).collect();
        let fds: Vec<_> = pairs.iter().map(|(_, theirs)| theirs.as_fd()).collect();
        a.send(b"abc", &fds).unwrap();
        drop(fds);
        let (mut ours, theirs): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
        drop(theirs);
        let mut buf = vec![0; MAX_PACKET];
        let p = b.recv(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..p.len], b"abc");
        assert!(!p.fds_truncated);
        assert_eq!(p.fds.len(), 3);
        for (i, fd) in p.fds.into_iter().enumerate() {
            let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert!(flags & nix::libc::FD_CLOEXEC != 0, "close-on-exec");
            let mut got = UnixStream::from(fd);
            got.write_all(&[b'a' + i as u8]).unwrap();
            let mut c = [0u8; 1];
            ours[i].read_exact(&mut c).unwrap();
            assert_eq!(c[0], b'a' + i as u8, "socket {i} kept its place");
        }
        let e = b.recv(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "nothing else waits");
        a.send(b"", &[]).unwrap();
        let e = b.recv(&mut buf).unwrap_err();
        assert_eq!(
            e.kind(),
            io::ErrorKind::InvalidData,
            "an empty packet is not EOF"
        );
        drop(a);
        assert!(
            b.recv(&mut buf).unwrap().is_none(),
            "peer close reads as None"
        );
    }

    #[test]
    fn too_many_fds_is_refused_before_sending() {
        let (a, _b) = Channel::pair().unwrap();
        let s = UnixStream::pair().unwrap();
        let fds = vec![s.0.as_fd(); MAX_CONN_BATCH + 1];
        assert_eq!(
            a.send(b"x", &fds).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
