//! A custom protocol on herd: every worker greets with its pid, then echoes back what it reads.
//!
//! `cargo run --example echo -- 4000` (port 0: an ephemeral port) then `nc localhost 4000`.
//! The connection is driven by readiness events on the worker's `mio` loop through the
//! `Handler` and `Connection` traits; see `examples/blocking.rs` for the same with a plain
//! blocking `std::net::TcpStream`.

use std::io::{self, Read, Write};

use herd::worker::{Connection, Context, Handler, Status};
use herd::Cluster;
use mio::net::TcpStream;

struct Echo;

struct EchoConn {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Handler for Echo {
    type Conn = EchoConn;

    fn connect(&mut self, stream: TcpStream, _ctx: &mut Context) -> EchoConn {
        let greeting = format!("echo from worker {}\n", std::process::id()).into_bytes();
        EchoConn {
            stream,
            pending: greeting,
        }
    }
}

impl Connection for EchoConn {
    fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    fn ready(&mut self, ctx: &mut Context) -> Status {
        let mut buf = [0u8; 4096];
        loop {
            // Write what is owed first, then read more.
            while !self.pending.is_empty() {
                match self.stream.write(&self.pending) {
                    Ok(n) => {
                        self.pending.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Status::Open,
                    Err(_) => return Status::Close,
                }
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Status::Close,
                Ok(n) => {
                    ctx.count_request();
                    self.pending.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Status::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Status::Close,
            }
        }
    }
}

fn main() -> Result<(), herd::Error> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let port = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(4000);
    // The primary logs "listening on <addr>" with the real port once every worker is online.
    Cluster::new().workers(2).port(port).run(|| Echo)
}
