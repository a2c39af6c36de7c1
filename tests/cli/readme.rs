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

/// The table a README block quotes, kept equal to what the command prints: the block after
/// the line holding `marker` must be `printed`'s lines from the one starting with `from`
/// while they are table rows. With `BACKSTOP_UPDATE_README=1` the block is rewritten instead.
fn quoted_table_is_current(marker: &str, printed: &str, from: &str) {
    let path = support::workspace().join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let table: Vec<&str> = printed
        .lines()
        .skip_while(|line| !line.starts_with(from))
        .take_while(|line| !line.is_empty() && !line.starts_with("failed under"))
        .collect();
    assert!(table.len() > 1, "no table in the output:\n{printed}");
    let at = readme.find(marker).expect("the README quotes the command");
    let open = at
        + readme[at..]
            .find("```text\n")
            .expect("a text block after it")
        + 8;
    let close = open + readme[open..].find("```").expect("the block ends");
    let quoted = &readme[open..close];
    let current = format!("{}\n", table.join("\n"));
    if quoted == current {
        return;
    }
    if std::env::var_os("BACKSTOP_UPDATE_README").is_some() {
        let updated = format!("{}{current}{}", &readme[..open], &readme[close..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    panic!(
        "the README's table after {marker:?} is stale; the command prints:\n{current}\n\
         (BACKSTOP_UPDATE_README=1 cargo test -p backstop-cli --test cli readme rewrites it)"
    );
}

/// The simulator is deterministic (same seed, same numbers), so the figures the README quotes
/// from it are checked against it, not remembered.
#[test]
fn the_readmes_monday_spike_table_is_what_simulate_prints() {
    let out = backstop(&["simulate", "--scenario", "monday-spike"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    quoted_table_is_current(
        "backstop simulate --scenario monday-spike --plot docs/monday-spike.svg` gives:",
        &String::from_utf8_lossy(&out.stdout),
        "policy ",
    );
}
