//! The README runs as written: the files its commands name are in the repository, and the
//! example host configuration it serves with is one every command accepts.

use crate::backstop;
use backstop_test_support as support;

/// Every repository path a README code block names (`examples/…`, `tests/fixtures/…`,
/// `deploy/…`, `scenarios/…`, `docs/…`).
fn paths_in_code_blocks(readme: &str) -> Vec<String> {
    let roots = [
        "examples/",
        "tests/fixtures/",
        "deploy/",
        "scenarios/",
        "docs/",
    ];
    let mut paths = Vec::new();
    let mut in_block = false;
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        for word in line.split(|c: char| c.is_whitespace() || "\"'`()=,;".contains(c)) {
            if roots.iter().any(|root| word.starts_with(root)) {
                paths.push(word.trim_end_matches(['.', ':']).to_string());
            }
        }
    }
    paths
}

#[test]
fn every_file_a_readme_command_names_is_in_the_repository() {
    let root = support::workspace();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let paths = paths_in_code_blocks(&readme);
    assert!(
        paths.iter().any(|p| p == "examples/host.json"),
        "the sidecar's example configuration is named: {paths:?}"
    );
    let missing: Vec<_> = paths.iter().filter(|p| !root.join(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "the README names files nobody made: {missing:?}"
    );
}

#[test]
fn the_example_host_configuration_is_one_every_command_accepts() {
    let host = support::workspace().join("examples/host.json");
    let out = backstop(&[
        "decide",
        "--error",
        "ThrottlingException",
        "--host-config",
        host.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs git"]
fn what_the_readme_writes_in_the_working_tree_is_ignored_by_git() {
    let root = support::workspace();
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args([
            "check-ignore",
            "admin.token",
            "host.json",
            "fleet.key",
            "quarantine.json",
        ])
        .output();
    let Ok(out) = out else {
        support::skip_missing("git", "apt-get install git");
    };
    let ignored = String::from_utf8_lossy(&out.stdout);
    for file in ["admin.token", "host.json", "fleet.key", "quarantine.json"] {
        assert!(
            ignored.lines().any(|l| l == file),
            "{file} is not ignored: {ignored}"
        );
    }
}
