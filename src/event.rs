//! Lifecycle events in the primary, with Node's `cluster` vocabulary.

use std::net::SocketAddr;

/// Something that happened to a worker, as seen by the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A worker process was started (Node's `fork`).
    Fork {
        /// Worker id (1-based slot number).
        id: usize,
        /// Its process id.
        pid: u32,
    },
    /// The worker set itself up and takes connections (`online`).
    Online {
        /// Worker id.
        id: usize,
        /// Its process id.
        pid: u32,
    },
    /// The worker accepts on a listener it was given (`listening`; shared and reuseport).
    Listening {
        /// Worker id.
        id: usize,
        /// Its process id.
        pid: u32,
        /// The address it listens on.
        addr: SocketAddr,
    },
    /// The worker sent a message (`message`).
    Message {
        /// Worker id.
        id: usize,
        /// Its process id.
        pid: u32,
        /// The bytes it sent.
        payload: Vec<u8>,
    },
    /// The worker's channel closed (`disconnect`).
    Disconnect {
        /// Worker id.
        id: usize,
        /// Its process id.
        pid: u32,
    },
    /// The worker process ended (`exit`).
    Exit {
        /// Worker id.
        id: usize,
        /// Its process id.
        pid: u32,
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal number, if a signal ended it.
        signal: Option<i32>,
        /// True if it was told to disconnect (or the cluster was stopping) before it exited.
        exited_after_disconnect: bool,
    },
}
