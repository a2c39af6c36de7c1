//! The command line's integration tests, one binary: `backstop` run as an operator runs it.

mod conformance_kit;
mod decide;
mod example_policies;
mod figures;
mod files;
mod fleet;
mod new_policy;
mod readme;
mod readme_walk;
mod serve;
mod simulate;
mod swap;
mod test_cases;

/// Runs the `backstop` binary with `args`, as an operator would.
pub fn backstop(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(args)
        .output()
        .expect("backstop runs")
}
