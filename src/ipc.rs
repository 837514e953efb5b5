//! The primary <-> worker channel.
//!
//! One `SOCK_SEQPACKET` Unix socket pair per worker. Every message is one packet, so message
//! boundaries are kept by the kernel and a file descriptor always arrives together with the
//! message that names it (`SCM_RIGHTS` on that same packet). Both ends are non-blocking; the
//! sender keeps what the kernel would not take in an [`Outbox`] and retries when the socket is
//! writable again.
//!
//! We call `sendmsg`/`recvmsg` through `nix` rather than the `sendfd` crate because we need
//! `MSG_CMSG_CLOEXEC` (received client sockets must not leak into a worker's children),
//! `MSG_NOSIGNAL` and `MSG_DONTWAIT` on the send side, and the `MSG_CTRUNC`/`MSG_TRUNC` flags on
//! the receive side, none of which `sendfd` exposes.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

/// Largest user payload carried by one [`ToWorker::Message`] or [`ToPrimary::Message`].
///
/// A larger payload is refused with [`IpcError::TooLarge`] instead of being split or truncated.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Most connections handed over in one [`ToWorker::Conn`] packet (one `sendmsg` for the lot).
pub const MAX_CONN_BATCH: usize = 16;

/// Most file descriptors one packet may carry; the receiver's control buffer is sized for it.
const MAX_FDS: usize = MAX_CONN_BATCH;

/// Receive buffer: the largest payload plus the header.
const RECV_BUF: usize = MAX_MESSAGE + 64;

/// Most connection ids in one [`ToPrimary::Ack`] packet.
pub const MAX_ACK_IDS: usize = 1024;

/// Errors of the channel.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// A user message was larger than [`MAX_MESSAGE`].
    #[error("message of {0} bytes is larger than the limit of {MAX_MESSAGE} bytes")]
    TooLarge(usize),
    /// The peer sent bytes this version does not understand.
    #[error("malformed channel message: {0}")]
    Malformed(&'static str),
    /// The operating system refused.
    #[error("channel i/o: {0}")]
    Io(#[from] io::Error),
}

/// Messages from the primary to a worker.
#[derive(Debug, PartialEq, Eq)]
pub enum ToWorker {
    /// Serve these connections. Their sockets travel with the packet, one per id and in the
    /// same order; each id is echoed in an ack. At most [`MAX_CONN_BATCH`] per packet.
    Conn {
        /// The primary's ids for these connections.
        ids: Vec<u64>,
    },
    /// Accept connections on this listening socket yourself (shared and reuseport policies).
    Listen,
    /// Stop taking new connections, finish what is in flight, then exit.
    Disconnect,
    /// Report your counters with [`ToPrimary::Stats`].
    StatsRequest,
    /// A user message (`Control::send` in the primary).
    Message(Vec<u8>),
}

/// Counters a worker reports about itself.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkerStats {
    /// Connections this worker took (handed to it, or accepted by it).
    pub connections: u64,
    /// Connections open now.
    pub open: u64,
    /// Requests (or, for custom handlers, units of work) served.
    pub requests: u64,
}

/// Messages from a worker to the primary.
#[derive(Debug, PartialEq, Eq)]
pub enum ToPrimary {
    /// The worker has set itself up and is ready for connections.
    Online,
    /// The worker is accepting on the listener(s) it was given.
    Listening,
    /// The worker has taken these connections; the primary may close its copies.
    Ack(Vec<u64>),
    /// This many connections were closed since the last report (least-connections).
    Closed(u32),
    /// Answer to [`ToWorker::StatsRequest`].
    Stats(WorkerStats),
    /// A user message (`Context::send` in a worker).
    Message(Vec<u8>),
}

const T_CONN: u8 = 1;
const T_LISTEN: u8 = 2;
const T_DISCONNECT: u8 = 3;
const T_STATS_REQ: u8 = 4;
const T_MSG: u8 = 5;
const P_ONLINE: u8 = 101;
const P_LISTENING: u8 = 102;
const P_ACK: u8 = 103;
const P_CLOSED: u8 = 104;
const P_STATS: u8 = 105;
const P_MSG: u8 = 106;

fn read_u64(b: &[u8], at: usize) -> Result<u64, IpcError> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(IpcError::Malformed("short integer"))
}

/// A non-empty list of up to `max` little-endian u64 ids.
fn read_ids(body: &[u8], max: usize) -> Result<Vec<u64>, IpcError> {
    if body.is_empty() || body.len() % 8 != 0 || body.len() / 8 > max {
        return Err(IpcError::Malformed("id list length"));
    }
    Ok(body
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect())
}

fn check_size(payload: &[u8]) -> Result<(), IpcError> {
    if payload.len() > MAX_MESSAGE {
        return Err(IpcError::TooLarge(payload.len()));
    }
    Ok(())
}

fn with_tag(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + payload.len());
    v.push(tag);
    v.extend_from_slice(payload);
    v
}

impl ToWorker {
    /// The one-byte encoding of [`ToWorker::Listen`].
    pub const LISTEN_TAG: u8 = T_LISTEN;

    /// Encodes `Conn { ids }` into `out` (cleared first), so the primary's hot path can reuse
    /// one buffer.
    pub fn conn_packet(ids: &[u64], out: &mut Vec<u8>) {
        out.clear();
        out.push(T_CONN);
        for id in ids {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }

    /// Encodes the message into one packet.
    pub fn encode(&self) -> Result<Vec<u8>, IpcError> {
        Ok(match self {
            ToWorker::Conn { ids } => {
                let mut out = Vec::with_capacity(1 + 8 * ids.len());
                ToWorker::conn_packet(ids, &mut out);
                out
            }
            ToWorker::Listen => vec![Self::LISTEN_TAG],
            ToWorker::Disconnect => vec![T_DISCONNECT],
            ToWorker::StatsRequest => vec![T_STATS_REQ],
            ToWorker::Message(p) => {
                check_size(p)?;
                with_tag(T_MSG, p)
            }
        })
    }

    /// Decodes one packet.
    pub fn decode(b: &[u8]) -> Result<Self, IpcError> {
        match b.first() {
            Some(&T_CONN) => Ok(ToWorker::Conn {
                ids: read_ids(&b[1..], MAX_CONN_BATCH)?,
            }),
            Some(&T_LISTEN) => Ok(ToWorker::Listen),
            Some(&T_DISCONNECT) => Ok(ToWorker::Disconnect),
            Some(&T_STATS_REQ) => Ok(ToWorker::StatsRequest),
            Some(&T_MSG) => Ok(ToWorker::Message(b[1..].to_vec())),
            _ => Err(IpcError::Malformed("unknown tag from primary")),
        }
    }
}

impl ToPrimary {
    /// Encodes the message into one packet.
    pub fn encode(&self) -> Result<Vec<u8>, IpcError> {
        Ok(match self {
            ToPrimary::Online => vec![P_ONLINE],
            ToPrimary::Listening => vec![P_LISTENING],
            ToPrimary::Ack(ids) => {
                let mut v = Vec::with_capacity(1 + 8 * ids.len());
                v.push(P_ACK);
                for id in ids {
                    v.extend_from_slice(&id.to_le_bytes());
                }
                v
            }
            ToPrimary::Closed(n) => with_tag(P_CLOSED, &n.to_le_bytes()),
            ToPrimary::Stats(s) => {
                let mut v = vec![P_STATS];
                for n in [s.connections, s.open, s.requests] {
                    v.extend_from_slice(&n.to_le_bytes());
                }
                v
            }
            ToPrimary::Message(p) => {
                check_size(p)?;
                with_tag(P_MSG, p)
            }
        })
    }

    /// Decodes one packet.
    pub fn decode(b: &[u8]) -> Result<Self, IpcError> {
        match b.first() {
            Some(&P_ONLINE) => Ok(ToPrimary::Online),
            Some(&P_LISTENING) => Ok(ToPrimary::Listening),
            Some(&P_ACK) => Ok(ToPrimary::Ack(read_ids(&b[1..], MAX_ACK_IDS)?)),
            Some(&P_CLOSED) => {
                let n = b
                    .get(1..5)
                    .and_then(|s| s.try_into().ok())
                    .map(u32::from_le_bytes)
                    .ok_or(IpcError::Malformed("short closed count"))?;
                Ok(ToPrimary::Closed(n))
            }
            Some(&P_STATS) => Ok(ToPrimary::Stats(WorkerStats {
                connections: read_u64(b, 1)?,
                open: read_u64(b, 9)?,
                requests: read_u64(b, 17)?,
            })),
            Some(&P_MSG) => Ok(ToPrimary::Message(b[1..].to_vec())),
            _ => Err(IpcError::Malformed("unknown tag from worker")),
        }
    }
}

/// One end of a channel: a non-blocking, close-on-exec `SOCK_SEQPACKET` socket.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    buf: Vec<u8>,
}

/// One received packet: its bytes and the descriptors that came with it.
#[derive(Debug)]
pub struct Packet<'a> {
    /// The packet's bytes (borrowed from the channel's receive buffer).
    pub bytes: &'a [u8],
    /// Descriptors attached with `SCM_RIGHTS`, already close-on-exec.
    pub fds: Vec<OwnedFd>,
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
        Ok((Channel::from_owned(a), Channel::from_owned(b)))
    }

    /// Wraps an inherited descriptor (the worker's end, passed across exec).
    ///
    /// Makes it non-blocking and close-on-exec again.
    pub fn from_inherited(fd: OwnedFd) -> io::Result<Channel> {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
        let raw = fd.as_raw_fd();
        let fl = OFlag::from_bits_truncate(fcntl(raw, FcntlArg::F_GETFL).map_err(io::Error::from)?);
        fcntl(raw, FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
        fcntl(raw, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
        Ok(Channel::from_owned(fd))
    }

    fn from_owned(fd: OwnedFd) -> Channel {
        Channel {
            fd,
            buf: vec![0; RECV_BUF],
        }
    }

    /// Sends one packet with `fds` attached (`SCM_RIGHTS`, at most [`MAX_CONN_BATCH`]). Never
    /// blocks.
    ///
    /// `Err(WouldBlock)` means the socket buffer is full: keep the packet and retry when writable.
    /// A closed peer shows as `BrokenPipe` or `ConnectionReset` (never `SIGPIPE`).
    pub fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        debug_assert!(
            fds.len() <= MAX_FDS,
            "more descriptors than a receiver takes"
        );
        let iov = [IoSlice::new(bytes)];
        let mut raw = [-1 as RawFd; MAX_FDS];
        let n = fds.len().min(MAX_FDS);
        for (r, f) in raw.iter_mut().zip(fds) {
            *r = f.as_raw_fd();
        }
        let cmsgs = [ControlMessage::ScmRights(&raw[..n])];
        let cmsgs: &[ControlMessage] = if n > 0 { &cmsgs } else { &[] };
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

    /// Receives one packet. `Ok(None)` means the peer closed the channel.
    ///
    /// `Err(WouldBlock)` means nothing is waiting. A packet whose descriptors were truncated by
    /// the kernel (`MSG_CTRUNC`) is logged as the bug it is; its remaining descriptors are
    /// closed, and the packet is still returned so its ids can be accounted for.
    pub fn recv(&mut self) -> io::Result<Option<Packet<'_>>> {
        let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds) = {
            let mut iov = [IoSliceMut::new(&mut self.buf)];
            let msg = loop {
                match recvmsg::<()>(
                    self.fd.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg_space),
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Ok(m) => break m,
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            let mut fds = Vec::new();
            for c in msg.cmsgs().map_err(io::Error::from)? {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: the kernel just installed these descriptors in our table for us;
                    // nothing else owns them.
                    fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
                }
            }
            if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
                log::error!("channel: descriptors truncated (MSG_CTRUNC); the kernel closed them");
            }
            if msg.flags.contains(MsgFlags::MSG_TRUNC) {
                log::error!("channel: packet larger than the receive buffer was truncated");
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated packet",
                ));
            }
            (msg.bytes, fds)
        };
        if len == 0 {
            return Ok(None);
        }
        Ok(Some(Packet {
            bytes: &self.buf[..len],
            fds,
        }))
    }

    /// The raw descriptor, for registration with `mio` (`SourceFd`).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Packets (without descriptors) the kernel would not take yet, in order.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Vec<u8>>,
}

impl Outbox {
    /// Queues a packet behind the ones already waiting.
    pub fn push(&mut self, bytes: Vec<u8>) {
        self.queue.push_back(bytes);
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Number of waiting packets.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Sends as much as the socket takes. `Ok(true)` when everything left; `Ok(false)` when the
    /// socket is full (wait for writable). Errors mean the peer is gone.
    pub fn flush(&mut self, ch: &Channel) -> io::Result<bool> {
        while let Some(front) = self.queue.front() {
            match ch.send(front, &[]) {
                Ok(()) => {
                    self.queue.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn messages_round_trip() {
        for m in [
            ToWorker::Conn { ids: vec![42] },
            ToWorker::Conn {
                ids: vec![1, u64::MAX, 3],
            },
            ToWorker::Listen,
            ToWorker::Disconnect,
            ToWorker::StatsRequest,
            ToWorker::Message(b"hi".to_vec()),
        ] {
            assert_eq!(ToWorker::decode(&m.encode().unwrap()).unwrap(), m);
        }
        for m in [
            ToPrimary::Online,
            ToPrimary::Listening,
            ToPrimary::Ack(vec![1, 2, u64::MAX]),
            ToPrimary::Closed(7),
            ToPrimary::Stats(WorkerStats {
                connections: 1,
                open: 2,
                requests: 3,
            }),
            ToPrimary::Message(vec![0; 10]),
        ] {
            assert_eq!(ToPrimary::decode(&m.encode().unwrap()).unwrap(), m);
        }
    }

    #[test]
    fn too_large_and_garbage_are_errors() {
        let big = ToWorker::Message(vec![0; MAX_MESSAGE + 1]);
        assert!(matches!(big.encode(), Err(IpcError::TooLarge(_))));
        assert!(ToPrimary::decode(&[]).is_err());
        assert!(ToPrimary::decode(&[P_ACK, 1, 2]).is_err());
        assert!(ToWorker::decode(&[T_CONN, 1]).is_err());
        assert!(ToWorker::decode(&[T_CONN]).is_err(), "no ids");
        let too_many = ToWorker::Conn {
            ids: vec![7; MAX_CONN_BATCH + 1],
        };
        assert!(ToWorker::decode(&too_many.encode().unwrap()).is_err());
    }

    #[test]
    fn fd_travels_with_its_message() {
        let (a, mut b) = Channel::pair().unwrap();
        // Three sockets in one packet arrive in the order of their ids.
        let pairs: Vec<_> = (0..3).map(|_| UnixStream::pair().unwrap()).collect();
        let fds: Vec<_> = pairs.iter().map(|(_, theirs)| theirs.as_fd()).collect();
        let msg = ToWorker::Conn {
            ids: vec![9, 10, 11],
        };
        a.send(&msg.encode().unwrap(), &fds).unwrap();
        drop(fds);
        let (mut ours, theirs): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
        drop(theirs);
        let p = b.recv().unwrap().unwrap();
        assert_eq!(ToWorker::decode(p.bytes).unwrap(), msg);
        assert_eq!(p.fds.len(), 3);
        for (i, fd) in p.fds.into_iter().enumerate() {
            let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert!(
                flags & nix::libc::FD_CLOEXEC != 0,
                "received fd must be close-on-exec"
            );
            let mut got = UnixStream::from(fd);
            got.write_all(&[b'a' + i as u8]).unwrap();
            let mut c = [0u8; 1];
            ours[i].read_exact(&mut c).unwrap();
            assert_eq!(c[0], b'a' + i as u8, "socket {i} paired with id {}", 9 + i);
        }
        assert_eq!(
            b.recv().unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing else is waiting"
        );
        drop(a);
        assert!(b.recv().unwrap().is_none(), "peer close reads as None");
    }
}
