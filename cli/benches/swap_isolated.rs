//! What isolating compiles costs a swap: the same module swapped in from `.wasm` with the
//! compile in this process and in a `backstop compile-worker` child, in one run.
//!
//! `cargo bench -p backstop-cli --bench swap_isolated`

use backstop::Engine;
use backstop::Limits;
use backstop::PolicyHandle;
use backstop::SwapOptions;
use backstop_runtime::isolation::CompileChild;
use std::time::{Duration, Instant};

const ROUNDS: usize = 15;

/// The median time of swapping `module` in (the handle alternates between two modules so each
/// swap compiles).
fn median_swap(engine: &Engine, modules: [&[u8]; 2]) -> Duration {
    let first = engine.load_default().expect("default loads");
    let handle = PolicyHandle::new(first, SwapOptions::default()).expect("default goes live");
    let mut times = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let started = Instant::now();
        handle
            .swap_bytes(modules[round % 2], "bench")
            .expect("the module goes live");
        times.push(started.elapsed());
    }
    times.sort();
    times[ROUNDS / 2]
}

fn main() {
    // Two different modules of the default's size: the default itself and a copy with a custom
    // section appended (another digest, the same code).
    let default = backstop_runtime::module::DEFAULT_POLICY_WASM.to_vec();
    let mut other = default.clone();
    other.extend_from_slice(&[0, 6, 5, b'b', b'e', b'n', b'c', b'h']);
    let modules = [default.as_slice(), other.as_slice()];

    let here = Engine::new(Limits::default()).expect("engine");
    let child = Engine::with_isolated_compiles(
        Limits::default(),
        CompileChild::backstop(env!("CARGO_BIN_EXE_backstop")),
    )
    .expect("engine");
    let in_process = median_swap(&here, modules);
    let isolated = median_swap(&child, modules);
    println!("swap from .wasm, median of {ROUNDS}:");
    println!(
        "  compiled in process   {:>8.1} ms",
        in_process.as_secs_f64() * 1e3
    );
    println!(
        "  compiled in a child   {:>8.1} ms",
        isolated.as_secs_f64() * 1e3
    );
    println!(
        "  isolated / in process {:>8.2}x",
        isolated.as_secs_f64() / in_process.as_secs_f64()
    );
}
