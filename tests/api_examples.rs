//! The library's examples, run as a user would (issue 7): the seed program, a custom TCP
//! protocol on the worker's loop, and a primary that distributes work and collects results.
//! `cargo test` builds the examples before it runs these.

mod common;

use std::time::Duration;

use common::*;

fn count_primes(limit: usize) -> u64 {
    (2..limit)
        .filter(|&n| (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .count() as u64
}

#[test]
fn compute_collects_every_result_then_stops() {
    let tasks = 12;
    let out = run_example("compute", &[&tasks.to_string()], Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}\n{}",
        out.stdout.join("\n"),
        out.stderr.join("\n")
    );
    let mut total = 0;
    for n in 1..=tasks {
        let expect = count_primes(n * 1000);
        total += expect;
        let prefix = format!("task {n}: {expect} primes below {} ", n * 1000);
        let lines = out.stdout.iter().filter(|l| l.starts_with(&prefix)).count();
        assert_eq!(lines, 1, "task {n}:\n{}", out.stdout.join("\n"));
    }
    let done = format!("all {tasks} tasks done: {total} primes in total");
    assert!(
        out.stdout.contains(&done),
        "{done}:\n{}",
        out.stdout.join("\n")
    );
}
