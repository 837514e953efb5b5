//! herd's own wire format: one message per `SOCK_SEQPACKET` packet, a one-byte tag and a
//! little-endian body. Only this file knows the bytes; everything else speaks [`ToWorker`] and
//! [`ToPrimary`].

use std::fmt;

use super::IpcError;

/// Largest user payload carried by one [`ToWorker::Message`] or [`ToPrimary::Message`].
///
/// A larger payload is refused with [`IpcError::TooLarge`] instead of being split or truncated.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Most connections handed over in one [`ToWorker::Conn`] packet (one `sendmsg` for the lot).
pub const MAX_CONN_BATCH: usize = crate::sys::MAX_RECV_FDS;

/// Most connection ids in one [`ToPrimary::Ack`] or [`ToPrimary::Refused`] packet.
pub const MAX_ACK_IDS: usize = 1024;

/// Largest packet of either direction: the largest payload plus the tag (and room to spare).
pub const MAX_PACKET: usize = MAX_MESSAGE + 64;

/// The primary's number for one accepted connection, echoed in the worker's ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Messages from the primary to a worker.
#[derive(Debug, PartialEq, Eq)]
pub enum ToWorker {
    /// Serve these connections. Their sockets travel with the packet, one per id and in the
    /// same order; each id is echoed in an ack. At most [`MAX_CONN_BATCH`] per packet.
    Conn {
        /// The primary's ids for these connections.
        ids: Vec<ConnId>,
    },
    /// Serve these connections, and do not ack them: the primary closed its copies right
    /// after sending (it reads back from the worker's end what a dead worker never read).
    /// Sockets travel as with [`ToWorker::Conn`].
    Give {
        /// The primary's ids for these connections.
        ids: Vec<ConnId>,
    },
    /// Accept connections on this listening socket yourself (shared and reuseport policies).
    Listen,
    /// Take connections from this queue, shared by every worker, one at a time whenever you
    /// have nothing else to do (idle-first's overflow, see [`super::Overflow`]). Its socket
    /// travels with the packet.
    Overflow,
    /// Stop taking new connections, finish what is in flight, then exit.
    Disconnect,
    /// Report your counters with [`ToPrimary::Stats`].
    StatsRequest,
    /// The host is leaving (a `SIGTERM` with a drain delay): go on serving, but fail health
    /// checks and close connections after each answer ([`crate::Context::leaving`]).
    Leaving,
    /// A user message (`Control::send` in the primary).
    Message(Vec<u8>),
}

/// Counters a worker reports about itself (a fixed-size packet).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkerStats {
    /// Connections this worker took (handed to it, or accepted by it).
    pub connections: u64,
    /// Connections open now.
    pub open: u64,
    /// Requests (or, for custom handlers, units of work) served.
    pub requests: u64,
    /// How long the requests took (those a handler timed: `Context::record_request`).
    pub latency: crate::latency::Latency,
}

impl WorkerStats {
    /// Adds the totals of a process that is gone (its `open` no longer counts).
    pub fn absorb(&mut self, gone: &WorkerStats) {
        self.connections = self.connections.saturating_add(gone.connections);
        self.requests = self.requests.saturating_add(gone.requests);
        self.latency.add(&gone.latency);
    }
}

/// Bytes of a [`ToPrimary::Stats`] body: connections, open, requests, the latency sum and
/// one count per bucket.
const STATS_LEN: usize = 8 * (4 + crate::latency::BUCKETS);

/// Messages from a worker to the primary.
#[derive(Debug, PartialEq, Eq)]
pub enum ToPrimary {
    /// The worker has set itself up and is ready for connections.
    Online,
    /// The worker is accepting on the listener(s) it was given.
    Listening,
    /// The worker has taken these connections; the primary may close its copies.
    Ack(Vec<ConnId>),
    /// The worker could not take these connections (their sockets did not arrive, for example
    /// because it is out of file descriptors): the primary hands them to another worker.
    Refused(Vec<ConnId>),
    /// This many connections were closed since the last report (least-connections).
    Closed(u32),
    /// Answer to [`ToWorker::StatsRequest`].
    Stats(WorkerStats),
    /// A user message (`Context::send` in a worker).
    Message(Vec<u8>),
    /// The worker served its request limit (`--max-requests-per-worker`): replace it
    /// gracefully. Sent once.
    Recycle,
}

/// A message that can be queued on an [`super::Endpoint`].
pub trait Outgoing: Sized {
    /// Appends the packet's bytes to `out` (empty on entry).
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), IpcError>;

    /// Folds `next` into `self` when both fit in one packet, so a burst leaves in one
    /// `sendmsg`; gives `next` back otherwise.
    fn merge(&mut self, next: Self) -> Result<(), Self> {
        Err(next)
    }

    /// True for messages of the ordered lane: user messages, and what must not overtake them.
    fn ordered(&self) -> bool {
        false
    }

    /// Payload bytes it counts against the ordered lane's bound.
    fn weight(&self) -> usize {
        0
    }
}

/// A message that can be read from an [`super::Endpoint`].
pub trait Incoming: Sized {
    /// Decodes one packet.
    fn decode(bytes: &[u8]) -> Result<Self, IpcError>;
}

const T_CONN: u8 = 1;
const T_LISTEN: u8 = 2;
const T_DISCONNECT: u8 = 3;
const T_STATS_REQ: u8 = 4;
const T_MSG: u8 = 5;
const T_LEAVING: u8 = 6;
const T_GIVE: u8 = 7;
const T_OVERFLOW: u8 = 8;
const P_ONLINE: u8 = 101;
const P_LISTENING: u8 = 102;
const P_ACK: u8 = 103;
const P_CLOSED: u8 = 104;
const P_STATS: u8 = 105;
const P_MSG: u8 = 106;
const P_REFUSED: u8 = 107;
const P_RECYCLE: u8 = 108;

fn read_u64(b: &[u8], at: usize) -> Result<u64, IpcError> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(IpcError::Malformed("short integer"))
}

/// A non-empty list of up to `max` little-endian u64 ids.
fn read_ids(body: &[u8], max: usize) -> Result<Vec<ConnId>, IpcError> {
    if body.is_empty() || body.len() % 8 != 0 || body.len() / 8 > max {
        return Err(IpcError::Malformed("id list length"));
    }
    (0..body.len() / 8)
        .map(|i| read_u64(body, i * 8).map(ConnId))
        .collect()
}

fn write_ids(tag: u8, ids: &[ConnId], out: &mut Vec<u8>) {
    out.push(tag);
    for id in ids {
        out.extend_from_slice(&id.0.to_le_bytes());
    }
}

fn write_payload(tag: u8, payload: &[u8], out: &mut Vec<u8>) -> Result<(), IpcError> {
    if payload.len() > MAX_MESSAGE {
        return Err(IpcError::TooLarge(payload.len()));
    }
    out.push(tag);
    out.extend_from_slice(payload);
    Ok(())
}

impl Outgoing for ToWorker {
    fn ordered(&self) -> bool {
        matches!(self, ToWorker::Message(_) | ToWorker::Disconnect)
    }

    fn weight(&self) -> usize {
        match self {
            ToWorker::Message(p) => p.len(),
            _ => 0,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), IpcError> {
        match self {
            ToWorker::Conn { ids } => write_ids(T_CONN, ids, out),
            ToWorker::Give { ids } => write_ids(T_GIVE, ids, out),
            ToWorker::Listen => out.push(T_LISTEN),
            ToWorker::Overflow => out.push(T_OVERFLOW),
            ToWorker::Disconnect => out.push(T_DISCONNECT),
            ToWorker::StatsRequest => out.push(T_STATS_REQ),
            ToWorker::Leaving => out.push(T_LEAVING),
            ToWorker::Message(p) => write_payload(T_MSG, p, out)?,
        }
        Ok(())
    }

    fn merge(&mut self, next: Self) -> Result<(), Self> {
        match (self, next) {
            (ToWorker::Conn { ids }, ToWorker::Conn { ids: more })
                if ids.len() + more.len() <= MAX_CONN_BATCH =>
            {
                ids.extend(more);
                Ok(())
            }
            (ToWorker::Give { ids }, ToWorker::Give { ids: more })
                if ids.len() + more.len() <= MAX_CONN_BATCH =>
            {
                ids.extend(more);
                Ok(())
            }
            (_, next) => Err(next),
        }
    }
}

impl Incoming for ToWorker {
    fn decode(b: &[u8]) -> Result<Self, IpcError> {
        let body = b.get(1..).unwrap_or_default();
        match b.first() {
            Some(&T_CONN) => Ok(ToWorker::Conn {
                ids: read_ids(body, MAX_CONN_BATCH)?,
            }),
            Some(&T_GIVE) => Ok(ToWorker::Give {
                ids: read_ids(body, MAX_CONN_BATCH)?,
            }),
            Some(&T_LISTEN) => Ok(ToWorker::Listen),
            Some(&T_OVERFLOW) => Ok(ToWorker::Overflow),
            Some(&T_DISCONNECT) => Ok(ToWorker::Disconnect),
            Some(&T_STATS_REQ) => Ok(ToWorker::StatsRequest),
            Some(&T_LEAVING) => Ok(ToWorker::Leaving),
            Some(&T_MSG) => Ok(ToWorker::Message(body.to_vec())),
            _ => Err(IpcError::Malformed("unknown tag from primary")),
        }
    }
}

impl Outgoing for ToPrimary {
    fn ordered(&self) -> bool {
        matches!(self, ToPrimary::Message(_))
    }

    fn weight(&self) -> usize {
        match self {
            ToPrimary::Message(p) => p.len(),
            _ => 0,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), IpcError> {
        match self {
            ToPrimary::Online => out.push(P_ONLINE),
            ToPrimary::Listening => out.push(P_LISTENING),
            ToPrimary::Ack(ids) => write_ids(P_ACK, ids, out),
            ToPrimary::Refused(ids) => write_ids(P_REFUSED, ids, out),
            ToPrimary::Closed(n) => {
                out.push(P_CLOSED);
                out.extend_from_slice(&n.to_le_bytes());
            }
            ToPrimary::Stats(s) => {
                out.push(P_STATS);
                for n in [s.connections, s.open, s.requests, s.latency.sum_us] {
                    out.extend_from_slice(&n.to_le_bytes());
                }
                for n in s.latency.counts {
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
            ToPrimary::Message(p) => write_payload(P_MSG, p, out)?,
            ToPrimary::Recycle => out.push(P_RECYCLE),
        }
        Ok(())
    }

    fn merge(&mut self, next: Self) -> Result<(), Self> {
        match (self, next) {
            (ToPrimary::Ack(ids), ToPrimary::Ack(more))
                if ids.len() + more.len() <= MAX_ACK_IDS =>
            {
                ids.extend(more);
                Ok(())
            }
            (ToPrimary::Closed(n), ToPrimary::Closed(more)) => {
                *n = n.saturating_add(more);
                Ok(())
            }
            (_, next) => Err(next),
        }
    }
}

impl Incoming for ToPrimary {
    fn decode(b: &[u8]) -> Result<Self, IpcError> {
        let body = b.get(1..).unwrap_or_default();
        match b.first() {
            Some(&P_ONLINE) => Ok(ToPrimary::Online),
            Some(&P_LISTENING) => Ok(ToPrimary::Listening),
            Some(&P_ACK) => Ok(ToPrimary::Ack(read_ids(body, MAX_ACK_IDS)?)),
            Some(&P_REFUSED) => Ok(ToPrimary::Refused(read_ids(body, MAX_ACK_IDS)?)),
            Some(&P_CLOSED) => {
                let n = body
                    .get(..4)
                    .and_then(|s| s.try_into().ok())
                    .map(u32::from_le_bytes)
                    .ok_or(IpcError::Malformed("short closed count"))?;
                Ok(ToPrimary::Closed(n))
            }
            Some(&P_STATS) => {
                if body.len() != STATS_LEN {
                    return Err(IpcError::Malformed("statistics length"));
                }
                let mut latency = crate::latency::Latency {
                    sum_us: read_u64(body, 24)?,
                    ..Default::default()
                };
                for (i, c) in latency.counts.iter_mut().enumerate() {
                    *c = read_u64(body, 32 + 8 * i)?;
                }
                Ok(ToPrimary::Stats(WorkerStats {
                    connections: read_u64(body, 0)?,
                    open: read_u64(body, 8)?,
                    requests: read_u64(body, 16)?,
                    latency,
                }))
            }
            Some(&P_MSG) => Ok(ToPrimary::Message(body.to_vec())),
            Some(&P_RECYCLE) => Ok(ToPrimary::Recycle),
            _ => Err(IpcError::Malformed("unknown tag from worker")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T: Outgoing>(m: &T) -> Vec<u8> {
        let mut out = Vec::new();
        m.encode(&mut out).unwrap();
        out
    }

    fn ids(v: &[u64]) -> Vec<ConnId> {
        v.iter().copied().map(ConnId).collect()
    }

    #[test]
    fn messages_round_trip() {
        for m in [
            ToWorker::Conn { ids: ids(&[42]) },
            ToWorker::Conn {
                ids: ids(&[1, u64::MAX, 3]),
            },
            ToWorker::Give { ids: ids(&[7, 8]) },
            ToWorker::Listen,
            ToWorker::Overflow,
            ToWorker::Disconnect,
            ToWorker::StatsRequest,
            ToWorker::Leaving,
            ToWorker::Message(b"hi".to_vec()),
        ] {
            assert_eq!(ToWorker::decode(&bytes(&m)).unwrap(), m);
        }
        for m in [
            ToPrimary::Online,
            ToPrimary::Listening,
            ToPrimary::Ack(ids(&[1, 2, u64::MAX])),
            ToPrimary::Refused(ids(&[5])),
            ToPrimary::Closed(7),
            ToPrimary::Stats(WorkerStats {
                connections: 1,
                open: 2,
                requests: 3,
                latency: crate::latency::Latency {
                    counts: [7; crate::latency::BUCKETS],
                    sum_us: 9,
                },
            }),
            ToPrimary::Message(vec![0; 10]),
            ToPrimary::Recycle,
        ] {
            assert_eq!(ToPrimary::decode(&bytes(&m)).unwrap(), m);
        }
    }

    #[test]
    fn too_large_and_garbage_are_errors() {
        let big = ToWorker::Message(vec![0; MAX_MESSAGE + 1]);
        assert!(matches!(
            big.encode(&mut Vec::new()),
            Err(IpcError::TooLarge(_))
        ));
        assert!(ToPrimary::decode(&[]).is_err());
        assert!(ToPrimary::decode(&[P_ACK, 1, 2]).is_err());
        assert!(ToPrimary::decode(&[P_CLOSED, 1]).is_err());
        assert!(
            ToPrimary::decode(&[P_STATS; 25]).is_err(),
            "short statistics"
        );
        assert!(ToWorker::decode(&[T_CONN, 1]).is_err());
        assert!(ToWorker::decode(&[T_CONN]).is_err(), "no ids");
        let too_many = ToWorker::Conn {
            ids: vec![ConnId(7); MAX_CONN_BATCH + 1],
        };
        assert!(ToWorker::decode(&bytes(&too_many)).is_err());
    }

    #[test]
    fn bursts_merge_up_to_one_packet() {
        let mut a = ToWorker::Conn { ids: ids(&[1]) };
        for i in 2..=MAX_CONN_BATCH as u64 {
            assert!(a.merge(ToWorker::Conn { ids: ids(&[i]) }).is_ok());
        }
        let full = ToWorker::Conn { ids: ids(&[99]) };
        assert!(a.merge(full).is_err(), "a full batch takes no more");
        assert!(ToWorker::Listen.merge(ToWorker::Listen).is_err());
        let mut c = ToPrimary::Closed(2);
        assert!(c.merge(ToPrimary::Closed(3)).is_ok());
        assert_eq!(c, ToPrimary::Closed(5));
        assert!(c.merge(ToPrimary::Online).is_err());
    }
}
