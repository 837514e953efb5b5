//! Connections whose PROXY protocol header has not fully arrived (`--proxy-protocol`).
//!
//! The worker reads the header, not the primary: the primary never reads a client's bytes, so a
//! slow or silent balancer connection cannot stall the loop every connection goes through.
//! Here, a connection waits in its own slab, registered for reading under a token of its own,
//! until its header is complete (then the handler gets it, with the client's address), invalid,
//! or late (the header timeout): then it is closed without a byte sent, and counted.
//!
//! The header is read with `MSG_PEEK` first and only its own bytes are consumed, so the request
//! that follows it stays in the socket for the handler, as if the header had never been there.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::proxy_protocol::{self, Parsed};

/// Tokens of waiting connections have this bit set (connection tokens never reach it).
const PREFACE_BIT: usize = 1 << (usize::BITS - 1);
/// Bytes peeked on a first try: any v1 header, and v2 headers with addresses and a few TLVs.
const FIRST_PEEK: usize = 256;

/// A waiting connection's key, which is also its token (with [`PREFACE_BIT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefaceKey(usize);

impl PrefaceKey {
    /// The key a token names, if it names a waiting connection.
    pub fn from_token(t: Token) -> Option<PrefaceKey> {
        (t.0 & PREFACE_BIT != 0).then_some(PrefaceKey(t.0 & !PREFACE_BIT))
    }

    /// The token it is registered under.
    pub fn token(self) -> Token {
        Token(self.0 | PREFACE_BIT)
    }
}

/// A connection waiting for its header.
#[derive(Debug)]
pub struct Waiting {
    /// The socket.
    pub stream: TcpStream,
    /// Handed over by the primary (rather than accepted here).
    pub handed: bool,
    deadline: Instant,
}

/// What reading a header gave.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderRead {
    /// The header was read (and consumed); the client's address, if it names one.
    Done(Option<SocketAddr>),
    /// Not all of it has arrived.
    More,
    /// The connection is not speaking the PROXY protocol (or went away): close it.
    Refused(String),
}

/// Reads a PROXY header from the start of `stream`, consuming exactly its bytes.
pub fn read_header(stream: &mut TcpStream) -> HeaderRead {
    let mut small = [0u8; FIRST_PEEK];
    let mut big = Vec::new();
    let mut buf: &mut [u8] = &mut small;
    loop {
        let n = match stream.peek(buf) {
            Ok(0) => return HeaderRead::Refused("closed before its PROXY header".into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HeaderRead::More,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return HeaderRead::Refused(e.to_string()),
        };
        match proxy_protocol::parse(buf.get(..n).unwrap_or_default()) {
            Ok(Parsed::Header { len, source }) => {
                // The bytes were peeked: they are in the socket, and one read takes them (into
                // the buffer that already holds them).
                let header = buf.get_mut(..len).unwrap_or_default();
                return match stream.read(header) {
                    Ok(got) if got == len => HeaderRead::Done(source),
                    Ok(_) => HeaderRead::Refused("short read of a peeked header".into()),
                    Err(e) => HeaderRead::Refused(e.to_string()),
                };
            }
            // A long v2 header (TLVs) that does not fit the first peek: peek all of it.
            Ok(Parsed::Incomplete { need }) if n == buf.len() && need > buf.len() => {
                big.resize(need, 0);
                buf = &mut big;
            }
            Ok(Parsed::Incomplete { .. }) => return HeaderRead::More,
            Err(e) => return HeaderRead::Refused(e.to_string()),
        }
    }
}

/// Every connection waiting for its header, and how many were refused.
#[derive(Debug)]
pub struct Prefaces {
    slab: Slab<Waiting>,
    timeout: Duration,
    /// Connections closed without a valid header (invalid, missing, or late).
    pub refused: u64,
}

impl Prefaces {
    /// None waiting; each gets `timeout` from its arrival to send its header.
    pub fn new(timeout: Duration) -> Prefaces {
        Prefaces {
            slab: Slab::new(),
            timeout,
            refused: 0,
        }
    }

    /// Connections waiting.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// True when none waits.
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Adds a connection that arrived at `now`; returns its key.
    pub fn insert(&mut self, stream: TcpStream, handed: bool, now: Instant) -> PrefaceKey {
        let deadline = now.checked_add(self.timeout).unwrap_or(now);
        PrefaceKey(self.slab.insert(Waiting {
            stream,
            handed,
            deadline,
        }))
    }

    /// The waiting connection `key`.
    pub fn get_mut(&mut self, key: PrefaceKey) -> Option<&mut Waiting> {
        self.slab.get_mut(key.0)
    }

    /// Takes connection `key` out.
    pub fn remove(&mut self, key: PrefaceKey) -> Option<Waiting> {
        self.slab.try_remove(key.0)
    }

    /// The keys of connections whose header is late at `now`.
    pub fn late(&self, now: Instant) -> Vec<PrefaceKey> {
        self.slab
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(k, _)| PrefaceKey(k))
            .collect()
    }
}

/// What became of a connection waiting for its header, after a step of [`Prefaces`].
#[derive(Debug)]
pub enum Step {
    /// Its header has not fully arrived: it waits, registered under its key's token.
    Waiting,
    /// Its header was read (and deregistered): serve it, with the client its header named.
    Done {
        /// The socket, the request (if any) still unread in it.
        stream: TcpStream,
        /// Handed over by the primary (rather than accepted here).
        handed: bool,
        /// The client's address, if the header names one.
        peer: Option<SocketAddr>,
    },
    /// It was closed (no valid header, or it could not be watched): count the close.
    Closed,
}

impl Prefaces {
    /// A connection just inserted: reads its header now (it usually came with the connection,
    /// always with `TCP_DEFER_ACCEPT`: then it is never registered under its waiting token), or
    /// registers it to wait.
    pub fn start(&mut self, key: PrefaceKey, registry: &Registry) -> Step {
        let Some(w) = self.get_mut(key) else {
            return Step::Waiting;
        };
        match read_header(&mut w.stream) {
            HeaderRead::More => {}
            HeaderRead::Refused(why) => return self.close(key, Some(&why), false, registry),
            HeaderRead::Done(peer) => return self.done(key, peer, false, registry),
        }
        // (Bytes that come between the read and the registration raise an event.)
        if let Err(e) = registry.register(&mut w.stream, key.token(), Interest::READABLE) {
            log::warn!("cannot register connection: {e}");
            return self.close(key, None, false, registry);
        }
        Step::Waiting
    }

    /// Bytes arrived on connection `key`.
    pub fn ready(&mut self, key: PrefaceKey, registry: &Registry) -> Step {
        let Some(w) = self.get_mut(key) else {
            return Step::Waiting;
        };
        match read_header(&mut w.stream) {
            HeaderRead::More => Step::Waiting,
            HeaderRead::Refused(why) => self.close(key, Some(&why), true, registry),
            HeaderRead::Done(peer) => self.done(key, peer, true, registry),
        }
    }

    /// Closes the connections whose header is late at `now`; returns how many.
    pub fn close_late(&mut self, now: Instant, registry: &Registry) -> usize {
        let why = "no complete header within the header timeout";
        let late = self.late(now);
        for &key in &late {
            self.close(key, Some(why), true, registry);
        }
        late.len()
    }

    fn done(
        &mut self,
        key: PrefaceKey,
        peer: Option<SocketAddr>,
        registered: bool,
        registry: &Registry,
    ) -> Step {
        let Some(mut w) = self.remove(key) else {
            return Step::Waiting;
        };
        if registered {
            let _ = registry.deregister(&mut w.stream);
        }
        Step::Done {
            stream: w.stream,
            handed: w.handed,
            peer,
        }
    }

    /// Closes a connection that gave no valid header (`why`), or could not be watched.
    fn close(
        &mut self,
        key: PrefaceKey,
        why: Option<&str>,
        registered: bool,
        registry: &Registry,
    ) -> Step {
        let Some(mut w) = self.remove(key) else {
            return Step::Waiting;
        };
        if let Some(why) = why {
            self.refused += 1;
            log::debug!(
                "worker {}: closing a connection without a valid PROXY header: {why}",
                std::process::id()
            );
        }
        if registered {
            let _ = registry.deregister(&mut w.stream);
        }
        // A FIN first: the client sees an orderly end, not the reset that closing a socket
        // with unread bytes (a peeked partial header) sends.
        let _ = w.stream.shutdown(std::net::Shutdown::Write);
        Step::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A connected pair: (the client's std stream, the server's mio stream).
    fn pair() -> (std::net::TcpStream, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        (c, TcpStream::from_std(s))
    }

    /// Polls `read_header` until it is not `More` (the bytes are on loopback: at once).
    fn read_soon(s: &mut TcpStream) -> HeaderRead {
        for _ in 0..1000 {
            match read_header(s) {
                HeaderRead::More => std::thread::sleep(Duration::from_millis(1)),
                r => return r,
            }
        }
        HeaderRead::More
    }

    #[test]
    fn consumes_the_header_and_leaves_the_request() {
        let src: SocketAddr = "127.0.0.9:1234".parse().unwrap();
        let dst: SocketAddr = "127.0.0.2:80".parse().unwrap();
        let (mut c, mut s) = pair();
        assert_eq!(read_header(&mut s), HeaderRead::More);
        let header = proxy_protocol::v2_header(src, dst);
        c.write_all(&header[..5]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(read_header(&mut s), HeaderRead::More);
        c.write_all(&header[5..]).unwrap();
        c.write_all(b"GET /").unwrap();
        assert_eq!(read_soon(&mut s), HeaderRead::Done(Some(src)));
        let mut rest = [0u8; 16];
        let n = s.read(&mut rest).unwrap();
        assert_eq!(&rest[..n], b"GET /");
    }

    #[test]
    fn long_v2_headers_are_read_whole() {
        let src: SocketAddr = "127.0.0.9:1234".parse().unwrap();
        let dst: SocketAddr = "127.0.0.2:80".parse().unwrap();
        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (src, dst),
        )
        .write_tlv(ppp::v2::Type::NoOp, &[7u8; 600])
        .unwrap()
        .build()
        .unwrap();
        let (mut c, mut s) = pair();
        c.write_all(&header).unwrap();
        c.write_all(b"x").unwrap();
        assert_eq!(read_soon(&mut s), HeaderRead::Done(Some(src)));
        let mut rest = [0u8; 4];
        assert_eq!(s.read(&mut rest).unwrap(), 1);
    }

    #[test]
    fn a_request_without_a_header_is_refused() {
        let (mut c, mut s) = pair();
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(matches!(read_soon(&mut s), HeaderRead::Refused(_)));
        drop(c);
        let (c, mut s) = pair();
        drop(c);
        assert!(matches!(read_soon(&mut s), HeaderRead::Refused(_)));
    }
}
