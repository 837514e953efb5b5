//! The default build stays free of tokio and hyper: async support is behind the optional
//! `tokio` and `axum` features (issue 17).

use std::process::Command;

/// The normal (non-dev) dependency tree of herd with `features` (empty: the default build).
fn normal_deps(features: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "--locked", "-e", "normal", "--prefix", "none"])
        .args(["--format", "{p}"]);
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    let out = cmd.output().expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn the_default_build_has_no_tokio() {
    let deps = normal_deps(&[]);
    assert!(
        deps.iter().any(|d| d == "mio"),
        "the tree was read: {deps:?}"
    );
    for banned in ["tokio", "hyper", "hyper-util", "axum"] {
        assert!(
            !deps.iter().any(|d| d == banned),
            "{banned} in the default build: {deps:?}"
        );
    }
}

#[test]
fn the_axum_feature_brings_tokio_and_axum() {
    let deps = normal_deps(&["axum"]);
    for wanted in ["tokio", "axum", "hyper"] {
        assert!(
            deps.iter().any(|d| d == wanted),
            "{wanted} missing: {deps:?}"
        );
    }
}
