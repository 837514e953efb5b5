//! Upgrading the primary itself (`SIGUSR1`, or [`super::Control::upgrade`]) with no dropped
//! connection, in the way of nginx's `USR2` and einhorn:
//!
//! 1. The old primary starts its binary again (the path resolved at start, so a binary replaced
//!    on disk is the one that runs), with the same arguments, passing its listening sockets and
//!    one end of a channel across `exec` (`HERD_UPGRADE_LISTEN_FDS`, `HERD_UPGRADE_CHANNEL_FD`).
//! 2. The new primary lays the sockets out for its policy and starts its workers, but does not
//!    accept yet. Once every worker is online it says `ready`.
//! 3. The old primary stops accepting (the kernel's queue stays on the shared socket, for the
//!    new one), says `take`, passes the connections it accepted and had not handed yet, tells
//!    systemd `MAINPID=`, then drains its workers and exits as in a shutdown. A connection
//!    already given to an old worker is that worker's to serve; one that comes back to the old
//!    primary's queue while it drains (read back from the channel of an old worker that died or
//!    froze before reading it, or never acked) is passed to the new primary on the same link.
//! 4. If the new primary exits, or is not ready within the upgrade timeout, the old one kills
//!    it, logs why, and keeps serving.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::Primary;
use crate::activation::{UPGRADE_CHANNEL_FD, UPGRADE_LISTEN_FDS};
use crate::admin::conns::ConnId;
use crate::ipc::Channel;

/// The old primary's link to the new one (tokens far from the workers', which count up from 2,
/// and the adopted listeners', which count down from the top).
pub(super) const SUCCESSOR: Token = Token(usize::MAX / 2);
/// The new primary's link to the old one.
pub(super) const PREDECESSOR: Token = Token(usize::MAX / 2 + 1);

const READY: &[u8] = b"ready";
const TAKE: &[u8] = b"take";
const CONNS: &[u8] = b"conns";
/// Most connections in one packet on the link.
const BATCH: usize = 16;

/// An upgrade in progress, in the old primary.
#[derive(Debug)]
pub(super) struct Upgrade {
    child: Child,
    link: Channel,
    deadline: Instant,
    /// Control clients (`herd upgrade`) waiting for the outcome.
    waiters: Vec<ConnId>,
}

impl Upgrade {
    /// When the new primary must be ready.
    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// In a primary started by an upgrade: the link to the old one until it has handed over.
#[derive(Debug)]
pub(super) struct Predecessor {
    link: Option<Channel>,
    taken: bool,
}

impl Predecessor {
    /// Watches `link` from `registry`.
    pub(super) fn new(link: Channel, registry: &mio::Registry) -> io::Result<Predecessor> {
        registry.register(
            &mut SourceFd(&link.raw_fd()),
            PREDECESSOR,
            Interest::READABLE,
        )?;
        Ok(Predecessor {
            link: Some(link),
            taken: false,
        })
    }
}

/// In the old primary, once the new one took over.
#[derive(Debug)]
pub(super) struct Successor {
    /// The new primary: a child of this process until it exits (not waited for).
    _child: Child,
    /// Where connections that come back to the queue go; `None` once it failed.
    link: Option<Channel>,
}

impl Primary {
    /// `SIGUSR1`: starts the new primary, unless an upgrade runs or the cluster is stopping.
    pub(super) fn begin_upgrade(&mut self) {
        if self.stopping() {
            log::warn!("upgrade ignored: the primary is stopping");
            return;
        }
        if self.phase.upgrade.is_some() {
            log::warn!("upgrade already in progress; ignoring");
            return;
        }
        if self.phase.leave_at.is_some() {
            log::warn!("upgrade ignored: the host is leaving (drain delay)");
            return;
        }
        if self.predecessor.as_ref().is_some_and(|p| !p.taken) {
            log::warn!("upgrade ignored: this primary has not taken over from the old one yet");
            return;
        }
        match self.start_successor() {
            Ok(u) => {
                log::info!(
                    "upgrading: started {} as primary {}; waiting up to {:?} for its workers",
                    self.config.spawner.exe.display(),
                    u.child.id(),
                    self.config.upgrade_timeout
                );
                self.notifier.status("upgrading the primary");
                self.phase.upgrade = Some(u);
            }
            Err(e) => log::error!(
                "upgrade failed: cannot start {}: {e}; primary {} keeps serving",
                self.config.spawner.exe.display(),
                std::process::id()
            ),
        }
    }

    fn start_successor(&mut self) -> io::Result<Upgrade> {
        let (mine, theirs) = Channel::pair()?;
        let listeners: Vec<RawFd> = self
            .acceptor
            .listener_fd()
            .into_iter()
            .chain(self.listeners_for_workers.iter().map(|l| l.as_raw_fd()))
            .collect();
        let list: Vec<String> = listeners.iter().map(|f| f.to_string()).collect();
        let mut cmd = Command::new(&self.config.spawner.exe);
        cmd.args(&self.config.primary_args)
            .env(UPGRADE_LISTEN_FDS, list.join(","))
            .env(UPGRADE_CHANNEL_FD, theirs.raw_fd().to_string())
            // The watchdog is the new primary's once it is the main pid.
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null());
        let mut keep = listeners;
        keep.push(theirs.raw_fd());
        crate::sys::keep_all_open_across_exec(&mut cmd, keep);
        let child = cmd.spawn()?;
        drop(theirs);
        self.poll.registry().register(
            &mut SourceFd(&mine.raw_fd()),
            SUCCESSOR,
            Interest::READABLE,
        )?;
        Ok(Upgrade {
            child,
            link: mine,
            deadline: crate::deadline_after(self.config.upgrade_timeout),
            waiters: Vec::new(),
        })
    }

    /// `herd upgrade` on the control socket: starts an upgrade (or joins the one running) and
    /// answers once it is over.
    pub(super) fn upgrade_requested(&mut self, client: ConnId) {
        if self.phase.upgrade.is_none() {
            self.begin_upgrade();
        }
        match self.phase.upgrade.as_mut() {
            Some(u) => u.waiters.push(client),
            None => self.answer(
                client,
                Err("the upgrade did not start (the server's log says why)".into()),
            ),
        }
    }

    /// The new primary said something (or went away).
    pub(super) fn read_successor(&mut self) {
        let mut buf = vec![0u8; crate::ipc::wire::MAX_PACKET];
        loop {
            let Some(u) = self.phase.upgrade.as_ref() else {
                return;
            };
            match u.link.recv(&mut buf) {
                Ok(Some(p)) if &buf[..p.len] == READY => {
                    if self.phase.leave_at.is_some() {
                        return self.abandon_upgrade("the host is leaving (drain delay)");
                    }
                    return self.hand_over();
                }
                Ok(Some(_)) => log::warn!("upgrade: the new primary sent an unknown message"),
                Ok(None) => {
                    return self.upgrade_failed("the new primary exited before it was ready")
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return self.upgrade_failed(&format!("its channel failed: {e}")),
            }
        }
    }

    /// Checks whether the new primary exited (`SIGCHLD`) or is late (timer).
    pub(super) fn watch_upgrade(&mut self, now: Instant) {
        let Some(u) = self.phase.upgrade.as_mut() else {
            return;
        };
        if let Ok(Some(status)) = u.child.try_wait() {
            // Its last words may be a `ready` (it exited after saying it): read them first.
            self.read_successor();
            if self.phase.upgrade.is_some() {
                self.upgrade_failed(&format!("the new primary exited ({status})"));
            }
            return;
        }
        if u.deadline <= now {
            let why = format!(
                "the new primary was not ready within {:?}",
                self.config.upgrade_timeout
            );
            self.upgrade_failed(&why);
        }
    }

    fn upgrade_failed(&mut self, why: &str) {
        let waiters = self.upgrade_waiters();
        for client in waiters {
            self.answer(client, Err(format!("upgrade failed: {why}")));
        }
        if self.stop_successor() {
            log::error!(
                "upgrade failed: {why}; primary {} keeps serving",
                std::process::id()
            );
            let status = self.status_line();
            self.notifier.status(&status);
        }
    }

    /// Gives up on an upgrade in progress because this primary is stopping or leaving: the
    /// new primary is stopped, and this one goes on as asked.
    pub(super) fn abandon_upgrade(&mut self, why: &str) {
        let waiters = self.upgrade_waiters();
        for client in waiters {
            self.answer(client, Err(format!("upgrade abandoned: {why}")));
        }
        if self.stop_successor() {
            log::warn!("upgrade abandoned: {why}; the new primary was stopped");
        }
    }

    fn upgrade_waiters(&mut self) -> Vec<ConnId> {
        self.phase
            .upgrade
            .as_mut()
            .map(|u| std::mem::take(&mut u.waiters))
            .unwrap_or_default()
    }

    /// Kills the new primary of an upgrade in progress; `false` if there was none.
    fn stop_successor(&mut self) -> bool {
        let Some(mut u) = self.phase.upgrade.take() else {
            return false;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&u.link.raw_fd()));
        let _ = u.child.kill();
        let _ = u.child.wait();
        true
    }

    /// The new primary is ready: stop accepting, hand it the waiting connections, drain.
    /// systemd hears `MAINPID=` before the new primary can say anything (it speaks once told
    /// to take over), so every notification after it is the new primary's; and the control
    /// socket and metrics endpoint are closed first, so the new primary can open them.
    fn hand_over(&mut self) {
        let Some(new_pid) = self.phase.upgrade.as_ref().map(|u| u.child.id()) else {
            return;
        };
        let old = std::process::id();
        for client in self.upgrade_waiters() {
            self.answer(
                client,
                Ok(format!("upgraded: primary {new_pid} took over from {old}")),
            );
        }
        self.close_admin();
        self.notifier.main_pid(new_pid);
        let told = match self.phase.upgrade.as_ref().map(|u| u.link.send(TAKE, &[])) {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                self.notifier.main_pid(std::process::id());
                if let Err(e) = self.open_admin() {
                    log::error!("{e}");
                }
                self.upgrade_failed(&format!("it cannot be told to take over ({e})"));
                false
            }
            None => false,
        };
        let Some(u) = self.phase.upgrade.take().filter(|_| told) else {
            return;
        };
        self.notifier.retire();
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&u.link.raw_fd()));
        self.phase.handed_over = true;
        self.acceptor.let_go(self.poll.registry());
        self.release_all();
        self.listeners_for_workers.clear();
        // The child stays ours until this process exits; it is not waited for. The link stays
        // open too: connections that come back here while this one drains go to it.
        self.phase.successor = Some(Successor {
            _child: u.child,
            link: Some(u.link),
        });
        let passed = self.pass_to_successor();
        log::info!(
            "upgrade: primary {new_pid} took over ({passed} waiting connections passed to it); primary {} drains and exits",
            std::process::id()
        );
        self.begin_shutdown();
    }

    /// After the handover, in the old primary: connections that came back to the waiting queue
    /// (read back from the channel of an old worker that died or froze, or never acked by one)
    /// go to the new primary, which accepts for the service now. The old workers get them only
    /// if the new primary cannot take them.
    pub(super) fn pass_back_to_successor(&mut self) {
        if self.phase.handed_over && self.acceptor.waiting() > 0 {
            let n = self.pass_to_successor();
            if n > 0 {
                log::info!(
                    "upgrade: {n} connections old workers never took passed to the new primary"
                );
            }
        }
    }

    /// Sends the connections accepted and not yet handed to the new primary; what the link
    /// cannot take stays here for the draining workers. Returns how many went.
    fn pass_to_successor(&mut self) -> usize {
        let Primary {
            phase, acceptor, ..
        } = self;
        let Some(s) = phase.successor.as_mut() else {
            return 0;
        };
        let Some(link) = s.link.as_ref() else {
            return 0;
        };
        let (passed, failed) = pass_waiting(acceptor, link);
        if let Some(e) = failed {
            log::info!(
                "upgrade: {} waiting connections stay with the old workers ({e})",
                acceptor.waiting()
            );
            if e.kind() != io::ErrorKind::WouldBlock {
                // The new primary is gone: stop trying.
                s.link = None;
            }
        }
        passed
    }

    /// In a new primary: every worker is online. Tells the old one, which hands over.
    /// Returns `false` when this primary was not started by an upgrade (or has taken over).
    pub(super) fn announce_ready_to_predecessor(&mut self) -> bool {
        let Some(p) = self.predecessor.as_mut() else {
            return false;
        };
        if p.taken {
            return false;
        }
        match p.link.as_ref().map(|l| l.send(READY, &[])) {
            Some(Ok(())) => {
                log::info!(
                    "upgrade: every worker is online; waiting for the old primary to hand over"
                );
            }
            Some(Err(e)) => {
                log::warn!("upgrade: the old primary cannot be told ({e}); taking over");
                self.take_over();
            }
            None => self.take_over(),
        }
        true
    }

    /// In a new primary: what the old one says.
    pub(super) fn read_predecessor(&mut self) {
        let mut buf = vec![0u8; crate::ipc::wire::MAX_PACKET];
        loop {
            let Some(link) = self.predecessor.as_ref().and_then(|p| p.link.as_ref()) else {
                return;
            };
            match link.recv(&mut buf) {
                Ok(Some(p)) if &buf[..p.len] == TAKE => self.take_over(),
                Ok(Some(p)) if &buf[..p.len] == CONNS => self.adopt_passed(p.fds),
                Ok(Some(_)) => log::warn!("upgrade: the old primary sent an unknown message"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Ok(None) | Err(_) => {
                    self.predecessor_gone();
                    return;
                }
            }
        }
    }

    fn adopt_passed(&mut self, fds: Vec<OwnedFd>) {
        for fd in fds {
            self.acceptor.adopt(fd);
        }
        self.dispatch();
    }

    fn predecessor_gone(&mut self) {
        let Some(p) = self.predecessor.as_mut() else {
            return;
        };
        if let Some(link) = p.link.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&link.raw_fd()));
        }
        if !p.taken {
            log::warn!("upgrade: the old primary went away before handing over; taking over");
            self.take_over();
        }
    }

    /// This primary is now the one: accept, write the pid file, tell systemd.
    fn take_over(&mut self) {
        let Some(p) = self.predecessor.as_mut() else {
            return;
        };
        if p.taken {
            return;
        }
        p.taken = true;
        self.acceptor.unhold(self.poll.registry());
        if let Err(e) = self.open_admin() {
            log::error!("upgrade: {e}; running without it");
        }
        self.write_pid_file();
        let status = self.status_line();
        self.notifier.ready(&status);
        log::info!(
            "upgrade: primary {} took over; listening on http://{}",
            std::process::id(),
            self.local_addr
        );
        self.dispatch();
    }
}

/// Sends `acceptor`'s waiting connections on `link`, in batches; a batch the link does not take
/// goes back to the queue. Returns how many went, and the error that stopped it, if one did.
fn pass_waiting(
    acceptor: &mut super::accept::Acceptor,
    link: &Channel,
) -> (usize, Option<io::Error>) {
    let mut passed = 0;
    while acceptor.waiting() > 0 {
        let mut batch = Vec::with_capacity(BATCH);
        while batch.len() < BATCH {
            match acceptor.pop() {
                Some(c) => batch.push(c),
                None => break,
            }
        }
        let fds: Vec<BorrowedFd<'_>> = batch.iter().map(|(_, fd)| fd.as_fd()).collect();
        if let Err(e) = link.send(CONNS, &fds) {
            acceptor.put_back(batch);
            return (passed, Some(e));
        }
        passed += batch.len();
    }
    (passed, None)
}
