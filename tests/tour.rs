//! The tour (`cargo run --example tour`) checks itself: every row compares the status and the
//! round trips the server counted with what is expected. This runs it as a program, so that
//! `cargo test` (and CI, which runs the same command) fails when the tour does.

mod support;

use std::process::Command;

#[test]
fn the_tour_passes_every_row() {
    let bin = support::example::example_bin("tour");
    let out = Command::new(&bin).output().unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown = format!("status {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(out.status.success(), "the tour failed: {shown}");
    // Its last line is `N rows, F failed`.
    let last = stdout.lines().last().unwrap_or_default();
    let (rows, failed) = last
        .strip_suffix(" failed")
        .and_then(|l| l.split_once(" rows, "))
        .and_then(|(rows, failed)| Some((rows.parse::<usize>().ok()?, failed.parse::<usize>().ok()?)))
        .unwrap_or_else(|| panic!("no `N rows, F failed` line at the end: {shown}"));
    assert_eq!(failed, 0, "{shown}");
    // One row per case, each ending in `ok`; a tour that printed nothing would not pass.
    let ok_rows = stdout.lines().filter(|l| l.trim_end().ends_with("  ok")).count();
    assert!(rows >= 20, "the tour has at least 20 cases: {shown}");
    assert_eq!(ok_rows, rows, "{shown}");
}
