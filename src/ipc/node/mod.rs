//! Node.js's cluster channel, for `herd run`: the primary speaks it to unmodified Node apps.
//!
//! A `SOCK_STREAM` Unix socket at the worker's fd 3, newline-delimited JSON, a handle
//! (`SCM_RIGHTS`, one descriptor) attached to each `NODE_HANDLE` line, one handle in flight
//! at a time. The protocol as measured, with its traps, is described in the README's "Running
//! a Node.js app".
//!
//! - [`codec`]: framing and the messages, tested against recorded byte sequences;
//! - [`Stream`]: the socket;
//! - [`NodeLink`]: the primary's end: queue, one handle in flight, connections kept until the
//!   worker's `{ack, accepted}`.

pub mod codec;
mod link;
mod stream;

pub use codec::{FromNode, ServerQuery};
pub use link::{ConnReply, NodeLink};
pub use stream::Stream;

/// Environment a Node worker is started with (as Node's `cluster.fork()` sets it).
pub mod env {
    /// The worker id (its presence makes `cluster.isPrimary` false).
    pub const UNIQUE_ID: &str = "NODE_UNIQUE_ID";
    /// The channel's descriptor number.
    pub const CHANNEL_FD: &str = "NODE_CHANNEL_FD";
    /// The channel's serialization (`json`).
    pub const SERIALIZATION: &str = "NODE_CHANNEL_SERIALIZATION_MODE";
    /// The descriptor the channel is installed as.
    pub const FD: i32 = 3;
}
