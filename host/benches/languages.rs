//! What a policy's language costs, one run, every figure beside the Rust default's: the
//! component's size, compiling it, its `.cwasm`, instantiating and configuring an instance,
//! one decision (time and fuel), and a vetted swap from the `.wasm` and from the cache. The
//! Python and JavaScript policies are the examples of `examples/policies/`, built from source
//! by their own scripts (componentize-py, componentize-js).
//!
//! `cargo bench -p backstop --bench languages`; figures are recorded in BENCHMARKS.md. A plain
//! timing binary, not criterion: compiling an 18 MB component takes seconds, so each slow
//! figure is the median of three runs and each fast one the median of many.

use backstop_test_support as support;

use backstop::Engine;
use backstop::Limits;
use backstop::PolicyHandle;
use backstop::SwapOptions;
use backstop_runtime::cache::ModuleCache;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Runs `f` `runs` times; the median duration.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

struct Row {
    language: &'static str,
    policy: String,
    size: usize,
    compile: Duration,
    cwasm: usize,
    instantiate: Duration,
    decide: Duration,
    fuel: u64,
    swap_wasm: Duration,
    swap_cache: Duration,
}

fn measure(engine: &Engine, language: &'static str, wasm: &[u8]) -> Row {
    let origin = format!("{language}.wasm");
    let compile = median(3, || {
        black_box(engine.load_bytes(wasm, &origin).expect("loads"));
    });
    let cwasm = engine.precompile(wasm, &origin).expect("precompiles").len();
    let module = engine.load_bytes(wasm, &origin).expect("loads");
    let instantiate = median(21, || {
        black_box(module.configure("{}").expect("configures"));
    });
    let policy = module.configure("{}").expect("configures");
    let ctx = support::full_context();
    for _ in 0..200 {
        black_box(policy.decide(&ctx));
    }
    let decide = median(5, || {
        for _ in 0..200 {
            black_box(policy.decide(black_box(&ctx)));
        }
    }) / 200;
    let fuel = {
        let mut samples: Vec<u64> = (0..200)
            .map(|_| {
                black_box(policy.decide(&ctx));
                policy.last_fuel_per_decision()
            })
            .collect();
        samples.sort_unstable();
        samples[samples.len() / 2]
    };

    // Swaps go from the default renamed (another digest) to this module, each time into a
    // fresh handle: a swap to the module already live would be no swap at all.
    let before = engine
        .load_bytes(&support::variant_component(), "variant.wasm")
        .expect("loads");
    let swap = |options: SwapOptions| {
        let handle = PolicyHandle::new(before.clone(), options).unwrap();
        let started = Instant::now();
        handle.swap_bytes(wasm, &origin).expect("swaps");
        started.elapsed()
    };
    let swaps: Vec<Duration> = (0..3).map(|_| swap(SwapOptions::default())).collect();
    let dir = support::scratch_dir(&format!("bench-languages-{language}"));
    let cached = || SwapOptions::default().with_cache(ModuleCache::new(engine, &dir).unwrap());
    swap(cached()); // fills the cache
    let mut hits: Vec<Duration> = (0..5).map(|_| swap(cached())).collect();
    hits.sort();
    let mut swaps = swaps;
    swaps.sort();
    let _ = std::fs::remove_dir_all(&dir);
    let info = module.info();
    Row {
        language,
        policy: format!("{} {}", info.name, info.version),
        size: wasm.len(),
        compile,
        cwasm,
        instantiate,
        decide,
        fuel,
        swap_wasm: swaps[1],
        swap_cache: hits[2],
    }
}

fn main() {
    // One engine for all, with fuel enough for the JavaScript policy's 5 % share (its host.json).
    let engine = Engine::new(Limits::default().with_fuel_per_call(100_000_000)).expect("engine");
    let mut subjects = vec![(
        "Rust",
        backstop_runtime::module::DEFAULT_POLICY_WASM.to_vec(),
    )];
    for (language, example) in [
        ("Python", "cost-aware-py"),
        ("JavaScript", "latency-first-js"),
    ] {
        match support::example_policy(example) {
            Some(path) => subjects.push((language, std::fs::read(path).unwrap())),
            None => eprintln!("{language}: not measured (its tool is missing)"),
        }
    }
    let rows: Vec<Row> = subjects
        .iter()
        .map(|(language, wasm)| {
            eprintln!("measuring {language} ({} bytes)…", wasm.len());
            measure(&engine, language, wasm)
        })
        .collect();
    let rust = &rows[0];
    println!(
        "| language | policy | component | compile | .cwasm | instantiate + configure | decide | × Rust | fuel / decision (median) | swap from .wasm | swap from cache |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {} | {:.2} MB | {:.2} s | {:.2} MB | {:.2} ms | {:.1} µs | {:.0}× | {} | {:.3} s | {:.1} ms |",
            row.language,
            row.policy,
            row.size as f64 / 1e6,
            row.compile.as_secs_f64(),
            row.cwasm as f64 / 1e6,
            row.instantiate.as_secs_f64() * 1e3,
            row.decide.as_secs_f64() * 1e6,
            row.decide.as_secs_f64() / rust.decide.as_secs_f64(),
            row.fuel,
            row.swap_wasm.as_secs_f64(),
            row.swap_cache.as_secs_f64() * 1e3,
        );
    }
}
