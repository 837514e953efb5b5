//! The worker's connection table: one slab of entries, each a connection and what the loop
//! knows about it, keyed by [`ConnKey`] (which is also its `mio` token, offset).

use mio::Token;
use slab::Slab;

/// A connection's key in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnKey(usize);

/// Tokens below this are the channel, the signals and the listeners.
pub const FIRST_CONN_TOKEN: usize = 64;

impl ConnKey {
    /// The key a token names, if it names a connection.
    pub fn from_token(t: Token) -> Option<ConnKey> {
        t.0.checked_sub(FIRST_CONN_TOKEN).map(ConnKey)
    }

    /// The token the connection is registered under.
    pub fn token(self) -> Token {
        Token(FIRST_CONN_TOKEN + self.0)
    }
}

/// One connection and what the loop knows about it.
#[derive(Debug)]
pub struct Entry<C> {
    /// The handler's state for it.
    pub conn: C,
    /// Handed over by the primary, which may still hold a copy (until it reads our ack, or,
    /// for a given connection, until it runs again after the `sendmsg` that woke us), rather
    /// than accepted here.
    pub handed: bool,
    /// The client address its PROXY protocol header named, if any.
    pub peer: Option<std::net::SocketAddr>,
    /// Registered with the loop (a connection served and closed at once never is).
    pub registered: bool,
}

/// Every connection the worker serves.
#[derive(Debug)]
pub struct Table<C> {
    slab: Slab<Entry<C>>,
    /// Connections that yielded: run again next turn without waiting for an event.
    again: Vec<ConnKey>,
}

impl<C> Default for Table<C> {
    fn default() -> Self {
        Table {
            slab: Slab::new(),
            again: Vec::new(),
        }
    }
}

impl<C> Table<C> {
    /// Adds an entry; returns its key.
    pub fn insert(&mut self, entry: Entry<C>) -> ConnKey {
        ConnKey(self.slab.insert(entry))
    }

    /// The entry for `key`, if it is still open.
    pub fn get_mut(&mut self, key: ConnKey) -> Option<&mut Entry<C>> {
        self.slab.get_mut(key.0)
    }

    /// Removes the entry for `key`.
    pub fn remove(&mut self, key: ConnKey) -> Option<Entry<C>> {
        self.slab.try_remove(key.0)
    }

    /// Connections open.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Every key, for a pass that may close some.
    pub fn keys(&self) -> Vec<ConnKey> {
        self.slab.iter().map(|(k, _)| ConnKey(k)).collect()
    }

    /// Keys whose entry satisfies `f`.
    pub fn keys_where(&self, f: impl Fn(&Entry<C>) -> bool) -> Vec<ConnKey> {
        self.slab
            .iter()
            .filter(|(_, e)| f(e))
            .map(|(k, _)| ConnKey(k))
            .collect()
    }

    /// Runs `key` again next turn.
    pub fn run_again(&mut self, key: ConnKey) {
        self.again.push(key);
    }

    /// True when some connection yielded.
    pub fn has_yielded(&self) -> bool {
        !self.again.is_empty()
    }

    /// The connections that yielded, emptied.
    pub fn take_yielded(&mut self) -> Vec<ConnKey> {
        std::mem::take(&mut self.again)
    }
}
