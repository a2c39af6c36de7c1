//! Every file a command takes from outside is read through one bounded reader: a device, a
//! FIFO or an oversized (even sparse) file is refused at once with the file and the cap named,
//! where each command used to read it whole (`/dev/zero` grew the process to gigabytes) or
//! wait forever on a FIFO.

use crate::backstop;
use std::time::{Duration, Instant};

/// A scratch folder holding a FIFO, a 3 GiB sparse file and a symlink to `/dev/zero`.
fn hostile_files(name: &str) -> std::path::PathBuf {
    let dir = backstop_test_support::scratch_dir(name);
    let fifo = std::ffi::CString::new(dir.join("fifo.json").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let sparse = std::fs::File::create(dir.join("sparse.json")).unwrap();
    sparse.set_len(3 << 30).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero-link.json")).unwrap();
    dir
}

/// Runs `backstop` and expects a quick failure whose message names what was wrong.
fn refused(args: &[&str], expect: &str) {
    let started = Instant::now();
    let out = backstop(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(
        stderr.contains(expect),
        "{args:?}: expected {expect:?} in:\n{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{args:?} took {:?}",
        started.elapsed()
    );
}

#[test]
fn every_command_refuses_devices_fifos_and_oversized_files_at_once() {
    let dir = hostile_files("cli-files");
    let path = |name: &str| dir.join(name).display().to_string();
    let (fifo, sparse, link) = (
        path("fifo.json"),
        path("sparse.json"),
        path("zero-link.json"),
    );
    let device = "a device, not a regular file";
    let at_config = format!("@{}", "/dev/zero");

    refused(&["check", "--host-config", "/dev/zero"], device);
    refused(
        &["check", "--host-config", &fifo],
        "a FIFO, not a regular file",
    );
    refused(
        &["check", "--host-config", &sparse],
        "a host configuration may have at most 1048576",
    );
    refused(&["check", "--host-config", &link], "(→ /dev/zero)");
    refused(
        &[
            "decide",
            "--error",
            "ThrottlingException",
            "--config",
            &at_config,
        ],
        device,
    );
    refused(&["simulate", "--scenario", "/dev/zero"], device);
    refused(
        &["simulate", "--scenario", &sparse],
        "a scenario may have at most",
    );
    refused(
        &["fault-server", "--port", "0", "--scenario", &fifo],
        "a FIFO",
    );
    refused(
        &[
            "status",
            "--admin",
            "http://127.0.0.1:9",
            "--admin-token-file",
            "/dev/zero",
        ],
        device,
    );
    let module = path("module.wasm");
    std::fs::write(&module, b"\0asm").unwrap();
    refused(
        &[
            "swap",
            "--admin",
            "http://127.0.0.1:9",
            "--admin-token-file",
            &sparse,
            &module,
        ],
        "a secret may have at most 4096",
    );
    refused(
        &["swap", "--admin", "http://127.0.0.1:9", &fifo],
        "policy module",
    );
    refused(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--host-config",
            &fifo,
        ],
        "a FIFO",
    );
    refused(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-token-file",
            "/dev/zero",
        ],
        device,
    );
    let _ = std::fs::remove_dir_all(&dir);
}
