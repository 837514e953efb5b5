//! Foreign (Node.js) workers from the library's `Cluster` builder: JSON messages both ways,
//! in order (`examples/node_relay.rs`).

mod common;
use common::*;

#[test]
fn json_messages_go_both_ways_in_order() {
    let app = node_fixture("hello.js");
    let out = {
        std::env::set_var("ECHO", "1"); // inherited by the example's Node workers
        run_example("node_relay", &[&app, "2000"], DEADLINE)
    };
    assert!(out.status.success(), "{:?}", out.stderr);
    assert_eq!(
        out.stdout,
        ["relay done: 2000 messages each way, in order"],
        "{:?}",
        out.stderr
    );
}
