//! The seed program: Node's cluster "Hello World! <pid>" server, one worker per core.
//!
//! `cargo run --example hello -- 3000` (port 0: an ephemeral port, shown in the log), then
//! `curl localhost:3000/` a few times and watch the pid rotate.

use herd::{http::HttpHandler, Cluster};

fn main() -> Result<(), herd::Error> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let port = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    if herd::is_primary() {
        println!("Master {} is running", std::process::id());
    } else if let Some(id) = herd::worker_id() {
        println!("Worker {} (id {id}) started", std::process::id());
    }
    Cluster::new().port(port).run(HttpHandler::default)
}
