//! Embeds the default policy component.
//!
//! The component is committed at `default-policy/policy_guest.wasm`, with the sha256 of the
//! sources it was built from in `default-policy/sources.sha256`. When the guest's sources still
//! hash to that stamp, the committed bytes are embedded: no nested cargo build and no
//! `wasm32-wasip2` target needed, which is what an embedder builds. When they differ (the policy
//! or the contract was edited), the guest is rebuilt for `wasm32-wasip2` into `<target>/guest`
//! (the pattern of wasmtime's own test-program artifacts) and that is embedded, with a warning
//! to refresh the committed copy. `BACKSTOP_UPDATE_DEFAULT_POLICY=1` rebuilds and writes the
//! committed copy and its stamp; `.ci/check-default-policy` rebuilds from a clean target and
//! fails if the committed bytes are not what the sources build.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "wasm32-wasip2";
const GUEST_PROFILE: &str = "guest";
const UPDATE: &str = "BACKSTOP_UPDATE_DEFAULT_POLICY";

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("..");
    let out_dir = PathBuf::from(env("OUT_DIR"));
    let committed = manifest_dir.join("default-policy/policy_guest.wasm");
    let stamp_file = manifest_dir.join("default-policy/sources.sha256");
    println!("cargo:rerun-if-env-changed={UPDATE}");
    println!("cargo:rerun-if-changed={}", committed.display());
    println!("cargo:rerun-if-changed={}", stamp_file.display());
    let sources = guest_sources(&root);
    for path in &sources {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let stamp = sources_digest(&root, &sources);
    let committed_stamp = std::fs::read_to_string(&stamp_file).unwrap_or_default();
    let update = std::env::var_os(UPDATE).is_some_and(|v| v == "1");

    let wasm = if committed_stamp.trim() == stamp && !update {
        read(&committed)
    } else {
        let built = build_guest(&root, &out_dir);
        if update {
            write(&committed, &built);
            write(&stamp_file, format!("{stamp}\n").as_bytes());
        } else {
            println!(
                "cargo::warning=the default policy's sources changed: the embedded component was \
                 rebuilt; refresh the committed copy with `{UPDATE}=1 cargo build -p backstop-runtime`"
            );
        }
        built
    };
    write(&out_dir.join("policy_guest.wasm"), &wasm);
}

/// Every file the component is built from: the contract, the authoring crate, the policy, the
/// WIT and the guest profile (in the workspace manifest), in a fixed order.
fn guest_sources(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![
        root.join("Cargo.toml"),
        root.join("contract/Cargo.toml"),
        root.join("authoring/Cargo.toml"),
        root.join("policy-guest/Cargo.toml"),
        root.join("policy-guest/build.rs"),
    ];
    for dir in ["contract/src", "authoring/src", "policy-guest/src", "wit"] {
        collect(&root.join(dir), &mut files);
    }
    files.sort();
    files
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}

/// The sha256 over each source's path (relative to the workspace) and content. Of the
/// workspace manifest only `[profile.guest]` counts: other edits there do not change the guest.
fn sources_digest(root: &Path, files: &[PathBuf]) -> String {
    let mut hasher = Sha256::new();
    for path in files {
        let relative = path.strip_prefix(root).unwrap_or(path);
        let relative = relative.to_string_lossy().replace('\\', "/");
        let mut content = read(path);
        if relative == "Cargo.toml" {
            content = guest_profile(&String::from_utf8_lossy(&content)).into_bytes();
        }
        hasher.update(relative.as_bytes());
        hasher.update([0]);
        hasher.update((content.len() as u64).to_le_bytes());
        hasher.update(&content);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn guest_profile(manifest: &str) -> String {
    let mut inside = false;
    let mut section = String::new();
    for line in manifest.lines() {
        if line.starts_with('[') {
            inside = line.trim() == "[profile.guest]";
        }
        if inside {
            section.push_str(line.trim_end());
            section.push('\n');
        }
    }
    section
}

fn build_guest(root: &Path, out_dir: &Path) -> Vec<u8> {
    if !target_installed() {
        println!(
            "cargo::error=the default policy must be rebuilt and the {GUEST_TARGET} target is \
             missing: run `rustup target add {GUEST_TARGET}`"
        );
        std::process::exit(1);
    }
    // One guest build shared by every profile of the host: `<target>/guest`.
    let target_dir = workspace_target_dir(out_dir).join("guest");
    let status = Command::new(env("CARGO"))
        .args([
            "build",
            "--locked",
            "--target",
            GUEST_TARGET,
            "--profile",
            GUEST_PROFILE,
            "--manifest-path",
        ])
        .arg(root.join("policy-guest/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        // Flags meant for the host (coverage, target-cpu) must not leak into the guest.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .status();
    if !status.is_ok_and(|s| s.success()) {
        println!("cargo::error=building policy-guest for {GUEST_TARGET} failed (see above)");
        std::process::exit(1);
    }
    read(
        &target_dir
            .join(GUEST_TARGET)
            .join(GUEST_PROFILE)
            .join("policy_guest.wasm"),
    )
}

/// Whether the standard library for the guest target is installed in this toolchain.
fn target_installed() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    Command::new(rustc)
        .args(["--print", "target-libdir", "--target", GUEST_TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|dir| dir.is_dir())
}

/// `OUT_DIR` is `<target>/<profile>/build/<pkg>-<hash>/out`; the guest goes beside the profiles.
fn workspace_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .nth(4)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out_dir.to_path_buf())
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()))
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo did not set {name}"))
}
