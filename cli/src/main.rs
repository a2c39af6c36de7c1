//! The `backstop` command line. Each subcommand is one file under `commands/`, with one
//! `#[derive(Args)]` struct; the work is the library's and the lab's.

mod commands;
mod output;
mod policy_args;
mod progress;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "backstop",
    version,
    about = "Bedrock retries, fallbacks and circuit breaks, decided by a WebAssembly policy",
    after_help = "Where to start:\n  \
        backstop demo                            a traffic spike through the default policy, no AWS account\n  \
        backstop serve --help                    the sidecar any SDK points its endpoint URL at\n  \
        backstop simulate --scenario brownout    compare policies against the baselines\n  \
        backstop new policy my-policy            write a policy of your own (then: test, check)\n\n\
        Logs go to standard error: warnings and what happens to the live policy by default; \
        RUST_LOG=info (or debug) for more. The README has the rest."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ask a policy what it would do about one failed attempt; prints the decision as JSON.
    Decide(commands::decide::DecideArgs),
    /// Load a policy, check it against the contract, and print what it says about itself.
    Info(commands::info::InfoArgs),
    /// Vet a policy exactly as a swap would (allow-list, contract, configuration, smoke
    /// table) without running it; exits non-zero with the reason if it would be refused.
    Check(commands::check::CheckArgs),
    /// The main job on the embedded default: a "Monday 9 a.m." spike through the resilient
    /// client against the local fault server (no AWS account needed).
    Demo(commands::demo::DemoArgs),
    /// One Converse call through the resilient client: real Bedrock (the normal AWS credential
    /// chain and region), or `--endpoint-url` (e.g. a `backstop fault-server`).
    Invoke(commands::invoke::InvokeArgs),
    /// Serve Bedrock Runtime's API as a sidecar: every request through the resilient client,
    /// with an admin listener for metrics, status and swaps. Drains on SIGTERM.
    Serve(commands::serve::ServeArgs),
    /// What a running `backstop serve` has live: policy, breakers, capacity, queue.
    Status(commands::admin::StatusArgs),
    /// Swap a module into a running `backstop serve` (vetted like any swap).
    Swap(commands::admin::SwapArgs),
    /// Run the Bedrock-compatible fault server on loopback until interrupted.
    FaultServer(commands::fault_server::FaultServerArgs),
    /// Compare policies on a scenario in virtual time: the real modules through the real host
    /// loop against a modelled Bedrock, next to built-in baselines. Same seed, same numbers.
    Simulate(commands::simulate::SimulateArgs),
    /// Check a policy against its author's expectations: a case file of contexts and what each
    /// answer must be (exactly, or "retries within 1–4 s", "falls back", "gives up", …).
    /// Prints PASS or FAIL per case, with what was expected beside what came; exits non-zero
    /// on any failure.
    Test(commands::test::TestArgs),
    /// Make a new project: `backstop new policy NAME --lang rust|python|js` writes a buildable
    /// policy with its build script, a case table and a README.
    #[command(subcommand)]
    New(commands::new::NewCommand),
    /// Precompile a policy component to a `.cwasm` for this host's engine.
    Compile(commands::compile::CompileArgs),
    /// List the modules a host keeps from going live again, or release one.
    Quarantine(commands::quarantine::QuarantineArgs),
    /// The compiling child: reads a component on stdin, writes its `.cwasm` on stdout, under
    /// the limits it is given. Started by this program itself; not for people.
    #[command(hide = true)]
    CompileWorker {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// What is logged when `RUST_LOG` does not say: warnings, and what happens to the live policy
/// (a swap, a rollback, a quarantine, a shadow, a reload), which an operator must see.
const DEFAULT_LOG: &str = "warn,backstop_runtime::handle=info,backstop_runtime::watch=info";

fn main() -> ExitCode {
    let command = Cli::parse().command;
    if let Command::CompileWorker { args } = &command {
        // Nothing else of the CLI runs in the child: no logging, no runtime.
        let code = backstop_runtime::compile_worker::serve_compile_request(args);
        return ExitCode::from(code as u8);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .with_ansi(progress::colours_on_stderr())
        .with_writer(std::io::stderr)
        .init();
    let result = match command {
        Command::Decide(args) => commands::decide::run(args),
        Command::Info(args) => commands::info::run(args),
        Command::Check(args) => commands::check::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Invoke(args) => commands::invoke::run(args),
        Command::FaultServer(args) => commands::fault_server::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Status(args) => commands::admin::status(args),
        Command::Swap(args) => commands::admin::swap(args),
        Command::Simulate(args) => commands::simulate::run(args),
        Command::Test(args) => commands::test::run(args),
        Command::New(command) => commands::new::run(command),
        Command::Compile(args) => commands::compile::run(args),
        Command::Quarantine(args) => commands::quarantine::run(args),
        Command::CompileWorker { .. } => Ok(()), // Served above, before logging started.
    };
    output::exit(result)
}
