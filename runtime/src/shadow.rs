//! Shadow evaluation: a candidate module asked the same contexts as the live one on real
//! traffic — after each failed attempt, and (for a candidate of contract 0.2.0) where to send
//! each attempt — whose answers change nothing and are only compared.
//!
//! The smoke table says a module is sane; only real traffic says what it would *do*. Both
//! answers go through the host's guardrails before they are compared, so a disagreement is a
//! difference the host would have carried out. Promotion is an explicit swap
//! ([`PolicyHandle::promote_shadow`](super::handle::PolicyHandle::promote_shadow)).

use crate::policy::Policy;
use backstop_core::contract::{AttemptContext, Decision, Route};
use backstop_core::decision::{Disagreement, Guardrails, PolicyFault, RouteQuery, Verdict};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Disagreements kept for [`ShadowStatus::recent`].
const SAMPLES_KEPT: usize = 32;

/// A sample's `error` when the question was where to route, before an attempt.
pub const ROUTE: &str = "before-attempt";

/// What the candidate was asked about, for its record.
struct Asked<'a> {
    request_id: &'a str,
    model: &'a str,
    current: u32,
    error: &'static str,
}

/// What a route amounts to, as a decision about the request: a send to another model is a
/// switch, a send to the same one a retry.
fn as_decision(route: &Route, current: u32) -> Decision {
    match *route {
        Route::Send {
            model, delay_ms, ..
        } if model == current => Decision::Retry { delay_ms },
        Route::Send {
            model, delay_ms, ..
        } => Decision::SwitchModel { model, delay_ms },
        Route::Queue { not_before_ms } => Decision::Queue { not_before_ms },
        Route::GiveUp { reason } => Decision::GiveUp { reason },
    }
}

/// One context on which the candidate would have done otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShadowSample {
    /// The loop's request id.
    pub request_id: String,
    /// The model the failed attempt went to.
    pub model: String,
    /// The error it met (kebab-case kind), or [`ROUTE`] for the question where to send an
    /// attempt.
    pub error: &'static str,
    /// How the decisions differ.
    pub kind: Disagreement,
    /// What the live module decided (after the guardrails).
    pub live: Decision,
    /// What the candidate would have decided (after the guardrails).
    pub candidate: Decision,
}

/// A candidate's record so far.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ShadowStatus {
    /// Where it came from.
    pub origin: String,
    /// Its sha256.
    pub digest: String,
    /// Its name, from `info()`.
    pub name: String,
    /// Its own version.
    pub version: String,
    /// Contexts it was asked.
    pub decisions: u64,
    /// Of those, answered the same as the live module.
    pub agreed: u64,
    /// Of those, faults (trap, fuel, invalid answer): a fault would have counted towards its
    /// rollback had it been live.
    pub faults: u64,
    /// Disagreements by kind (every kind present, zeros included).
    pub disagreements: BTreeMap<&'static str, u64>,
    /// The latest disagreements, oldest first.
    pub recent: Vec<ShadowSample>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ShadowLabels {
    pub digest: String,
    pub kind: String,
}

/// The candidate and its counters.
pub(crate) struct Shadow {
    policy: Policy,
    decisions: AtomicU64,
    agreed: AtomicU64,
    faults: AtomicU64,
    by_kind: [AtomicU64; Disagreement::ALL.len()],
    recent: Mutex<VecDeque<ShadowSample>>,
}

impl Shadow {
    pub(crate) fn new(policy: Policy) -> Shadow {
        Shadow {
            policy,
            decisions: AtomicU64::new(0),
            agreed: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            by_kind: Default::default(),
            recent: Mutex::new(VecDeque::new()),
        }
    }

    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Contexts asked so far.
    pub(crate) fn decisions(&self) -> u64 {
        self.decisions.load(Ordering::Relaxed)
    }

    /// Asks the candidate `ctx`, compares its answer under the same `guardrails` with the
    /// live verdict as the host will carry it out (`guarded`), and counts.
    pub(crate) fn compare(
        &self,
        ctx: &AttemptContext,
        guarded: &Verdict,
        guardrails: &Guardrails,
        metrics: &Family<ShadowLabels, Counter>,
    ) {
        let answer = self.policy.decide(ctx);
        self.decisions.fetch_add(1, Ordering::Relaxed);
        if let Some(fault) = &answer.fault {
            return self.faulted(&ctx.request_id, fault, metrics);
        }
        let live = guarded.decision.clone();
        let candidate = guardrails.enforce(ctx, answer).decision;
        let model = ctx.models.get(ctx.model as usize).map(String::as_str);
        let asked = Asked {
            request_id: &ctx.request_id,
            model: model.unwrap_or_default(),
            current: ctx.model,
            error: ctx.error.kind.kebab(),
        };
        self.count(asked, live, candidate, metrics);
    }

    /// Asks the candidate where `query`'s next attempt goes, compares its answer under the
    /// same `guardrails` with the live route under them (`guarded`), as the decision each
    /// amounts to (a send to another model is a switch, to the same one a retry), and counts.
    /// A candidate without `route` (contract 0.1.0) is routed by the host as the live module
    /// would be, so there is nothing to compare.
    pub(crate) fn compare_route(
        &self,
        query: &RouteQuery,
        guarded: &Route,
        guardrails: &Guardrails,
        metrics: &Family<ShadowLabels, Counter>,
    ) {
        let Some((answer, fault)) = self.policy.route(query) else {
            return;
        };
        self.decisions.fetch_add(1, Ordering::Relaxed);
        if let Some(fault) = &fault {
            return self.faulted(query.request_id, fault, metrics);
        }
        let model = query.models.get(query.current as usize).map(String::as_str);
        let asked = Asked {
            request_id: query.request_id,
            model: model.unwrap_or_default(),
            current: query.current,
            error: ROUTE,
        };
        let live = as_decision(guarded, query.current);
        let candidate = guardrails.enforce_route(query.workload, query.current, answer);
        self.count(asked, live, as_decision(&candidate, query.current), metrics);
    }

    fn faulted(
        &self,
        request_id: &str,
        fault: &PolicyFault,
        metrics: &Family<ShadowLabels, Counter>,
    ) {
        let digest = self.policy.module().digest();
        self.faults.fetch_add(1, Ordering::Relaxed);
        metrics
            .get_or_create(&ShadowLabels {
                digest: digest.to_string(),
                kind: "fault".to_string(),
            })
            .inc();
        tracing::warn!(shadow = %digest, %request_id, %fault, "shadow policy faulted");
    }

    fn count(
        &self,
        asked: Asked<'_>,
        live: Decision,
        candidate: Decision,
        metrics: &Family<ShadowLabels, Counter>,
    ) {
        let Some(kind) = Disagreement::between(asked.current, &live, &candidate) else {
            self.agreed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let digest = self.policy.module().digest();
        self.by_kind[kind as usize].fetch_add(1, Ordering::Relaxed);
        metrics
            .get_or_create(&ShadowLabels {
                digest: digest.to_string(),
                kind: kind.as_str().to_string(),
            })
            .inc();
        tracing::info!(
            shadow = %digest, request_id = %asked.request_id, model = %asked.model,
            error = asked.error, kind = kind.as_str(), ?live, ?candidate,
            "shadow policy disagrees"
        );
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.push_back(ShadowSample {
            request_id: asked.request_id.to_string(),
            model: asked.model.to_string(),
            error: asked.error,
            kind,
            live,
            candidate,
        });
        if recent.len() > SAMPLES_KEPT {
            recent.pop_front();
        }
    }

    pub(crate) fn status(&self) -> ShadowStatus {
        let module = self.policy.module();
        ShadowStatus {
            origin: module.origin().to_string(),
            digest: module.digest().to_string(),
            name: module.info().name.clone(),
            version: module.info().version.clone(),
            decisions: self.decisions(),
            agreed: self.agreed.load(Ordering::Relaxed),
            faults: self.faults.load(Ordering::Relaxed),
            disagreements: Disagreement::ALL
                .iter()
                .map(|kind| {
                    (
                        kind.as_str(),
                        self.by_kind[*kind as usize].load(Ordering::Relaxed),
                    )
                })
                .collect(),
            recent: self
                .recent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
                .collect(),
        }
    }
}
