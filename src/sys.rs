//! Every `unsafe` block of the crate, each with its SAFETY argument. The rest of the crate is
//! `#![deny(unsafe_code)]` and calls these safe wrappers.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::libc;

/// Most descriptors one received packet may carry; the control buffer is sized for it.
pub const MAX_RECV_FDS: usize = 16;

/// Ignores `SIGPIPE`: a write to a closed peer becomes an `EPIPE` error instead of a death.
pub fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN runs no handler code, so there is no async-signal-safety
    // question; it only changes this process's disposition.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigIgn,
        );
    }
}

/// Makes `fd` survive the `exec` of `cmd`'s child (clears close-on-exec in the child only;
/// the parent's descriptor keeps its flag, so no other child inherits it).
pub fn keep_open_across_exec(cmd: &mut Command, fd: RawFd) {
    // SAFETY: between fork and exec the closure calls only fcntl, which is async-signal-safe,
    // and touches no memory shared with other threads.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `cmd`'s child under `SCHED_BATCH` (set between fork and exec, so from its first
/// instruction): the kernel treats it as CPU-bound, and its wake-ups do not preempt the task
/// running on the core. Unprivileged: a process may always move itself to `SCHED_BATCH`.
pub fn batch_scheduling_in_child(cmd: &mut Command) {
    // SAFETY: between fork and exec the closure calls only sched_setscheduler, which is a
    // plain syscall, on a parameter on its own stack; no memory shared with other threads.
    unsafe {
        cmd.pre_exec(|| {
            let param = libc::sched_param { sched_priority: 0 };
            if libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Installs `fd` as descriptor `target` in `cmd`'s child, open across `exec` (Node's channel
/// is fd 3). The parent's descriptors are untouched.
pub fn install_fd_in_child(cmd: &mut Command, fd: RawFd, target: RawFd) {
    // SAFETY: between fork and exec the closure calls only dup2 and fcntl, which are
    // async-signal-safe, and touches no memory shared with other threads. When `fd` already
    // is `target`, dup2 would leave close-on-exec set, so the flag is cleared instead.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, target)
            };
            if rc == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Takes ownership of an inherited descriptor after checking that it is open and a
/// `SOCK_SEQPACKET` socket (the channel a herd primary passes): a wrong number in the
/// environment is an error, never a stray descriptor closed or misused.
pub fn own_inherited_seqpacket(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "negative fd"));
    }
    // SAFETY: F_GETFD only reads the descriptor flags; it fails with EBADF on a closed number.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(io::Error::last_os_error());
    }
    let mut ty: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_TYPE writes one c_int into `ty`, whose size `len` gives; fd is open (checked).
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    if ty != libc::SOCK_SEQPACKET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} is not a SOCK_SEQPACKET socket"),
        ));
    }
    // SAFETY: the descriptor is open (F_GETFD succeeded), it was passed to this process for
    // this purpose, and this is the only place that takes ownership of it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of an inherited descriptor after checking that it is open and a regular file
/// (a `memfd` a herd primary passes); it is made close-on-exec again.
pub fn own_inherited_file(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "negative fd"));
    }
    let st = nix::sys::stat::fstat(fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} is not a regular file"),
        ));
    }
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    // SAFETY: the descriptor is open (fstat succeeded), it was passed to this process for this
    // purpose, and this is the only place that takes ownership of it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// This process's descriptor limit (`RLIMIT_NOFILE`, soft); unlimited when it cannot be read.
pub fn descriptor_limit() -> u64 {
    use nix::sys::resource::{getrlimit, Resource};
    getrlimit(Resource::RLIMIT_NOFILE).map_or(u64::MAX, |(soft, _)| soft)
}

/// Takes ownership of an inherited listening socket (socket activation, or a herd primary
/// upgrading itself) after checking that the number is open and names a listening TCP socket;
/// the answer says which check failed. The descriptor comes back close-on-exec and
/// non-blocking, as a `TcpListener`.
pub fn own_inherited_listener(fd: RawFd) -> io::Result<std::net::TcpListener> {
    use nix::sys::socket::{
        getsockname, getsockopt, sockopt, SockType, SockaddrLike, SockaddrStorage,
    };
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("fd {fd} {why}"));
    if fd < 0 {
        return Err(bad("is negative"));
    }
    // SAFETY: F_GETFD only reads the descriptor flags; it fails with EBADF on a closed number.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(bad("is not open"));
    }
    // SAFETY: the number is open (checked above) and stays open for the checks below, which
    // only read its properties through this borrow.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = nix::sys::stat::fstat(fd).map_err(io::Error::from)?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(bad("is not a socket"));
    }
    if getsockopt(&borrowed, sockopt::SockType).map_err(io::Error::from)? != SockType::Stream {
        return Err(bad("is not a stream (TCP) socket"));
    }
    let addr: SockaddrStorage = getsockname(fd).map_err(io::Error::from)?;
    if addr.as_sockaddr_in().is_none() && addr.as_sockaddr_in6().is_none() {
        let family = addr
            .family()
            .map_or("unknown".to_string(), |f| format!("{f:?}"));
        return Err(bad(&format!(
            "is not a TCP socket (address family {family})"
        )));
    }
    if !getsockopt(&borrowed, sockopt::AcceptConn).map_err(io::Error::from)? {
        return Err(bad("is a TCP socket that is not listening"));
    }
    // SAFETY: the descriptor is open and a listening TCP socket (checked), it was passed to
    // this process to listen on, and the caller takes it exactly once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let listener = std::net::TcpListener::from(owned);
    listener.set_nonblocking(true)?;
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(io::Error::from)?;
    Ok(listener)
}

/// Makes every descriptor of `fds` survive the `exec` of `cmd`'s child (close-on-exec cleared
/// in the child only).
pub fn keep_all_open_across_exec(cmd: &mut Command, fds: Vec<RawFd>) {
    // SAFETY: between fork and exec the closure calls only fcntl, which is async-signal-safe,
    // and reads a vector allocated before the fork (no allocation happens in the child).
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// `TCP_DEFER_ACCEPT` (not wrapped by `nix`): report a connection as acceptable only once the
/// client has sent data, waiting at most about `seconds`.
pub fn set_defer_accept(listener: BorrowedFd<'_>, seconds: i32) -> io::Result<()> {
    // SAFETY: a plain setsockopt on a borrowed (so open) socket, with a pointer to a live i32
    // and its exact length.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&seconds as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes sent on this socket that the peer has not read yet (`SIOCOUTQ`): for a Unix socket
/// pair, what waits in the peer's receive queue.
pub fn unread_by_peer(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ's number) writes one int into `n`, which lives for the call;
    // the descriptor is borrowed, so open.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// What one `recvmsg` brought.
#[derive(Debug)]
pub struct Received {
    /// Bytes of the packet (0 with no descriptors: the peer closed).
    pub len: usize,
    /// Descriptors that arrived (`SCM_RIGHTS`), close-on-exec, in order.
    pub fds: Vec<OwnedFd>,
    /// `MSG_CTRUNC`: the kernel could not install every descriptor (this process is out of
    /// descriptors, or the buffer was too small); the ones missing from `fds` were dropped.
    pub fds_truncated: bool,
    /// `MSG_TRUNC`: the packet was larger than `buf`.
    pub data_truncated: bool,
}

/// Room for one `SCM_RIGHTS` message of [`MAX_RECV_FDS`] descriptors, aligned for `cmsghdr`.
#[repr(C)]
struct CmsgBuf {
    _align: [libc::cmsghdr; 0],
    bytes: [u8; 128],
}

/// Receives one packet without blocking, with `MSG_CMSG_CLOEXEC`. Unlike `nix::recvmsg`, the
/// descriptors that did arrive are returned even when the control data was truncated
/// (`MSG_CTRUNC`), so that they are owned (and closed) rather than leaked, and so that the
/// caller knows which ids came without their socket.
pub fn recv_with_fds(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    const _: () = assert!(
        // SAFETY: CMSG_SPACE is a pure size computation.
        unsafe { libc::CMSG_SPACE((MAX_RECV_FDS * size_of::<RawFd>()) as u32) } as usize <= 128
    );
    let mut cbuf = CmsgBuf {
        _align: [],
        bytes: [0; 128],
    };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header; the fields we need are set below.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.bytes.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.bytes.len() as _;
    let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    let len = loop {
        // SAFETY: msg points at a live iovec over `buf` and at `cbuf`, both sized as stated and
        // alive for the call; the kernel writes at most those lengths.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, bounded by
    // msg_controllen (which the kernel set to what it wrote); every SCM_RIGHTS payload is an
    // array of ints that the kernel installed as new descriptors for this process, which
    // nothing else owns, so each becomes an OwnedFd exactly once. read_unaligned because
    // CMSG_DATA need not be aligned for int.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let payload = (*c).cmsg_len as usize - (data as usize - c as usize);
                for i in 0..payload / size_of::<RawFd>() {
                    let raw = (data as *const RawFd).add(i).read_unaligned();
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Received {
        len,
        fds,
        fds_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
        data_truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
    })
}

/// Bytes of a [`SharedWords`] area (one page).
const SHARED_LEN: usize = 4096;
/// 64-bit words in a [`SharedWords`] area.
pub const SHARED_WORDS: usize = SHARED_LEN / 8;

/// A page of memory shared with another process (a sealed `memfd` mapped by both), seen as
/// [`SHARED_WORDS`] atomic 64-bit words. The other process may write anything there, so readers
/// must treat the values as untrusted numbers; it cannot shrink the file (the memfd is sealed
/// against it), so reading never faults.
#[derive(Debug)]
pub struct SharedWords {
    ptr: std::ptr::NonNull<libc::c_void>,
}

// SAFETY: the mapping is only ever accessed through `AtomicU64`s, which are safe to use from
// any thread (and from another process: on Linux, lock-free atomics on MAP_SHARED memory are
// coherent across processes); the pointer is owned and unmapped once, in Drop.
unsafe impl Send for SharedWords {}
// SAFETY: as above: shared access only goes through atomics.
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// Creates a zeroed page in a new `memfd` (close-on-exec, sealed against shrinking and
    /// growing) and maps it; returns the mapping and the descriptor to hand to the other process.
    pub fn create(name: &std::ffi::CStr) -> io::Result<(SharedWords, OwnedFd)> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
        let fd = memfd_create(
            name,
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )?;
        nix::unistd::ftruncate(&fd, SHARED_LEN as libc::off_t)?;
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))?;
        let words = SharedWords::map(&fd)?;
        Ok((words, fd))
    }

    /// Maps a page another process created with [`SharedWords::create`] (and passed as `fd`).
    /// A descriptor that is not a large enough file is an error.
    pub fn open(fd: &OwnedFd) -> io::Result<SharedWords> {
        let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
        if usize::try_from(st.st_size).unwrap_or(0) < SHARED_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "shared page descriptor is too small",
            ));
        }
        SharedWords::map(fd)
    }

    fn map(fd: &OwnedFd) -> io::Result<SharedWords> {
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        let len = std::num::NonZeroUsize::new(SHARED_LEN).ok_or(io::ErrorKind::InvalidInput)?;
        // SAFETY: a fresh shared mapping chosen by the kernel (no address given), of a file at
        // least SHARED_LEN long; it aliases no Rust object, and it is only read and written
        // through atomics (see `words`). It stays mapped until Drop.
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )?
        };
        Ok(SharedWords { ptr })
    }

    /// The words.
    pub fn words(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: the mapping is SHARED_LEN bytes, page-aligned (so aligned for u64), lives as
        // long as `self`, and AtomicU64 has the size and alignment of u64; it is never accessed
        // other than through these atomics in this process.
        unsafe {
            std::slice::from_raw_parts(
                self.ptr.as_ptr().cast::<std::sync::atomic::AtomicU64>(),
                SHARED_WORDS,
            )
        }
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: `ptr` is the start of a mapping of SHARED_LEN bytes made in `map`, unmapped only
        // here; no reference from `words` outlives `self`.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr, SHARED_LEN) };
    }
}

/// Registers `fd` with the current tokio runtime's reactor for readable events (feature
/// `tokio`; must run inside the runtime).
#[cfg(feature = "tokio")]
pub fn tokio_readable(fd: OwnedFd) -> io::Result<::tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns `fd`, so the descriptor stays open and names the same open file
    // description for the AsyncFd's whole life, and OwnedFd::as_raw_fd always returns that
    // same number.
    let r = unsafe {
        ::tokio::io::unix::AsyncFd::register_with_interest(fd, ::tokio::io::Interest::READABLE)
    };
    r.map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn inherited_fd_must_be_a_seqpacket_socket() {
        let (a, _b) = UnixStream::pair().unwrap();
        let e = own_inherited_seqpacket(a.as_raw_fd()).unwrap_err();
        assert!(e.to_string().contains("SOCK_SEQPACKET"), "{e}");
        assert!(own_inherited_seqpacket(-1).is_err());
        assert!(own_inherited_seqpacket(987_654).is_err(), "closed number");
        let _ = a.as_fd();
    }

    #[test]
    fn a_shared_page_is_seen_by_both_mappings_and_cannot_shrink() {
        use std::sync::atomic::Ordering;
        let (a, fd) = SharedWords::create(c"test").unwrap();
        let b = SharedWords::open(&fd).unwrap();
        b.words()[3].store(42, Ordering::Release);
        assert_eq!(a.words()[3].load(Ordering::Acquire), 42);
        assert!(nix::unistd::ftruncate(&fd, 0).is_err(), "sealed");
        let (small, _) = UnixStream::pair().unwrap();
        assert!(SharedWords::open(&OwnedFd::from(small)).is_err());
    }

    #[test]
    fn inherited_listener_is_checked() {
        use std::os::fd::IntoRawFd;
        let e = own_inherited_listener(987_654).unwrap_err().to_string();
        assert!(e.contains("not open"), "{e}");
        let (a, _b) = UnixStream::pair().unwrap();
        let e = own_inherited_listener(a.as_raw_fd())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a stream") || e.contains("not a TCP"), "{e}");
        let file = std::fs::File::open("/dev/null").unwrap();
        let e = own_inherited_listener(file.as_raw_fd())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a socket"), "{e}");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let e = own_inherited_listener(c.as_raw_fd())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not listening"), "{e}");
        let raw = l.into_raw_fd();
        let l = own_inherited_listener(raw).unwrap();
        assert!(l.local_addr().is_ok());
    }
}
