//! Builds the default policy component from `../policy-guest` for `wasm32-wasip2` and places it
//! in `OUT_DIR`, where `src/lib.rs` embeds it. This is the pattern of wasmtime's own
//! `test-programs` artifacts crate: one `cargo test` at the root builds guest and host.

use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "wasm32-wasip2";
const GUEST_PROFILE: &str = "guest";

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let guest_dir = manifest_dir.join("../policy-guest");
    let out_dir = PathBuf::from(env("OUT_DIR"));
    for path in ["src", "Cargo.toml", "build.rs"] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(path).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../wit").display()
    );

    // One guest build shared by every profile of the host: `<target>/guest`.
    let target_dir = workspace_target_dir(&out_dir).join("guest");
    let status = Command::new(env("CARGO"))
        .args([
            "build",
            "--target",
            GUEST_TARGET,
            "--profile",
            GUEST_PROFILE,
            "--manifest-path",
        ])
        .arg(guest_dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        // Flags meant for the host (coverage, target-cpu) must not leak into the guest.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .status()
        .expect("could not run cargo to build the policy guest");
    if !status.success() {
        panic!(
            "building policy-guest for {GUEST_TARGET} failed; is the target installed? \
             run `rustup target add {GUEST_TARGET}`"
        );
    }
    let built = target_dir
        .join(GUEST_TARGET)
        .join(GUEST_PROFILE)
        .join("policy_guest.wasm");
    std::fs::copy(&built, out_dir.join("policy_guest.wasm"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
}

/// `OUT_DIR` is `<target>/<profile>/build/<pkg>-<hash>/out`; the guest goes beside the profiles.
fn workspace_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .nth(4)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out_dir.to_path_buf())
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo did not set {name}"))
}
