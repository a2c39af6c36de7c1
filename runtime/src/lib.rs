//! The wasm side: policy components under wasmtime. It knows the decision layer and nothing of
//! the attempt loop or the AWS SDK.
//!
//! Read it bottom-up: [`sandbox`] (what an instance is given and its limits), [`engine`]
//! (wasmtime, set up once), the frozen contract bindings (`v0_1_0`, `v0_2_0`, `v0_3_0`) and the
//! current one (`v0_4_0`), one guest call (`instance`), [`module`] (what makes a component a policy),
//! [`policy`] (a pool of configured instances), [`cache`] (`.cwasm` on disk), [`smoke`] and [`vetting`] (what a module
//! must pass to go live), `probation` (a new module's outcomes against its predecessor's),
//! [`shadow`] (a candidate asked beside the live module), [`handle`] (the live policy, swaps
//! and rollback) and, behind the
//! `watch` feature, [`watch`] (file watching and SIGHUP).
#![deny(missing_docs)]

/// What every contract version converts the same way: its generated types differ by path only,
/// so each version module (`v0_1_0`, `v0_2_0`, …) expands this once against its own `wit`.
/// Error text is cut to [`MAX_ERROR_TEXT_BYTES`] before lowering; model indices are checked
/// against the chain the host offered. The arguments name the `model-health` fields a version
/// added after 0.1.0 (same name, same type on both sides) and, after a `;`, the `decision`
/// cases it added, as match arms that check indices with `$model` and read the context `$ctx`.
macro_rules! shared_wit_conversions {
    ($($added_health_field:ident),* $(; |$model:ident, $ctx:ident| { $($added_decision:tt)* })?) => {
        /// `text` cut to the most the host lowers, on a character boundary: a borrow, never a
        /// copy.
        fn capped(text: &str) -> &str {
            &text[..text.floor_char_boundary($crate::MAX_ERROR_TEXT_BYTES)]
        }

        fn health_to_wit(h: &ModelHealth) -> wit::ModelHealth {
            wit::ModelHealth {
                requests: h.requests,
                throttles: h.throttles,
                errors: h.errors,
                consecutive_failures: h.consecutive_failures,
                $($added_health_field: h.$added_health_field,)*
                breaker: match h.breaker {
                    BreakerState::Closed => wit::BreakerState::Closed,
                    BreakerState::Open => wit::BreakerState::Open,
                    BreakerState::HalfOpen => wit::BreakerState::HalfOpen,
                },
                in_state_ms: h.in_state_ms,
            }
        }

        fn error_to_wit(error: &ErrorInfo) -> wit::ErrorInfo<'_> {
            use wit::ErrorKind as W;
            wit::ErrorInfo {
                kind: match error.kind {
                    ErrorKind::Throttling => W::Throttling,
                    ErrorKind::ServiceUnavailable => W::ServiceUnavailable,
                    ErrorKind::InternalServer => W::InternalServer,
                    ErrorKind::ModelNotReady => W::ModelNotReady,
                    ErrorKind::ModelTimeout => W::ModelTimeout,
                    ErrorKind::ModelError => W::ModelError,
                    ErrorKind::ModelStreamError => W::ModelStreamError,
                    ErrorKind::ServiceQuotaExceeded => W::ServiceQuotaExceeded,
                    ErrorKind::Validation => W::Validation,
                    ErrorKind::AccessDenied => W::AccessDenied,
                    ErrorKind::ResourceNotFound => W::ResourceNotFound,
                    ErrorKind::Conflict => W::Conflict,
                    ErrorKind::Timeout => W::Timeout,
                    ErrorKind::Connection => W::Connection,
                    ErrorKind::Unknown => W::Unknown,
                },
                code: capped(&error.code),
                http_status: error.http_status,
                message: capped(&error.message),
                retry_after_ms: error.retry_after_ms,
            }
        }

        fn workload_to_wit(workload: Workload) -> wit::Workload {
            match workload {
                Workload::Interactive => wit::Workload::Interactive,
                Workload::Batch => wit::Workload::Batch,
            }
        }

        fn reason_from_wit(reason: wit::GiveUpReason) -> GiveUpReason {
            match reason {
                wit::GiveUpReason::NotRetryable => GiveUpReason::NotRetryable,
                wit::GiveUpReason::AttemptsExhausted => GiveUpReason::AttemptsExhausted,
                wit::GiveUpReason::Deadline => GiveUpReason::Deadline,
                wit::GiveUpReason::OutputCommitted => GiveUpReason::OutputCommitted,
                wit::GiveUpReason::NoModelAvailable => GiveUpReason::NoModelAvailable,
            }
        }

        /// Runs `f` on the module's health list for `ctx`: from a stack buffer for chains of up
        /// to eight models, nothing allocated.
        fn with_health<R>(health: &[ModelHealth], f: impl FnOnce(&[wit::ModelHealth]) -> R) -> R {
            const INLINE: usize = 8;
            if health.len() <= INLINE {
                let idle = health_to_wit(&ModelHealth::default());
                let mut buf = [idle; INLINE];
                for (slot, h) in buf.iter_mut().zip(health) {
                    *slot = health_to_wit(h);
                }
                f(&buf[..health.len()])
            } else {
                let list: Vec<wit::ModelHealth> = health.iter().map(health_to_wit).collect();
                f(&list)
            }
        }

        /// Converts the module's answer, refusing any model index outside the chain the host
        /// offered.
        pub(crate) fn from_wit(
            decision: wit::Decision,
            ctx: &AttemptContext,
        ) -> Result<Decision, String> {
            let check = |index: u32| {
                if (index as usize) < ctx.models.len() {
                    Ok(index)
                } else {
                    Err(format!(
                        "model index {index} is outside the chain of {} model(s)",
                        ctx.models.len()
                    ))
                }
            };
            Ok(match decision {
                wit::Decision::Retry(delay_ms) => Decision::Retry { delay_ms },
                wit::Decision::SwitchModel(s) => Decision::SwitchModel {
                    model: check(s.model)?,
                    delay_ms: s.delay_ms,
                },
                wit::Decision::BreakCircuit(b) => Decision::BreakCircuit {
                    model: check(b.model)?,
                    open_ms: b.open_ms,
                    then: match b.then {
                        wit::AfterBreak::Fallback(index) => AfterBreak::Fallback {
                            model: check(index)?,
                        },
                        wit::AfterBreak::Queue => AfterBreak::Queue,
                        wit::AfterBreak::GiveUp => AfterBreak::GiveUp,
                    },
                },
                wit::Decision::Queue(not_before_ms) => Decision::Queue { not_before_ms },
                wit::Decision::GiveUp(reason) => Decision::GiveUp {
                    reason: reason_from_wit(reason),
                },
                $(other => {
                    let ($model, $ctx) = (check, ctx);
                    match other {
                        $($added_decision)*
                        _ => unreachable!("every earlier case is matched above"),
                    }
                })?
            })
        }
    };
}

/// What every contract version with `route` (0.2.0 on) converts the same way: the learned
/// capacity it lowers and the destination it lifts, refusing a model outside the chain. With
/// `hedge` (0.4.0 on), a send's hedge is lifted too, its model checked the same way.
macro_rules! route_wit_conversions {
    (@hedge $send:ident, $query:ident) => {
        None
    };
    (@hedge $send:ident, $query:ident, hedge) => {
        match $send.hedge {
            None => None,
            Some(h) if (h.model as usize) < $query.models.len() => Some(backstop_core::contract::Hedge {
                model: h.model,
                after_ms: h.after_ms,
            }),
            Some(h) => {
                return Err(format!(
                    "hedge model index {} is outside the chain of {} model(s)",
                    h.model,
                    $query.models.len()
                ));
            }
        }
    };
    ($($hedge:ident)?) => {
        /// Every model's learned capacity, lowered.
        fn capacity_to_wit(capacity: &[ModelCapacity]) -> Vec<wit::ModelCapacity> {
            capacity
                .iter()
                .map(|c| wit::ModelCapacity {
                    requests_per_minute: c.requests_per_minute,
                    tokens_per_minute: c.tokens_per_minute,
                    headroom_requests: c.headroom_requests,
                    headroom_tokens: c.headroom_tokens,
                    in_flight: c.in_flight,
                })
                .collect()
        }

        /// Converts the module's routing answer, refusing a model outside the chain.
        pub(crate) fn route_from_wit(
            answer: wit::Destination,
            query: &RouteQuery,
        ) -> Result<Route, String> {
            Ok(match answer {
                wit::Destination::Send(send) if (send.model as usize) < query.models.len() => {
                    Route::Send {
                        model: send.model,
                        delay_ms: send.delay_ms,
                        hedge: route_wit_conversions!(@hedge send, query $(, $hedge)?),
                    }
                }
                wit::Destination::Send(send) => {
                    return Err(format!(
                        "model index {} is outside the chain of {} model(s)",
                        send.model,
                        query.models.len()
                    ));
                }
                wit::Destination::Queue(not_before_ms) => Route::Queue { not_before_ms },
                wit::Destination::GiveUp(reason) => Route::GiveUp {
                    reason: reason_from_wit(reason),
                },
            })
        }
    };
}

/// What contract 0.3.0 and every later version convert the same way: `continue-answer`, both
/// contexts with the request's reservation and expected settlement, and the chain's facts
/// completed from the catalogue. The arguments name the `model-health` fields a version added
/// after 0.3.0.
macro_rules! since_v0_3_0_conversions {
    ($($added_health_field:ident),*) => {
        shared_wit_conversions!(consecutive_errors, first_event_limit_ms, idle_limit_ms $(, $added_health_field)*; |model, ctx| {
            wit::Decision::ContinueAnswer(_) if !ctx.output_delivered => {
                return Err("continue-answer before any output was delivered: there is nothing to \
                            continue (switch-model resends a request that delivered nothing)"
                    .to_string());
            }
            wit::Decision::ContinueAnswer(s) => Decision::ContinueAnswer {
                model: model(s.model)?,
                delay_ms: s.delay_ms,
            },
        });

        /// Runs `f` on the wit view of `ctx`, which borrows its strings: nothing is cloned per call,
        /// and for usual chains nothing is allocated either.
        pub(crate) fn with_wit<R>(ctx: &AttemptContext, f: impl FnOnce(wit::AttemptContext<'_>) -> R) -> R {
            with_health(&ctx.health, |health| {
                f(wit::AttemptContext {
                    request_id: &ctx.request_id,
                    error: error_to_wit(&ctx.error),
                    model: ctx.model,
                    attempts_on_model: ctx.attempts_on_model,
                    attempts_total: ctx.attempts_total,
                    elapsed_ms: ctx.elapsed_ms,
                    remaining_ms: ctx.remaining_ms,
                    workload: workload_to_wit(ctx.workload),
                    output_delivered: ctx.output_delivered,
                    continuations: ctx.continuations,
                    reservation: ctx.reservation,
                    expected_settled: ctx.expected_settled,
                    health,
                    entropy: ctx.entropy,
                })
            })
        }

        /// The chain's facts as `configure` takes them: what the operator said, completed from the
        /// built-in catalogue (maximum output, burndown, whether a model continues an answer), and for
        /// each id the first id of the chain that reaches the same model.
        pub(crate) fn facts_to_wit(facts: &[ModelFacts]) -> Vec<wit::ModelFacts<'_>> {
            let known = facts.iter().map(|f| catalogue::facts(&f.id, facts));
            let same_model = ModelFacts::same_model(facts);
            facts
                .iter()
                .zip(known)
                .zip(same_model)
                .map(|((f, k), same_model)| wit::ModelFacts {
                    id: &f.id,
                    context_window: k.context_window,
                    relative_cost: f.relative_cost,
                    region: f.region.as_deref(),
                    max_output_tokens: u32::try_from(k.max_output_tokens).ok(),
                    burndown: u32::try_from(k.burndown).ok(),
                    tokens_per_minute: k.tokens_per_minute,
                    same_model,
                    continues: k.continues,
                })
                .collect()
        }

        /// Runs `f` on the wit view of the loop's routing question.
        pub(crate) fn with_route_wit<R>(
            query: &RouteQuery,
            f: impl FnOnce(wit::RouteContext<'_>) -> R,
        ) -> R {
            let capacity = capacity_to_wit(query.capacity);
            with_health(query.health, |health| {
                f(wit::RouteContext {
                    request_id: query.request_id,
                    workload: workload_to_wit(query.workload),
                    reservation: query.reservation,
                    expected_settled: query.expected_settled,
                    attempts_total: query.attempts_total,
                    current: query.current,
                    elapsed_ms: query.elapsed_ms,
                    remaining_ms: query.remaining_ms,
                    health,
                    capacity: &capacity,
                    entropy: query.entropy,
                })
            })
        }
    };
}

/// The most of an error's code or message lowered into a module. Bedrock's messages are a few
/// hundred bytes; a proxy's error page or a hostile upstream can send megabytes, which would
/// fault a good module (its memory is bounded) and cost time on every decision.
pub const MAX_ERROR_TEXT_BYTES: usize = 4 << 10;

mod ambient;
pub mod cache;
pub mod compile_worker;
pub mod conformance;
pub mod engine;
pub mod error;
pub mod handle;
mod instance;
pub mod isolation;
pub mod module;
pub mod policy;
pub mod prescan;
mod probation;
pub mod quarantine;
pub mod sandbox;
pub mod shadow;
pub mod smoke;
mod v0_1_0;
mod v0_2_0;
mod v0_3_0;
mod v0_4_0;
pub mod vetting;
#[cfg(feature = "watch")]
pub mod watch;

/// The default policy's logic compiled natively: the same code as
/// [`DEFAULT_POLICY_WASM`](module::DEFAULT_POLICY_WASM), for comparison and benchmarks. Hosts
/// should call the component, which can be swapped.
pub use policy_guest::policy as native_default;
