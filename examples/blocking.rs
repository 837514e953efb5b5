//! The blocking adapter: each connection is a plain `std::net::TcpStream`, served on a thread
//! of its own inside the worker, while the worker's `mio` loop keeps the channel to the primary.
//!
//! `cargo run --example blocking -- 4000` (port 0: an ephemeral port) then `nc localhost 4000`.
//! It greets with the worker's pid and echoes every line; `wait N` answers after N ms (at most
//! 10 s), like a slow request. On shutdown an idle connection is closed within half a second; a
//! request in flight is finished first.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use herd::Cluster;

fn serve(stream: TcpStream) -> io::Result<()> {
    // Wake up now and then to notice a shutdown while the client is idle.
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut out = stream.try_clone()?;
    writeln!(out, "hello from worker {}", std::process::id())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if herd::blocking::draining() {
                    return Ok(());
                }
                continue; // a partial line stays in `line`
            }
            Err(e) => return Err(e),
        }
        let request = line.trim_end();
        if let Some(ms) = request.strip_prefix("wait ") {
            let ms: u64 = ms.parse().unwrap_or(0).min(10_000);
            std::thread::sleep(Duration::from_millis(ms)); // the slow request itself
            writeln!(out, "waited {ms}")?;
        } else {
            writeln!(out, "{request}")?;
        }
        line.clear();
        if herd::blocking::draining() {
            return Ok(());
        }
    }
}

fn main() -> Result<(), herd::Error> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let port = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(4000);
    let workers = std::env::args()
        .nth(2)
        .and_then(|p| p.parse().ok())
        .unwrap_or(2);
    Cluster::new().workers(workers).port(port).run(|| {
        herd::blocking::serve(|stream| {
            if let Err(e) = serve(stream) {
                log::debug!("connection ended: {e}");
            }
        })
    })
}
