//! The PROXY protocol (HAProxy's, versions 1 and 2): a balancer in front of herd opens each
//! connection with a header that names the client it stands for.
//!
//! Parsing is the `ppp` crate's; this module says what herd takes from a header: how long it
//! is (so exactly that many bytes are consumed and the request after it is left alone) and the
//! client's address. A header that is incomplete asks for more bytes; one that can never become
//! valid is an [`InvalidHeader`], and the connection is closed without an answer, as the
//! specification requires (herd never guesses that a connection without one is direct).
//!
//! The builders ([`v1_header`], [`v2_header`]) are for clients: `herd bench --proxy-protocol`
//! and the tests.

use std::net::SocketAddr;

use ppp::{v1, v2, HeaderResult, PartialResult};

/// Longest version 1 header, `\r\n` included (the specification's 107 bytes).
pub const MAX_V1_LEN: usize = 107;

/// What the bytes at the start of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A complete header of `len` bytes. `source` is the client it stands for; `None` for a
    /// `LOCAL` (v2) or `UNKNOWN` (v1) header, or an address family without one (a balancer's
    /// own health check): the connection's own peer is then the client.
    Header {
        /// Bytes the header takes, from the first byte of the connection.
        len: usize,
        /// The client's address, when the header carries one.
        source: Option<SocketAddr>,
    },
    /// Not enough bytes yet; at least this many are needed in all.
    Incomplete {
        /// The least total number of bytes that could complete the header.
        need: usize,
    },
}

/// Bytes that can never become a valid PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid PROXY protocol header: {0}")]
pub struct InvalidHeader(pub String);

/// Parses the start of a connection. `buf` may hold more than the header (the request that
/// follows); only the header's length is reported.
pub fn parse(buf: &[u8]) -> Result<Parsed, InvalidHeader> {
    let result = HeaderResult::parse(buf);
    let incomplete = match &result {
        HeaderResult::V1(r) => r.is_err() && v1_line_unfinished(buf),
        HeaderResult::V2(r) => r.is_incomplete(),
    };
    if incomplete {
        return Ok(Parsed::Incomplete {
            need: incomplete_need(&result, buf.len()),
        });
    }
    match result {
        HeaderResult::V1(Ok(h)) => Ok(Parsed::Header {
            len: h.header.len(),
            source: match h.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            },
        }),
        HeaderResult::V2(Ok(h)) => Ok(Parsed::Header {
            len: h.len(),
            source: match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            },
        }),
        HeaderResult::V1(Err(e)) => Err(InvalidHeader(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(InvalidHeader(e.to_string())),
    }
}

/// A version 1 header is one line: until its line ends (within the 107 bytes it may take),
/// what looks like its start is not judged, even where the part so far ends mid-field; once
/// it has ended, it is valid or not (a line with fields missing is not waiting for more).
fn v1_line_unfinished(buf: &[u8]) -> bool {
    const PREFIX: &[u8] = b"PROXY ";
    buf.len() < MAX_V1_LEN
        && !buf.contains(&b'\n')
        && (buf.starts_with(PREFIX) || PREFIX.starts_with(buf))
}

/// The least total length that could complete an incomplete header: exact for a version 2
/// header whose fixed part has arrived, one more byte otherwise.
fn incomplete_need(result: &HeaderResult<'_>, have: usize) -> usize {
    match result {
        HeaderResult::V2(Err(v2::ParseError::Partial(_, payload))) => 16 + payload,
        _ => have + 1,
    }
}

/// A version 1 (text) header saying `source` connected to `destination`; `UNKNOWN` when the
/// two are of different families.
pub fn v1_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let family = match (source, destination) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => "TCP4",
        (SocketAddr::V6(_), SocketAddr::V6(_)) => "TCP6",
        _ => return b"PROXY UNKNOWN\r\n".to_vec(),
    };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// A version 2 (binary) `PROXY` header for a TCP connection from `source` to `destination`
/// (both of one family).
pub fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let builder = v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (source, destination),
    );
    // Building into a Vec writes to memory only; the one way it fails is a payload longer than
    // a header can say, which two addresses never are.
    builder.build().unwrap_or_default()
}

/// The version 2 header balancers send for their own health checks: `LOCAL`, no address.
pub fn v2_local_header() -> Vec<u8> {
    let builder = v2::Builder::new(
        v2::Version::Two | v2::Command::Local,
        v2::AddressFamily::Unspecified | v2::Protocol::Unspecified,
    );
    builder.build().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn both_versions_give_the_source_and_their_length() {
        let (src, dst) = (addr("127.0.0.9:40000"), addr("127.0.0.2:3000"));
        for header in [v1_header(src, dst), v2_header(src, dst)] {
            let mut bytes = header.clone();
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(
                parse(&bytes),
                Ok(Parsed::Header {
                    len: header.len(),
                    source: Some(src)
                })
            );
        }
        let (src6, dst6) = (addr("[2001:db8::9]:1"), addr("[::1]:2"));
        for header in [v1_header(src6, dst6), v2_header(src6, dst6)] {
            assert_eq!(
                parse(&header),
                Ok(Parsed::Header {
                    len: header.len(),
                    source: Some(src6)
                })
            );
        }
    }

    #[test]
    fn local_and_unknown_have_no_source() {
        let local = v2_local_header();
        assert_eq!(
            parse(&local),
            Ok(Parsed::Header {
                len: local.len(),
                source: None
            })
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\nGET"),
            Ok(Parsed::Header {
                len: 15,
                source: None
            })
        );
    }

    #[test]
    fn every_prefix_is_incomplete_and_never_invalid() {
        let (src, dst) = (addr("10.1.2.3:5"), addr("10.3.2.1:6"));
        for header in [v1_header(src, dst), v2_header(src, dst)] {
            for cut in 0..header.len() {
                match parse(&header[..cut]) {
                    Ok(Parsed::Incomplete { need }) => assert!(need > cut, "{cut}"),
                    other => panic!("prefix {cut} of {header:?}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn garbage_and_requests_are_invalid() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
            b"PROXY TCP4 1.2.3.400 5.6.7.8 1 1\r\n",
            b"PROXY SCTP 1.2.3.4 5.6.7.8 1 1\r\n",
            b"PROXY TCP4 nonsense\r\nGET / HTTP/1.1\r\n",
            b"PROXY TCP4\r\n",
            &[b'x'; MAX_V1_LEN + 1],
            b"\r\n\r\n\0\r\nQUIT\n\x31\x11\0\x0c",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
