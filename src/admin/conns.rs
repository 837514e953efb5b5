//! Bounded, non-blocking request/response connections on the primary's loop, shared by the
//! control socket and the metrics endpoint: each connection sends one request (ended by a
//! terminator, at most `max_in` bytes), gets one answer, and is closed once the answer has
//! left. Nothing here ever blocks: reads and writes stop at `WouldBlock` and resume on the
//! next readiness event; a client that never reads its answer only holds its own slot, and
//! only for [`TIMEOUT`] (as one that never finishes its request).

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::event::Source;
use mio::{Interest, Registry, Token};
use slab::Slab;

/// How long a connection may take to send its request, or to take its answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's number among its server's connections. It names that connection only:
/// an answer kept for a client that has gone never reaches the next one in its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(usize, u64);

/// What a connection sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A complete request, without its terminator.
    Request(Vec<u8>),
    /// More than the bound arrived without a terminator.
    TooLong,
}

struct Conn<S> {
    stream: S,
    /// Which connection of its slot this is.
    serial: u64,
    /// When it was accepted, or its answer queued: [`TIMEOUT`] runs from here.
    since: Instant,
    input: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    /// A request was read: nothing more is read.
    got: bool,
    /// Close once the answer has left.
    close_when_sent: bool,
}

/// Every connection of one server, with its token range: `base + 1 + slot`.
pub struct Conns<S> {
    base: usize,
    max: usize,
    max_in: usize,
    terminator: &'static [u8],
    slab: Slab<Conn<S>>,
    serials: u64,
}

impl<S: Source + Read + Write> Conns<S> {
    /// At most `max` connections, registered from token `base + 1` on; a request ends with
    /// `terminator` and holds at most `max_in` bytes.
    pub fn new(base: usize, max: usize, max_in: usize, terminator: &'static [u8]) -> Self {
        Conns {
            base,
            max,
            max_in,
            terminator,
            slab: Slab::new(),
            serials: 0,
        }
    }

    /// True when `token` names one of these connections.
    pub fn owns(&self, token: Token) -> bool {
        self.index(token).is_some()
    }

    fn index(&self, token: Token) -> Option<usize> {
        let i = token.0.checked_sub(self.base + 1)?;
        (i < self.max).then_some(i)
    }

    /// True when no room is left.
    pub fn full(&self) -> bool {
        self.slab.len() >= self.max
    }

    /// Adds a connection; `None` (and the stream dropped) when full or it cannot be watched.
    pub fn add(&mut self, mut stream: S, registry: &Registry) -> Option<ConnId> {
        if self.full() {
            return None;
        }
        let entry = self.slab.vacant_entry();
        let token = Token(self.base + 1 + entry.key());
        if let Err(e) =
            registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
        {
            log::warn!("cannot watch a client connection: {e}");
            return None;
        }
        self.serials += 1;
        let id = ConnId(entry.key(), self.serials);
        entry.insert(Conn {
            stream,
            serial: self.serials,
            since: Instant::now(),
            input: Vec::new(),
            out: Vec::new(),
            sent: 0,
            got: false,
            close_when_sent: false,
        });
        Some(id)
    }

    /// Handles readiness of `token`: sends what waits, reads a request if one is due.
    pub fn ready(&mut self, token: Token, registry: &Registry) -> Option<(ConnId, Incoming)> {
        let i = self.index(token)?;
        let id = ConnId(i, self.slab.get(i)?.serial);
        self.flush(id, registry);
        let c = self.slab.get_mut(i)?;
        if c.got {
            return None;
        }
        let mut buf = [0u8; 1024];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    self.remove(id, registry);
                    return None;
                }
                Ok(n) => {
                    c.input.extend_from_slice(&buf[..n]);
                    let t = self.terminator;
                    if let Some(end) = c.input.windows(t.len()).position(|w| w == t) {
                        c.got = true;
                        c.input.truncate(end);
                        return Some((id, Incoming::Request(std::mem::take(&mut c.input))));
                    }
                    if c.input.len() > self.max_in {
                        c.got = true;
                        c.input = Vec::new();
                        return Some((id, Incoming::TooLong));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.remove(id, registry);
                    return None;
                }
            }
        }
    }

    /// Queues `bytes` for connection `id` (gone: nothing happens) and sends what it can;
    /// `close` closes it once everything has left.
    pub fn send(&mut self, id: ConnId, bytes: &[u8], close: bool, registry: &Registry) {
        let Some(c) = self.slab.get_mut(id.0).filter(|c| c.serial == id.1) else {
            return;
        };
        c.out.extend_from_slice(bytes);
        c.close_when_sent |= close;
        c.since = Instant::now();
        self.flush(id, registry);
    }

    fn flush(&mut self, id: ConnId, registry: &Registry) {
        let Some(c) = self.slab.get_mut(id.0).filter(|c| c.serial == id.1) else {
            return;
        };
        while c.sent < c.out.len() {
            match c.stream.write(&c.out[c.sent..]) {
                Ok(0) => break,
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.remove(id, registry);
                    return;
                }
            }
        }
        if c.close_when_sent && c.sent >= c.out.len() {
            self.remove(id, registry);
        }
    }

    /// Closes connection `id`.
    pub fn remove(&mut self, id: ConnId, registry: &Registry) {
        if self.slab.get(id.0).is_some_and(|c| c.serial == id.1) {
            if let Some(mut c) = self.slab.try_remove(id.0) {
                let _ = registry.deregister(&mut c.stream);
            }
        }
    }

    /// True for a connection the timeout applies to: one still sending its request, or not
    /// taking its answer. One that waits for its answer (a reload, a stop) waits as long as
    /// that takes.
    fn timed(c: &Conn<S>) -> bool {
        !c.got || c.sent < c.out.len()
    }

    /// When the next connection times out, if any can.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.slab
            .iter()
            .filter(|(_, c)| Self::timed(c))
            .map(|(_, c)| c.since + TIMEOUT)
            .min()
    }

    /// Closes the connections whose time is up; returns how many.
    pub fn expire(&mut self, now: Instant, registry: &Registry) -> usize {
        let late: Vec<ConnId> = self
            .slab
            .iter()
            .filter(|(_, c)| Self::timed(c) && c.since + TIMEOUT <= now)
            .map(|(k, c)| ConnId(k, c.serial))
            .collect();
        for &id in &late {
            self.remove(id, registry);
        }
        late.len()
    }

    /// Connections open.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// True when none is open.
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn an_answer_for_a_gone_client_reaches_nobody() {
        let poll = mio::Poll::new().unwrap();
        let mut conns = Conns::new(100, 2, 16, b"\n");
        let (a, _a_peer) = mio::net::UnixStream::pair().unwrap();
        let old = conns.add(a, poll.registry()).unwrap();
        conns.remove(old, poll.registry());
        let (b, mut b_peer) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let new = conns
            .add(mio::net::UnixStream::from_std(b), poll.registry())
            .unwrap();
        assert_ne!(old, new);
        conns.send(old, b"stale\n", true, poll.registry());
        conns.send(new, b"fresh\n", true, poll.registry());
        let mut got = String::new();
        b_peer.read_to_string(&mut got).unwrap();
        assert_eq!(got, "fresh\n");
        assert!(conns.is_empty(), "closed once sent");
    }

    #[test]
    fn silent_clients_time_out_but_waiting_ones_do_not() {
        let poll = mio::Poll::new().unwrap();
        let mut conns = Conns::new(100, 4, 16, b"\n");
        let (silent, _p1) = mio::net::UnixStream::pair().unwrap();
        conns.add(silent, poll.registry()).unwrap();
        let (asker, mut p2) = std::os::unix::net::UnixStream::pair().unwrap();
        asker.set_nonblocking(true).unwrap();
        let asker = mio::net::UnixStream::from_std(asker);
        let id = conns.add(asker, poll.registry()).unwrap();
        std::io::Write::write_all(&mut p2, b"reload\n").unwrap();
        let got = conns.ready(Token(100 + 1 + 1), poll.registry());
        assert_eq!(got, Some((id, Incoming::Request(b"reload".to_vec()))));
        assert!(conns.next_timeout().is_some());
        let later = Instant::now() + TIMEOUT + Duration::from_secs(1);
        assert_eq!(conns.expire(later, poll.registry()), 1, "the silent one");
        assert_eq!(conns.len(), 1, "the one waiting for its answer stays");
        assert_eq!(conns.next_timeout(), None);
    }
}
