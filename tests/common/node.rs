//! Node.js apps for `herd run` tests: the fixtures under `tests/fixtures/node/`, and the seed
//! program (Express) with its dependency installed once into a scratch folder.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// A fixture script's path.
pub fn node_fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/node")
        .join(name);
    p.to_string_lossy().into_owned()
}

/// The seed program (`tests/fixtures/node/seed.js`, verbatim) in a scratch folder with
/// Express installed (`npm install`, once; `.ci/run` does it ahead of time).
pub fn seed_app() -> String {
    static ONCE: Mutex<()> = Mutex::new(());
    let _guard = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("node-seed");
    std::fs::create_dir_all(&dir).expect("seed scratch folder");
    for f in ["seed.js", "package.json"] {
        std::fs::copy(node_fixture(f), dir.join(f)).expect("copy the seed");
    }
    if !dir.join("node_modules/express").is_dir() {
        let ok = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .status()
            .expect("run npm (apt-get install -y npm)");
        assert!(ok.success(), "npm install express into {}", dir.display());
    }
    dir.join("seed.js").to_string_lossy().into_owned()
}
