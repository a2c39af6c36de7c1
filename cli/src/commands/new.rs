//! `backstop new policy NAME --lang rust|python|js`: a buildable policy project — the skeleton
//! policy, its build script, a case table for `backstop test` and a README — in the spirit of
//! `cargo component new` and `spin new`. The three skeletons implement one strategy, so one
//! case table proves each.

use anyhow::{Context, Result, bail};
use backstop_core::untrusted::escape_controls;
use clap::{Args, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};

/// What to make.
#[derive(Subcommand)]
pub enum NewCommand {
    /// A policy project.
    Policy(NewPolicyArgs),
}

/// A policy project's name, language and place.
#[derive(Args)]
pub struct NewPolicyArgs {
    /// The policy's name: 1 to 64 of `a-z 0-9 -`, starting with a letter (its crate or package
    /// name, and what `info()` reports).
    name: String,
    /// The language to write it in.
    #[arg(long, value_enum)]
    lang: Lang,
    /// Where to make it (default: `./NAME`); must not exist or be empty.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Lang {
    Rust,
    Python,
    Js,
}

/// The contract, as every non-Rust project carries it (the Rust one gets it from the
/// authoring crate).
const WIT: &str = include_str!("../../../wit/policy.wit");
const README: &str = include_str!("../../templates/common/README.md");
const CASES: &str = include_str!("../../templates/common/cases.json");

impl Lang {
    /// Each file of the project: its path and template.
    fn files(self) -> Vec<(&'static str, &'static str)> {
        let mut files = vec![("README.md", README), ("cases.json", CASES)];
        match self {
            Lang::Rust => files.extend([
                (
                    "Cargo.toml",
                    include_str!("../../templates/rust/Cargo.toml"),
                ),
                (
                    "src/lib.rs",
                    include_str!("../../templates/rust/src/lib.rs"),
                ),
                ("build.sh", include_str!("../../templates/rust/build.sh")),
            ]),
            Lang::Python => files.extend([
                (
                    "policy.py",
                    include_str!("../../templates/python/policy.py"),
                ),
                ("build.sh", include_str!("../../templates/python/build.sh")),
                ("wit/policy.wit", WIT),
            ]),
            Lang::Js => files.extend([
                ("policy.js", include_str!("../../templates/js/policy.js")),
                ("build.sh", include_str!("../../templates/js/build.sh")),
                ("host.json", include_str!("../../templates/js/host.json")),
                ("wit/policy.wit", WIT),
            ]),
        }
        files
    }

    /// The README's words for this language: its name, the source file, what the build needs,
    /// and the host configuration `check` needs.
    fn words(self) -> [(&'static str, &'static str); 5] {
        match self {
            Lang::Rust => [
                ("language", "Rust"),
                ("lang", "rust"),
                ("source", "src/lib.rs"),
                ("build_note", "cargo, for wasm32-wasip2"),
                ("check_flags", ""),
            ],
            Lang::Python => [
                ("language", "Python"),
                ("lang", "python"),
                ("source", "policy.py"),
                ("build_note", "componentize-py, ~7 s"),
                ("check_flags", ""),
            ],
            Lang::Js => [
                ("language", "JavaScript"),
                ("lang", "js"),
                ("source", "policy.js"),
                ("build_note", "componentize-js, ~6 s"),
                // StarlingMonkey lifts each context into objects for ~0.8 M fuel before the
                // policy runs: past 5 % of the default budget (see host.json).
                ("check_flags", " --host-config host.json"),
            ],
        }
    }
}

/// Whether `name` can name a crate, a Python module's policy and a metric label alike.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The dependency on the authoring crate: this source tree's, when the binary was built from
/// one that is still there, else the published crate.
fn authoring_dependency() -> String {
    let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("../authoring");
    match tree.canonicalize() {
        Ok(path) if path.join("Cargo.toml").is_file() => {
            format!(
                "backstop-policy = {{ path = {:?} }}",
                path.display().to_string()
            )
        }
        _ => "backstop-policy = \"0.1\"".to_string(),
    }
}

pub fn run(command: NewCommand) -> Result<()> {
    let NewCommand::Policy(args) = command;
    if !valid_name(&args.name) {
        bail!(
            "`{}` cannot name a policy: use 1 to 64 of a-z, 0-9 and `-`, starting with a letter",
            escape_controls(&args.name)
        );
    }
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!(
            "{} exists and is not empty: name a new directory with --dir",
            dir.display()
        );
    }
    let mut values: Vec<(&str, String)> = vec![
        ("name", args.name.clone()),
        ("crate", args.name.replace('-', "_")),
        (
            "wit_version",
            backstop_core::contract::WIT_VERSION.to_string(),
        ),
        ("authoring", authoring_dependency()),
    ];
    values.extend(args.lang.words().map(|(k, v)| (k, v.to_string())));
    for (path, template) in args.lang.files() {
        let mut text = template.to_string();
        for (key, value) in &values {
            text = text.replace(&format!("{{{{{key}}}}}"), value);
        }
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        if path.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    eprintln!(
        "made {} ({} policy): `cd {} && ./build.sh`, then `backstop test cases.json --policy policy.wasm`",
        dir.display(),
        args.name,
        dir.display()
    );
    Ok(())
}
