//! Node's channel format: one `JSON.stringify(msg) + "\n"` per message (UTF-8), internal
//! messages under `cmd` names starting with `NODE_`, cluster messages inside a
//! `{"cmd":"NODE_CLUSTER", ..., "seq":N}` envelope. Only this file knows the bytes; the rest
//! speaks [`FromNode`] and the builders below.

use serde_json::{json, Map, Value};

/// Longest line accepted from a worker; a longer one is dropped (logged), never buffered
/// without bound.
pub const MAX_LINE: usize = 1 << 20;

/// Splits a byte stream into lines, keeping the partial tail for the next read. Lines are
/// handed out as slices of the buffer (no copy per line); what was handed out is dropped at
/// the next [`LineReader::push`].
#[derive(Debug, Default)]
pub struct LineReader {
    buf: Vec<u8>,
    /// Where the next line starts in `buf`.
    start: usize,
    /// Bytes of an over-long line still being skipped.
    skipping: bool,
}

impl LineReader {
    /// Adds bytes read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete line (without its `\n`), if one is there. `Err` for a line longer
    /// than [`MAX_LINE`], which is skipped.
    pub fn next_line(&mut self) -> Option<Result<&[u8], usize>> {
        loop {
            let rest = &self.buf[self.start..];
            match rest.iter().position(|&b| b == b'\n') {
                Some(at) => {
                    let from = self.start;
                    self.start += at + 1;
                    if std::mem::take(&mut self.skipping) {
                        continue;
                    }
                    if at > MAX_LINE {
                        return Some(Err(at));
                    }
                    return Some(Ok(&self.buf[from..from + at]));
                }
                None if rest.len() > MAX_LINE => {
                    let n = rest.len();
                    self.buf.clear();
                    self.start = 0;
                    if !std::mem::replace(&mut self.skipping, true) {
                        return Some(Err(n));
                    }
                    return None;
                }
                None => return None,
            }
        }
    }
}

/// What a server query names: the fields Node builds its handle key from.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerQuery {
    /// `address` (`None`: unspecified, Node binds `::` or `0.0.0.0`).
    pub address: Option<String>,
    /// `port` (-1 for a pipe).
    pub port: i64,
    /// `addressType`: 4, 6, or -1 (a pipe), 'udp4'/'udp6' come as other values.
    pub address_type: Value,
    /// `fd`, when the app listens on an inherited descriptor.
    pub fd: Value,
    /// `index`: the worker's count of servers with the same description.
    pub index: Value,
    /// `exclusive: true`: the worker wants a socket of its own.
    pub exclusive: bool,
    /// `flags` (bit 1: IPv6 only).
    pub flags: i64,
    /// TLS session-ticket keys and the like (`data`), echoed back.
    pub data: Value,
}

impl ServerQuery {
    fn from(m: &Map<String, Value>) -> ServerQuery {
        ServerQuery {
            address: m.get("address").and_then(Value::as_str).map(str::to_string),
            port: m.get("port").and_then(Value::as_i64).unwrap_or(0),
            address_type: m.get("addressType").cloned().unwrap_or(Value::Null),
            fd: m.get("fd").cloned().unwrap_or(Value::Null),
            index: m.get("index").cloned().unwrap_or(Value::Null),
            exclusive: m.get("exclusive").and_then(Value::as_bool).unwrap_or(false),
            flags: m.get("flags").and_then(Value::as_i64).unwrap_or(0),
            data: m.get("data").cloned().unwrap_or(Value::Null),
        }
    }

    /// Node's key for this server: `address:port:addressType:fd:index`, as JavaScript writes
    /// the values into a template string (`null`, `undefined` for an absent one).
    pub fn key(&self) -> String {
        let js = |v: &Value| match v {
            Value::Null => "null".to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let address = self.address.clone().unwrap_or_else(|| "null".into());
        format!(
            "{address}:{}:{}:{}:{}",
            self.port,
            js(&self.address_type),
            js(&self.fd),
            js(&self.index)
        )
    }
}

/// A message from a Node worker.
#[derive(Debug, Clone, PartialEq)]
pub enum FromNode {
    /// `{"cmd":"NODE_HANDLE_ACK"}`: the handle sent last arrived; the next may go.
    HandleAck,
    /// `{"cmd":"NODE_HANDLE_NACK"}`: the handle sent last did not arrive with its line.
    HandleNack,
    /// `act: online`: the worker runs (before its own code).
    Online,
    /// `act: queryServer`: `server.listen()` asks the primary for a socket (`seq` to answer).
    QueryServer {
        /// The request's sequence number (the reply's `ack`).
        seq: u64,
        /// What it asks for.
        query: ServerQuery,
    },
    /// `act: listening`: the worker listens on that server.
    Listening(ServerQuery),
    /// `act: close`: the worker closed its server `key`.
    Close {
        /// The server's key.
        key: String,
    },
    /// `act: exitedAfterDisconnect`: the worker is leaving on its own; must be acked.
    ExitedAfterDisconnect {
        /// The request's sequence number.
        seq: u64,
    },
    /// `{"ack":S,"accepted":B}`: the answer to a `newconn` (or any reply to the primary).
    Reply {
        /// The primary's sequence number it answers.
        ack: u64,
        /// Whether the connection was taken (`None` for other replies).
        accepted: Option<bool>,
    },
    /// A user message (`process.send`), as its JSON text.
    User(String),
    /// An internal message this primary does not know (its `cmd` and `act`).
    Unknown(String),
}

/// Why a line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON.
    #[error("not JSON: {0}")]
    Json(String),
}

/// Decodes one line (without its `\n`). The two lines of every handoff (`NODE_HANDLE_ACK`
/// and the `{ack, accepted}` reply), in the exact shape Node writes them, skip the general
/// JSON parser.
pub fn decode(line: &[u8]) -> Result<FromNode, DecodeError> {
    if let Some(fast) = decode_handoff(line) {
        return Ok(fast);
    }
    let v: Value = serde_json::from_slice(line).map_err(|e| DecodeError::Json(e.to_string()))?;
    let Some(obj) = v.as_object() else {
        return Ok(FromNode::User(v.to_string()));
    };
    let cmd = obj.get("cmd").and_then(Value::as_str);
    match cmd {
        Some("NODE_HANDLE_ACK") => return Ok(FromNode::HandleAck),
        Some("NODE_HANDLE_NACK") => return Ok(FromNode::HandleNack),
        Some("NODE_CLUSTER") => {}
        Some(c) if c.starts_with("NODE_") => return Ok(FromNode::Unknown(c.to_string())),
        _ => return Ok(FromNode::User(v.to_string())),
    }
    let seq = obj.get("seq").and_then(Value::as_u64).unwrap_or(0);
    let act = obj.get("act").and_then(Value::as_str);
    Ok(match act {
        Some("online") => FromNode::Online,
        Some("queryServer") => FromNode::QueryServer {
            seq,
            query: ServerQuery::from(obj),
        },
        Some("listening") => FromNode::Listening(ServerQuery::from(obj)),
        Some("close") => FromNode::Close {
            key: obj
                .get("key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        },
        Some("exitedAfterDisconnect") => FromNode::ExitedAfterDisconnect { seq },
        None => match obj.get("ack").and_then(Value::as_u64) {
            Some(ack) => FromNode::Reply {
                ack,
                accepted: obj.get("accepted").and_then(Value::as_bool),
            },
            None => FromNode::Unknown("NODE_CLUSTER without act or ack".into()),
        },
        Some(other) => FromNode::Unknown(format!("NODE_CLUSTER act {other}")),
    })
}

/// `{"cmd":"NODE_HANDLE_ACK"}` or `{"cmd":"NODE_CLUSTER","ack":A,"accepted":B,"seq":S}`
/// byte for byte; `None` for anything else (the general parser then decides).
fn decode_handoff(line: &[u8]) -> Option<FromNode> {
    if line == br#"{"cmd":"NODE_HANDLE_ACK"}"# {
        return Some(FromNode::HandleAck);
    }
    let rest = line.strip_prefix(br#"{"cmd":"NODE_CLUSTER","ack":"#)?;
    let (ack, rest) = digits(rest)?;
    let (accepted, rest) = if let Some(r) = rest.strip_prefix(br#","accepted":true,"seq":"#) {
        (true, r)
    } else {
        (false, rest.strip_prefix(br#","accepted":false,"seq":"#)?)
    };
    let (_, rest) = digits(rest)?;
    (rest == b"}").then_some(FromNode::Reply {
        ack,
        accepted: Some(accepted),
    })
}

/// A decimal number at the start of `b` (at most 15 digits) and what follows it.
fn digits(b: &[u8]) -> Option<(u64, &[u8])> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 15 {
        return None;
    }
    let v = b[..n]
        .iter()
        .fold(0u64, |v, c| v * 10 + u64::from(c - b'0'));
    Some((v, &b[n..]))
}

/// One line for the wire: `value` as compact JSON and `\n`.
fn line(value: Value) -> Vec<u8> {
    let mut out = value.to_string().into_bytes();
    out.push(b'\n');
    out
}

/// A cluster message from the primary with sequence number `seq`.
fn cluster(mut fields: Map<String, Value>, seq: u64) -> Value {
    let mut m = Map::new();
    m.insert("cmd".into(), json!("NODE_CLUSTER"));
    m.append(&mut fields);
    m.insert("seq".into(), json!(seq));
    Value::Object(m)
}

fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `key` as a JSON string (quoted and escaped), for [`newconn`].
pub fn json_key(key: &str) -> String {
    Value::from(key).to_string()
}

/// `newconn` for the server whose key is `json_key` (see [`json_key`]), to travel with the
/// connection's descriptor. Written directly: this is the line of every handoff.
pub fn newconn(json_key: &str, seq: u64) -> Vec<u8> {
    newconn_with(&newconn_prefix(json_key), seq)
}

/// The part of every `newconn` line for the server `json_key` that does not change (all but
/// the sequence number), rendered once per server.
pub fn newconn_prefix(json_key: &str) -> Vec<u8> {
    format!(
        "{{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":{{\"cmd\":\"NODE_CLUSTER\",\"act\":\"newconn\",\"key\":{json_key},\"seq\":"
    )
    .into_bytes()
}

/// A `newconn` line from its [`newconn_prefix`] and sequence number.
pub fn newconn_with(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = seq;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut out = Vec::with_capacity(prefix.len() + digits.len() - at + 3);
    out.extend_from_slice(prefix);
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"}}\n");
    out
}

/// A round-robin answer to `queryServer` `ack`: no descriptor; the worker takes connections
/// as `newconn`s. `sockname` is what the worker's `server.address()` reports.
pub fn rr_reply(ack: u64, key: &str, data: &Value, sockname: Value, seq: u64) -> Vec<u8> {
    line(cluster(
        fields(json!({"errno": null, "key": key, "ack": ack, "data": data, "sockname": sockname})),
        seq,
    ))
}

/// A shared-handle answer to `queryServer` `ack`, to travel with a bound socket.
pub fn shared_reply(ack: u64, key: &str, data: &Value, seq: u64) -> Vec<u8> {
    handle(cluster(
        fields(json!({"errno": 0, "key": key, "ack": ack, "data": data})),
        seq,
    ))
}

/// An error answer to `queryServer` `ack`: `errno` is a negative libuv errno.
pub fn error_reply(ack: u64, key: &str, errno: i32, seq: u64) -> Vec<u8> {
    line(cluster(
        fields(json!({"errno": errno, "key": key, "ack": ack, "data": null})),
        seq,
    ))
}

/// A bare acknowledgement of the worker's message `ack` (for `exitedAfterDisconnect`).
pub fn ack(ack: u64, seq: u64) -> Vec<u8> {
    line(cluster(fields(json!({"ack": ack})), seq))
}

/// `act: disconnect`: close your servers, then your channel.
pub fn disconnect(seq: u64) -> Vec<u8> {
    line(cluster(fields(json!({"act": "disconnect"})), seq))
}

/// A user message (arrives as `process.on('message')`); `None` if `json` is not JSON.
pub fn user(json: &[u8]) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(json).ok()?;
    Some(line(v))
}

/// The `NODE_HANDLE` envelope around a message whose descriptor travels with it.
fn handle(msg: Value) -> Vec<u8> {
    line(json!({"cmd": "NODE_HANDLE", "type": "net.Native", "msg": msg}))
}

/// `sockname` for a round-robin reply: Node's `{address, family, port}`.
pub fn sockname(addr: std::net::SocketAddr) -> Value {
    let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
    json!({"address": addr.ip().to_string(), "family": family, "port": addr.port()})
}

/// libuv's errno for an OS error (libuv uses the negated OS errno on Unix).
pub fn uv_errno(e: &std::io::Error) -> i32 {
    -e.raw_os_error().unwrap_or(nix::libc::EINVAL)
}

#[cfg(test)]
mod tests;
