//! The client side of the control socket, for `herd status / reload / scale / stop`: finds
//! the socket, sends one request, waits for its answer (and, for `stop`, for the primary to
//! exit), and renders `status` as a table.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::Request;

/// How long `status` and `scale` wait for their answer.
const QUICK: Duration = Duration::from_secs(10);

/// Why a command failed; each is one line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the path.
    #[error("no herd server at {path}: {source}")]
    NoServer {
        /// The path tried.
        path: PathBuf,
        /// What connecting said.
        source: std::io::Error,
    },
    /// The connection failed midway.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket's path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The server answered with an error.
    #[error("{0}")]
    Server(String),
    /// The answer was not what the protocol says.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

/// Sends `request` to the server at `path`; returns the text of its `ok` answer.
pub fn ask(path: &Path, request: Request) -> Result<String, ClientError> {
    let io = |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| ClientError::NoServer {
        path: path.to_path_buf(),
        source,
    })?;
    let waits = matches!(request, Request::Reload | Request::Stop);
    stream
        .set_read_timeout(if waits { None } else { Some(QUICK) })
        .map_err(io)?;
    // A refused client may find the connection closed before its request is written: the
    // refusal line is still there to read.
    let wrote = stream.write_all(format!("{}\n", request.line()).as_bytes());
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let read = reader.read_line(&mut line);
    if line.is_empty() {
        wrote.map_err(io)?;
        read.map_err(io)?;
    }
    let line = line.trim_end();
    let text = if let Some(text) = line.strip_prefix("ok") {
        text.trim_start().to_string()
    } else if let Some(why) = line.strip_prefix("error ") {
        return Err(ClientError::Server(why.to_string()));
    } else if line.is_empty() {
        return Err(ClientError::Protocol(
            "the server closed without answering".into(),
        ));
    } else {
        return Err(ClientError::Protocol(line.to_string()));
    };
    if request == Request::Stop {
        // The primary holds the connection until it exits: its end closes then.
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut reader, &mut rest);
    }
    Ok(text)
}

/// Runs one command and returns what to print. `json`: `status` prints the server's JSON.
pub fn run(path: &Path, request: Request, json: bool) -> Result<String, ClientError> {
    let text = ask(path, request)?;
    match request {
        Request::Status if json => Ok(text),
        Request::Status => {
            let v: Value =
                serde_json::from_str(&text).map_err(|e| ClientError::Protocol(e.to_string()))?;
            Ok(status_table(&v))
        }
        _ => Ok(text),
    }
}

/// `1h02m`, `5m03s`, `12s`.
pub fn uptime(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// `12.3 MiB`.
fn bytes(n: u64) -> String {
    let mib = n as f64 / (1024.0 * 1024.0);
    format!("{mib:.1} MiB")
}

/// Renders a `status` answer: one row per worker, then the summary line.
pub fn status_table(v: &Value) -> String {
    let u = |w: &Value, k: &str| w.get(k).and_then(Value::as_u64).unwrap_or(0);
    let mut out = format!(
        "{:>3} {:>8} {:<13} {:>7} {:>8} {:>11} {:>5} {:>10} {:>6} {:>10}\n",
        "id", "pid", "state", "uptime", "restarts", "connections", "open", "requests", "cpu", "rss"
    );
    for w in v
        .get("workers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let pid = match w.get("pid").and_then(Value::as_u64) {
            Some(p) => p.to_string(),
            None => "-".into(),
        };
        let cpu = w.get("cpu_percent").and_then(Value::as_f64).unwrap_or(0.0);
        let _ = writeln!(
            out,
            "{:>3} {:>8} {:<13} {:>7} {:>8} {:>11} {:>5} {:>10} {:>5.1}% {:>10}",
            u(w, "id"),
            pid,
            w.get("state").and_then(Value::as_str).unwrap_or("?"),
            uptime(u(w, "uptime_s")),
            u(w, "restarts"),
            u(w, "connections"),
            u(w, "open"),
            u(w, "requests"),
            cpu,
            bytes(u(w, "rss_bytes")),
        );
    }
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?");
    let _ = write!(
        out,
        "policy {}, address {}, pending {}, primary pid {}, uptime {}",
        s("policy"),
        s("address"),
        u(v, "pending"),
        u(v, "primary_pid"),
        uptime(u(v, "uptime_s")),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rows_and_summary() {
        let v: Value = serde_json::from_str(
            r#"{"primary_pid":10,"policy":"round-robin","address":"127.0.0.1:3000","pending":0,
               "uptime_s":65,"workers":[{"id":1,"pid":11,"state":"online","uptime_s":3700,
               "restarts":0,"connections":5,"open":1,"requests":9,"cpu_percent":1.5,
               "rss_bytes":2097152}]}"#,
        )
        .unwrap();
        let t = status_table(&v);
        assert!(
            t.contains("online") && t.contains("1h01m") && t.contains("2.0 MiB"),
            "{t}"
        );
        assert!(t.ends_with("primary pid 10, uptime 1m05s"), "{t}");
    }

    #[test]
    fn no_server_names_the_path() {
        let e = ask(Path::new("/nonexistent/herd.sock"), Request::Status).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/herd.sock"), "{e}");
    }
}
