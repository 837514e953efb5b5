//! Concurrent client load: many threads of `GET /`, and what they saw added up.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::{read_response, Response};

/// What a burst of client load saw.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub ok: usize,
    pub failed: usize,
    pub by_pid: std::collections::HashMap<u32, usize>,
    pub errors: Vec<String>,
}

/// `clients` threads each send `each` `GET /` requests, on one keep-alive connection per
/// client (`keepalive`) or on a new connection per request.
pub fn load(addr: SocketAddr, clients: usize, each: usize, keepalive: bool) -> LoadResult {
    let handles: Vec<_> = (0..clients)
        .map(|_| std::thread::spawn(move || client_run(addr, each, keepalive, None)))
        .collect();
    merge(handles)
}

/// Like [`load`], but runs until `stop` is set (at most `each` requests per client).
pub fn load_until(
    addr: SocketAddr,
    clients: usize,
    each: usize,
    keepalive: bool,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<LoadResult>> {
    (0..clients)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || client_run(addr, each, keepalive, Some(stop)))
        })
        .collect()
}

/// Joins client threads and adds up what they saw.
pub fn merge(handles: Vec<std::thread::JoinHandle<LoadResult>>) -> LoadResult {
    let mut total = LoadResult::default();
    for h in handles {
        let r = h.join().expect("client thread");
        total.ok += r.ok;
        total.failed += r.failed;
        total.errors.extend(r.errors);
        for (p, n) in r.by_pid {
            *total.by_pid.entry(p).or_default() += n;
        }
    }
    total
}

/// One client's loop. On a reused keep-alive connection that the server closed before sending
/// any byte of the response, the request is retried once on a new connection, as HTTP clients
/// do for idempotent requests (RFC 9112, 9.3.1); any other failure counts.
fn client_run(
    addr: SocketAddr,
    each: usize,
    keepalive: bool,
    stop: Option<Arc<std::sync::atomic::AtomicBool>>,
) -> LoadResult {
    let mut res = LoadResult::default();
    let mut conn: Option<BufReader<TcpStream>> = None;
    for _ in 0..each {
        if stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
        {
            break;
        }
        let mut outcome = one_request(addr, keepalive, &mut conn);
        if let Err(RequestError::ClosedBeforeResponse(_)) = &outcome {
            outcome = one_request(addr, keepalive, &mut conn);
        }
        match outcome {
            Ok(r) if r.status == 200 => {
                res.ok += 1;
                *res.by_pid.entry(r.pid()).or_default() += 1;
            }
            Ok(r) => {
                res.failed += 1;
                res.errors.push(format!("status {}", r.status));
            }
            Err(e) => {
                res.failed += 1;
                res.errors.push(format!("{e:?}"));
                conn = None;
            }
        }
    }
    res
}

#[derive(Debug)]
enum RequestError {
    /// A reused connection was closed before any response byte: safe to retry.
    ClosedBeforeResponse(String),
    Failed(String),
}

fn one_request(
    addr: SocketAddr,
    keepalive: bool,
    conn: &mut Option<BufReader<TcpStream>>,
) -> Result<Response, RequestError> {
    let reused = conn.is_some();
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| RequestError::Failed(format!("connect: {e}")))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        *conn = Some(BufReader::new(s));
    }
    let Some(r) = conn.as_mut() else {
        return Err(RequestError::Failed("no connection".into()));
    };
    let req: &[u8] = if keepalive {
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
    } else {
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    };
    let sent = r.get_mut().write_all(req);
    let got = sent.and_then(|_| read_response(r, false));
    let retryable = |e: &std::io::Error| {
        reused
            && matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            )
    };
    match got {
        Ok(resp) => {
            if !keepalive || resp.header("connection") == Some("close") {
                *conn = None;
            }
            Ok(resp)
        }
        Err(e) => {
            *conn = None;
            if retryable(&e) {
                Err(RequestError::ClosedBeforeResponse(e.to_string()))
            } else {
                Err(RequestError::Failed(e.to_string()))
            }
        }
    }
}
