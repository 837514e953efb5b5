//! Worker lifecycle, with the callback API: prints every event, then, once all three workers
//! are online, disconnects worker 1 (a graceful exit), kills worker 2 with `SIGKILL` and makes
//! worker 3 crash (exit code 70). Workers 2 and 3 are replaced, worker 1 is not. When both
//! replacements are online the primary prints its view of the workers and stops the cluster.
//!
//! `cargo run --example lifecycle`

use std::net::{Ipv4Addr, SocketAddr};

use herd::http::{HttpConn, HttpHandler};
use herd::Signal;
use herd::{Cluster, Context, Control, Event, Handler};
use mio::net::TcpStream;

/// Serves HTTP; the message `crash` makes it exit with code 70, as a bug would.
struct Fragile(HttpHandler);

impl Handler for Fragile {
    type Conn = HttpConn;

    fn connect(&mut self, stream: TcpStream, ctx: &mut Context) -> HttpConn {
        self.0.connect(stream, ctx)
    }

    fn message(&mut self, payload: Vec<u8>, _ctx: &mut Context) {
        if payload == b"crash" {
            log::error!("worker {} crashing on purpose", std::process::id());
            std::process::exit(70);
        }
    }
}

fn show(control: &Control) -> String {
    control
        .workers()
        .iter()
        .map(|w| format!("{}={:?}", w.id, w.state).to_lowercase())
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> Result<(), herd::Error> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let mut online = 0;
    Cluster::new()
        .workers(3)
        .addr(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .on_event(move |event, control| {
            println!("event {event}");
            match event {
                Event::Online { .. } => {
                    online += 1;
                    if online == 3 {
                        println!("workers {}", show(control));
                        let ids: Vec<_> = control.workers().iter().map(|w| w.id).collect();
                        control.disconnect(ids[0]);
                        control.kill(ids[1], Signal::SIGKILL);
                        if let Err(e) = control.send(ids[2], "crash") {
                            eprintln!("cannot send: {e}");
                        }
                    } else if online == 5 {
                        // Both replacements are up.
                        println!("workers {}", show(control));
                        control.shutdown();
                    }
                }
                Event::Exit { id, .. } => println!("is_dead {id} {}", control.is_dead(*id)),
                _ => {}
            }
        })
        .run(|| Fragile(HttpHandler::default()))
}
