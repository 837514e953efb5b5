//! Operating a running primary from outside: the control socket's line protocol
//! ([`Request`]), where the socket lives by default ([`socket_path`]), the primary's listening
//! side ([`server`]), the bounded non-blocking connections it and the metrics endpoint share
//! ([`conns`]), and the client that `herd status / reload / scale / stop` use ([`client`]).
//!
//! The protocol is one request line per connection (`status`, `reload`, `scale N|+K|-K`,
//! `stop`), answered by one line: `ok <text>` or `error <text>`. `status` answers
//! `ok <json>`. A request that takes time (`reload`, `stop`) is answered when it is done.
//!
//! Adding a command is one variant of [`Request`] (its word in [`Request::parse`] and
//! [`Request::line`]) and one arm in the primary's `on_request` (`src/primary/operate.rs`).

#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
pub mod conns;
pub mod server;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Longest request line the control socket reads (more: an error line, then close).
pub const MAX_LINE: usize = 256;
/// Most workers `scale` accepts.
pub const MAX_WORKERS: usize = 1024;

/// A change in the number of workers: `N`, `+K` or `-K`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Exactly this many.
    To(usize),
    /// This many more.
    Up(usize),
    /// This many fewer.
    Down(usize),
}

impl Scale {
    /// The number of workers this asks for when there are `now`; never below 1 nor above
    /// [`MAX_WORKERS`] (asking for that is an error, with the reason).
    pub fn target(self, now: usize) -> Result<usize, String> {
        let want = match self {
            Scale::To(n) => n as i128,
            Scale::Up(k) => now as i128 + k as i128,
            Scale::Down(k) => now as i128 - k as i128,
        };
        if want < 1 {
            return Err(format!(
                "cannot scale to {want} workers ({now} now): at least 1 must run"
            ));
        }
        if want > MAX_WORKERS as i128 {
            return Err(format!(
                "cannot scale to {want} workers: at most {MAX_WORKERS}"
            ));
        }
        Ok(want as usize)
    }
}

impl FromStr for Scale {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("'{s}' is not a worker count (N, +K or -K)");
        let num = |t: &str| {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse::<usize>().map_err(|_| bad())
        };
        match s.as_bytes().first() {
            Some(b'+') => num(&s[1..]).map(Scale::Up),
            Some(b'-') => num(&s[1..]).map(Scale::Down),
            _ => num(s).map(Scale::To),
        }
    }
}

impl fmt::Display for Scale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scale::To(n) => write!(f, "{n}"),
            Scale::Up(k) => write!(f, "+{k}"),
            Scale::Down(k) => write!(f, "-{k}"),
        }
    }
}

/// One request on the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// The worker table and the summary, as JSON.
    Status,
    /// A rolling reload; answered once it finished or failed.
    Reload,
    /// Change the number of workers.
    Scale(Scale),
    /// Graceful shutdown; the answer comes as the primary exits.
    Stop,
    /// Replace the primary itself (as `SIGUSR1`); answered once the new one took over or the
    /// upgrade failed.
    Upgrade,
}

impl Request {
    /// Parses a request line (without its newline).
    pub fn parse(line: &str) -> Result<Request, String> {
        let mut words = line.split_ascii_whitespace();
        let req = match (words.next(), words.next()) {
            (Some("status"), None) => Request::Status,
            (Some("reload"), None) => Request::Reload,
            (Some("stop"), None) => Request::Stop,
            (Some("upgrade"), None) => Request::Upgrade,
            (Some("scale"), Some(n)) => Request::Scale(n.parse()?),
            (Some("scale"), None) => return Err("scale needs a count: N, +K or -K".into()),
            (Some(w), _) if ["status", "reload", "stop", "upgrade"].contains(&w) => {
                return Err(format!("{w} takes no argument"))
            }
            (Some(_), _) => {
                return Err("unknown command (status, reload, scale, stop, upgrade)".into())
            }
            (None, _) => return Err("empty request".into()),
        };
        if words.next().is_some() {
            return Err("too many arguments".into());
        }
        Ok(req)
    }

    /// The request line (without its newline).
    pub fn line(&self) -> String {
        match self {
            Request::Status => "status".into(),
            Request::Reload => "reload".into(),
            Request::Scale(s) => format!("scale {s}"),
            Request::Stop => "stop".into(),
            Request::Upgrade => "upgrade".into(),
        }
    }
}

/// Whether and where the primary opens its control socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ControlSocket {
    /// No control socket (the library's default).
    #[default]
    Off,
    /// At [`socket_path`] for the port actually bound (`herd serve`'s default).
    Default,
    /// At this path.
    At(PathBuf),
}

/// Where sockets go by default: `$XDG_RUNTIME_DIR/herd/`, or `/tmp/herd-<uid>/` without it.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("herd"),
        None => PathBuf::from(format!("/tmp/herd-{}", nix::unistd::getuid())),
    }
}

/// The default control socket of the server listening on `port` (the port actually bound).
pub fn socket_path(port: u16) -> PathBuf {
    default_dir().join(format!("{port}.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_print_back() {
        for line in [
            "status", "reload", "stop", "scale 3", "scale +2", "scale -1",
        ] {
            assert_eq!(Request::parse(line).unwrap().line(), line);
        }
        for bad in [
            "",
            "nope",
            "scale",
            "scale x",
            "scale +",
            "scale 1 2",
            "stop now",
            "scale --1",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scale_never_goes_below_one() {
        assert_eq!(Scale::Up(2).target(2), Ok(4));
        assert_eq!(Scale::Down(1).target(2), Ok(1));
        assert!(Scale::Down(2).target(2).is_err());
        assert!(Scale::To(0).target(2).is_err());
        assert!(Scale::To(MAX_WORKERS + 1).target(1).is_err());
    }
}
