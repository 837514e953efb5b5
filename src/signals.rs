//! Signals delivered into a `mio` loop through `signalfd`.
//!
//! The signals are blocked for the calling thread and read from a non-blocking `signalfd`
//! registered with the loop. The blocked mask is inherited across `exec`, so children must
//! reset it (std's `Command` does; workers set their own mask at start anyway).

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// A `signalfd` for a fixed set of signals.
pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks `signals` for this thread and opens a non-blocking, close-on-exec `signalfd`.
    pub fn new(signals: &[Signal]) -> io::Result<Signals> {
        let mut set = SigSet::empty();
        for s in signals {
            set.add(*s);
        }
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
            .map_err(io::Error::from)?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io::Error::from)?;
        Ok(Signals { fd })
    }

    /// Reads every pending signal (call after the loop reports the fd readable).
    pub fn pending(&mut self) -> Vec<Signal> {
        let mut out = Vec::new();
        while let Ok(Some(info)) = self.fd.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                out.push(sig);
            }
        }
        out
    }

    /// The descriptor, for `mio::unix::SourceFd`.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Ignores `SIGPIPE`: a write to a closed peer becomes an `EPIPE` error instead of a death.
pub fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN has no handler code to be unsafe about.
    unsafe {
        let _ = nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn);
    }
}
