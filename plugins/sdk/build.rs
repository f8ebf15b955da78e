//! Captures the facts that decide whether a plugin and the host agree on
//! Rust-level layouts: the exact compiler, the target and the profile.
use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(&rustc)
        .arg("-V")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "rustc-unknown".into());
    let target = std::env::var("TARGET").unwrap_or_default();
    let profile = std::env::var("PROFILE").unwrap_or_default();
    let opt = std::env::var("OPT_LEVEL").unwrap_or_default();
    let debug_assertions = std::env::var("CARGO_CFG_DEBUG_ASSERTIONS").is_ok();
    let panic = std::env::var("CARGO_CFG_PANIC").unwrap_or_default();
    println!("cargo:rustc-env=GESTOR_ABI_RUSTC={version}");
    println!("cargo:rustc-env=GESTOR_ABI_TARGET={target}");
    println!(
        "cargo:rustc-env=GESTOR_ABI_PROFILE={profile} opt-level={opt} debug-assertions={debug_assertions} panic={panic}"
    );
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC");
}
