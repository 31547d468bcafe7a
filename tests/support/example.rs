//! The binaries of the examples, for tests that run them as programs.
//!
//! An example is built to `target/<profile>/examples/NAME`, which `cargo test` builds with the
//! examples; if it is missing or older than its sources (`cargo test --test NAME` alone does not
//! build examples), the first call builds it with `cargo build --example NAME`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// The path of example `name`'s binary, built first if missing or stale.
pub fn example_bin(name: &str) -> PathBuf {
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|p| p.parent()).expect("test binary in target/<profile>/deps");
    let bin = profile_dir.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&bin).is_some_and(|built| newest_source(name).is_some_and(|src| src <= built)) {
        return bin;
    }
    let target_dir = profile_dir.parent().expect("target dir");
    let mut cmd = Command::new(env!("CARGO"));
    // The features of the test command (`cargo test --all-features`, README and .ci/run).
    cmd.args(["build", "--quiet", "--all-features", "--example", name, "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .env("CARGO_TARGET_DIR", target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("run cargo build --example {name}: {e}"));
    assert!(status.success() && bin.exists(), "could not build {}", bin.display());
    bin
}

/// The newest modification time of the files example `name` is built from.
fn newest_source(name: &str) -> Option<SystemTime> {
    fn walk(dir: &Path, newest: &mut Option<SystemTime>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, newest);
            } else if let Ok(m) = entry.metadata().and_then(|m| m.modified()) {
                *newest = (*newest).max(Some(m));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut newest = None;
    walk(&root.join("src"), &mut newest);
    for file in [format!("examples/{name}.rs"), "Cargo.toml".into(), "Cargo.lock".into()] {
        let m = std::fs::metadata(root.join(file)).and_then(|m| m.modified()).ok();
        newest = newest.max(m);
    }
    newest
}
