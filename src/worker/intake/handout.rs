//! How the intake gives out what it took: straight to the caller, or, with
//! `--proxy-protocol`, once the connection's PROXY header has been read (the same steps as the
//! worker's own loop, in `worker::preface`).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use mio::net::TcpStream;
use mio::Interest;

use super::{Intake, Taken};
use crate::worker::preface::{self, HeaderRead, PrefaceKey};

impl Intake {
    /// A connection taken: to the caller, or first to wait for its PROXY header.
    pub(super) fn give(&mut self, stream: TcpStream, handed: bool) {
        self.connections += 1;
        match self.prefaces.as_mut() {
            Some(p) => {
                let key = p.insert(stream, handed, self.ctx.now);
                self.preface_start(key);
            }
            None => self.hand_out(stream, handed, None),
        }
    }

    fn hand_out(&mut self, stream: TcpStream, handed: bool, peer: Option<SocketAddr>) {
        let stream = std::net::TcpStream::from(OwnedFd::from(stream));
        if self.closed {
            // Accepted or acked before the caller stopped: nothing will serve it.
            self.uplink.closed();
            return;
        }
        self.ready.push_back(Taken {
            stream,
            handed,
            peer,
        });
    }

    /// The same steps as the worker's own loop: read the header now (it usually came with the
    /// connection; then the connection is never registered under its waiting token), or wait
    /// for it.
    fn preface_start(&mut self, key: PrefaceKey) {
        let Some(w) = self.prefaces.as_mut().and_then(|p| p.get_mut(key)) else {
            return;
        };
        match preface::read_header(&mut w.stream) {
            HeaderRead::More => {}
            HeaderRead::Refused(why) => return self.preface_close(key, Some(&why), false),
            HeaderRead::Done(peer) => return self.preface_done(key, peer, false),
        }
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut w.stream, key.token(), Interest::READABLE)
        {
            // (Bytes that come between the read and the registration raise an event.)
            log::warn!("cannot register connection: {e}");
            self.preface_close(key, None, false);
        }
    }

    /// Bytes arrived on a connection waiting for its header.
    pub(super) fn preface_ready(&mut self, key: PrefaceKey) {
        let Some(w) = self.prefaces.as_mut().and_then(|p| p.get_mut(key)) else {
            return;
        };
        match preface::read_header(&mut w.stream) {
            HeaderRead::More => {}
            HeaderRead::Refused(why) => self.preface_close(key, Some(&why), true),
            HeaderRead::Done(peer) => self.preface_done(key, peer, true),
        }
    }

    fn preface_done(&mut self, key: PrefaceKey, peer: Option<SocketAddr>, registered: bool) {
        let Some(mut w) = self.prefaces.as_mut().and_then(|p| p.remove(key)) else {
            return;
        };
        if registered {
            let _ = self.poll.registry().deregister(&mut w.stream);
        }
        self.hand_out(w.stream, w.handed, peer);
    }

    fn preface_close(&mut self, key: PrefaceKey, why: Option<&str>, registered: bool) {
        let Some(p) = self.prefaces.as_mut() else {
            return;
        };
        let Some(mut w) = p.remove(key) else {
            return;
        };
        if let Some(why) = why {
            p.refused += 1;
            log::debug!(
                "worker {}: closing a connection without a valid PROXY header: {why}",
                std::process::id()
            );
        }
        if registered {
            let _ = self.poll.registry().deregister(&mut w.stream);
        }
        if w.handed {
            let _ = w.stream.shutdown(std::net::Shutdown::Write);
        }
        self.uplink.closed();
    }

    pub(super) fn sweep(&mut self) {
        let late = self.prefaces.as_ref().map(|p| p.late(self.ctx.now));
        for key in late.unwrap_or_default() {
            let why = "no complete header within the header timeout";
            self.preface_close(key, Some(why), true);
        }
    }
}
