//! The team's rule, checked: no function body over 80 lines in the host,
//! the client crates and the plugins (`.ci/long_functions.py` lists them).
//! Every folder of ours that the rule covers is listed.

use std::path::Path;
use std::process::Command;

/// Folders already under the limit; a new long function there fails this test.
const CHECKED: &[&str] = &["host", "client", "backends", "plugins"];

#[test]
fn no_function_over_80_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent");
    let out = Command::new("python3")
        .current_dir(root)
        .arg(".ci/long_functions.py")
        .arg("--check")
        .args(CHECKED)
        .output()
        .expect("python3 runs .ci/long_functions.py");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "functions over 80 lines (body lines, file:line, name):\n{listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The script sees the code at all: with a limit of 0 it lists plenty.
    let all = Command::new("python3")
        .current_dir(root)
        .args([".ci/long_functions.py", "--max", "0", "host"])
        .output()
        .expect("python3 runs .ci/long_functions.py");
    assert!(
        String::from_utf8_lossy(&all.stdout).contains("host/src/runtime.rs"),
        "the scan found no functions under host/"
    );
}
