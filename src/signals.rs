//! Signals delivered into a `mio` loop through `signalfd`.
//!
//! The signals are blocked for the calling thread and read from a non-blocking `signalfd`
//! registered with the loop; dropping [`Signals`] restores the thread's previous mask, so a
//! library user's process reacts to Ctrl-C again once the cluster is gone. The blocked mask is
//! inherited across `exec`, so children must reset it (std's `Command` does; workers set their
//! own mask at start anyway).

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// A `signalfd` for a fixed set of signals, blocked for this thread while it lives.
pub struct Signals {
    fd: SignalFd,
    /// The thread's mask before; restored on drop.
    previous: SigSet,
}

impl Signals {
    /// Blocks `signals` for this thread and opens a non-blocking, close-on-exec `signalfd`.
    pub fn new(signals: &[Signal]) -> io::Result<Signals> {
        let mut set = SigSet::empty();
        for s in signals {
            set.add(*s);
        }
        let mut previous = SigSet::empty();
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut previous))
            .map_err(io::Error::from)?;
        match SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
            Ok(fd) => Ok(Signals { fd, previous }),
            Err(e) => {
                restore(&previous);
                Err(e.into())
            }
        }
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

impl Drop for Signals {
    fn drop(&mut self) {
        // Signals that arrived and were not read stay pending and are delivered now, with
        // their usual effect: what the caller would have seen without us.
        restore(&self.previous);
    }
}

fn restore(previous: &SigSet) {
    if let Err(e) = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(previous), None)
    {
        log::error!("cannot restore the signal mask: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_mask_comes_back_on_drop() {
        // A thread of its own: the mask is per thread, and other tests run beside this one.
        std::thread::spawn(|| {
            let mask = || {
                let mut m = SigSet::empty();
                nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, None, Some(&mut m))
                    .unwrap();
                m
            };
            assert!(!mask().contains(Signal::SIGUSR2));
            let s = Signals::new(&[Signal::SIGUSR2]).unwrap();
            assert!(mask().contains(Signal::SIGUSR2));
            drop(s);
            assert!(!mask().contains(Signal::SIGUSR2));
        })
        .join()
        .unwrap();
    }
}
