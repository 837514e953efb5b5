//! The primary <-> worker channel.
//!
//! One `SOCK_SEQPACKET` Unix socket pair per worker. Every message is one packet, so message
//! boundaries are kept by the kernel and a file descriptor always arrives together with the
//! message that names it (`SCM_RIGHTS` on that same packet). Both ends are non-blocking.
//!
//! - [`wire`]: herd's messages, [`ToWorker`] and [`ToPrimary`], and their bytes;
//! - [`Channel`]: the socket, sending and receiving packets with descriptors;
//! - [`Endpoint`]: what both loops use: the socket, the queue the kernel has not taken yet
//!   (in two [`lanes`]: handoffs and acks never wait behind user messages), the writable
//!   interest, a `mio` source that speaks typed messages;
//! - [`WorkerLink`]: the primary's end, with what it handed over and not yet saw taken;
//! - [`Overflow`]: idle-first's queue of connections shared by every herd worker, for when
//!   none is idle;
//! - [`StatusPage`]: what a herd worker publishes in memory shared with the primary (busy or
//!   idle, connections read), read with no syscall.
//!
//! We call `sendmsg` through `nix` and `recvmsg` through [`crate::sys`] rather than the
//! `sendfd` crate because we need `MSG_CMSG_CLOEXEC` (received client sockets must not leak into
//! a worker's children), `MSG_NOSIGNAL` and `MSG_DONTWAIT` on the send side, and the descriptors
//! that did arrive when `MSG_CTRUNC` is set on the receive side, none of which `sendfd` exposes
//! (and `nix` 0.29 refuses to parse a truncated control message).

mod channel;
mod either;
mod endpoint;
pub mod lanes;
mod link;
pub mod node;
mod overflow;
mod status;
pub mod wire;

use std::io;

pub use channel::{Channel, Packet};
pub use either::{Inbound, Link};
pub use endpoint::{Delivery, Endpoint, Envelope};
pub use lanes::{MAX_QUEUED_BYTES, MAX_QUEUED_MESSAGES};
pub use link::WorkerLink;
pub use overflow::{Overflow, OverflowReader};
pub use status::{monotonic_ns, Status, StatusPage};
pub use wire::{
    ConnId, Incoming, Outgoing, ToPrimary, ToWorker, WorkerStats, MAX_ACK_IDS, MAX_CONN_BATCH,
    MAX_MESSAGE,
};

/// Errors of the channel.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// A user message was larger than [`MAX_MESSAGE`].
    #[error("message of {0} bytes is larger than the limit of {MAX_MESSAGE} bytes")]
    TooLarge(usize),
    /// The peer sent bytes this version does not understand.
    #[error("malformed channel message: {0}")]
    Malformed(&'static str),
    /// Too many messages already wait for this peer (see [`lanes::MAX_QUEUED_MESSAGES`] and
    /// [`lanes::MAX_QUEUED_BYTES`]); nothing was queued. Try again once it has caught up.
    #[error("{messages} messages ({bytes} bytes) already wait for the peer; not queued")]
    QueueFull {
        /// Messages waiting.
        messages: usize,
        /// Their payload bytes.
        bytes: usize,
    },
    /// The peer closed its end.
    #[error("channel closed by the peer")]
    Closed,
    /// The operating system refused.
    #[error("channel i/o: {0}")]
    Io(#[from] io::Error),
}
