//! The host's per-model view: a rolling window of outcomes, consecutive failures, the breaker,
//! and the learned [capacity](super::capacity). It is what the policy sees as `model-health`,
//! and it outlives any policy module.

use crate::contract::ModelCapacity;
use crate::contract::{ErrorKind, ModelHealth};
use crate::resilience::breaker::{Admission, Breaker};
use crate::resilience::capacity::Capacity;
use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Copy)]
enum Outcome {
    Ok,
    Throttled,
    Failed,
}

struct Model {
    window: VecDeque<(Instant, Outcome)>,
    consecutive_failures: u32,
    breaker: Breaker,
    capacity: Capacity,
}

/// Health of every model of a client's chain, by index.
pub struct HealthBoard {
    models: Vec<Mutex<Model>>,
    window: Duration,
}

impl HealthBoard {
    /// A board for `count` models, keeping outcomes for `window`.
    pub fn new(count: usize, window: Duration) -> HealthBoard {
        let now = Instant::now();
        let models = (0..count)
            .map(|_| {
                Mutex::new(Model {
                    window: VecDeque::new(),
                    consecutive_failures: 0,
                    breaker: Breaker::new(now),
                    capacity: Capacity::new(0.0),
                })
            })
            .collect();
        HealthBoard { models, window }
    }

    fn model(&self, index: usize) -> std::sync::MutexGuard<'_, Model> {
        self.models[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks model `index`'s breaker to let one request through.
    pub fn admit(&self, index: usize, now: Instant) -> Admission {
        self.model(index).breaker.admit(now)
    }

    /// Records a success; returns whether it closed the breaker.
    pub fn record_success(&self, index: usize, now: Instant) -> bool {
        let mut model = self.model(index);
        model.consecutive_failures = 0;
        self.push(&mut model, now, Outcome::Ok);
        model.breaker.on_success(now)
    }

    /// Records a failure; returns whether a failed probe re-opened the breaker.
    pub fn record_failure(&self, index: usize, now: Instant, kind: ErrorKind) -> bool {
        let mut model = self.model(index);
        model.consecutive_failures = model.consecutive_failures.saturating_add(1);
        let outcome = if kind.is_throttle() {
            Outcome::Throttled
        } else {
            Outcome::Failed
        };
        self.push(&mut model, now, outcome);
        model.breaker.on_failure(now)
    }

    /// An attempt of `tokens` went to model `index` at `clock_s` (policy seconds).
    pub fn sent(&self, index: usize, clock_s: f64, tokens: u64) {
        self.model(index).capacity.sent(clock_s, tokens);
    }

    /// The attempt came back from model `index` at `clock_s`: throttled or not.
    pub fn returned(&self, index: usize, clock_s: f64, throttled: bool) {
        self.model(index).capacity.returned(clock_s, throttled);
    }

    /// Every model's learned capacity at `clock_s`.
    pub fn capacity(&self, clock_s: f64) -> Vec<ModelCapacity> {
        (0..self.models.len())
            .map(|index| self.model(index).capacity.view(clock_s))
            .collect()
    }

    /// Opens model `index`'s breaker; returns whether it was closed or half-open before.
    pub fn open(&self, index: usize, now: Instant, period: Duration) -> bool {
        self.model(index).breaker.open(now, period)
    }

    fn push(&self, model: &mut Model, now: Instant, outcome: Outcome) {
        model.window.push_back((now, outcome));
        while model
            .window
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > self.window)
        {
            model.window.pop_front();
        }
    }

    /// The policy's view of every model; `scale` turns real durations into the policy's ms.
    pub fn snapshot(&self, now: Instant, to_ms: impl Fn(Duration) -> u64) -> Vec<ModelHealth> {
        (0..self.models.len())
            .map(|index| {
                let model = self.model(index);
                let recent = model
                    .window
                    .iter()
                    .filter(|(at, _)| now.duration_since(*at) <= self.window);
                let (mut requests, mut throttles, mut errors) = (0u32, 0u32, 0u32);
                for (_, outcome) in recent {
                    requests += 1;
                    match outcome {
                        Outcome::Ok => {}
                        Outcome::Throttled => throttles += 1,
                        Outcome::Failed => errors += 1,
                    }
                }
                let (breaker, since) = (model.breaker.state_at(now), model.breaker.since());
                ModelHealth {
                    requests,
                    throttles,
                    errors,
                    consecutive_failures: model.consecutive_failures,
                    breaker,
                    in_state_ms: to_ms(now.saturating_duration_since(since)),
                }
            })
            .collect()
    }
}
