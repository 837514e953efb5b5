//! Listening sockets, created by the primary for every policy: bound before anything else
//! happens, so a port conflict fails once, early, with a clear error.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::time::Duration;

use crate::policy::ListenerPlan;

use nix::sys::socket::{
    bind as bind_socket, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag,
    SockType, SockaddrStorage,
};

/// Accept-queue length asked of the kernel (capped by `net.core.somaxconn`).
pub const BACKLOG: i32 = 4096;

/// Errors when creating a listener, with the address in the message.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// What the OS said.
    #[source]
    pub source: io::Error,
}

/// Binds and listens on `addr`, non-blocking and close-on-exec, with `SO_REUSEADDR` (and
/// `SO_REUSEPORT` when `reuseport`).
pub fn bind_listener(addr: SocketAddr, reuseport: bool) -> Result<TcpListener, ListenError> {
    let err = |e: nix::errno::Errno| ListenError {
        addr,
        source: e.into(),
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err)?;
    if reuseport {
        setsockopt(&fd, sockopt::ReusePort, &true).map_err(err)?;
    }
    bind_socket(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )
    .map_err(err)?;
    listen(&fd, Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN)).map_err(err)?;
    Ok(TcpListener::from(fd))
}

/// Asks the kernel to report a connection as acceptable only once the client has sent data
/// (`TCP_DEFER_ACCEPT`, nginx's `deferred`): the worker then finds the request already there and
/// serves it without waiting for another wakeup. Only for protocols where the client speaks
/// first (HTTP); a server that greets first would wait for the timeout instead.
pub fn defer_accept(listener: std::os::fd::BorrowedFd<'_>, within: Duration) -> io::Result<()> {
    let seconds = within.as_secs_f64().ceil().clamp(1.0, i32::MAX as f64) as i32;
    crate::sys::set_defer_accept(listener, seconds)
}

/// The listening sockets of one cluster.
#[derive(Debug)]
pub struct Bound {
    /// The socket the primary accepts on (primary-accepts policies).
    pub accept: Option<TcpListener>,
    /// The sockets handed to workers (workers-accept policies): one shared, or one per worker
    /// slot. The primary keeps them open, so a worker restart loses nothing queued on them.
    pub handed: Vec<TcpListener>,
    /// The address actually bound (the real port when 0 was asked for).
    pub local_addr: SocketAddr,
}

/// Binds what `plan` needs on `addr` for `workers` workers (`None`: the primary accepts), with
/// `TCP_DEFER_ACCEPT` when `defer` is set (a warning if the kernel refuses it).
pub fn bind(
    plan: Option<ListenerPlan>,
    addr: SocketAddr,
    workers: usize,
    defer: Option<Duration>,
) -> Result<Bound, ListenError> {
    let (accept, handed) = match plan {
        None => (Some(bind_listener(addr, false)?), Vec::new()),
        Some(ListenerPlan::Shared) => (None, vec![bind_listener(addr, false)?]),
        Some(ListenerPlan::PerWorker) => (None, bind_group(addr, workers)?),
    };
    let local_addr = accept
        .iter()
        .chain(handed.iter())
        .next()
        .map(|l| l.local_addr())
        .transpose()
        .map_err(|source| ListenError { addr, source })?
        .unwrap_or(addr);
    if let Some(within) = defer {
        for l in accept.iter().chain(handed.iter()) {
            if let Err(e) = defer_accept(l.as_fd(), within) {
                log::warn!("TCP_DEFER_ACCEPT not available: {e}");
            }
        }
    }
    Ok(Bound {
        accept,
        handed,
        local_addr,
    })
}

/// Creates `count` listeners on one address: the first binds (resolving port 0), the others
/// join it with `SO_REUSEPORT`.
pub fn bind_group(addr: SocketAddr, count: usize) -> Result<Vec<TcpListener>, ListenError> {
    let first = bind_listener(addr, true)?;
    let real = first
        .local_addr()
        .map_err(|source| ListenError { addr, source })?;
    let mut all = vec![first];
    for _ in 1..count {
        all.push(bind_listener(real, true)?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_in_use_is_a_clear_error() {
        let a = bind_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let e = bind_listener(a.local_addr().unwrap(), false).unwrap_err();
        assert!(e.to_string().contains("in use"), "{e}");
    }

    #[test]
    fn group_shares_one_port() {
        let g = bind_group("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = g[0].local_addr().unwrap().port();
        assert!(g.iter().all(|l| l.local_addr().unwrap().port() == port));
    }
}
