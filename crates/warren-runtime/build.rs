//! Builds the in-sandbox agent as a static-pie and embeds it, so `warren` is
//! one binary that installs its own agent. The nested cargo uses its own
//! target directory, so it never waits on the outer build's lock.

use std::path::PathBuf;
use std::process::Command;

const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    println!("cargo:rerun-if-env-changed=WARREN_AGENT_BIN");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    let dest = out_dir.join("warren-agent");
    if let Ok(prebuilt) = std::env::var("WARREN_AGENT_BIN") {
        std::fs::copy(&prebuilt, &dest)
            .unwrap_or_else(|e| panic!("copy WARREN_AGENT_BIN {prebuilt}: {e}"));
        println!("cargo:rustc-env=WARREN_AGENT_PATH={}", dest.display());
        return;
    }
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest_dir.join("../..");
    for dir in [
        "crates/warren-agent",
        "crates/warren-proto/src",
        "crates/warren-linux/src",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let target_dir = root.join("target/agent");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "warren-agent",
            "--target",
            AGENT_TARGET,
            "--target-dir",
        ])
        .arg(&target_dir)
        .env_clear();
    for keep in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "CARGO_MAKEFLAGS",
        "RUSTC",
    ] {
        if let Ok(v) = std::env::var(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("run cargo to build warren-agent: {e}"));
    assert!(status.success(), "building the static warren-agent failed");
    let built = target_dir.join(AGENT_TARGET).join("release/warren-agent");
    std::fs::copy(&built, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
    println!("cargo:rustc-env=WARREN_AGENT_PATH={}", dest.display());
}
