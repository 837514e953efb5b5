//! The primary's events as an iterator ([`crate::Cluster::events`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;

use super::{Control, Primary, PrimaryError};
use crate::event::Event;

/// The primary's events as an iterator, from [`crate::Cluster::events`].
///
/// The primary's loop runs inside [`Iterator::next`], on the calling thread: there is no
/// background thread, so the signals the primary blocked for its `signalfd` stay blocked on the
/// thread that reads them (which is why `Events` is neither `Send` nor `Sync`). Between two
/// events, [`Events::control`] sends messages and disconnects, kills or stops workers; the
/// commands are carried out when `next` is called again. Handle each event promptly: while the
/// caller is busy, the primary does not hand out connections.
///
/// The iterator ends (`None`) after a graceful shutdown has completed (`SIGTERM`, `SIGINT` or
/// [`crate::Control::shutdown`]); an `Err` item means the loop failed, and is the last item.
/// Dropping it early stops the cluster gracefully and waits for the workers to exit.
///
/// ```no_run
/// use herd::{Cluster, Event, http::HttpHandler};
///
/// fn main() -> Result<(), herd::Error> {
///     let cluster = Cluster::new().workers(2).port(0);
///     if herd::is_worker() {
///         return cluster.run(HttpHandler::default);
///     }
///     let mut events = cluster.events()?;
///     println!("listening on {}", events.local_addr());
///     while let Some(event) = events.next() {
///         match event? {
///             Event::Online { id, .. } => events.control().send(id, "hello")?,
///             Event::Message { id, payload, .. } => {
///                 println!("worker {id} says {}", String::from_utf8_lossy(&payload));
///             }
///             Event::Exit { id, exited_after_disconnect: false, .. } => {
///                 println!("worker {id} crashed; it will be replaced");
///             }
///             _ => {}
///         }
///     }
///     Ok(())
/// }
/// ```
pub struct Events {
    primary: Primary,
    queue: Rc<RefCell<VecDeque<Event>>>,
    buf: mio::Events,
    started: bool,
    finished: bool,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("local_addr", &self.primary.local_addr())
            .field("queued", &self.queue.borrow().len())
            .field("started", &self.started)
            .field("finished", &self.finished)
            .finish()
    }
}

impl Events {
    /// Wraps a primary whose event hook pushes every event onto `queue`.
    pub(crate) fn new(primary: Primary, queue: Rc<RefCell<VecDeque<Event>>>) -> Events {
        Events {
            primary,
            queue,
            buf: mio::Events::with_capacity(1024),
            started: false,
            finished: false,
        }
    }

    /// The address actually bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.primary.local_addr()
    }

    /// Commands for the workers, and a view of them as of now.
    pub fn control(&mut self) -> &mut Control {
        self.primary.control()
    }
}

impl Iterator for Events {
    type Item = Result<Event, PrimaryError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(event) = self.queue.borrow_mut().pop_front() {
                return Some(Ok(event));
            }
            if self.finished {
                return None;
            }
            if !self.started {
                self.started = true;
                self.primary.start();
                continue;
            }
            match self.primary.turn(&mut self.buf) {
                Ok(false) => {}
                Ok(true) => {
                    self.finished = true;
                    self.primary.finish();
                }
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        if !self.started || self.finished {
            return;
        }
        self.primary.control().shutdown();
        for item in self.by_ref() {
            if let Err(e) = item {
                log::error!("stopping the cluster: {e}");
            }
        }
    }
}
