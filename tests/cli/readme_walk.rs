//! The README as a reader follows it: a doc test for its shell and Python blocks, as Rust's
//! doc tests are for its Rust blocks.
//!
//! Every `sh`, `bash` and `python` block runs in order, each from the repository's root (a
//! scratch directory whose entries link to the repository's, so what a block writes stays out
//! of the working tree), with the `backstop` under test first on the `PATH`, no AWS
//! credentials and no `RUST_BACKTRACE`. Every command must exit 0, and print what its
//! `#=> text` comments say it prints, in order (`#=> exit N` expects that status instead).
//! What a block starts in the background (`… &`) lives until its `## ` section ends, as a
//! reader's terminal would keep it; the walk waits for the ports such a command names
//! (`--port N`, `--listen host:N`) before going on, as a reader would before typing the next
//! line. `cargo run --release -- ARGS` is `backstop ARGS`; `cargo install` (what put it on the
//! `PATH`) and `cargo test` (what runs this) are skipped.
//!
//! A block fenced `sh,no_run` or `python,no_run` (real Bedrock, a two-minute watch, a fragment)
//! is parsed but not run, and its `backstop` commands are checked like every other's: each
//! subcommand and flag must be one the binary's `--help` lists.

use backstop_test_support as support;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A README code block.
struct Block {
    /// The fence's language: `sh`, `python`, `rust`, …
    language: String,
    /// Fenced `LANG,no_run`: checked, never run.
    no_run: bool,
    /// Which `## ` section it is in: what it starts in the background lives that long.
    section: usize,
    /// Its first line's number in the README.
    line: usize,
    text: String,
}

fn readme_blocks() -> Vec<Block> {
    let readme = std::fs::read_to_string(support::workspace().join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    let mut section = 0;
    for (number, line) in readme.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (fence, open.take()) {
            (Some(info), None) => {
                let mut words = info.trim().split(',');
                let language = words.next().unwrap_or_default().to_string();
                open = Some(Block {
                    language,
                    no_run: words.any(|word| word == "no_run"),
                    section,
                    line: number + 2,
                    text: String::new(),
                });
            }
            (Some(_), Some(block)) => blocks.push(block),
            (None, Some(mut block)) => {
                block.text.push_str(line);
                block.text.push('\n');
                open = Some(block);
            }
            (None, None) if line.starts_with("## ") => section += 1,
            (None, None) => {}
        }
    }
    blocks
}

fn is_shell(block: &Block) -> bool {
    block.language == "sh" || block.language == "bash"
}

/// One command as a reader copies it: continuation lines joined, with what the README says
/// it prints.
struct ShellCommand {
    /// The command's text without its `#=>` claim.
    text: String,
    /// Its `#=> …` comments, in order: text its output holds, or `exit N`.
    claims: Vec<String>,
    /// Its line in the README.
    line: usize,
}

fn shell_commands(block: &Block) -> Vec<ShellCommand> {
    let mut commands: Vec<ShellCommand> = Vec::new();
    let mut continuing = false;
    for (offset, line) in block.text.lines().enumerate() {
        let trimmed = line.trim();
        if let (true, Some(last)) = (continuing, commands.last_mut()) {
            last.text.push('\n');
            last.text.push_str(line);
        } else if let Some(claim) = trimmed.strip_prefix("#=>") {
            let last = commands.last_mut().unwrap_or_else(|| {
                panic!(
                    "README line {}: a claim before any command",
                    block.line + offset
                )
            });
            last.claims.push(claim.trim().to_string());
            continue;
        } else if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        } else {
            commands.push(ShellCommand {
                text: line.to_string(),
                claims: Vec::new(),
                line: block.line + offset,
            });
        }
        continuing = trimmed.ends_with('\\');
    }
    for command in &mut commands {
        if let Some(at) = command.text.find("#=>") {
            command
                .claims
                .insert(0, command.text[at + 3..].trim().to_string());
            command.text.truncate(at);
            command.text.truncate(command.text.trim_end().len());
        }
    }
    commands
}

/// `text` without a trailing comment: from the first `#` that starts a word outside quotes.
fn without_comment(text: &str) -> &str {
    let (mut single, mut double, mut previous) = (false, false, ' ');
    for (at, c) in text.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && previous.is_whitespace() => return &text[..at],
            _ => {}
        }
        previous = c;
    }
    text
}

/// The command without its trailing `&` if it runs in the background.
fn backgrounded(command: &str) -> Option<&str> {
    let command = without_comment(command).trim_end();
    (command.ends_with('&') && !command.ends_with("&&"))
        .then(|| command[..command.len() - 1].trim_end())
}

/// The ports a server command names: `--port N`, `--listen host:N`, `--admin-listen host:N`.
fn ports(command: &str) -> Vec<u16> {
    let words: Vec<&str> = command.split_whitespace().collect();
    words
        .windows(2)
        .filter_map(|pair| match pair[0] {
            "--port" => pair[1].parse().ok(),
            "--listen" | "--admin-listen" => pair[1].rsplit(':').next()?.parse().ok(),
            _ => None,
        })
        .collect()
}

/// What every block's shell starts with: errors into the captured output, the stand-in for
/// `cargo`, and a port wait for what a block starts in the background.
const PRELUDE: &str = r#"exec 2>&1
cargo() {
  case "$1" in
    install|test) return 0 ;;
    run) shift; [ "$1" = --release ] && shift; [ "$1" = -- ] && shift
         # In the background (a subshell) become the server, so `kill %1` stops it.
         if [ "$BASHPID" != "$$" ]; then exec backstop "$@"; else backstop "$@"; fi ;;
    *) echo "the README walk has no stand-in for: cargo $*"; return 127 ;;
  esac
}
__wait_for_port() {
  for _ in $(seq 1 600); do
    (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listened on port $1 after 30 s"
}
"#;

/// A block as one shell script whose output marks where each command's output begins and
/// ends, with its exit status.
fn shell_script(commands: &[ShellCommand]) -> String {
    let mut script = String::from(PRELUDE);
    for (i, command) in commands.iter().enumerate() {
        if let Some(body) = backgrounded(&command.text) {
            script.push_str(&format!("{body} >>\"$README_BACKGROUND_LOG\" 2>&1 &\n"));
            for port in ports(body) {
                script.push_str(&format!("__wait_for_port {port}\n"));
            }
        } else {
            let body = without_comment(&command.text).trim_end();
            script.push_str(&format!(
                "echo '@@begin {i}'\n{body}\necho \"@@end {i} $?\"\n"
            ));
        }
    }
    script
}

/// Kills a block's process group (the servers it left in the background) when dropped.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

/// Where the walk runs: the repository's entries linked into a scratch directory.
fn session_dir() -> PathBuf {
    let root = support::workspace().canonicalize().unwrap();
    let dir = support::scratch_dir("readme-walk");
    // What the README's commands write (and .gitignore keeps out of the repository) is not
    // linked, so each walk starts from a clean checkout's view.
    let written = [
        "target",
        ".git",
        "admin.token",
        "host.json",
        "fleet.key",
        "quarantine.json",
    ];
    for entry in std::fs::read_dir(&root).unwrap() {
        let name = entry.unwrap().file_name();
        if !written.iter().any(|w| name == *w) {
            std::os::unix::fs::symlink(root.join(&name), dir.join(&name)).unwrap();
        }
    }
    dir
}

/// The environment a reader on a fresh machine has: the binary on the `PATH`, no AWS
/// credentials, no backtraces.
fn reader(program: &str, dir: &Path) -> Command {
    let bin = Path::new(env!("CARGO_BIN_EXE_backstop")).parent().unwrap();
    let mut command = Command::new(program);
    command
        .current_dir(dir)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), support::path_with_jco()),
        )
        .env("README_BACKGROUND_LOG", dir.join("background.log"))
        .stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("AWS_") || key_text.starts_with("RUST_") {
            command.env_remove(&key);
        }
    }
    command
}

/// Each command's output and status, from the script's markers.
fn outcomes(output: &str, count: usize) -> Vec<Option<(String, i32)>> {
    let mut found = vec![None; count];
    for (i, slot) in found.iter_mut().enumerate() {
        let begin = format!("@@begin {i}\n");
        let end = format!("@@end {i} ");
        let Some(from) = output.find(&begin).map(|at| at + begin.len()) else {
            continue;
        };
        let Some(to) = output[from..].find(&end).map(|at| from + at) else {
            continue;
        };
        let status = output[to + end.len()..]
            .lines()
            .next()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(-1);
        *slot = Some((output[from..to].to_string(), status));
    }
    found
}

/// Checks one command's output against its claims.
fn check_claims(command: &ShellCommand, outcome: Option<&(String, i32)>, all_output: &str) {
    let Some((printed, status)) = outcome else {
        panic!(
            "README line {}: `{}` never finished:\n{all_output}",
            command.line, command.text
        );
    };
    let expected = command
        .claims
        .iter()
        .find_map(|claim| claim.strip_prefix("exit ")?.parse().ok())
        .unwrap_or(0);
    assert_eq!(
        *status, expected,
        "README line {}: `{}` exited {status}:\n{printed}",
        command.line, command.text
    );
    let mut rest = printed.as_str();
    for claim in command.claims.iter().filter(|c| !c.starts_with("exit ")) {
        let Some(at) = rest.find(claim.as_str()) else {
            panic!(
                "README line {}: `{}` does not print {claim:?} where the README says:\n{printed}",
                command.line, command.text
            );
        };
        rest = &rest[at + claim.len()..];
    }
}

fn run_shell(block: &Block, dir: &Path) -> Group {
    let commands = shell_commands(block);
    let child = reader("timeout", dir)
        .args([
            "--kill-after=5",
            "600",
            "bash",
            "-c",
            &shell_script(&commands),
        ])
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("bash runs");
    let group = Group(child.id());
    let output = child.wait_with_output().unwrap();
    let output = String::from_utf8_lossy(&output.stdout);
    let outcomes = outcomes(&output, commands.len());
    for (command, outcome) in commands.iter().zip(&outcomes) {
        if backgrounded(&command.text).is_none() {
            check_claims(command, outcome.as_ref(), &output);
        }
    }
    group
}

fn run_python(block: &Block, dir: &Path) {
    let out = reader("python3", dir)
        .args(["-c", &block.text])
        .output()
        .unwrap_or_else(|_| support::skip_missing("python3", "apt-get install python3"));
    let printed = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    if errors.contains("No module named 'boto3'") {
        support::skip_missing("boto3", "pip install boto3");
    }
    assert!(
        out.status.success(),
        "README line {}: the Python block failed:\n{printed}{errors}",
        block.line
    );
    let mut rest = printed.as_ref();
    for claim in block
        .text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("#=>"))
    {
        let claim = claim.trim();
        let at = rest.find(claim).unwrap_or_else(|| {
            panic!(
                "README line {}: the Python block does not print {claim:?}:\n{printed}",
                block.line
            )
        });
        rest = &rest[at + claim.len()..];
    }
}

/// The README, followed from top to bottom.
#[test]
#[ignore = "needs boto3 and componentize-py (pip install boto3 componentize-py==0.25.1)"]
fn the_readme_runs_as_written() {
    if !support::has_tool("componentize-py") {
        support::skip_missing("componentize-py", "pip install componentize-py==0.25.1");
    }
    let dir = session_dir();
    let mut background: Vec<Group> = Vec::new();
    let mut section = 0;
    let mut ran = 0;
    for block in readme_blocks() {
        if block.section != section {
            background.clear();
            section = block.section;
        }
        let started = std::time::Instant::now();
        match (block.language.as_str(), block.no_run) {
            (_, true) => continue,
            ("sh" | "bash", false) => background.push(run_shell(&block, &dir)),
            ("python", false) => run_python(&block, &dir),
            _ => continue,
        }
        ran += 1;
        eprintln!(
            "README line {}: {} block ran in {:.1} s",
            block.line,
            block.language,
            started.elapsed().as_secs_f64()
        );
    }
    drop(background);
    assert!(ran >= 8, "the walk ran only {ran} blocks");
    let _ = std::fs::remove_dir_all(dir);
}

/// `backstop` invocations in a command: the words after `backstop` (or `cargo run --release
/// --`) up to the end of that simple command.
fn invocations(command: &str) -> Vec<Vec<String>> {
    let text = without_comment(command).replace("\\\n", " ");
    let words: Vec<&str> = text.split_whitespace().collect();
    let separators = ["&&", "||", ";", "|", "&"];
    let mut found = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let starts_command = i == 0 || separators.contains(&words[i - 1]);
        let skip = if starts_command && words[i] == "backstop" {
            1
        } else if starts_command && words[i..].starts_with(&["cargo", "run", "--release", "--"]) {
            4
        } else {
            0
        };
        if skip == 0 {
            i += 1;
            continue;
        }
        i += skip;
        let args: Vec<String> = words[i..]
            .iter()
            .take_while(|w| !separators.contains(w))
            .map(|w| w.to_string())
            .collect();
        i += args.len();
        found.push(args);
    }
    found
}

fn help(path: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(path)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`backstop {}` is not a command: {}",
        path.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The flags and subcommands a help text lists.
fn help_words(help: &str) -> Vec<&str> {
    help.split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_'))
        .filter(|w| !w.is_empty())
        .collect()
}

/// Blocks that never run still must not name a command or flag the binary lacks; neither may
/// those that run (a failure here is clearer than a failed walk, and needs no tools).
#[test]
fn every_backstop_command_in_the_readmes_shell_blocks_is_one_the_binary_has() {
    let mut checked = 0;
    for block in readme_blocks().iter().filter(|b| is_shell(b)) {
        if block.no_run {
            let parsed = Command::new("bash")
                .args(["-n", "-c", &block.text])
                .output()
                .unwrap();
            assert!(
                parsed.status.success(),
                "README line {}: not valid shell: {}",
                block.line,
                String::from_utf8_lossy(&parsed.stderr)
            );
        }
        for command in shell_commands(block) {
            for args in invocations(&command.text) {
                let Some(sub) = args.first() else {
                    continue;
                };
                let mut path = vec![sub.as_str()];
                let top = help(&path);
                let mut known = help_words(&top);
                let nested_help;
                if top.contains("\nCommands:\n") {
                    let nested = args
                        .iter()
                        .skip(1)
                        .filter(|w| !w.starts_with('-'))
                        .find(|w| {
                            top.lines()
                                .any(|l| l.trim_start().starts_with(&format!("{w} ")))
                        })
                        .unwrap_or_else(|| {
                            panic!(
                                "README line {}: `backstop {sub}` without its subcommand",
                                command.line
                            )
                        });
                    path.push(nested);
                    nested_help = help(&path);
                    known.extend(help_words(&nested_help));
                }
                for flag in args.iter().filter(|w| w.starts_with("--")) {
                    let flag = flag.split('=').next().unwrap_or_default();
                    assert!(
                        known.contains(&flag),
                        "README line {}: `backstop {}` has no {flag}",
                        command.line,
                        path.join(" ")
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "only {checked} backstop commands found");
}

/// The walk's reading of a block: continuation lines, claims, comments and background jobs.
#[test]
fn a_shell_block_is_read_as_a_reader_copies_it() {
    let block = Block {
        language: "sh".into(),
        no_run: false,
        section: 0,
        line: 10,
        text: "# a comment\nbackstop fault-server --port 4566 &   # optional\n\
               backstop test a.json \\\n    --policy b.wasm   #=> 1 passed\n#=> exit 1\n\
               echo '#not a comment' && echo done\n"
            .into(),
    };
    let commands = shell_commands(&block);
    assert_eq!(commands.len(), 3);
    assert_eq!(commands[0].line, 11);
    assert_eq!(
        backgrounded(&commands[0].text),
        Some("backstop fault-server --port 4566")
    );
    assert_eq!(ports(&commands[0].text), [4566]);
    assert_eq!(commands[1].claims, ["1 passed", "exit 1"]);
    assert_eq!(
        invocations(&commands[1].text),
        [["test", "a.json", "--policy", "b.wasm"]]
    );
    assert_eq!(backgrounded(&commands[2].text), None);
    assert_eq!(
        without_comment(&commands[2].text),
        "echo '#not a comment' && echo done"
    );
    let script = shell_script(&commands);
    assert!(script.contains("__wait_for_port 4566\n"), "{script}");
    let outcomes = outcomes("@@begin 1\n1 passed\n@@end 1 1\n", 3);
    assert_eq!(outcomes[1], Some(("1 passed\n".to_string(), 1)));
    assert_eq!(outcomes[2], None);
}

fn scratch_block(text: &str) -> Block {
    Block {
        language: "sh".into(),
        no_run: false,
        section: 0,
        line: 1,
        text: text.into(),
    }
}

#[test]
#[should_panic(expected = "does not print \"7 passed\" where the README says")]
fn the_walk_fails_a_command_that_does_not_print_what_the_readme_says() {
    let dir = support::scratch_dir("readme-claim");
    run_shell(
        &scratch_block("echo '6 passed, 0 failed'   #=> 7 passed\n"),
        &dir,
    );
}

#[test]
#[should_panic(expected = "exited 3")]
fn the_walk_fails_a_command_that_fails() {
    let dir = support::scratch_dir("readme-status");
    run_shell(&scratch_block("true\nsh -c 'exit 3'\necho after\n"), &dir);
}

#[test]
fn the_walk_takes_a_failure_the_readme_says_is_one() {
    let dir = support::scratch_dir("readme-exit");
    run_shell(
        &scratch_block(
            "sh -c 'echo 1 failed; exit 1'\n#=> 1 failed\n#=> exit 1\ncd / && pwd  #=> /\n",
        ),
        &dir,
    );
    let _ = std::fs::remove_dir_all(dir);
}
