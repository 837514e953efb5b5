//! The primary's side of Node's cluster protocol (`herd run`): answering `queryServer` with
//! the sockets herd bound, turning `listening`, `{ack, accepted}`, `exitedAfterDisconnect` and
//! user messages into herd's own bookkeeping and events. The bytes live in
//! [`crate::ipc::node`].
//!
//! The server a worker asks for on herd's port (or on port 0) is herd's own listener, served
//! by the cluster's policy: round-robin, least-connections and idle-first answer with a
//! `sockname` and hand connections as `newconn`s (each kept until the worker's ack; a Node
//! worker publishes no status page, so idle-first counts it idle when it has acked every
//! connection handed to it); `shared` hands the listening socket (Node's `SCHED_NONE`);
//! `reuseport` hands the worker's own `SO_REUSEPORT` socket. Any other TCP server is bound on
//! first demand and handed as a shared socket to every worker that asks for it.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::workers::{ProcKey, State};
use super::Primary;
use crate::event::Event;
use crate::ipc::node::codec::{self, DecodeError};
use crate::ipc::node::{ConnReply, FromNode, ServerQuery};
use crate::policy::ListenerPlan;

/// libuv's `UV_ENOTSUP`: the answer for pipes and UDP, which `herd run` does not serve.
const UV_ENOTSUP: i32 = -95;
/// libuv's `UV_EINVAL`: an address that is not an IP address.
const UV_EINVAL: i32 = -22;
/// How long a Node worker that refused a connection gets none.
const REFUSAL_COOLDOWN: Duration = Duration::from_millis(200);

/// One server Node workers asked for.
#[derive(Debug)]
struct Server {
    key: String,
    query: ServerQuery,
    addr: SocketAddr,
    /// TLS session-ticket keys of the first worker that asked, given to all.
    data: Value,
    /// `None`: herd's own listener(s); `Some`: bound for this server.
    own: Option<TcpListener>,
}

/// The servers Node workers asked for.
#[derive(Debug, Default)]
pub(super) struct Servers {
    servers: Vec<Server>,
    /// Keys that could not be bound (logged once).
    failed: HashSet<String>,
    /// How the loop paces itself for Node workers.
    pub(super) pace: super::node_pace::Pace,
}

impl Servers {
    fn find(&self, key: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.key == key)
    }

    /// The server a `listening` message is about (it carries the real port, not the asked
    /// one).
    fn listening(&self, l: &ServerQuery) -> Option<&Server> {
        self.servers.iter().find(|s| {
            s.query.address == l.address
                && s.query.address_type == l.address_type
                && s.query.fd == l.fd
                && s.query.index == l.index
                && (s.query.port == l.port || i64::from(s.addr.port()) == l.port)
        })
    }
}

impl Primary {
    /// Handles one message from a Node worker.
    pub(super) fn on_node_message(&mut self, key: ProcKey, msg: Result<FromNode, DecodeError>) {
        let Some((id, pid)) = self.workers.who(key) else {
            return;
        };
        if let Some(p) = self.workers.get_mut(key) {
            p.watch.last_heard = Some(Instant::now());
        }
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                log::warn!("worker {pid} sent a line that is not JSON ({e}); ignored");
                return;
            }
        };
        match msg {
            FromNode::HandleAck => {
                self.with_node(key, |l| l.handle_acked());
                self.flush(key);
            }
            FromNode::HandleNack => {
                log::warn!("worker {pid} got a handle line without its descriptor");
                let back = self
                    .with_node(key, |l| l.handle_nacked())
                    .unwrap_or_default();
                self.give_back(key, back, false);
            }
            FromNode::Online => self.emit(Event::Online { id, pid }),
            FromNode::QueryServer { seq, query } => self.answer_query(key, seq, query),
            FromNode::Listening(q) => self.node_listening(key, &q),
            FromNode::Close { key: k } => log::debug!("worker {pid} closed its server {k}"),
            FromNode::ExitedAfterDisconnect { seq } => self.node_leaving(key, seq),
            FromNode::Reply {
                ack,
                accepted: Some(accepted),
            } => self.node_conn_reply(key, ack, accepted),
            FromNode::Reply { .. } => {}
            FromNode::User(text) => {
                log::debug!("message from worker {pid}: {text}");
                let payload = text.into_bytes();
                self.emit(Event::Message { id, pid, payload });
            }
            FromNode::Unknown(what) => log::warn!("worker {pid} sent {what}; ignored"),
        }
    }

    fn with_node<T>(
        &mut self,
        key: ProcKey,
        f: impl FnOnce(&mut crate::ipc::node::NodeLink) -> T,
    ) -> Option<T> {
        self.workers.get_mut(key)?.link.node_mut().map(f)
    }

    /// Connections that came back from worker `key` go to the others (after a pause for it
    /// when it refused them).
    fn give_back(&mut self, key: ProcKey, back: Vec<(crate::ipc::ConnId, OwnedFd)>, cool: bool) {
        if let Some(p) = self.workers.get_mut(key) {
            p.open = p.open.saturating_sub(back.len() as u64);
            if cool {
                p.cool_until = Some(Instant::now() + REFUSAL_COOLDOWN);
            }
        }
        self.flush(key);
        if !back.is_empty() {
            self.acceptor.put_back(back);
            self.dispatch();
        }
    }

    fn node_conn_reply(&mut self, key: ProcKey, ack: u64, accepted: bool) {
        let Some(reply) = self.with_node(key, |l| l.conn_reply(ack, accepted)) else {
            return;
        };
        match reply {
            ConnReply::Taken => {
                if let Some(p) = self.workers.get_mut(key) {
                    // Node workers report no closes: "open" counts what they have not taken.
                    p.open = p.open.saturating_sub(1);
                    p.stats.connections += 1;
                }
            }
            ConnReply::Refused(id, fd) => {
                log::debug!("worker {key:?} refused connection {id}");
                self.give_back(key, vec![(id, fd)], true);
            }
            ConnReply::Other => {}
        }
    }

    /// The worker leaves on its own (`cluster.worker.disconnect()`): ack it, so it may go, and
    /// count its exit as asked for.
    fn node_leaving(&mut self, key: ProcKey, seq: u64) {
        let back = match self.workers.get_mut(key) {
            Some(p) => {
                p.disconnect_sent = true;
                p.state = State::Disconnecting;
                let back = p.link.unsend();
                if let Some(l) = p.link.node_mut() {
                    l.ack(seq);
                }
                back
            }
            None => return,
        };
        self.give_back(key, back, false);
    }

    fn node_listening(&mut self, key: ProcKey, q: &ServerQuery) {
        let addr = self.node.listening(q).map_or(self.local_addr, |s| s.addr);
        let Some((id, pid)) = self.workers.who(key) else {
            return;
        };
        let Some(p) = self.workers.get_mut(key) else {
            return;
        };
        let slot = p.slot;
        if p.state == State::Starting {
            p.state = State::Online;
        }
        if self.workers.slot(slot).current == Some(key) {
            self.release(slot);
        }
        self.emit(Event::Listening { id, pid, addr });
        self.dispatch();
        if !self.phase.announced && !self.stopping() && self.workers.all_online() {
            self.phase.announced = true;
            for s in &self.node.servers {
                log::info!("listening on http://{}", s.addr);
            }
        }
    }

    /// Answers `queryServer`: herd's listener, a server bound for it, or an errno.
    fn answer_query(&mut self, key: ProcKey, seq: u64, q: ServerQuery) {
        let skey = q.key();
        let Some(pid) = self.workers.get(key).map(|p| p.pid) else {
            return;
        };
        let tcp = q.port >= 0 && matches!(q.address_type.as_i64(), Some(4 | 6));
        let found = match self.node.find(&skey) {
            Some(i) => Ok(i),
            None if !tcp => Err(UV_ENOTSUP),
            None => self.add_server(skey.clone(), &q),
        };
        let i = match found {
            Ok(i) => i,
            Err(errno) => {
                if self.node.failed.insert(skey.clone()) {
                    let what = if tcp {
                        "cannot bind"
                    } else {
                        "pipes and UDP are not served by herd run:"
                    };
                    log::error!("worker {pid} asked for server {skey}: {what} (errno {errno})");
                }
                self.with_node(key, |l| l.answer_error(seq, &skey, errno));
                self.flush(key);
                return;
            }
        };
        let server = &mut self.node.servers[i];
        if server.data.is_null() {
            server.data = q.data.clone();
        }
        let gone = || Some(Err(std::io::Error::from_raw_os_error(nix::libc::ECANCELED)));
        let handed = match &server.own {
            Some(l) => Some(l.try_clone()),
            // Shutting down: the listeners are closed.
            None if self.phase.shutdown_deadline.is_some() => gone(),
            None => match self.config.policy.listener_plan() {
                None => None,
                Some(ListenerPlan::Shared) => self
                    .listeners_for_workers
                    .first()
                    .map(|l| l.try_clone())
                    .or_else(gone),
                Some(ListenerPlan::PerWorker) => {
                    let slot = self.workers.get(key).map_or(0, |p| p.slot.0);
                    self.listeners_for_workers
                        .get(slot)
                        .map(|l| l.try_clone())
                        .or_else(gone)
                }
            },
        };
        let (data, addr) = (server.data.clone(), server.addr);
        let answered = match handed {
            None => self.with_node(key, |l| l.answer_rr(seq, &skey, &data, addr)),
            Some(Ok(fd)) => self.with_node(key, |l| {
                l.answer_shared(seq, &skey, &data, OwnedFd::from(fd))
            }),
            Some(Err(e)) => {
                log::error!("cannot share server {skey} with worker {pid}: {e}");
                self.with_node(key, |l| l.answer_error(seq, &skey, codec::uv_errno(&e)))
            }
        };
        if answered.is_some() {
            self.flush(key);
        }
    }

    /// Adds the server a worker asked for: herd's own when it names herd's port (or port 0,
    /// while herd's is unclaimed) on herd's address (or no address, or an unspecified one),
    /// else a socket bound for it. `Err`: a libuv errno.
    fn add_server(&mut self, key: String, q: &ServerQuery) -> Result<usize, i32> {
        let main_claimed = self.node.servers.iter().any(|s| s.own.is_none());
        let herd_ip = self.local_addr.ip();
        let same_host = match q.address.as_deref().map(str::parse::<IpAddr>) {
            None => true,
            Some(Ok(ip)) => ip.is_unspecified() || herd_ip.is_unspecified() || ip == herd_ip,
            Some(Err(_)) => false,
        };
        let herds = same_host
            && (i64::from(self.local_addr.port()) == q.port || (q.port == 0 && !main_claimed));
        let (addr, own) = if herds {
            (self.local_addr, None)
        } else {
            let l = bind_for(q)?;
            let addr = l.local_addr().map_err(|e| codec::uv_errno(&e))?;
            (addr, Some(l))
        };
        self.node.servers.push(Server {
            key,
            query: q.clone(),
            addr,
            data: Value::Null,
            own,
        });
        Ok(self.node.servers.len() - 1)
    }
}

/// Binds what a query asks for, as Node does: no address means `::` (dual-stack), falling back
/// to `0.0.0.0`.
fn bind_for(q: &ServerQuery) -> Result<TcpListener, i32> {
    let port = u16::try_from(q.port).map_err(|_| UV_EINVAL)?;
    let ips: Vec<IpAddr> = match q.address.as_deref() {
        None => vec![Ipv6Addr::UNSPECIFIED.into(), IpAddr::from([0, 0, 0, 0])],
        Some(a) => vec![a.parse().map_err(|_| UV_EINVAL)?],
    };
    let mut last = UV_EINVAL;
    for ip in ips {
        match crate::listen::bind_listener(SocketAddr::new(ip, port), false) {
            Ok(l) => return Ok(l),
            Err(e) => last = codec::uv_errno(&e.source),
        }
    }
    Err(last)
}
