//! The primary's end of a Node worker's channel: an ordered queue of lines, handles in flight
//! counted until their `NODE_HANDLE_ACK`, and each handed connection kept until the worker's
//! `{ack, accepted}`: a worker that dies or refuses first loses nothing.
//!
//! Several handles may be in flight at once, each whole in its own `sendmsg`. The kernel never
//! joins a read across a descriptor (a Unix stream read stops after the segment that carries
//! one), so each of the worker's reads holds at most one handle and the line it came with,
//! which is how Node's receiver binds them ("SCM_RIGHTS messages don't get coalesced",
//! `lib/internal/child_process.js`). The one case that would break it is a handle line
//! written in pieces: its descriptor would ride on the first piece and the rest could be read
//! together with the next handle's line. So after a partial write of a handle line nothing
//! more is written until every handle in flight is acknowledged (Node's own sender always
//! waits like this). ACKs and NACKs come back in the order the lines were sent.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::codec::{self, DecodeError, FromNode, LineReader};
use super::stream::Stream;
use crate::ipc::{ConnId, IpcError};

/// Most handle lines in flight on one channel (each waits for its `NODE_HANDLE_ACK`).
pub const MAX_HANDLES_IN_FLIGHT: usize = 64;

/// One line waiting to be written.
#[derive(Debug)]
struct Out {
    bytes: Vec<u8>,
    /// The descriptor that rides on it (a connection or a listening socket).
    fd: Option<OwnedFd>,
    /// For a `newconn`: its sequence number and the connection's id.
    conn: Option<(u64, ConnId)>,
    /// A user message: its payload bytes (counted against the queue's bound).
    user: Option<usize>,
}

/// What the worker answered to a `newconn`.
#[derive(Debug)]
pub enum ConnReply {
    /// Taken: the primary's copy is closed.
    Taken,
    /// Refused (the worker's server is closing or full): the connection comes back.
    Refused(ConnId, OwnedFd),
    /// Not an answer to a connection.
    Other,
}

/// The primary's end of a Node worker's channel.
#[derive(Debug)]
pub struct NodeLink {
    stream: Stream,
    reader: LineReader,
    /// Scratch space for reads.
    scratch: Vec<u8>,
    inbox: VecDeque<Result<FromNode, DecodeError>>,
    out: VecDeque<Out>,
    /// Bytes of `out.front()` already written (its descriptor went with the first).
    partial: usize,
    /// Handle lines written whose `NODE_HANDLE_ACK` has not come, oldest first: the
    /// connection's seq, or `None` for a listening socket.
    handles: VecDeque<Option<u64>>,
    /// A handle line was written in pieces: hold every line until `handles` is empty.
    held: bool,
    /// The primary's sequence numbers for the messages it sends.
    seq: u64,
    /// Connections sent and not yet answered: the primary's copies, by `newconn` seq.
    awaiting: HashMap<u64, (ConnId, OwnedFd)>,
    queued_conns: usize,
    /// User messages (and their bytes) waiting to be written.
    user_load: (usize, usize),
    /// Every `newconn` line up to its sequence number (for the round-robin server this worker
    /// listens on).
    newconn_prefix: Vec<u8>,
    /// The token, if registered, and the interest the descriptor is registered with (`None`:
    /// taken out of the poll while lingering with nothing to write).
    registered: Option<(Token, Option<Interest>)>,
    /// Lines wait to be written and may be: writable interest is wanted.
    want_write: bool,
    /// The primary reads this channel on each turn of its loop instead of being woken by each
    /// line the worker writes (see [`NodeLink::linger`]).
    lingering: bool,
    /// The last read came short: the socket held nothing more then, and any later line
    /// brings a new readiness event, so no read to `EAGAIN` is needed.
    drained: bool,
}

impl NodeLink {
    /// Wraps the primary's end of a fresh channel.
    pub fn new(stream: Stream) -> NodeLink {
        NodeLink {
            stream,
            reader: LineReader::default(),
            scratch: vec![0; 16 * 1024],
            inbox: VecDeque::new(),
            out: VecDeque::new(),
            partial: 0,
            handles: VecDeque::new(),
            held: false,
            seq: 0,
            awaiting: HashMap::new(),
            queued_conns: 0,
            user_load: (0, 0),
            newconn_prefix: codec::newconn_prefix("\"\""),
            registered: None,
            want_write: false,
            lingering: false,
            drained: false,
        }
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq += 1;
        s
    }

    fn push(&mut self, bytes: Vec<u8>, fd: Option<OwnedFd>, conn: Option<(u64, ConnId)>) {
        self.out.push_back(Out {
            bytes,
            fd,
            conn,
            user: None,
        });
    }

    /// The server key connections are handed under (set by the round-robin reply).
    pub fn set_conn_key(&mut self, key: &str) {
        self.newconn_prefix = codec::newconn_prefix(&codec::json_key(key));
    }

    /// Queues a connection as a `newconn` for the worker's round-robin server.
    pub fn hand(&mut self, id: ConnId, socket: OwnedFd) {
        let seq = self.next_seq();
        self.queued_conns += 1;
        let line = codec::newconn_with(&self.newconn_prefix, seq);
        self.push(line, Some(socket), Some((seq, id)));
    }

    /// Queues a round-robin answer to the worker's `queryServer` `ack`.
    pub fn answer_rr(
        &mut self,
        ack: u64,
        key: &str,
        data: &serde_json::Value,
        addr: std::net::SocketAddr,
    ) {
        self.set_conn_key(key);
        let seq = self.next_seq();
        self.push(
            codec::rr_reply(ack, key, data, codec::sockname(addr), seq),
            None,
            None,
        );
    }

    /// Queues a shared-handle answer: `listener` travels with it.
    pub fn answer_shared(
        &mut self,
        ack: u64,
        key: &str,
        data: &serde_json::Value,
        listener: OwnedFd,
    ) {
        let seq = self.next_seq();
        self.push(
            codec::shared_reply(ack, key, data, seq),
            Some(listener),
            None,
        );
    }

    /// Queues an error answer (`errno`: a negative libuv errno).
    pub fn answer_error(&mut self, ack: u64, key: &str, errno: i32) {
        let seq = self.next_seq();
        self.push(codec::error_reply(ack, key, errno, seq), None, None);
    }

    /// Queues a bare acknowledgement of the worker's message `ack`.
    pub fn ack(&mut self, ack: u64) {
        let seq = self.next_seq();
        self.push(codec::ack(ack, seq), None, None);
    }

    /// Queues `act: disconnect`.
    pub fn disconnect(&mut self) {
        let seq = self.next_seq();
        self.push(codec::disconnect(seq), None, None);
    }

    /// Queues a user message: JSON text as it is (compacted), anything else as a JSON string.
    pub fn send_user(&mut self, payload: &[u8]) {
        let bytes = codec::user(payload).unwrap_or_else(|| {
            let text = String::from_utf8_lossy(payload);
            codec::user(
                serde_json::Value::from(text.as_ref())
                    .to_string()
                    .as_bytes(),
            )
            .unwrap_or_default()
        });
        self.user_load.0 += 1;
        self.user_load.1 += payload.len();
        self.out.push_back(Out {
            bytes,
            fd: None,
            conn: None,
            user: Some(payload.len()),
        });
    }

    /// Connections handed over (queued or sent) and not yet answered.
    pub fn unacked(&self) -> usize {
        self.awaiting.len() + self.queued_conns
    }

    /// True when nothing waits to be written.
    pub fn is_idle(&self) -> bool {
        self.out.is_empty()
    }

    /// User messages (and payload bytes) waiting.
    pub fn ordered_load(&self) -> (usize, usize) {
        self.user_load
    }

    /// Bytes written that the worker has not read.
    pub fn unread(&self) -> usize {
        self.stream.unread_by_peer()
    }

    /// True while nothing may be written: a handle line went in pieces and handles are still
    /// in flight, or the most handles are in flight.
    fn blocked(&self) -> bool {
        let next_is_handle = self
            .out
            .front()
            .is_some_and(|o| o.fd.is_some() && self.partial == 0);
        (self.held && !self.handles.is_empty())
            || (next_is_handle && self.handles.len() >= MAX_HANDLES_IN_FLIGHT)
    }

    /// Writes what the socket takes. `Err`: the worker's end is gone.
    pub fn flush(&mut self, registry: &Registry) -> Result<(), IpcError> {
        while !self.blocked() {
            let Some(front) = self.out.front() else { break };
            let fd = (self.partial == 0)
                .then(|| front.fd.as_ref().map(|f| f.as_fd()))
                .flatten();
            match self.stream.send(&front.bytes[self.partial..], fd) {
                Ok(n) => self.partial += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(IpcError::Io(e)),
            }
            if self.partial < front.bytes.len() {
                if front.fd.is_some() {
                    self.held = true;
                }
                continue;
            }
            self.partial = 0;
            if let Some(done) = self.out.pop_front() {
                self.sent(done);
            }
        }
        self.want_write = !self.out.is_empty() && !self.blocked();
        self.update_interest(registry).map_err(IpcError::Io)
    }

    /// True when the worker owes answers that nothing waits on urgently: connections were
    /// handed and not answered, and the next handle line is not held back by acks. Such a
    /// channel may [`linger`](NodeLink::linger).
    pub fn may_linger(&self) -> bool {
        !self.awaiting.is_empty() && !self.blocked() && !self.held
    }

    /// Lingering (`on`): the channel no longer wakes the primary when the worker writes (its
    /// readable interest is off; a hang-up still does), and the primary reads it once per turn
    /// instead. Under a stream of new connections each of a Node worker's two answers per
    /// connection (`NODE_HANDLE_ACK`, then `{ack, accepted}`) would otherwise wake the primary
    /// on its own; lingering, they are read together with the next accept. Turning it off
    /// reports the channel readable at once if anything waits.
    pub fn linger(&mut self, registry: &Registry, on: bool) -> io::Result<()> {
        self.lingering = on;
        self.update_interest(registry)
    }

    /// True while the channel lingers.
    pub fn lingering(&self) -> bool {
        self.lingering
    }

    fn sent(&mut self, done: Out) {
        if let Some(n) = done.user {
            self.user_load.0 -= 1;
            self.user_load.1 -= n;
        }
        if done.fd.is_some() {
            self.handles.push_back(done.conn.map(|(seq, _)| seq));
        }
        if let (Some((seq, id)), Some(fd)) = (done.conn, done.fd) {
            self.queued_conns -= 1;
            self.awaiting.insert(seq, (id, fd));
        }
    }

    /// The worker has the oldest handle in flight (`NODE_HANDLE_ACK`).
    pub fn handle_acked(&mut self) {
        self.handles.pop_front();
        if self.handles.is_empty() {
            self.held = false;
        }
    }

    /// The oldest handle in flight did not arrive with its line (`NODE_HANDLE_NACK`). A
    /// connection it carried comes back (the worker never had it).
    pub fn handle_nacked(&mut self) -> Vec<(ConnId, OwnedFd)> {
        let oldest = self.handles.pop_front().flatten();
        if self.handles.is_empty() {
            self.held = false;
        }
        oldest
            .and_then(|s| self.awaiting.remove(&s))
            .into_iter()
            .collect()
    }

    /// The worker answered `newconn` `ack`.
    pub fn conn_reply(&mut self, ack: u64, accepted: bool) -> ConnReply {
        match self.awaiting.remove(&ack) {
            Some(_) if accepted => ConnReply::Taken,
            Some((id, fd)) => ConnReply::Refused(id, fd),
            None => ConnReply::Other,
        }
    }

    /// Reads what the worker sent and returns the next message, if any. [`IpcError::Closed`]
    /// once the worker closed its end and everything before was returned.
    ///
    /// A read that comes back shorter than the buffer found the socket empty: the call after
    /// the messages it brought returns `None` without reading again (a line written since
    /// then is a new readiness event), and the next call reads.
    pub fn recv(&mut self) -> Result<Option<Result<FromNode, DecodeError>>, IpcError> {
        if let Some(m) = self.inbox.pop_front() {
            return Ok(Some(m));
        }
        loop {
            if std::mem::take(&mut self.drained) {
                return Ok(None);
            }
            match self.stream.recv(&mut self.scratch) {
                Ok(0) => {
                    self.decode_lines();
                    return match self.inbox.pop_front() {
                        Some(m) => Ok(Some(m)),
                        None => Err(IpcError::Closed),
                    };
                }
                Ok(n) => {
                    self.drained = n < self.scratch.len();
                    self.reader.push(&self.scratch[..n]);
                    self.decode_lines();
                    if !self.inbox.is_empty() {
                        return Ok(self.inbox.pop_front());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(IpcError::Io(e)),
            }
        }
    }

    fn decode_lines(&mut self) {
        while let Some(line) = self.reader.next_line() {
            match line {
                Ok([]) => {}
                Ok(l) => self.inbox.push_back(codec::decode(l)),
                Err(n) => self
                    .inbox
                    .push_back(Err(DecodeError::Json(format!("a line of {n} bytes")))),
            }
        }
    }

    /// Takes back the connections not yet written (oldest first); other lines stay.
    pub fn unsend(&mut self) -> Vec<(ConnId, OwnedFd)> {
        let mut back = Vec::new();
        let keep_front = self.partial > 0;
        let mut kept = VecDeque::with_capacity(self.out.len());
        for (i, o) in std::mem::take(&mut self.out).into_iter().enumerate() {
            match (o.conn, o.fd) {
                (Some((_, id)), Some(fd)) if !(i == 0 && keep_front) => {
                    self.queued_conns -= 1;
                    back.push((id, fd));
                }
                (conn, fd) => kept.push_back(Out { conn, fd, ..o }),
            }
        }
        self.out = kept;
        back
    }

    /// Takes back every connection the worker has not taken (it died or its channel closed),
    /// in id order.
    pub fn reclaim(&mut self) -> Vec<(ConnId, OwnedFd)> {
        let mut back = self.unsend();
        back.extend(self.awaiting.drain().map(|(_, c)| c));
        for o in self.out.drain(..) {
            if let (Some((_, id)), Some(fd)) = (o.conn, o.fd) {
                back.push((id, fd));
            }
        }
        self.queued_conns = 0;
        back.sort_by_key(|(id, _)| *id);
        back
    }

    /// The interest the channel's state asks for. `None` while lingering with nothing to
    /// write: the descriptor leaves the poll (any interest in reading, even `PRIORITY`, would
    /// wake the loop at each line: a socket's readable callback names every read event).
    fn interest(&self) -> Option<Interest> {
        match (!self.lingering, self.want_write) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        }
    }

    fn update_interest(&mut self, registry: &Registry) -> io::Result<()> {
        let want = self.interest();
        let Some((token, now)) = self.registered else {
            return Ok(());
        };
        if now == want {
            return Ok(());
        }
        let fd = self.stream.raw_fd();
        let mut source = SourceFd(&fd);
        match (now, want) {
            (Some(_), Some(w)) => registry.reregister(&mut source, token, w)?,
            (None, Some(w)) => registry.register(&mut source, token, w)?,
            (Some(_), None) => registry.deregister(&mut source)?,
            (None, None) => {}
        }
        self.registered = Some((token, want));
        Ok(())
    }
}

impl Source for NodeLink {
    fn register(&mut self, registry: &Registry, token: Token, _: Interest) -> io::Result<()> {
        self.want_write = !self.out.is_empty();
        self.lingering = false;
        let want = Interest::READABLE;
        let want = if self.want_write {
            want | Interest::WRITABLE
        } else {
            want
        };
        SourceFd(&self.stream.raw_fd()).register(registry, token, want)?;
        self.registered = Some((token, Some(want)));
        Ok(())
    }

    fn reregister(&mut self, registry: &Registry, token: Token, i: Interest) -> io::Result<()> {
        self.deregister(registry)?;
        self.register(registry, token, i)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self.registered.take() {
            Some((_, Some(_))) => SourceFd(&self.stream.raw_fd()).deregister(registry),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
