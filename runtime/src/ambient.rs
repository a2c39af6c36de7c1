//! The ambient state WASI would let a policy read — clocks and randomness — made virtual and
//! counted.
//!
//! A policy written in Python or JavaScript imports `wasi:clocks` and `wasi:random` whether or
//! not its code reads them: the language runtime links them. Refusing those imports would
//! refuse every such policy; granting the real ones would let a decision depend on when or
//! where it ran. So the host defines them itself, over wasmtime-wasi's definitions:
//! - both clocks are frozen (the wall clock at the Unix epoch, the monotonic clock at
//!   [`MONOTONIC_NOW`]), and a timer is ready at once: a sleep costs nothing and blocks no
//!   host thread (wasmtime-wasi's timers would block it for real time, which fuel does not
//!   measure);
//! - random bytes come from a fixed-seed generator, one per instance, so a fresh instance
//!   reproduces them; a request for more than [`MAX_RANDOM_BYTES`] traps;
//! - every read of a clock, every timer and every random draw made *during a call* is counted,
//!   and [`call`](super::instance) turns a call that made one into an
//!   [`Impure`](crate::PolicyFault::Impure) fault: the host keeps its safe decision, the
//!   smoke table refuses the module, and `backstop check` names what it read. Reads while the
//!   instance starts (a runtime seeding its hash tables) are allowed: they cannot change an
//!   answer that the determinism checks do not see.

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::clocks::wall_clock::Datetime;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

/// The WASI version wasmtime-wasi links (its `wit/deps`); components importing any 0.2.x
/// resolve to it. A test proves these definitions replace wasmtime-wasi's: a policy that sleeps
/// a minute answers at once, and one that reads the clock faults.
const WASI: &str = "0.2.12";

/// What the frozen monotonic clock always says, in nanoseconds (an hour after its origin, so
/// a runtime subtracting a small duration from it does not underflow).
pub(crate) const MONOTONIC_NOW: u64 = 3_600_000_000_000;

/// The most random bytes one draw may ask for.
pub(crate) const MAX_RANDOM_BYTES: u64 = 64 << 10;

/// Reads of ambient state an instance made, counted since its current call began.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AmbientReads {
    /// Clock reads and timers.
    pub clock: u32,
    /// Random draws.
    pub random: u32,
}

impl AmbientReads {
    /// What the call read, as a fault message; `None` when it read nothing.
    pub(crate) fn describe(self) -> Option<String> {
        let what = match (self.clock, self.random) {
            (0, 0) => return None,
            (c, 0) => format!("read the clock {c} time(s)"),
            (0, r) => format!("drew randomness {r} time(s)"),
            (c, r) => format!("read the clock {c} time(s) and drew randomness {r} time(s)"),
        };
        Some(format!(
            "{what} during the call: a decision must be a pure function of its context \
             (use the context's `entropy` and elapsed/remaining times)"
        ))
    }
}

/// A per-instance generator of deterministic bytes (splitmix64 from a fixed seed).
pub(crate) struct FixedRandom(u64);

impl Default for FixedRandom {
    fn default() -> Self {
        FixedRandom(0x005e_ed0f_bac6_5707)
    }
}

impl FixedRandom {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        if len > MAX_RANDOM_BYTES {
            return Err(wasmtime::Error::msg(format!(
                "policy asked for {len} random bytes; at most {MAX_RANDOM_BYTES} are given"
            )));
        }
        let mut out = Vec::with_capacity(len as usize);
        while out.len() < len as usize {
            let word = self.next_u64().to_le_bytes();
            let take = (len as usize - out.len()).min(8);
            out.extend_from_slice(&word[..take]);
        }
        Ok(out)
    }
}

/// A timer of the frozen clock: always due.
struct Due;

#[wasmtime_wasi::async_trait]
impl Pollable for Due {
    async fn ready(&mut self) {}
}

/// A store's state that holds the counts, the generator and the resource table (the
/// sandbox's; a trait so this module needs nothing of it).
pub(crate) trait Ambient: Send + 'static {
    /// The reads counted since the current call began.
    fn ambient_mut(&mut self) -> &mut AmbientReads;
    /// The instance's generator.
    fn random_mut(&mut self) -> &mut FixedRandom;
    /// Where timers are kept.
    fn table_mut(&mut self) -> &mut ResourceTable;
}

fn timer<T: Ambient>(
    mut store: StoreContextMut<'_, T>,
) -> wasmtime::Result<(Resource<DynPollable>,)> {
    let sandbox = store.data_mut();
    sandbox.ambient_mut().clock += 1;
    let table = sandbox.table_mut();
    let due = table.push(Due)?;
    Ok((subscribe(table, due)?,))
}

/// Replaces wasmtime-wasi's clocks and randomness in `linker` with the virtual, counted ones.
pub(crate) fn shadow_wasi<T: Ambient>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut monotonic = linker.instance(&format!("wasi:clocks/monotonic-clock@{WASI}"))?;
    monotonic.func_wrap("now", |mut store: StoreContextMut<'_, T>, (): ()| {
        store.data_mut().ambient_mut().clock += 1;
        Ok((MONOTONIC_NOW,))
    })?;
    monotonic.func_wrap("resolution", |_: StoreContextMut<'_, T>, (): ()| {
        Ok((1u64,))
    })?;
    monotonic.func_wrap(
        "subscribe-instant",
        |store: StoreContextMut<'_, T>, (_,): (u64,)| timer(store),
    )?;
    monotonic.func_wrap(
        "subscribe-duration",
        |store: StoreContextMut<'_, T>, (_,): (u64,)| timer(store),
    )?;

    let mut wall = linker.instance(&format!("wasi:clocks/wall-clock@{WASI}"))?;
    wall.func_wrap("now", |mut store: StoreContextMut<'_, T>, (): ()| {
        store.data_mut().ambient_mut().clock += 1;
        Ok((Datetime {
            seconds: 0,
            nanoseconds: 0,
        },))
    })?;
    wall.func_wrap("resolution", |_: StoreContextMut<'_, T>, (): ()| {
        Ok((Datetime {
            seconds: 0,
            nanoseconds: 1,
        },))
    })?;

    for (interface, bytes, word) in [
        ("random", "get-random-bytes", "get-random-u64"),
        (
            "insecure",
            "get-insecure-random-bytes",
            "get-insecure-random-u64",
        ),
    ] {
        let mut random = linker.instance(&format!("wasi:random/{interface}@{WASI}"))?;
        random.func_wrap(
            bytes,
            |mut store: StoreContextMut<'_, T>, (len,): (u64,)| {
                let sandbox = store.data_mut();
                sandbox.ambient_mut().random += 1;
                Ok((sandbox.random_mut().bytes(len)?,))
            },
        )?;
        random.func_wrap(word, |mut store: StoreContextMut<'_, T>, (): ()| {
            let sandbox = store.data_mut();
            sandbox.ambient_mut().random += 1;
            Ok((sandbox.random_mut().next_u64(),))
        })?;
    }
    let mut seed = linker.instance(&format!("wasi:random/insecure-seed@{WASI}"))?;
    seed.func_wrap(
        "insecure-seed",
        |mut store: StoreContextMut<'_, T>, (): ()| {
            let sandbox = store.data_mut();
            sandbox.ambient_mut().random += 1;
            let random = sandbox.random_mut();
            Ok(((random.next_u64(), random.next_u64()),))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
