//! The worker's loop, serving side: connections accepted or taken go to the handler (after
//! their PROXY header, with `--proxy-protocol`), and the handler's answers are acted on.

use mio::net::TcpStream;
use mio::Interest;

use super::super::admission::{Accepted, ListenerIndex};
use super::super::preface::{PrefaceKey, Step};
use super::super::table::{ConnKey, Entry};
use super::super::{Connection, Handler, Status};
use super::Runtime;

impl<H: Handler> Runtime<H> {
    pub(super) fn accept_all(&mut self, index: ListenerIndex) {
        while let Accepted::Conn(stream) = self.admission.accept(index, self.open()) {
            self.add_conn(stream, false);
        }
    }

    pub(super) fn add_conn(&mut self, stream: TcpStream, handed: bool) {
        self.connections += 1;
        match self.prefaces.as_mut() {
            Some(p) => {
                let key = p.insert(stream, handed, self.ctx.now);
                self.preface_start(key);
            }
            None => self.serve(stream, handed, None),
        }
    }

    /// A connection that must open with a PROXY header: read it now, or wait for it.
    fn preface_start(&mut self, key: PrefaceKey) {
        if let Some(p) = self.prefaces.as_mut() {
            let step = p.start(key, self.poll.registry());
            self.preface_step(step);
        }
    }

    /// Bytes arrived on a connection waiting for its header.
    pub(super) fn preface_ready(&mut self, key: PrefaceKey) {
        if let Some(p) = self.prefaces.as_mut() {
            let step = p.ready(key, self.poll.registry());
            self.preface_step(step);
        }
    }

    /// What a step of a waiting connection gave: the handler gets it once its header is read.
    fn preface_step(&mut self, step: Step) {
        match step {
            Step::Waiting => {}
            Step::Done {
                stream,
                handed,
                peer,
            } => self.serve(stream, handed, peer),
            Step::Closed => self.uplink.closed(),
        }
    }

    /// Hands a connection to the handler; `peer` is the client its PROXY header named.
    fn serve(&mut self, stream: TcpStream, handed: bool, peer: Option<std::net::SocketAddr>) {
        self.ctx.peer = peer;
        self.publish.working();
        let conn = self.handler.connect(stream, &mut self.ctx);
        let key = self.table.insert(Entry {
            conn,
            handed,
            peer,
            registered: false,
        });
        self.publish.open(self.open());
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

    pub(super) fn conn_ready(&mut self, key: ConnKey) {
        let Some(entry) = self.table.get_mut(key) else {
            return;
        };
        self.ctx.peer = entry.peer;
        self.publish.working();
        let status = entry.conn.ready(&mut self.ctx);
        self.apply(key, status);
    }

    /// Acts on what a connection said it wants.
    pub(super) fn apply(&mut self, key: ConnKey, status: Status) {
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
                // The primary may still hold a copy: until it reads our ack, or, for a given
                // connection, when waking us preempted it between its `sendmsg` and its
                // `close` (we then serve the request first). Closing ours would leave the FIN
                // and the TCP teardown to the primary, the one process every connection goes
                // through. Send the FIN here; its `close` then has little left to do.
                let _ = entry.conn.stream().shutdown(std::net::Shutdown::Write);
            }
            self.uplink.closed();
            self.publish.open(self.open());
        }
    }

    pub(super) fn sweep(&mut self) {
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
        if let Some(p) = self.prefaces.as_mut() {
            for _ in 0..p.close_late(now, self.poll.registry()) {
                self.uplink.closed();
            }
        }
    }
}
