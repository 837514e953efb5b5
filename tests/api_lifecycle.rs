//! Worker lifecycle events with Node's vocabulary (issue 7): a worker that is disconnected exits
//! with `exited_after_disconnect: true` and is not replaced; one that is killed or crashes
//! exits with `false` and is replaced under the same id.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

/// One printed event: its name and its fields.
#[derive(Debug)]
struct Ev {
    name: String,
    fields: BTreeMap<String, String>,
}

fn parse(line: &str) -> Option<Ev> {
    let mut words = line.strip_prefix("event ")?.split_whitespace();
    let name = words.next()?.to_string();
    let fields = words
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(Ev { name, fields })
}

#[test]
fn disconnect_exits_cleanly_and_crashes_are_replaced() {
    let out = run_example("lifecycle", &[], Duration::from_secs(60));
    let all = format!("{}\n{}", out.stdout.join("\n"), out.stderr.join("\n"));
    assert!(out.status.success(), "{all}");
    let mut by_id: BTreeMap<String, Vec<Ev>> = BTreeMap::new();
    for ev in out.stdout.iter().filter_map(|l| parse(l)) {
        by_id.entry(ev.fields["id"].clone()).or_default().push(ev);
    }
    let names = |id: &str| -> Vec<&str> { by_id[id].iter().map(|e| e.name.as_str()).collect() };
    let exits = |id: &str| -> Vec<(String, String)> {
        by_id[id]
            .iter()
            .filter(|e| e.name == "exit")
            .map(|e| {
                let how = e
                    .fields
                    .get("code")
                    .map(|c| format!("code={c}"))
                    .or_else(|| e.fields.get("signal").map(|s| format!("signal={s}")))
                    .unwrap_or_default();
                (how, e.fields["exited_after_disconnect"].clone())
            })
            .collect()
    };
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());

    // Disconnected: a clean exit, not replaced.
    assert_eq!(
        names("1"),
        ["fork", "online", "disconnect", "exit"],
        "{all}"
    );
    assert_eq!(exits("1"), [pair("code=0", "true")], "{all}");

    // Killed, and crashed: replaced (a new fork with a new pid), then stopped with the cluster.
    let replaced = [
        "fork",
        "online",
        "disconnect",
        "exit",
        "fork",
        "online",
        "disconnect",
        "exit",
    ];
    assert_eq!(names("2"), replaced, "{all}");
    assert_eq!(
        exits("2"),
        [pair("signal=9", "false"), pair("code=0", "true")],
        "{all}"
    );
    assert_eq!(names("3"), replaced, "{all}");
    assert_eq!(
        exits("3"),
        [pair("code=70", "false"), pair("code=0", "true")],
        "{all}"
    );
    for id in ["2", "3"] {
        let forks: Vec<&String> = by_id[id]
            .iter()
            .filter(|e| e.name == "fork")
            .map(|e| &e.fields["pid"])
            .collect();
        assert_ne!(forks[0], forks[1], "a replacement is a new process");
    }

    // The worker view: dead after each exit, and the slots' states before the stop.
    for id in 1..=3 {
        assert!(out.stdout.contains(&format!("is_dead {id} true")), "{all}");
    }
    assert!(
        out.stdout
            .contains(&"workers 1=online 2=online 3=online".to_string()),
        "{all}"
    );
    assert!(
        out.stdout
            .contains(&"workers 1=dead 2=online 3=online".to_string()),
        "{all}"
    );
}
