//! A custom protocol behind a balancer that speaks the PROXY protocol (HAProxy's `send-proxy`
//! or `send-proxy-v2`): every connection is greeted with the address of the client the
//! balancer stands for, then closed.
//!
//! `cargo run --example proxied -- 4000`, then, as a balancer would:
//! `printf 'PROXY TCP4 192.0.2.7 127.0.0.1 5555 4000\r\n' | nc localhost 4000`
//! prints `hello 192.0.2.7:5555`. A connection that does not open with a valid header is closed
//! without a word.

use std::io::{self, Write};
use std::time::Duration;

use herd::worker::{Connection, Context, Handler, Status};
use herd::Cluster;
use mio::net::TcpStream;

struct Greeter;

struct Greeting {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Handler for Greeter {
    type Conn = Greeting;

    fn connect(&mut self, stream: TcpStream, ctx: &mut Context) -> Greeting {
        // The client the PROXY header named (the socket's own peer for a LOCAL header).
        let greeting = match ctx.peer_addr(&stream) {
            Ok(client) => format!("hello {client}\n"),
            Err(e) => format!("hello, whoever you are ({e})\n"),
        };
        Greeting {
            stream,
            pending: greeting.into_bytes(),
        }
    }
}

impl Connection for Greeting {
    fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    fn ready(&mut self, ctx: &mut Context) -> Status {
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Status::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Status::Close,
            }
        }
        ctx.count_request();
        Status::Close
    }
}

fn main() -> Result<(), herd::Error> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let port = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(4000);
    Cluster::new()
        .workers(2)
        .port(port)
        .proxy_protocol(Some(Duration::from_secs(10)))
        .run(|| Greeter)
}
