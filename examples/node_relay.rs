//! Foreign workers from the library: a primary written with herd's `Cluster` builder whose
//! workers are an unmodified Node.js app (Node's cluster protocol, as `herd run` uses).
//! Once a worker listens, the primary sends it `COUNT` numbered JSON messages; the app
//! (`tests/fixtures/node/hello.js` with `ECHO=1`) answers each with `{"n": its count, "got":
//! the message}`, and the primary checks that every answer came back once and in order both
//! ways, then stops the cluster.
//!
//! `ECHO=1 cargo run --example node_relay -- tests/fixtures/node/hello.js 1000`

use herd::{Cluster, Event};

fn main() -> Result<(), herd::Error> {
    let mut args = std::env::args().skip(1);
    let app = args.next().unwrap_or_else(|| "app.js".into());
    let count: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let mut events = Cluster::new()
        .workers(1)
        .port(0)
        .node_workers("node", [app])
        .events()?;
    let mut next = 0u64;
    while let Some(event) = events.next() {
        match event? {
            Event::Listening { id, .. } => {
                for i in 0..count {
                    events.control().send(id, format!("{{\"i\":{i}}}"))?;
                }
            }
            Event::Message { id, .. } if next == count => {
                println!("worker {id} sent more than asked");
            }
            Event::Message { payload, .. } => {
                let text = String::from_utf8_lossy(&payload);
                let want = format!("{{\"n\":{next},\"got\":{{\"i\":{next}}}}}");
                if text != want {
                    println!("out of order: got {text}, want {want}");
                    events.control().shutdown();
                    continue;
                }
                next += 1;
                if next == count {
                    println!("relay done: {count} messages each way, in order");
                    events.control().shutdown();
                }
            }
            _ => {}
        }
    }
    Ok(())
}
