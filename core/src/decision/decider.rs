//! The one question the attempt loop asks, whoever answers it: a policy module through its
//! handle, or a built-in baseline in the simulator.

use crate::contract::AttemptContext;
use crate::contract::Route;
use crate::decision::outcome::Finished;
use crate::decision::route::RouteQuery;
use crate::decision::verdict::{PolicyFault, Verdict};

/// A verdict and who gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    /// The answer, before the host's guardrails.
    pub verdict: Verdict,
    /// The sha256 of the policy module that answered; `None` for a built-in decider.
    pub module_digest: Option<String>,
}

/// A route and who gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteAnswer {
    /// Where the next attempt goes, before the host's guardrails.
    pub route: Route,
    /// Why the module's own answer was not used, when it was not (the host's choice stood
    /// in for it).
    pub fault: Option<PolicyFault>,
    /// The sha256 of the policy module that answered; `None` for a built-in decider.
    pub module_digest: Option<String>,
}

/// What the attempt loop asks after a failed attempt. Implementations only answer: the loop
/// owns the state, the clock and every wait (as smithy-rs's retry strategies answer and its
/// orchestrator acts).
pub trait Decider: Send + Sync {
    /// The verdict for one failed attempt.
    fn decide(&self, ctx: &AttemptContext) -> Decided;
    /// Whether the loop should ask [`route`](Self::route) before each attempt; deciders that
    /// do not route cost the loop nothing for it.
    fn routes(&self) -> bool {
        false
    }
    /// Where the next attempt goes. The default is the host's own choice: the model the
    /// request is on (the first of the chain, or where the last decision moved it).
    fn route(&self, ctx: &RouteQuery) -> Route {
        Route::send(ctx.current, 0)
    }
    /// [`route`](Self::route) with who answered and its fault, as the loop asks it. A
    /// decider that runs policy modules answers here; the default wraps `route`.
    fn route_answer(&self, ctx: &RouteQuery) -> RouteAnswer {
        RouteAnswer {
            route: self.route(ctx),
            fault: None,
            module_digest: None,
        }
    }
    /// The loop reports a decision beside the question, once the host's guardrails have
    /// corrected it (`guarded`, the one place they are applied): [`decide`](Self::decide) is
    /// a query, and this is where a policy handle counts a fault towards its rollback rule
    /// (and may roll the module back) and where a shadow candidate is compared with what the
    /// host will do.
    fn on_decided(&self, _ctx: &AttemptContext, _decided: &Decided, _guarded: &Verdict) {}
    /// The same for a route: `guarded` is the answer under the guardrails
    /// ([`Guardrails::enforce_route`](crate::decision::Guardrails::enforce_route)), before the
    /// loop fits it to the models' breakers and quotas.
    fn on_routed(&self, _ctx: &RouteQuery, _answer: &RouteAnswer, _guarded: &Route) {}
    /// A request ended: served or not. Baselines with retry quotas refill on it; a policy
    /// handle judges a new module by these outcomes.
    fn on_finished(&self, _finished: &Finished) {}
    /// A served request's real usage is known: `tokens` (input and output as the model
    /// reported them, before any burndown) on chain model `model`. Deciders that count usage
    /// themselves (LiteLLM's `tpm` check) hear it here.
    fn on_usage(&self, _model: u32, _tokens: u64) {}
    /// Adds the decider's own metrics to the loop's registry.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}
}
