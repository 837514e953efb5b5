//! Distributing work, with the iterator API: the primary hands numbers to its workers one at a
//! time, each worker counts the primes below its number and sends the answer back, and the
//! primary collects the answers and stops the cluster when it has them all. A worker that
//! crashes has its task given to another one.
//!
//! `cargo run --example compute -- 20` (the number of tasks). The workers also serve
//! `Hello World!` on an ephemeral port, as any herd worker does.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};

use herd::http::{HttpConn, HttpHandler};
use herd::{Cluster, Context, Event, Events, Handler, WorkerId};
use mio::net::TcpStream;

/// The worker's side: answers the message `"n"` with `"n primes"`.
struct Cruncher {
    http: HttpHandler,
    /// Each task `n` counts the primes below `n * scale` (set by the primary's `worker_env`).
    scale: u64,
}

impl Handler for Cruncher {
    type Conn = HttpConn;

    fn connect(&mut self, stream: TcpStream, ctx: &mut Context) -> HttpConn {
        self.http.connect(stream, ctx)
    }

    fn message(&mut self, payload: Vec<u8>, ctx: &mut Context) {
        let task = std::str::from_utf8(&payload)
            .ok()
            .and_then(|t| t.parse::<u64>().ok());
        let reply = match task {
            Some(n) => format!("{n} {}", count_primes(n * self.scale)),
            None => format!("error: not a task: {}", String::from_utf8_lossy(&payload)),
        };
        ctx.count_request();
        if let Err(e) = ctx.send(reply) {
            log::error!("cannot answer: {e}");
        }
    }
}

/// Number of primes below `limit` (a sieve: some honest CPU work).
fn count_primes(limit: u64) -> u64 {
    let n = limit as usize;
    if n < 3 {
        return 0;
    }
    let mut composite = vec![false; n];
    let mut count = 0;
    for i in 2..n {
        if !composite[i] {
            count += 1;
            for j in (i * i..n).step_by(i) {
                composite[j] = true;
            }
        }
    }
    count
}

/// Gives worker `id` the next task, if any is left.
fn give(
    events: &mut Events,
    id: WorkerId,
    todo: &mut VecDeque<u64>,
    busy: &mut HashMap<WorkerId, u64>,
) -> Result<(), herd::Error> {
    if let Some(n) = todo.pop_front() {
        events.control().send(id, n.to_string())?;
        busy.insert(id, n);
    }
    Ok(())
}

fn main() -> Result<(), herd::Error> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let tasks: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let scale: u64 = 1000;
    let cluster = Cluster::new()
        .workers(2)
        .addr(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .worker_env("COMPUTE_SCALE", scale.to_string());

    if herd::is_worker() {
        let scale = std::env::var("COMPUTE_SCALE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        return cluster.run(|| Cruncher {
            http: HttpHandler::default(),
            scale,
        });
    }

    let mut todo: VecDeque<u64> = (1..=tasks).collect();
    let mut busy: HashMap<WorkerId, u64> = HashMap::new();
    let mut results: BTreeMap<u64, u64> = BTreeMap::new();
    let mut events = cluster.events()?;
    while let Some(event) = events.next() {
        let event = event?;
        match &event {
            Event::Online { id, .. } => give(&mut events, *id, &mut todo, &mut busy)?,
            Event::Message { id, .. } => {
                let answer = event.text().and_then(|t| {
                    let (n, primes) = t.split_once(' ')?;
                    Some((n.parse::<u64>().ok()?, primes.parse::<u64>().ok()?))
                });
                let Some((n, primes)) = answer else {
                    eprintln!("worker {id}: unexpected answer {:?}", event.text());
                    continue;
                };
                busy.remove(id);
                results.insert(n, primes);
                println!(
                    "task {n}: {primes} primes below {} (worker {id})",
                    n * scale
                );
                if results.len() as u64 == tasks {
                    let total: u64 = results.values().sum();
                    println!("all {tasks} tasks done: {total} primes in total");
                    events.control().shutdown();
                } else {
                    give(&mut events, *id, &mut todo, &mut busy)?;
                }
            }
            Event::Exit {
                id,
                exited_after_disconnect: false,
                ..
            } => {
                // It crashed: its task goes back in the queue; its replacement will ask.
                if let Some(n) = busy.remove(id) {
                    todo.push_front(n);
                }
            }
            _ => {}
        }
    }
    // The cluster is over: the signals its primary blocked are unblocked again (a later
    // Ctrl-C works as usual), although `events` is still in scope.
    if let Some(mask) = herd::procfs::blocked_signals(std::process::id()) {
        println!("blocked signals after the cluster: {mask:#x}");
    }
    Ok(())
}
