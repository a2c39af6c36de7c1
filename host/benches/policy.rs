//! The policy engine's costs, each next to the thing it should be compared with, in one run:
//!
//! - `decide/*`: one decision on a full context (3-model chain and health snapshot) — natively
//!   compiled logic, the wasm component, the same call through a [`PolicyHandle`], and the
//!   floor: a component of the same signature that returns a constant.
//! - `route/*`: the same for the routing question of contract 0.2.0.
//! - `load/*`: compiling a `.wasm` vs loading its `.cwasm`, and instantiating from either.
//! - `swap/*`: a full vetted swap (load, configure, smoke table, publish) from `.wasm`, from
//!   the `.cwasm` cache, and from `.cwasm` bytes.
//!
//! `cargo bench -p backstop --bench policy`; figures and ratios are recorded in BENCHMARKS.md.

use backstop_test_support as support;

use backstop::Engine;
use backstop::Limits;
use backstop::PolicyHandle;
use backstop::SwapOptions;
use backstop_core::contract::ModelCapacity;
use backstop_core::decision::RouteQuery;
use backstop_runtime::cache::ModuleCache;
use backstop_runtime::handle::Swapped;
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

/// The empty component of the default's signature, configured.
fn floor(engine: &Engine) -> backstop_runtime::policy::Policy {
    engine
        .load_bytes(&support::floor_component(), "floor")
        .unwrap()
        .configure("{}")
        .unwrap()
}

fn decide(c: &mut Criterion) {
    let engine = Engine::new(Limits::default()).expect("engine");
    let ctx = support::full_context();
    let params = backstop_runtime::native_default::Params::default();
    let policy = engine.load_default().unwrap().configure("{}").unwrap();
    let floor = floor(&engine);
    let handle = support::unvetted(engine.load_default().unwrap().configure("{}").unwrap());
    // Same answer natively and in wasm: the comparison is like for like.
    assert_eq!(
        backstop_runtime::native_default::decide(&params, &ctx),
        policy.decide(&ctx).decision
    );

    let mut group = c.benchmark_group("decide");
    group.bench_function("native", |b| {
        b.iter(|| backstop_runtime::native_default::decide(&params, black_box(&ctx)))
    });
    group.bench_function("wasm", |b| b.iter(|| policy.decide(black_box(&ctx))));
    group.bench_function("wasm-via-handle", |b| {
        b.iter(|| handle.ask(black_box(&ctx)))
    });
    group.bench_function("floor", |b| b.iter(|| floor.decide(black_box(&ctx))));
    group.finish();
}

/// Routing a request on the primary, with learned capacity on every model.
fn route(c: &mut Criterion) {
    let engine = Engine::new(Limits::default()).expect("engine");
    let ctx = support::full_context();
    let capacity = [
        ModelCapacity {
            requests_per_minute: Some(600.0),
            tokens_per_minute: Some(800_000.0),
            headroom_requests: Some(0.4),
            headroom_tokens: Some(12_000.0),
            in_flight: 9,
        },
        ModelCapacity {
            requests_per_minute: Some(1_200.0),
            tokens_per_minute: None,
            headroom_requests: Some(6.0),
            headroom_tokens: None,
            in_flight: 3,
        },
        ModelCapacity::default(),
    ];
    let query = RouteQuery {
        request_id: &ctx.request_id,
        workload: ctx.workload,
        reservation: 1_200,
        expected_settled: 1_000,
        input_tokens: 800,
        attempts_total: 0,
        current: 0,
        elapsed_ms: 0,
        remaining_ms: 60_000,
        clock_ms: 3_600_000,
        models: &ctx.models,
        health: &ctx.health,
        capacity: &capacity,
        entropy: ctx.entropy,
    };
    let policy = engine.load_default().unwrap().configure("{}").unwrap();
    let floor = floor(&engine);
    assert!(matches!(
        policy.route(&query),
        Some((backstop_core::contract::Route::Send { model: 1, .. }, None))
    ));
    let mut group = c.benchmark_group("route");
    group.bench_function("wasm", |b| b.iter(|| policy.route(black_box(&query))));
    group.bench_function("floor", |b| b.iter(|| floor.route(black_box(&query))));
    group.finish();
}

fn load(c: &mut Criterion) {
    let engine = Engine::new(Limits::default()).expect("engine");
    let wasm = backstop_runtime::module::DEFAULT_POLICY_WASM;
    let cwasm = engine.precompile(wasm, "default").unwrap();
    // SAFETY: precompiled just above by this engine.
    let module = unsafe { engine.load_trusted_precompiled(&cwasm, "default.cwasm") }.unwrap();

    let mut group = c.benchmark_group("load");
    group.sample_size(20);
    group.bench_function("compile-wasm", |b| {
        b.iter(|| engine.load_bytes(black_box(wasm), "default.wasm").unwrap())
    });
    group.sample_size(100);
    group.bench_function("load-cwasm", |b| {
        // SAFETY: precompiled above by this engine.
        b.iter(|| {
            unsafe { engine.load_trusted_precompiled(black_box(&cwasm), "default.cwasm") }.unwrap()
        })
    });
    group.bench_function("instantiate-and-configure", |b| {
        b.iter(|| module.configure("{}").unwrap())
    });
    group.finish();
}

fn swap(c: &mut Criterion) {
    let engine = Engine::new(Limits::default()).expect("engine");
    let a = backstop_runtime::module::DEFAULT_POLICY_WASM.to_vec();
    let b = support::sane_component("2.0.0");
    let dir = support::scratch_dir("bench-swap");
    let cached = PolicyHandle::new(
        engine.load_default().unwrap(),
        SwapOptions::default().with_cache(ModuleCache::new(&engine, &dir).unwrap()),
    )
    .unwrap();
    let uncached =
        PolicyHandle::new(engine.load_default().unwrap(), SwapOptions::default()).unwrap();
    let cwasm = [
        engine.precompile(&a, "a").unwrap(),
        engine.precompile(&b, "b").unwrap(),
    ];
    // A .cwasm goes live only when its digest is allow-listed (and then so must the rest be).
    let allowed = cwasm
        .iter()
        .chain([&a, &b])
        .map(|bytes| backstop_runtime::engine::sha256_hex(bytes))
        .collect();
    let allow_listed = PolicyHandle::new(engine.load_default().unwrap(), {
        let mut options = SwapOptions::default();
        options.allowed_digests = Some(allowed);
        options
    })
    .unwrap();
    let wasm = [a, b];

    let mut group = c.benchmark_group("swap");
    group.sample_size(20);
    group.bench_function("from-wasm", |bench| {
        bench.iter(alternately(&uncached, &wasm))
    });
    group.sample_size(100);
    group.bench_function("from-cache", |bench| {
        bench.iter(alternately(&cached, &wasm))
    });
    group.bench_function("from-cwasm-bytes", |bench| {
        bench.iter(alternately(&allow_listed, &cwasm))
    });
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
}

/// Swaps `handle` to whichever of two modules is not live, each call: every swap is real.
fn alternately<'a>(handle: &'a PolicyHandle, modules: &'a [Vec<u8>; 2]) -> impl FnMut() + 'a {
    let live = handle.status().digest;
    let mut next = usize::from(backstop_runtime::engine::sha256_hex(&modules[0]) == live);
    move || {
        let swapped = handle.swap_bytes(&modules[next], "bench").unwrap();
        assert!(matches!(swapped, Swapped::Live { .. }));
        next = 1 - next;
    }
}

criterion_group!(benches, decide, route, load, swap);
criterion_main!(benches);
