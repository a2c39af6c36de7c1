//! One module per subcommand: its `Args` and its `run`.

pub mod admin;
pub mod check;
pub mod compile;
pub mod decide;
pub mod demo;
pub mod fault_server;
pub mod info;
pub mod invoke;
pub mod new;
pub mod quarantine;
pub mod serve;
pub mod simulate;
pub mod test;

/// A multi-threaded runtime for the subcommands that talk to servers.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
