//! Messages both ways while connections flow. Every worker serves HTTP and echoes each message
//! from the primary back. Each connection a worker takes makes it send `conn` to the primary,
//! and the primary answers each `conn` with the next batch of numbered messages, until `COUNT`
//! went to every worker; it checks that every echo comes back once and in order. So the
//! exchange only advances while connections are handed out, and batches pile up in both
//! directions when the channel is full.
//!
//! It also shows the size bound: a message one byte over `herd::MAX_MESSAGE` is refused with an
//! error on both sides, and one of exactly the bound goes through.
//!
//! `cargo run --example relay -- 0 10000 500` (port, messages per worker, batch size), then put
//! load on it (`curl` in a loop, or `wrk`) and watch for `relay done`. Stop it with `SIGTERM`.

use std::collections::HashMap;

use herd::http::{HttpConn, HttpHandler};
use herd::{Cluster, Context, Control, Event, Handler, WorkerId, MAX_MESSAGE};
use mio::net::TcpStream;

/// The worker's side: HTTP, plus an echo that checks the order it receives numbers in.
struct Echo {
    http: HttpHandler,
    expect: u64,
}

impl Echo {
    fn send(ctx: &mut Context, payload: impl Into<Vec<u8>>) {
        if let Err(e) = ctx.send(payload) {
            log::error!("worker {}: {e}", ctx.worker_id());
        }
    }
}

impl Handler for Echo {
    type Conn = HttpConn;

    fn connect(&mut self, stream: TcpStream, ctx: &mut Context) -> HttpConn {
        Echo::send(ctx, "conn");
        self.http.connect(stream, ctx)
    }

    fn message(&mut self, payload: Vec<u8>, ctx: &mut Context) {
        if payload.len() == MAX_MESSAGE {
            // The bound probe: one byte more must be refused, the probe itself goes back.
            match ctx.send(vec![0; MAX_MESSAGE + 1]) {
                Err(e) => Echo::send(ctx, format!("refused: {e}")),
                Ok(()) => Echo::send(ctx, "accepted an oversized message"),
            }
            Echo::send(ctx, payload);
            return;
        }
        let n = std::str::from_utf8(&payload)
            .ok()
            .and_then(|t| t.parse::<u64>().ok());
        match n {
            Some(n) if n == self.expect => {
                self.expect += 1;
                Echo::send(ctx, payload);
            }
            _ => Echo::send(
                ctx,
                format!(
                    "out of order: got {:?}, expected {}",
                    String::from_utf8_lossy(&payload),
                    self.expect
                ),
            ),
        }
    }
}

/// The primary's bookkeeping for one worker.
#[derive(Default)]
struct Peer {
    sent: u64,
    echoed: u64,
}

struct Relay {
    count: u64,
    batch: u64,
    peers: HashMap<WorkerId, Peer>,
    done: usize,
    workers: usize,
}

impl Relay {
    fn on_event(&mut self, event: &Event, control: &mut Control) {
        match event {
            Event::Online { id, .. } => {
                self.peers.insert(*id, Peer::default());
                if let Err(e) = control.send(*id, vec![0; MAX_MESSAGE + 1]) {
                    println!("primary to worker {id}: refused: {e}");
                }
                if let Err(e) = control.send(*id, vec![7; MAX_MESSAGE]) {
                    println!("primary to worker {id}: unexpected error: {e}");
                }
            }
            Event::Message { id, payload, .. } => self.on_message(*id, payload, control),
            Event::Exit { .. } | Event::Fork { .. } => println!("event {event}"),
            _ => {}
        }
    }

    fn on_message(&mut self, id: WorkerId, payload: &[u8], control: &mut Control) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if payload.len() == MAX_MESSAGE {
            let intact = payload.iter().all(|&b| b == 7);
            println!("worker {id}: max-size message came back (intact: {intact})");
            return;
        }
        let text = String::from_utf8_lossy(payload);
        if text == "conn" {
            let end = (peer.sent + self.batch).min(self.count);
            for n in peer.sent..end {
                if let Err(e) = control.send(id, n.to_string()) {
                    println!("worker {id}: cannot send: {e}");
                }
            }
            peer.sent = end;
            return;
        }
        match text.parse::<u64>() {
            Ok(n) if n == peer.echoed => {
                peer.echoed += 1;
                if peer.echoed == self.count {
                    println!(
                        "worker {id}: {} messages round-tripped in order",
                        self.count
                    );
                    self.done += 1;
                    if self.done == self.workers {
                        println!(
                            "relay done: {} messages each way",
                            self.count * self.done as u64
                        );
                    }
                }
            }
            Ok(n) => println!(
                "worker {id}: echo out of order: got {n}, expected {}",
                peer.echoed
            ),
            Err(_) => println!("worker {id}: {text}"),
        }
    }
}

fn main() -> Result<(), herd::Error> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let arg = |i: usize, default: u64| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let (port, count, batch) = (arg(1, 3000) as u16, arg(2, 10_000), arg(3, 500).max(1));
    let workers = 2;
    let mut relay = Relay {
        count,
        batch,
        peers: HashMap::new(),
        done: 0,
        workers,
    };
    Cluster::new()
        .workers(workers)
        .port(port)
        .on_event(move |event, control| relay.on_event(event, control))
        .run(|| Echo {
            http: HttpHandler::default(),
            expect: 0,
        })
}
