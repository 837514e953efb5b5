//! What a worker publishes on its status page ([`StatusPage`]): busy or idle, connections read
//! from its channel, held at its limit, and served, and whether it is close to its descriptor
//! limit. Shared by the worker's own loop ([`super::runtime`]) and the intake that feeds an
//! async runtime (`super::intake`), so both speak the same way to the primary's policy.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use crate::ipc::{StatusPage, MAX_CONN_BATCH};
use crate::worker_env::WorkerEnv;

/// A worker whose newest received descriptor is this close to its limit says it is tight: the
/// primary then keeps a copy of what it hands over until acked (the kernel would drop sockets
/// that do not fit).
const TIGHT_MARGIN: u64 = 2 * MAX_CONN_BATCH as u64;

/// The worker's side of its status page, if the primary gave it one (else every call is a
/// no-op).
#[derive(Debug, Default)]
pub struct Publisher {
    page: Option<Arc<StatusPage>>,
    /// Tight for good: the worker takes no more connections, so the primary must keep a copy
    /// of any it still hands over (the worker refuses them, and they come back).
    pinned_tight: bool,
}

impl Publisher {
    /// Maps the page `HERD_WORKER_STATUS_FD` names, if it names one (a page that cannot be
    /// mapped is logged, and nothing is published).
    pub fn from_env(env: &WorkerEnv) -> Publisher {
        let page = env.status_fd.and_then(|fd| {
            crate::sys::own_inherited_file(fd)
                .and_then(|f| StatusPage::open(&f))
                .map_err(|e| log::warn!("worker: no status page ({e})"))
                .ok()
        });
        Publisher {
            page: page.map(Arc::new),
            pinned_tight: false,
        }
    }

    #[cfg(feature = "tokio")]
    /// The page itself, for code that flips busy and idle from elsewhere (an async runtime's
    /// park hooks).
    pub fn page(&self) -> Option<Arc<StatusPage>> {
        self.page.clone()
    }

    /// The loop starts (`true`) or stops (`false`) handling events.
    pub fn busy(&self, busy: bool) {
        if let Some(p) = &self.page {
            p.set_busy(busy);
        }
    }

    /// The loop starts on one connection's work (a step of its request): the busy stretch the
    /// page shows starts again, so a long stretch means one long request, not a turn of many
    /// short ones (the primary's `idle-first` keeps new connections away from the former).
    pub fn working(&self) {
        if let Some(p) = &self.page {
            p.set_busy(true);
        }
    }

    /// A packet of connections arrived with these sockets: says whether the newest is close
    /// to the descriptor limit.
    pub fn arrived(&self, fds: &[OwnedFd]) {
        let (Some(p), Some(newest)) = (&self.page, fds.iter().map(|f| f.as_raw_fd()).max()) else {
            return;
        };
        let limit = crate::sys::descriptor_limit();
        let tight = u64::try_from(newest).unwrap_or(0) + TIGHT_MARGIN >= limit;
        p.set_tight(tight || self.pinned_tight);
    }

    #[cfg(feature = "tokio")]
    /// The worker takes no more connections: from now on the primary keeps its copies.
    pub fn stay_tight(&mut self) {
        self.pinned_tight = true;
        if let Some(p) = &self.page {
            p.set_tight(true);
        }
    }

    /// `n` more connections were read from the channel (publish the served and held counts
    /// first: the primary must never see a connection neither unread nor held nor served).
    pub fn received(&self, n: u64) {
        if let Some(p) = &self.page {
            p.add_received(n);
        }
    }

    /// Connections served now (counting those taken and not started yet).
    pub fn open(&self, n: usize) {
        if let Some(p) = &self.page {
            p.set_open(n as u64);
        }
    }

    /// Connections held unserved at the connection limit.
    pub fn held(&self, n: usize) {
        if let Some(p) = &self.page {
            p.set_held(n as u64);
        }
    }
}
