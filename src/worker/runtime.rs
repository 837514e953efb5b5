//! The worker's loop: reads the channel, takes and serves connections, acks, drains.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;

use super::admission::{Accepted, Admission, ListenerIndex};
use super::faults::Faults;
use super::preface::{self, HeaderRead, PrefaceKey, Prefaces};
use super::table::{ConnKey, Entry, Table};
use super::uplink::{self, Inbound, Uplink, CHANNEL};
use super::{Connection, Context, Handler, Status, WorkerError};
use crate::ipc::{
    Channel, ConnId, Delivery, StatusPage, ToPrimary, ToWorker, WorkerStats, MAX_CONN_BATCH,
};
use crate::signals::Signals;
use crate::worker_env::WorkerEnv;

const SIGNALS: Token = Token(1);
/// How often idle connections are checked against their deadlines.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// A worker whose newest received descriptor is this close to its limit says it is tight: the
/// primary then keeps a copy of what it hands over until acked (the kernel would drop sockets
/// that do not fit).
const TIGHT_MARGIN: u64 = 2 * MAX_CONN_BATCH as u64;

/// A running worker.
pub struct Runtime<H: Handler> {
    poll: Poll,
    signals: Signals,
    uplink: Uplink,
    handler: H,
    ctx: Context,
    table: Table<H::Conn>,
    admission: Admission,
    /// Connections whose PROXY header is awaited (`None`: the cluster expects none).
    prefaces: Option<Prefaces>,
    /// Taken in this turn (and whether the primary may still hold a copy), registered once
    /// their acks have left.
    taken: Vec<(TcpStream, bool)>,
    /// Connections taken in total.
    connections: u64,
    faults: Faults,
    next_sweep: Instant,
    /// How long to go on once the primary is gone, and the time that ends then.
    orphan_grace: Duration,
    orphan_deadline: Option<Instant>,
    /// The cluster has a drain delay: `SIGTERM` only marks the worker as leaving.
    leave_on_term: bool,
    /// Requests after which the primary is asked for a replacement (once; 0: never).
    recycle_after: u64,
    /// What this worker publishes to the primary (busy or idle, connections read).
    status: Option<StatusPage>,
}

impl<H: Handler> Runtime<H> {
    /// Sets up the loop around the inherited channel.
    pub fn new(env: &WorkerEnv, handler: H) -> Result<Self, WorkerError> {
        crate::sys::ignore_sigpipe();
        let channel = Channel::from_inherited(env.channel_fd)?;
        let signals = Signals::new(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP])?;
        let poll = Poll::new()?;
        let uplink = Uplink::new(channel, poll.registry(), env.report_closes)?;
        poll.registry().register(
            &mut mio::unix::SourceFd(&signals.raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        let now = Instant::now();
        let status = env.status_fd.and_then(|fd| {
            crate::sys::own_inherited_file(fd)
                .and_then(|f| StatusPage::open(&f))
                .map_err(|e| log::warn!("worker: no status page ({e})"))
                .ok()
        });
        Ok(Runtime {
            poll,
            signals,
            uplink,
            handler,
            ctx: Context::new(env.id, now),
            table: Table::default(),
            admission: Admission::new(env.max_connections),
            prefaces: env.proxy_header.map(Prefaces::new),
            taken: Vec::new(),
            connections: 0,
            faults: Faults::from_env(env.id),
            next_sweep: now + SWEEP_EVERY,
            orphan_grace: env.orphan_grace,
            orphan_deadline: None,
            leave_on_term: env.leave_on_term,
            recycle_after: env.max_requests,
            status,
        })
    }

    /// Serves until told to stop (or the primary is gone) and every connection is finished.
    pub fn run(mut self) -> Result<(), WorkerError> {
        log::info!("worker {} started", std::process::id());
        self.ctx.outgoing.push_back(ToPrimary::Online);
        self.uplink.flush(self.poll.registry(), &mut self.ctx);
        if self.faults.garbage {
            log::warn!("worker {}: sending garbage on purpose", std::process::id());
            self.uplink.send_garbage();
        }
        let mut events = Events::with_capacity(1024);
        loop {
            let room_for_held = self.admission.holds_any()
                && (self.ctx.draining || !self.admission.full(self.open()));
            let timeout = if self.table.has_yielded() || room_for_held {
                Some(Duration::ZERO)
            } else if self.table.is_empty() && self.prefaces.as_ref().is_none_or(Prefaces::is_empty)
            {
                None
            } else {
                Some(SWEEP_EVERY)
            };
            let timeout = match self.orphan_deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    Some(timeout.map_or(left, |t| t.min(left)))
                }
                None => timeout,
            };
            let waits = timeout != Some(Duration::ZERO);
            if let (Some(s), true) = (&self.status, waits) {
                s.set_busy(false);
            }
            let polled = self.poll.poll(&mut events, timeout);
            if let (Some(s), true) = (&self.status, waits) {
                s.set_busy(true);
            }
            if let Err(e) = polled {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
            self.ctx.now = Instant::now();
            for ev in events.iter() {
                self.on_event(ev.token(), ev.is_readable() || ev.is_read_closed());
            }
            for key in self.table.take_yielded() {
                self.conn_ready(key);
            }
            self.finish_turn();
            if self.ctx.draining && self.open() == 0 && !self.admission.holds_any() {
                break;
            }
            if self.orphan_deadline.is_some_and(|d| self.ctx.now >= d) {
                log::warn!(
                    "worker {}: primary gone for {:?}; exiting with {} connections unfinished",
                    std::process::id(),
                    self.orphan_grace,
                    self.open()
                );
                break;
            }
        }
        if let Some(p) = self.prefaces.as_ref().filter(|p| p.refused > 0) {
            log::info!(
                "worker {}: closed {} connections without a valid PROXY header",
                std::process::id(),
                p.refused
            );
        }
        let stats = self.stats();
        self.ctx.outgoing.push_back(ToPrimary::Stats(stats));
        self.uplink.flush(self.poll.registry(), &mut self.ctx);
        log::debug!("worker {} drained, exiting", std::process::id());
        Ok(())
    }

    fn on_event(&mut self, token: Token, readable: bool) {
        if token == CHANNEL {
            if readable {
                self.read_channel();
            }
        } else if token == SIGNALS {
            self.on_signals();
        } else if let Some(i) = ListenerIndex::from_token(token) {
            self.accept_all(i);
        } else if let Some(key) = PrefaceKey::from_token(token) {
            self.preface_ready(key);
        } else if let Some(key) = ConnKey::from_token(token) {
            self.conn_ready(key);
        }
    }

    /// Connections served now, counting those taken this turn.
    fn open(&self) -> usize {
        self.table.len() + self.taken.len() + self.prefaces.as_ref().map_or(0, Prefaces::len)
    }

    fn stats(&self) -> WorkerStats {
        WorkerStats {
            connections: self.connections,
            open: self.table.len() as u64,
            requests: self.ctx.requests,
            latency: self.ctx.latency,
        }
    }

    /// Acks what this turn took, registers it once the ack has left, reports, sweeps.
    fn finish_turn(&mut self) {
        if self.recycle_after > 0 && self.ctx.requests >= self.recycle_after {
            log::info!(
                "worker {} served {} requests: asking to be replaced",
                std::process::id(),
                self.ctx.requests
            );
            self.recycle_after = 0;
            self.ctx.outgoing.push_back(ToPrimary::Recycle);
        }
        if self.admission.holds_any() || self.admission.paused() {
            self.refill();
        }
        let all_sent = self.uplink.flush(self.poll.registry(), &mut self.ctx);
        if self.uplink.gone() {
            self.orphaned();
        }
        if all_sent {
            for (stream, copied) in std::mem::take(&mut self.taken) {
                self.add_conn(stream, copied);
            }
        }
        self.faults.exit_if_tripped(self.open() == 0);
        if self.ctx.now >= self.next_sweep {
            self.next_sweep = self.ctx.now + SWEEP_EVERY;
            self.sweep();
        }
        // Serving the new connections and the sweep may have queued messages (a handler's
        // Context::send, a close count): send them now, not whenever the next event comes,
        // which for a worker with no open connection may be never.
        if !self.ctx.outgoing.is_empty() || self.uplink.owes_reports() {
            self.uplink.flush(self.poll.registry(), &mut self.ctx);
        }
    }

    fn read_channel(&mut self) {
        if self.faults.tripped() {
            self.faults.left_unread();
            return;
        }
        loop {
            if self.faults.tripped() {
                return;
            }
            match self.uplink.recv(self.poll.registry()) {
                Inbound::Message(d) => self.on_message(d),
                Inbound::Empty => return,
                Inbound::Gone => {
                    self.orphaned();
                    return;
                }
            }
        }
    }

    fn on_message(&mut self, d: Delivery<ToWorker>) {
        match d.msg {
            ToWorker::Conn { ids } => self.receive_all(ids, d.fds, true),
            ToWorker::Give { ids } => self.receive_all(ids, d.fds, false),
            ToWorker::Listen => match d.fds.into_iter().next() {
                Some(fd) if !self.ctx.draining => {
                    if self.admission.add_listener(fd, self.poll.registry()) {
                        self.ctx.outgoing.push_back(ToPrimary::Listening);
                    }
                }
                Some(_) => {}
                None => log::error!("listen message arrived without its socket"),
            },
            ToWorker::Disconnect => self.start_drain(),
            ToWorker::Leaving => {
                log::info!("worker {}: host leaving", std::process::id());
                self.ctx.leaving = true;
            }
            ToWorker::StatsRequest => {
                let s = self.stats();
                self.ctx.outgoing.push_back(ToPrimary::Stats(s));
            }
            ToWorker::Message(payload) => self.handler.message(payload, &mut self.ctx),
        }
    }

    /// Connections handed over in one packet (to ack, or given). The kernel installs a
    /// packet's descriptors in order and drops the rest when this process is out of them, so
    /// the ids past the sockets that arrived are refused: the primary, if it kept copies (it
    /// does while this worker says it is tight), hands them elsewhere.
    fn receive_all(&mut self, ids: Vec<ConnId>, fds: Vec<OwnedFd>, ack: bool) {
        self.faults.count(ids.len());
        let (count, newest) = (ids.len() as u64, fds.iter().map(|f| f.as_raw_fd()).max());
        if let (Some(s), Some(newest)) = (&self.status, newest) {
            let limit = crate::sys::descriptor_limit();
            s.set_tight(u64::try_from(newest).unwrap_or(0) + TIGHT_MARGIN >= limit);
        }
        if ids.len() > fds.len() {
            log::error!(
                "worker {}: {} of {} connections arrived without their sockets (out of file \
                 descriptors?); returning them to the primary",
                std::process::id(),
                ids.len() - fds.len(),
                ids.len()
            );
        }
        let mut fds = fds.into_iter();
        for id in ids {
            match fds.next() {
                Some(fd) => self.receive(id, ack, fd),
                None => self.uplink.refuse(id),
            }
        }
        // Counted once the taken and held ones are published: the primary never sees them
        // neither unread nor held nor served.
        self.publish_open();
        if let Some(s) = &self.status {
            s.add_received(count);
        }
    }

    /// One connection handed over by the primary (`ack`: it wants an ack): serve it now, or
    /// hold it at capacity (published, so that the primary counts it as waiting).
    fn receive(&mut self, id: ConnId, ack: bool, fd: OwnedFd) {
        let stream = uplink::stream(fd);
        if self.admission.full(self.open()) && !self.ctx.draining {
            self.admission.hold(id, ack, stream);
            self.publish_held();
        } else {
            self.take(id, ack, stream);
        }
    }

    /// Takes a handed-over connection: ack it this turn if the primary wants an ack, serve it
    /// once the ack has left.
    fn take(&mut self, id: ConnId, ack: bool, stream: TcpStream) {
        if ack {
            self.uplink.ack(id);
        }
        self.taken.push((stream, ack));
    }

    /// Publishes how many connections this worker serves, counting the ones taken this turn
    /// and not started yet (they wait behind whatever this turn is busy with).
    fn publish_open(&self) {
        if let Some(s) = &self.status {
            s.set_open(self.open() as u64);
        }
    }

    fn publish_held(&self) {
        if let Some(s) = &self.status {
            s.set_held(self.admission.held() as u64);
        }
    }

    /// Below the limit again: take held connections, resume accepting.
    fn refill(&mut self) {
        let mut took = false;
        while let Some((id, ack, stream)) = self.admission.unhold(self.open(), self.ctx.draining) {
            // Acked even if given: the ack wakes the primary, which may hold connections back
            // for want of room here (the primary ignores the id).
            self.uplink.ack(id);
            self.taken.push((stream, ack));
            took = true;
        }
        if took {
            self.publish_held();
        }
        if self.admission.should_resume(self.open()) {
            for i in 0..self.admission.listener_count() {
                self.accept_all(self.admission.listener(i));
            }
        }
    }

    fn accept_all(&mut self, index: ListenerIndex) {
        while let Accepted::Conn(stream) = self.admission.accept(index, self.open()) {
            self.add_conn(stream, false);
        }
    }

    fn add_conn(&mut self, stream: TcpStream, handed: bool) {
        self.connections += 1;
        match self.prefaces.as_mut() {
            Some(p) => {
                let key = p.insert(stream, handed, self.ctx.now);
                self.preface_start(key);
            }
            None => self.serve(stream, handed, None),
        }
    }

    /// A connection that must open with a PROXY header: read it now (it usually came with the
    /// connection, always with `TCP_DEFER_ACCEPT`: then it is never registered under its
    /// waiting token), or wait for it.
    fn preface_start(&mut self, key: PrefaceKey) {
        let Some(w) = self.prefaces.as_mut().and_then(|p| p.get_mut(key)) else {
            return;
        };
        match preface::read_header(&mut w.stream) {
            HeaderRead::More => {}
            HeaderRead::Refused(why) => return self.preface_close(key, Some(&why), false),
            HeaderRead::Done(peer) => return self.preface_done(key, peer, false),
        }
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut w.stream, key.token(), Interest::READABLE)
        {
            // (Bytes that come between the read and the registration raise an event.)
            log::warn!("cannot register connection: {e}");
            self.preface_close(key, None, false);
        }
    }

    /// Bytes arrived on a connection waiting for its header.
    fn preface_ready(&mut self, key: PrefaceKey) {
        let Some(w) = self.prefaces.as_mut().and_then(|p| p.get_mut(key)) else {
            return;
        };
        match preface::read_header(&mut w.stream) {
            HeaderRead::More => {}
            HeaderRead::Refused(why) => self.preface_close(key, Some(&why), true),
            HeaderRead::Done(peer) => self.preface_done(key, peer, true),
        }
    }

    /// The header of `key` was read: the handler gets the connection.
    fn preface_done(
        &mut self,
        key: PrefaceKey,
        peer: Option<std::net::SocketAddr>,
        registered: bool,
    ) {
        let Some(mut w) = self.prefaces.as_mut().and_then(|p| p.remove(key)) else {
            return;
        };
        if registered {
            let _ = self.poll.registry().deregister(&mut w.stream);
        }
        self.serve(w.stream, w.handed, peer);
    }

    /// Closes a connection that gave no valid header (`why`), or could not be watched.
    fn preface_close(&mut self, key: PrefaceKey, why: Option<&str>, registered: bool) {
        let Some(p) = self.prefaces.as_mut() else {
            return;
        };
        let Some(mut w) = p.remove(key) else {
            return;
        };
        if let Some(why) = why {
            p.refused += 1;
            log::debug!(
                "worker {}: closing a connection without a valid PROXY header: {why}",
                std::process::id()
            );
        }
        if registered {
            let _ = self.poll.registry().deregister(&mut w.stream);
        }
        // A FIN first: the client sees an orderly end, not the reset that closing a socket
        // with unread bytes (a peeked partial header) sends.
        let _ = w.stream.shutdown(std::net::Shutdown::Write);
        self.uplink.closed();
    }

    /// Hands a connection to the handler; `peer` is the client its PROXY header named.
    fn serve(&mut self, stream: TcpStream, handed: bool, peer: Option<std::net::SocketAddr>) {
        self.ctx.peer = peer;
        let conn = self.handler.connect(stream, &mut self.ctx);
        let key = self.table.insert(Entry {
            conn,
            handed,
            peer,
            registered: false,
        });
        self.publish_open();
        let Some(entry) = self.table.get_mut(key) else {
            return;
        };
        // The request is often already here (always, with TCP_DEFER_ACCEPT): serve it now,
        // before registering. A connection that is done at once (a `Connection: close` request)
        // then never costs the two epoll_ctl calls; one that stays is registered, and epoll
        // reports at once what arrived meanwhile.
        let status = entry.conn.ready(&mut self.ctx);
        if status != Status::Close {
            let registered = self.poll.registry().register(
                entry.conn.stream(),
                key.token(),
                Interest::READABLE | Interest::WRITABLE,
            );
            if let Err(e) = registered {
                log::warn!("cannot register connection: {e}");
                self.close(key);
                return;
            }
            entry.registered = true;
        }
        self.apply(key, status);
    }

    fn conn_ready(&mut self, key: ConnKey) {
        let Some(entry) = self.table.get_mut(key) else {
            return;
        };
        self.ctx.peer = entry.peer;
        let status = entry.conn.ready(&mut self.ctx);
        self.apply(key, status);
    }

    /// Acts on what a connection said it wants.
    fn apply(&mut self, key: ConnKey, status: Status) {
        match status {
            Status::Close => self.close(key),
            Status::Yield => self.table.run_again(key),
            Status::Open => {}
        }
    }

    fn close(&mut self, key: ConnKey) {
        if let Some(mut entry) = self.table.remove(key) {
            if entry.registered {
                let _ = self.poll.registry().deregister(entry.conn.stream());
            }
            if entry.handed {
                // The primary may not have read our ack yet and still hold a copy: closing ours
                // would then leave the FIN (and the teardown work) to it, later. Send it now.
                let _ = entry.conn.stream().shutdown(std::net::Shutdown::Write);
            }
            self.uplink.closed();
            self.publish_open();
        }
    }

    fn sweep(&mut self) {
        let now = self.ctx.now;
        for key in self
            .table
            .keys_where(|e| e.conn.deadline().is_some_and(|d| d <= now))
        {
            if let Some(entry) = self.table.get_mut(key) {
                self.ctx.peer = entry.peer;
                let status = entry.conn.timed_out(&mut self.ctx);
                self.apply(key, status);
            }
        }
        let late = self.prefaces.as_ref().map(|p| p.late(now));
        for key in late.unwrap_or_default() {
            self.preface_close(
                key,
                Some("no complete header within the header timeout"),
                true,
            );
        }
    }

    fn on_signals(&mut self) {
        for sig in self.signals.pending() {
            match sig {
                // A terminal's Ctrl-C reaches the whole process group; the primary coordinates.
                Signal::SIGINT | Signal::SIGHUP => {}
                // systemd signals the whole group: with a drain delay, the primary decides when
                // to stop; until then, keep serving as a leaving host.
                Signal::SIGTERM if self.leave_on_term => {
                    if !self.ctx.leaving {
                        log::info!("worker {}: host leaving (SIGTERM)", std::process::id());
                        self.ctx.leaving = true;
                    }
                }
                _ => self.start_drain(),
            }
        }
    }

    /// The primary is gone: finish what is in flight, within the grace it gave us.
    fn orphaned(&mut self) {
        if self.orphan_deadline.is_none() {
            log::info!(
                "worker {}: primary went away; draining (at most {:?})",
                std::process::id(),
                self.orphan_grace
            );
            self.orphan_deadline = Some(crate::deadline_after(self.orphan_grace));
        }
        self.start_drain();
    }

    fn start_drain(&mut self) {
        if self.ctx.draining {
            return;
        }
        self.ctx.draining = true;
        self.admission.close_listeners(self.poll.registry());
        for key in self.table.keys() {
            if let Some(entry) = self.table.get_mut(key) {
                self.ctx.peer = entry.peer;
                let status = entry.conn.drain(&mut self.ctx);
                self.apply(key, status);
            }
        }
    }
}
