//! Host bindings generated from `wit/`. Only `policy.rs` and `engine.rs` see these types; the
//! public API speaks the plain contract types.
wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy",
    // Contexts are lowered straight from borrowed host data: no per-call String clones.
    ownership: Borrowing { duplicate_if_necessary: true },
});

pub(crate) use exports::backstop::policy::decider as wit;
