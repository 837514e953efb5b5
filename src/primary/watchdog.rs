//! The watchdog: a worker that leaves what it was sent unread (stopped, deadlocked, stuck in
//! a handler) stops getting connections after `--worker-timeout`, what it never read goes to
//! the others, and after [`KILL_AFTER`] times as long it is killed and replaced (gunicorn's
//! `--timeout`). What a worker has not read is visible in one syscall (`SIOCOUTQ` on the
//! primary's end); it costs nothing while every channel is empty.

use std::time::{Duration, Instant};

use super::Primary;

/// An unresponsive worker is killed after this many worker timeouts.
pub const KILL_AFTER: u32 = 6;

/// What the watchdog knows of one worker.
#[derive(Debug, Default, Clone, Copy)]
pub struct Watch {
    /// When it was first seen with unread data and no sign of life since.
    stalled_since: Option<Instant>,
    /// When it was marked unresponsive.
    pub unresponsive_since: Option<Instant>,
    /// The last time the worker said anything.
    pub last_heard: Option<Instant>,
    /// It was killed for being unresponsive (and is about to be reaped).
    killed: bool,
}

impl Watch {
    /// True while the worker is marked unresponsive.
    pub fn unresponsive(&self) -> bool {
        self.unresponsive_since.is_some()
    }
}

impl Primary {
    /// How often the watchdog looks while some channel holds unread data.
    fn watch_every(&self) -> Duration {
        (self.config.worker_timeout / 4).max(Duration::from_millis(50))
    }

    /// When the watchdog wants to look next: only while some worker has something in flight
    /// or is already suspect.
    pub(super) fn next_watch(&self) -> Option<Instant> {
        let busy = self.workers.procs().any(|(_, p)| {
            !p.channel_closed
                && (p.link.outstanding() > 0
                    || !p.link.is_idle()
                    || p.watch.stalled_since.is_some()
                    || p.watch.unresponsive())
        });
        busy.then(|| self.phase.last_watch.unwrap_or_else(Instant::now) + self.watch_every())
    }

    /// Looks at every worker's channel.
    pub(super) fn watch(&mut self, now: Instant) {
        if self
            .phase
            .last_watch
            .is_some_and(|t| now < t + self.watch_every())
        {
            return;
        }
        self.phase.last_watch = Some(now);
        let timeout = self.config.worker_timeout;
        let mut reclaimed = Vec::new();
        for (_, p) in self.workers.procs_mut() {
            if p.channel_closed {
                continue;
            }
            let heard = |since: Instant| p.watch.last_heard.is_some_and(|h| h >= since);
            let stalled = p.link.unread() > 0;
            match p.watch.stalled_since {
                _ if !stalled => p.watch.stalled_since = None,
                Some(since) if heard(since) => p.watch.stalled_since = Some(now),
                None => p.watch.stalled_since = Some(now),
                Some(_) => {}
            }
            let lively = p.watch.stalled_since.is_none_or(|s| now < s + timeout);
            match p.watch.unresponsive_since {
                Some(_) if lively => {
                    log::info!("worker {} responds again", p.pid);
                    p.watch.unresponsive_since = None;
                }
                None if !lively => {
                    p.watch.unresponsive_since = Some(now);
                    let mut back = p.link.unsend();
                    back.extend(p.link.read_back());
                    back.sort_by_key(|(id, _)| *id);
                    p.open = p.open.saturating_sub(back.len() as u64);
                    log::warn!(
                        "worker {} has left its channel unread for {timeout:?}: marked \
                         unresponsive, {} connections it never took go to the others",
                        p.pid,
                        back.len()
                    );
                    reclaimed.extend(back);
                }
                Some(since) if now >= since + timeout * KILL_AFTER && !p.watch.killed => {
                    p.watch.killed = true;
                    log::error!(
                        "killing worker {}: unresponsive for {:?}",
                        p.pid,
                        now - since
                    );
                    let _ = p.child.kill();
                }
                _ => {}
            }
        }
        if !reclaimed.is_empty() {
            self.acceptor.put_back(reclaimed);
            self.dispatch();
        }
    }
}
