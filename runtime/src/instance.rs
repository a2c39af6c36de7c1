//! One sandboxed instance and one guest call: a fresh fuel budget and output budget per call,
//! and every way a call can fail turned into a [`PolicyFault`]. Creating, configuring and
//! probing instances happens here; pooling them is [`policy`](super::policy)'s business.

use crate::engine::Engine;
use crate::error::LoadError;
use crate::sandbox::{MemoryLimitHit, Sandbox, escape_controls};
use crate::{v0_1_0, v0_2_0, v0_3_0, v0_4_0};
use backstop_core::contract::{AttemptContext, Decision, ModelFacts, PolicyInfo, Route};
use backstop_core::decision::{PolicyFault, RouteQuery};
use wasmtime::{Store, Trap};

/// A compiled module ready to instantiate, for the contract version it exports: the newest
/// (0.4.0), or a frozen one (0.1.0, 0.2.0, 0.3.0) that the host keeps loading.
#[derive(Clone)]
pub(crate) enum Pre {
    V0_1(v0_1_0::PolicyPre<Sandbox>),
    V0_2(v0_2_0::PolicyPre<Sandbox>),
    V0_3(v0_3_0::PolicyPre<Sandbox>),
    V0_4(v0_4_0::PolicyPre<Sandbox>),
}

impl Pre {
    /// Whether modules of this version answer `route`.
    pub(crate) fn routes(&self) -> bool {
        !matches!(self, Pre::V0_1(_))
    }

    /// The contract version the module exports.
    pub(crate) fn contract(&self) -> &'static str {
        match self {
            Pre::V0_1(_) => "0.1.0",
            Pre::V0_2(_) => "0.2.0",
            Pre::V0_3(_) => "0.3.0",
            Pre::V0_4(_) => backstop_core::contract::WIT_VERSION,
        }
    }

    fn instantiate(&self, store: &mut Store<Sandbox>) -> wasmtime::Result<Bindings> {
        Ok(match self {
            Pre::V0_1(pre) => Bindings::V0_1(pre.instantiate(&mut *store)?),
            Pre::V0_2(pre) => Bindings::V0_2(pre.instantiate(&mut *store)?),
            Pre::V0_3(pre) => Bindings::V0_3(pre.instantiate(&mut *store)?),
            Pre::V0_4(pre) => Bindings::V0_4(pre.instantiate(&mut *store)?),
        })
    }
}

/// An instance's exports, for its contract version.
pub(crate) enum Bindings {
    V0_1(v0_1_0::Policy),
    V0_2(v0_2_0::Policy),
    V0_3(v0_3_0::Policy),
    V0_4(v0_4_0::Policy),
}

/// One sandboxed instance of a policy in its own store.
pub(crate) struct Instance {
    pub(crate) store: Store<Sandbox>,
    pub(crate) bindings: Bindings,
}

impl Instance {
    /// The linear memory the instance holds.
    pub(crate) fn memory_held(&self) -> usize {
        self.store.data().memory_held()
    }

    /// Fuel the last call burned, out of `budget`.
    pub(crate) fn fuel_used(&self, budget: u64) -> u64 {
        budget.saturating_sub(self.store.get_fuel().unwrap_or(0))
    }

    /// Asks this instance about one failed attempt, with `fuel` to spend. A fault leaves the
    /// instance in an unknown state: the caller must drop it.
    pub(crate) fn decide(
        &mut self,
        fuel: u64,
        ctx: &AttemptContext,
    ) -> Result<Decision, PolicyFault> {
        match &self.bindings {
            Bindings::V0_1(bindings) => {
                let answer = call(&mut self.store, fuel, |store| {
                    v0_1_0::with_wit(ctx, |wit_ctx| {
                        bindings
                            .backstop_policy_decider()
                            .call_decide(store, wit_ctx)
                    })
                })?;
                v0_1_0::from_wit(answer, ctx).map_err(PolicyFault::InvalidDecision)
            }
            Bindings::V0_2(bindings) => {
                let answer = call(&mut self.store, fuel, |store| {
                    v0_2_0::with_wit(ctx, |wit_ctx| {
                        bindings
                            .backstop_policy_decider()
                            .call_decide(store, wit_ctx)
                    })
                })?;
                v0_2_0::from_wit(answer, ctx).map_err(PolicyFault::InvalidDecision)
            }
            Bindings::V0_3(bindings) => {
                let answer = call(&mut self.store, fuel, |store| {
                    v0_3_0::with_wit(ctx, |wit_ctx| {
                        bindings
                            .backstop_policy_decider()
                            .call_decide(store, wit_ctx)
                    })
                })?;
                v0_3_0::from_wit(answer, ctx).map_err(PolicyFault::InvalidDecision)
            }
            Bindings::V0_4(bindings) => {
                let answer = call(&mut self.store, fuel, |store| {
                    v0_4_0::with_wit(ctx, |wit_ctx| {
                        bindings
                            .backstop_policy_decider()
                            .call_decide(store, wit_ctx)
                    })
                })?;
                v0_4_0::from_wit(answer, ctx).map_err(PolicyFault::InvalidDecision)
            }
        }
    }

    /// Asks this instance where a request's next attempt goes; `None` for a module of a
    /// contract without `route` (the host routes for it). A fault leaves the instance in an
    /// unknown state: the caller must drop it.
    pub(crate) fn route(
        &mut self,
        fuel: u64,
        query: &RouteQuery,
    ) -> Option<Result<Route, PolicyFault>> {
        let answer = match &self.bindings {
            Bindings::V0_1(_) => return None,
            Bindings::V0_2(bindings) => call(&mut self.store, fuel, |store| {
                v0_2_0::with_route_wit(query, |wit_ctx| {
                    bindings
                        .backstop_policy_decider()
                        .call_route(store, wit_ctx)
                })
            })
            .and_then(|a| v0_2_0::route_from_wit(a, query).map_err(PolicyFault::InvalidDecision)),
            Bindings::V0_3(bindings) => call(&mut self.store, fuel, |store| {
                v0_3_0::with_route_wit(query, |wit_ctx| {
                    bindings
                        .backstop_policy_decider()
                        .call_route(store, wit_ctx)
                })
            })
            .and_then(|a| v0_3_0::route_from_wit(a, query).map_err(PolicyFault::InvalidDecision)),
            Bindings::V0_4(bindings) => call(&mut self.store, fuel, |store| {
                v0_4_0::with_route_wit(query, |wit_ctx| {
                    bindings
                        .backstop_policy_decider()
                        .call_route(store, wit_ctx)
                })
            })
            .and_then(|a| v0_4_0::route_from_wit(a, query).map_err(PolicyFault::InvalidDecision)),
        };
        Some(answer)
    }
}

/// Runs one decision (`decide` or `route`) with a fresh fuel budget and the module's output
/// budget. A decision that read a clock or drew randomness is
/// [`Impure`](PolicyFault::Impure): its answer is dropped.
pub(crate) fn call<R>(
    store: &mut Store<Sandbox>,
    fuel: u64,
    f: impl FnOnce(&mut Store<Sandbox>) -> wasmtime::Result<R>,
) -> Result<R, PolicyFault> {
    let answer = setup_call(store, fuel, f)?;
    match store.data().ambient().describe() {
        Some(impure) => Err(PolicyFault::Impure(impure)),
        None => Ok(answer),
    }
}

/// Runs one guest call with a fresh fuel budget and the module's output budget. Setting up
/// (`configure`, `info`) may read the virtual clocks and randomness: a language runtime seeds
/// itself then, and a fresh instance reads the same values, so nothing becomes impure.
pub(crate) fn setup_call<R>(
    store: &mut Store<Sandbox>,
    fuel: u64,
    f: impl FnOnce(&mut Store<Sandbox>) -> wasmtime::Result<R>,
) -> Result<R, PolicyFault> {
    store
        .set_fuel(fuel)
        .map_err(|e| PolicyFault::Trap(format!("cannot set fuel: {e}")))?;
    store.data_mut().begin_call();
    let result = f(store);
    store.data().end_call();
    result.map_err(|e| classify(&e, fuel))
}

fn classify(error: &wasmtime::Error, fuel: u64) -> PolicyFault {
    if let Some(hit) = error.downcast_ref::<MemoryLimitHit>() {
        return PolicyFault::MemoryLimit(hit.to_string());
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => PolicyFault::OutOfFuel(fuel),
        Some(Trap::StackOverflow) => PolicyFault::StackOverflow,
        Some(trap) => PolicyFault::Trap(trap.to_string()),
        None => PolicyFault::Trap(format!("{error:#}")),
    }
}

/// A fresh, unconfigured instance in its own sandboxed store. A start function that faults
/// (fuel, memory, stack) is a probe fault; any other failure is an instantiation error.
fn new_instance(engine: &Engine, pre: &Pre, origin: &str) -> Result<Instance, LoadError> {
    let limits = engine.limits();
    let mut store = Sandbox::store(engine.wasmtime(), origin, limits);
    let probe = |fault| LoadError::Probe {
        origin: origin.to_string(),
        fault,
    };
    store
        .set_fuel(limits.fuel_per_call)
        .map_err(|e| probe(PolicyFault::Trap(e.to_string())))?;
    let bindings =
        pre.instantiate(&mut store)
            .map_err(|e| match classify(&e, limits.fuel_per_call) {
                PolicyFault::Trap(_) => LoadError::Instantiate {
                    origin: origin.to_string(),
                    reason: format!("{e:#}"),
                },
                fault => probe(fault),
            })?;
    Ok(Instance { store, bindings })
}

/// A new instance, configured with the operator's `config` and, for a module that takes
/// them (0.2.0 on), the chain's `facts`: ready to decide.
pub(crate) fn configured(
    engine: &Engine,
    pre: &Pre,
    origin: &str,
    config: &str,
    facts: &[ModelFacts],
) -> Result<Instance, LoadError> {
    let mut instance = new_instance(engine, pre, origin)?;
    let fuel = engine.limits().fuel_per_call;
    let configured = match &instance.bindings {
        Bindings::V0_1(bindings) => setup_call(&mut instance.store, fuel, |store| {
            bindings
                .backstop_policy_decider()
                .call_configure(store, config)
        }),
        Bindings::V0_2(bindings) => {
            let facts = v0_2_0::facts_to_wit(facts);
            setup_call(&mut instance.store, fuel, |store| {
                bindings
                    .backstop_policy_decider()
                    .call_configure(store, config, &facts)
            })
        }
        Bindings::V0_3(bindings) => {
            let facts = v0_3_0::facts_to_wit(facts);
            setup_call(&mut instance.store, fuel, |store| {
                bindings
                    .backstop_policy_decider()
                    .call_configure(store, config, &facts)
            })
        }
        Bindings::V0_4(bindings) => {
            let facts = v0_4_0::facts_to_wit(facts);
            setup_call(&mut instance.store, fuel, |store| {
                bindings
                    .backstop_policy_decider()
                    .call_configure(store, config, &facts)
            })
        }
    }
    .map_err(|fault| LoadError::Probe {
        origin: origin.to_string(),
        fault,
    })?;
    configured.map_err(|reason| LoadError::Config {
        origin: origin.to_string(),
        reason: truncated(reason),
    })?;
    Ok(instance)
}

/// The longest name, version or rejection reason a module may hand the host; more is a
/// module trying to flood logs and metric labels.
pub(crate) const MAX_TEXT_BYTES: usize = 1024;

/// Cuts a module's text to [`MAX_TEXT_BYTES`] on a character boundary, saying so, with every
/// control character escaped: a module's words reach logs and error messages as data, never as
/// line breaks or terminal escapes.
pub(crate) fn truncated(text: String) -> String {
    let total = text.len();
    let mut out = escape_controls(&text[..text.floor_char_boundary(MAX_TEXT_BYTES)]);
    // Escapes are longer than what they stand for: the kept text is cut once more.
    let kept = out.floor_char_boundary(MAX_TEXT_BYTES);
    if kept < out.len() || total > MAX_TEXT_BYTES {
        out.truncate(kept);
        out.push_str(&format!("… ({total} bytes in all)"));
    }
    out
}

/// An `info()` field, its value, its check, and the rule in words.
type IdentityRule<'a> = (&'static str, &'a str, fn(&str) -> bool, &'static str);

/// Whether `name` is a policy name: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or
/// digit. Names become metric labels and log fields, so they are data, not markup.
fn is_policy_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `version` is a semantic version (`1.2.3`, `1.2.3-rc.1`, `1.2.3+build.5`) of at most
/// 64 characters.
fn is_semver(version: &str) -> bool {
    let identifiers = |part: &str| {
        !part.is_empty()
            && part.split('.').all(|id| {
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    if version.len() > 64 {
        return false;
    }
    let (rest, build) = match version.split_once('+') {
        Some((rest, build)) => (rest, Some(build)),
        None => (version, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (rest, None),
    };
    let numbers: Vec<&str> = core.split('.').collect();
    numbers.len() == 3
        && numbers.iter().all(|n| {
            !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && (n.len() == 1 || !n.starts_with('0'))
        })
        && pre.is_none_or(identifiers)
        && build.is_none_or(identifiers)
}

/// Asks a freshly compiled module who it is, in a throw-away instance.
pub(crate) fn probe_info(
    engine: &Engine,
    pre: &Pre,
    origin: &str,
) -> Result<PolicyInfo, LoadError> {
    let mut instance = new_instance(engine, pre, origin)?;
    let fuel = engine.limits().fuel_per_call;
    let info = match &instance.bindings {
        Bindings::V0_1(bindings) => setup_call(&mut instance.store, fuel, |store| {
            let info = bindings.backstop_policy_decider().call_info(store)?;
            Ok((info.name, info.version, info.wit_version))
        }),
        Bindings::V0_2(bindings) => setup_call(&mut instance.store, fuel, |store| {
            let info = bindings.backstop_policy_decider().call_info(store)?;
            Ok((info.name, info.version, info.wit_version))
        }),
        Bindings::V0_3(bindings) => setup_call(&mut instance.store, fuel, |store| {
            let info = bindings.backstop_policy_decider().call_info(store)?;
            Ok((info.name, info.version, info.wit_version))
        }),
        Bindings::V0_4(bindings) => setup_call(&mut instance.store, fuel, |store| {
            let info = bindings.backstop_policy_decider().call_info(store)?;
            Ok((info.name, info.version, info.wit_version))
        }),
    }
    .map_err(|fault| LoadError::Probe {
        origin: origin.to_string(),
        fault,
    })?;
    let info = PolicyInfo {
        name: info.0,
        version: info.1,
        wit_version: info.2,
    };
    for (field, text) in [
        ("name", &info.name),
        ("version", &info.version),
        ("wit-version", &info.wit_version),
    ] {
        if text.len() > MAX_TEXT_BYTES {
            return Err(LoadError::Oversized {
                origin: origin.to_string(),
                field,
                bytes: text.len(),
                limit: MAX_TEXT_BYTES,
            });
        }
    }
    let checks: [IdentityRule<'_>; 3] = [
        (
            "name",
            &info.name,
            is_policy_name,
            "1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit",
        ),
        (
            "version",
            &info.version,
            is_semver,
            "a semantic version such as 1.2.0",
        ),
        (
            "wit-version",
            &info.wit_version,
            is_semver,
            "a semantic version such as 0.1.0",
        ),
    ];
    for (field, value, valid, rule) in checks {
        if !valid(value) {
            return Err(LoadError::BadIdentity {
                origin: origin.to_string(),
                field,
                value: escape_controls(value),
                rule,
            });
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_names_and_semantic_versions() {
        for good in ["backstop-default", "a", "retry_1.v2", "X9"] {
            assert!(is_policy_name(good), "{good}");
        }
        for bad in [
            "",
            "-lead",
            "has space",
            "quote\"}",
            "new\nline",
            "\u{1b}[31m",
            &"n".repeat(65),
        ] {
            assert!(!is_policy_name(bad), "{bad:?}");
        }
        for good in ["0.1.0", "1.2.3-rc.1", "10.0.0+build.5", "1.0.0-alpha-1+x"] {
            assert!(is_semver(good), "{good}");
        }
        for bad in [
            "",
            "1",
            "1.2",
            "1.2.3.4",
            "01.2.3",
            "1.2.x",
            "1.2.3-",
            "1.2.3+",
            "1.2.3-a..b",
            "v1.2.3",
            "1.2.3 ",
        ] {
            assert!(!is_semver(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_modules_text_is_cut_and_its_control_characters_escaped() {
        assert_eq!(truncated("fine".into()), "fine");
        assert_eq!(truncated("a\nb\u{1b}[2J".into()), "a\\nb\\u{1b}[2J");
        let long = truncated("é".repeat(1000));
        assert!(long.ends_with("… (2000 bytes in all)"), "{long}");
        assert!(long.len() < 1100);
    }
}
