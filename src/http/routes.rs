//! The routes: `/` (hello), `/work?us=N` (burn CPU), `/bytes?n=N` (a body of N bytes),
//! `/healthz` (`200` while the host takes work, `503` once it is leaving) and `/ip` (the
//! client's address as herd sees it: from the PROXY header behind a balancer).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Most CPU time `/work` burns for one request.
pub const MAX_WORK: Duration = Duration::from_secs(1);
/// Largest body `/bytes` answers.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;

/// What a route answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// A status and a small body.
    Text(u16, Vec<u8>),
    /// `200` with a body of this many bytes, streamed.
    Bytes(u64),
}

impl Reply {
    /// The status it answers with.
    pub fn status(&self) -> u16 {
        match self {
            Reply::Text(s, _) => *s,
            Reply::Bytes(_) => 200,
        }
    }
}

fn query_u64(target: &str, key: &str) -> Option<u64> {
    let (_, q) = target.split_once('?')?;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

/// What the routes may ask about the host and the connection.
pub struct Host<'a> {
    /// The host is leaving (drain delay, or shutting down): `/healthz` fails.
    pub leaving: bool,
    /// The client's address (looked up only by the routes that need it).
    pub peer: &'a mut dyn FnMut() -> Option<SocketAddr>,
}

/// Routes one request; `target` is the origin-form path and query.
pub fn route(method: &str, target: &str, hello: &[u8], host: Host<'_>) -> Reply {
    if method != "GET" && method != "HEAD" {
        return Reply::Text(405, b"method not allowed\n".to_vec());
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/" => Reply::Text(200, hello.to_vec()),
        "/healthz" if host.leaving => Reply::Text(503, b"draining\n".to_vec()),
        "/healthz" => Reply::Text(200, b"ok\n".to_vec()),
        "/ip" => match (host.peer)() {
            Some(a) => Reply::Text(200, a.ip().to_string().into_bytes()),
            None => Reply::Text(500, b"client address unknown\n".to_vec()),
        },
        "/work" => {
            let us = query_u64(target, "us").unwrap_or(0);
            let spent = burn(Duration::from_micros(us).min(MAX_WORK));
            Reply::Text(
                200,
                format!("{} worked {}us\n", std::process::id(), spent.as_micros()).into_bytes(),
            )
        }
        "/bytes" => Reply::Bytes(query_u64(target, "n").unwrap_or(0).min(MAX_BYTES)),
        _ => Reply::Text(404, b"not found\n".to_vec()),
    }
}

/// Spins on the CPU for `d` (the CPU-bound handler the Node cluster article is about).
fn burn(d: Duration) -> Duration {
    let start = Instant::now();
    let mut x: u64 = 1;
    while start.elapsed() < d {
        for _ in 0..256 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    start.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(method: &str, target: &str, hello: &[u8]) -> Reply {
        let mut peer = || "127.0.0.9:5".parse().ok();
        let host = Host {
            leaving: false,
            peer: &mut peer,
        };
        route(method, target, hello, host)
    }

    #[test]
    fn routes_and_caps() {
        assert_eq!(at("GET", "/", b"hi"), Reply::Text(200, b"hi".to_vec()));
        assert_eq!(at("GET", "/nope", b"hi").status(), 404);
        assert_eq!(at("POST", "/", b"hi").status(), 405);
        assert_eq!(at("GET", "/bytes?n=10", b""), Reply::Bytes(10));
        assert_eq!(
            at("GET", "/bytes?n=999999999999", b""),
            Reply::Bytes(MAX_BYTES)
        );
        assert_eq!(at("GET", "/work?us=100", b"").status(), 200);
    }

    #[test]
    fn health_and_address() {
        assert_eq!(
            at("GET", "/ip", b""),
            Reply::Text(200, b"127.0.0.9".to_vec())
        );
        assert_eq!(at("GET", "/healthz", b"").status(), 200);
        let mut peer = || None;
        let leaving = Host {
            leaving: true,
            peer: &mut peer,
        };
        assert_eq!(route("GET", "/healthz", b"", leaving).status(), 503);
        let mut peer = || None;
        let unknown = Host {
            leaving: false,
            peer: &mut peer,
        };
        assert_eq!(route("HEAD", "/ip", b"", unknown).status(), 500);
    }
}
