//! A worker's status page: a few numbers each herd worker publishes in a page of memory shared
//! with the primary (a sealed `memfd` mapped by both, see [`crate::sys::SharedWords`]). The
//! primary reads them with no syscall and no message:
//!
//! - whether the worker's loop is running (busy) or waiting for events (idle): flipped by the
//!   worker around its event handling, so a worker in a 1 s request is busy at once, with an
//!   empty channel; and since when it is busy (the word holds the monotonic clock's reading
//!   when the stretch began, 0 when idle), so the primary can tell a worker in a short turn
//!   from one stuck in a long request;
//! - how many connections it has read from its channel: with the count the primary sent, what
//!   still waits for the worker, unread;
//! - how many of those it holds unserved (at its `--max-connections`);
//! - how many connections it serves now;
//! - whether it is close to its descriptor limit (then the primary keeps a copy of each socket
//!   it hands over until the worker acks it, see [`super::WorkerLink`]).
//!
//! The worker may write anything there: the primary treats the numbers as hints for the policy,
//! never as a reason to trust or to index anything.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use crate::sys::SharedWords;

const BUSY: usize = 0;
const RECEIVED: usize = 1;
const TIGHT: usize = 2;
const HELD: usize = 3;
const OPEN: usize = 4;

/// The monotonic clock in nanoseconds: the same clock in every process of the machine, so a
/// worker's "busy since" compares with the primary's "now".
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
        let nanos = u64::try_from(t.tv_nsec()).unwrap_or(0);
        secs.saturating_mul(1_000_000_000).saturating_add(nanos)
    })
}

/// One worker's status page (either side).
#[derive(Debug)]
pub struct StatusPage {
    words: SharedWords,
}

/// What the primary reads from a status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    /// Connections the worker has read from its channel, in total.
    pub received: u64,
    /// Its loop is handling events (not waiting in `epoll`).
    pub busy: bool,
    /// When its loop began handling events ([`monotonic_ns`]), if busy.
    pub busy_since: u64,
    /// It is close to its descriptor limit.
    pub tight: bool,
    /// Connections it read and holds unserved, at its connection limit.
    pub held: u64,
    /// Connections it serves now.
    pub open: u64,
}

impl StatusPage {
    /// Creates a page for a worker about to start (it counts as busy until its loop first
    /// waits); returns the primary's mapping and the descriptor for the worker.
    pub fn create() -> io::Result<(StatusPage, OwnedFd)> {
        let (words, fd) = SharedWords::create(c"herd-worker-status")?;
        let page = StatusPage { words };
        page.set_busy(true);
        Ok((page, fd))
    }

    /// Maps the page a primary passed to this worker.
    pub fn open(fd: &OwnedFd) -> io::Result<StatusPage> {
        Ok(StatusPage {
            words: SharedWords::open(fd)?,
        })
    }

    /// Reads the page. `received` is read first: a count that includes a connection implies the
    /// worker was already busy with it when it read it.
    pub fn read(&self) -> Status {
        let w = self.words.words();
        let received = w[RECEIVED].load(Ordering::Acquire);
        let busy_since = w[BUSY].load(Ordering::Acquire);
        Status {
            received,
            busy: busy_since != 0,
            busy_since,
            tight: w[TIGHT].load(Ordering::Relaxed) != 0,
            held: w[HELD].load(Ordering::Relaxed),
            open: w[OPEN].load(Ordering::Relaxed),
        }
    }

    /// Worker: its loop starts (`true`) or stops (`false`) handling events. Starting reads the
    /// clock (a vDSO call, no syscall) and publishes when.
    pub fn set_busy(&self, busy: bool) {
        let word = if busy { monotonic_ns().max(1) } else { 0 };
        self.words.words()[BUSY].store(word, Ordering::Release);
    }

    /// Worker: it has read `n` more connections from its channel.
    pub fn add_received(&self, n: u64) {
        self.words.words()[RECEIVED].fetch_add(n, Ordering::Release);
    }

    /// Worker: it holds `n` connections unserved.
    pub fn set_held(&self, n: u64) {
        self.words.words()[HELD].store(n, Ordering::Relaxed);
    }

    /// Worker: it serves `n` connections now.
    pub fn set_open(&self, n: u64) {
        self.words.words()[OPEN].store(n, Ordering::Relaxed);
    }

    /// Worker: it is (or no longer is) close to its descriptor limit.
    pub fn set_tight(&self, tight: bool) {
        self.words.words()[TIGHT].store(u64::from(tight), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_worker_writes_the_primary_reads() {
        let (primary, fd) = StatusPage::create().unwrap();
        assert!(primary.read().busy, "busy until the loop first waits");
        let worker = StatusPage::open(&fd).unwrap();
        let before = monotonic_ns();
        worker.set_busy(true);
        let since = primary.read().busy_since;
        assert!(
            since >= before && since <= monotonic_ns(),
            "busy since when it said so"
        );
        worker.set_busy(false);
        worker.add_received(3);
        worker.set_tight(true);
        worker.set_held(2);
        worker.set_open(5);
        assert_eq!(
            primary.read(),
            Status {
                received: 3,
                busy: false,
                busy_since: 0,
                tight: true,
                held: 2,
                open: 5,
            }
        );
    }
}
