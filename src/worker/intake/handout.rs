//! How the intake gives out what it took: straight to the caller, or, with
//! `--proxy-protocol`, once the connection's PROXY header has been read (the same steps as the
//! worker's own loop, in `worker::preface`).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use mio::net::TcpStream;

use super::{Intake, Taken};
use crate::worker::preface::{PrefaceKey, Step};

impl Intake {
    /// A connection taken: to the caller, or first to wait for its PROXY header.
    pub(super) fn give(&mut self, stream: TcpStream, handed: bool) {
        self.connections += 1;
        match self.prefaces.as_mut() {
            Some(p) => {
                let key = p.insert(stream, handed, self.ctx.now);
                let step = p.start(key, self.poll.registry());
                self.preface_step(step);
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

    /// Bytes arrived on a connection waiting for its header.
    pub(super) fn preface_ready(&mut self, key: PrefaceKey) {
        if let Some(p) = self.prefaces.as_mut() {
            let step = p.ready(key, self.poll.registry());
            self.preface_step(step);
        }
    }

    /// What a step of a waiting connection gave: the caller gets it once its header is read.
    fn preface_step(&mut self, step: Step) {
        match step {
            Step::Waiting => {}
            Step::Done {
                stream,
                handed,
                peer,
            } => self.hand_out(stream, handed, peer),
            Step::Closed => self.uplink.closed(),
        }
    }

    /// Closes the connections whose PROXY header is late.
    pub(super) fn sweep(&mut self) {
        if let Some(p) = self.prefaces.as_mut() {
            for _ in 0..p.close_late(self.ctx.now, self.poll.registry()) {
                self.uplink.closed();
            }
        }
    }
}
