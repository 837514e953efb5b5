//! Listening sockets, created by the primary for every policy.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, IntoRawFd};

use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrStorage,
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
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )
    .map_err(err)?;
    listen(&fd, Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN)).map_err(err)?;
    // SAFETY: `fd` is a listening TCP socket we own; ownership moves into the TcpListener.
    Ok(unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) })
}

/// Asks the kernel to report a connection as acceptable only once the client has sent data
/// (`TCP_DEFER_ACCEPT`, nginx's `deferred`): the worker then finds the request already there and
/// serves it without waiting for another wakeup. Only for protocols where the client speaks
/// first (HTTP); a server that greets first would wait for the timeout instead.
pub fn defer_accept(listener: std::os::fd::BorrowedFd<'_>, seconds: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain setsockopt on a borrowed (open) socket, with a pointer to a live i32 and
    // its exact length.
    let rc = unsafe {
        nix::libc::setsockopt(
            listener.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_DEFER_ACCEPT,
            (&seconds as *const i32).cast(),
            std::mem::size_of::<i32>() as nix::libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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
