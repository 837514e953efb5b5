//! The primary's control socket: a Unix listener on its loop that serves only peers with the
//! same uid or root (`SO_PEERCRED`), reads one bounded request line per connection and hands
//! the parsed [`Request`] to the primary, which answers through [`ControlServer::answer`].

use std::fs::{DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::conns::{ConnId, Conns, Incoming};
use super::{Request, MAX_LINE};

/// Most control connections open at once; more are refused.
const MAX_CLIENTS: usize = 32;

/// Why the control socket could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the control socket {path}: {source}")]
pub struct ControlError {
    /// The socket's path.
    pub path: PathBuf,
    /// What the OS said.
    #[source]
    pub source: io::Error,
}

/// The listening control socket and its clients.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    base: usize,
    clients: Conns<UnixStream>,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("path", &self.path)
            .field("clients", &self.clients.len())
            .finish()
    }
}

/// What the primary has to act on after a readiness event.
#[derive(Debug)]
pub struct Asked {
    /// The client to answer.
    pub client: ConnId,
    /// What it asked.
    pub request: Request,
}

impl ControlServer {
    /// Creates the socket at `path` (its directory 0700 when created here, the socket 0600),
    /// replacing a stale file, and registers it with tokens from `base` on. `private_dir`:
    /// the directory must also be this user's and closed to others (the default location,
    /// which another user could have created first under `/tmp`).
    pub fn bind(
        path: &Path,
        registry: &Registry,
        base: usize,
        private_dir: bool,
    ) -> Result<Self, ControlError> {
        let err = |source| ControlError {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(err)?;
            }
            if private_dir {
                check_private(dir).map_err(err)?;
            }
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another server answers there",
            )));
        }
        let _ = std::fs::remove_file(path);
        let mut listener = UnixListener::bind(path).map_err(err)?;
        std::fs::set_permissions(path, Permissions::from_mode(0o600)).map_err(err)?;
        registry
            .register(&mut listener, Token(base), Interest::READABLE)
            .map_err(err)?;
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
            base,
            clients: Conns::new(base, MAX_CLIENTS, MAX_LINE, b"\n"),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when `token` is the listener's or a client's.
    pub fn owns(&self, token: Token) -> bool {
        token.0 == self.base || self.clients.owns(token)
    }

    /// Handles readiness of `token`: accepts clients (refusing other users), reads requests;
    /// returns the well-formed ones. Malformed ones are answered here.
    pub fn ready(&mut self, token: Token, registry: &Registry) -> Vec<Asked> {
        if token.0 == self.base {
            self.accept(registry);
            return Vec::new();
        }
        let Some((client, incoming)) = self.clients.ready(token, registry) else {
            return Vec::new();
        };
        let line = match incoming {
            Incoming::Request(bytes) => bytes,
            Incoming::TooLong => {
                self.answer(
                    client,
                    Err(format!("line longer than {MAX_LINE} bytes")),
                    registry,
                );
                return Vec::new();
            }
        };
        let parsed = std::str::from_utf8(&line)
            .map_err(|_| "request is not UTF-8".to_string())
            .and_then(|l| Request::parse(l.trim_end_matches('\r')));
        match parsed {
            Ok(request) => vec![Asked { client, request }],
            Err(why) => {
                self.answer(client, Err(why), registry);
                Vec::new()
            }
        }
    }

    fn accept(&mut self, registry: &Registry) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("control socket: accept: {e}");
                    return;
                }
            };
            if let Err(why) = allowed(&stream) {
                log::warn!("control socket: refused a client: {why}");
                refuse(stream, &format!("error permission denied: {why}\n"));
                continue;
            }
            if self.clients.full() {
                refuse(stream, "error busy: too many control clients\n");
                continue;
            }
            self.clients.add(stream, registry);
        }
    }

    /// When the next client times out, if any can.
    pub fn next_timeout(&self) -> Option<std::time::Instant> {
        self.clients.next_timeout()
    }

    /// Closes the clients that took too long to ask, or to take their answer.
    pub fn expire(&mut self, now: std::time::Instant, registry: &Registry) {
        let n = self.clients.expire(now, registry);
        if n > 0 {
            log::warn!("control socket: closed {n} clients that sent no request in time");
        }
    }

    /// Answers `client` with one line (`ok ...` or `error ...`) and closes it once sent.
    pub fn answer(&mut self, client: ConnId, reply: Result<String, String>, registry: &Registry) {
        self.say(client, reply, true, registry);
    }

    /// Answers `client` with one line and keeps it open (it waits for the primary to exit).
    pub fn answer_and_hold(
        &mut self,
        client: ConnId,
        reply: Result<String, String>,
        registry: &Registry,
    ) {
        self.say(client, reply, false, registry);
    }

    fn say(&mut self, client: ConnId, reply: Result<String, String>, close: bool, r: &Registry) {
        let line = match reply {
            Ok(text) => format!("ok {}\n", one_line(&text)),
            Err(text) => format!("error {}\n", one_line(&text)),
        };
        self.clients.send(client, line.as_bytes(), close, r);
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The directory must belong to this user and be closed to everyone else.
fn check_private(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)?;
    let me = nix::unistd::getuid().as_raw();
    let denied = |why: String| Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    if !meta.is_dir() {
        return denied(format!("{} is not a directory", dir.display()));
    }
    if meta.uid() != me {
        return denied(format!(
            "{} belongs to uid {}, not {me}",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return denied(format!(
            "{} is open to other users (mode {:o}; chmod 700 it)",
            dir.display(),
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// Same user or root: the only peers served.
fn allowed(stream: &UnixStream) -> Result<(), String> {
    let creds = getsockopt(stream, PeerCredentials).map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let me = nix::unistd::getuid().as_raw();
    if creds.uid() == me || creds.uid() == 0 {
        Ok(())
    } else {
        Err(format!(
            "uid {} (pid {}) is not uid {me} or root",
            creds.uid(),
            creds.pid()
        ))
    }
}

/// Best-effort refusal line (non-blocking: a full buffer drops it), then close.
fn refuse(mut stream: UnixStream, line: &str) {
    use std::io::Write;
    let _ = stream.write(line.as_bytes());
}
