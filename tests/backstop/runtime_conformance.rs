//! Policy components, unchanged, under other runtimes: jco (transpiled for Node) and
//! wasmtime-py. On a table of contexts each must answer exactly as the host's wasmtime does,
//! decision for decision: the default policy, and the example policies written in Python and
//! JavaScript (built from source). CI installs every tool (`.ci/run`); elsewhere a test says it
//! was skipped, and under CI a missing tool is a failure, never a silent pass.

use backstop_test_support as support;

use backstop::AttemptContext;
use backstop::Decision;
use backstop::ErrorKind;
use backstop_core::contract::AfterBreak;
use backstop_core::contract::BreakerState;
use backstop_core::contract::ModelCapacity;
use backstop_core::contract::ModelHealth;
use backstop_core::contract::Route;
use backstop_core::contract::RouteContext;
use backstop_core::contract::Workload;
use backstop_core::decision::RouteQuery;
use serde_json::{Value, json};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn jco() -> Option<PathBuf> {
    let jco = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/jco/node_modules/.bin/jco");
    jco.is_file().then_some(jco)
}

fn kebab<T: serde::Serialize>(value: T) -> Value {
    serde_json::to_value(value).expect("serialises")
}

/// A context in the shape jco's bindings take (camelCase, 64-bit numbers as strings).
fn js_context(c: &AttemptContext) -> Value {
    json!({
        "requestId": c.request_id,
        "error": {
            "kind": kebab(c.error.kind),
            "code": c.error.code,
            "httpStatus": c.error.http_status,
            "message": c.error.message,
            "retryAfterMs": c.error.retry_after_ms.map(|v| v.to_string()),
        },
        "model": c.model,
        "attemptsOnModel": c.attempts_on_model,
        "attemptsTotal": c.attempts_total,
        "elapsedMs": c.elapsed_ms.to_string(),
        "remainingMs": c.remaining_ms.to_string(),
        "workload": kebab(c.workload),
        "outputDelivered": c.output_delivered,
        "continuations": c.continuations,
        "reservation": c.reservation.to_string(),
        "expectedSettled": c.expected_settled.to_string(),
        "health": js_health(&c.health),
        "entropy": c.entropy.to_string(),
    })
}

fn js_health(health: &[ModelHealth]) -> Vec<Value> {
    health
        .iter()
        .map(|h| {
            json!({
                "requests": h.requests,
                "throttles": h.throttles,
                "errors": h.errors,
                "consecutiveFailures": h.consecutive_failures,
                "consecutiveErrors": h.consecutive_errors,
                "breaker": kebab(h.breaker),
                "inStateMs": h.in_state_ms.to_string(),
                "firstEventLimitMs": h.first_event_limit_ms.to_string(),
                "idleLimitMs": h.idle_limit_ms.to_string(),
                "startP95Ms": h.start_p95_ms.to_string(),
            })
        })
        .collect()
}

/// A routing context in the shape jco's bindings take.
fn js_route_context(c: &RouteContext) -> Value {
    json!({
        "requestId": c.request_id,
        "workload": kebab(c.workload),
        "reservation": c.reservation.to_string(),
        "expectedSettled": c.expected_settled.to_string(),
        "attemptsTotal": c.attempts_total,
        "current": c.current,
        "elapsedMs": c.elapsed_ms.to_string(),
        "remainingMs": c.remaining_ms.to_string(),
        "health": js_health(&c.health),
        "capacity": c.capacity.iter().map(|m| json!({
            "requestsPerMinute": m.requests_per_minute,
            "tokensPerMinute": m.tokens_per_minute,
            "headroomRequests": m.headroom_requests,
            "headroomTokens": m.headroom_tokens,
            "inFlight": m.in_flight,
        })).collect::<Vec<_>>(),
        "entropy": c.entropy.to_string(),
    })
}

/// A routing answer in the shape jco's bindings return (a send's hedge `null` when none).
fn js_route(route: &Route) -> Value {
    match *route {
        Route::Send {
            model,
            delay_ms,
            hedge,
        } => json!({
            "tag": "send",
            "val": {
                "model": model,
                "delayMs": delay_ms.to_string(),
                "hedge": hedge.map(|h| json!({"model": h.model, "afterMs": h.after_ms.to_string()})),
            }
        }),
        Route::Queue { not_before_ms } => json!({"tag": "queue", "val": not_before_ms.to_string()}),
        Route::GiveUp { reason } => json!({"tag": "give-up", "val": kebab(reason)}),
    }
}

/// Routing questions across workloads, learned starts (none yet, or learned), breakers,
/// headroom (none, room, none left) and deadlines: sends at once, with and without a hedge,
/// waits for room, queues and give-ups.
fn route_table() -> Vec<RouteContext> {
    let mut contexts = Vec::new();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for workload in [Workload::Interactive, Workload::Batch] {
        for models in [1usize, 3] {
            for case in 0..12u64 {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let health = (0..models)
                    .map(|i| ModelHealth {
                        requests: 30,
                        breaker: if i > 0 && case % 5 == 4 {
                            BreakerState::Open
                        } else {
                            BreakerState::Closed
                        },
                        start_p95_ms: if case % 3 == 0 { 0 } else { 800 + seed % 2_000 },
                        ..ModelHealth::default()
                    })
                    .collect();
                let capacity = (0..models)
                    .map(|i| ModelCapacity {
                        tokens_per_minute: (case % 4 != 0).then_some(600_000.0),
                        // The primary full now and then; the others with room.
                        headroom_tokens: match case % 4 {
                            0 => None,
                            1 if i == 0 => Some(3_000.0),
                            _ => Some(50_000.0),
                        },
                        in_flight: (seed % 5) as u32,
                        ..ModelCapacity::default()
                    })
                    .collect();
                contexts.push(RouteContext {
                    request_id: format!("route-{}", contexts.len()),
                    workload,
                    reservation: 5_000,
                    expected_settled: 2_500,
                    attempts_total: (case % 3) as u32,
                    current: 0,
                    elapsed_ms: seed % 1_000,
                    remaining_ms: if case == 11 {
                        0
                    } else {
                        10_000 + seed % 50_000
                    },
                    health,
                    capacity,
                    entropy: seed,
                });
            }
        }
    }
    contexts
}

/// A decision in the shape jco's bindings return.
fn js_decision(d: &Decision) -> Value {
    match *d {
        Decision::Retry { delay_ms } => json!({"tag": "retry", "val": delay_ms.to_string()}),
        Decision::SwitchModel { model, delay_ms } => json!({
            "tag": "switch-model", "val": {"model": model, "delayMs": delay_ms.to_string()}
        }),
        Decision::BreakCircuit {
            model,
            open_ms,
            then,
        } => json!({
            "tag": "break-circuit",
            "val": {
                "model": model,
                "openMs": open_ms.to_string(),
                "then": match then {
                    AfterBreak::Fallback { model } => json!({"tag": "fallback", "val": model}),
                    AfterBreak::Queue => json!({"tag": "queue"}),
                    AfterBreak::GiveUp => json!({"tag": "give-up"}),
                },
            }
        }),
        Decision::Queue { not_before_ms } => {
            json!({"tag": "queue", "val": not_before_ms.to_string()})
        }
        Decision::GiveUp { reason } => json!({"tag": "give-up", "val": kebab(reason)}),
        Decision::ContinueAnswer { model, delay_ms } => json!({
            "tag": "continue-answer", "val": {"model": model, "delayMs": delay_ms.to_string()}
        }),
    }
}

/// Every error class across attempts, workloads, chains, breaker states and jitter draws.
fn table() -> Vec<AttemptContext> {
    let mut contexts = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for kind in ErrorKind::ALL {
        for attempt in [1u32, 2, 5, 9] {
            for (workload, chain) in [
                (Workload::Interactive, &["primary"][..]),
                (Workload::Batch, &["primary"][..]),
                (Workload::Batch, &["primary", "fallback"][..]),
                (Workload::Interactive, &["primary", "fallback", "last"][..]),
            ] {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let mut c = support::ctx(kind, chain);
                c.request_id = format!("conf-{}", contexts.len());
                c.attempts_on_model = attempt;
                c.attempts_total = attempt + 1;
                c.workload = workload;
                c.entropy = seed;
                c.remaining_ms = 5_000 + seed % 60_000;
                c.error.retry_after_ms = seed.is_multiple_of(3).then_some(seed % 4_000);
                c.health[0].consecutive_failures = attempt;
                c.health[0].consecutive_errors = if kind.is_throttle() { 0 } else { attempt };
                c.health[0].requests = 20;
                c.health[0].throttles = (seed % 21) as u32;
                c.health[0].errors = (seed % 17) as u32;
                if chain.len() > 1 && seed.is_multiple_of(4) {
                    c.health[1].breaker = BreakerState::Open;
                }
                c.output_delivered = seed.is_multiple_of(11) || seed % 7 == 1;
                c.continuations = (seed % 4) as u32;
                c.reservation = 1_000 + seed % 9_000;
                c.expected_settled = c.reservation / 2;
                c.health[0].first_event_limit_ms = 2_000 + seed % 18_000;
                c.health[0].idle_limit_ms = 5_000 + seed % 25_000;
                contexts.push(c);
            }
        }
    }
    contexts
}

/// The table's input for the runtime scripts: the configuration and the contexts.
const CONFIG: &str = r#"{"base_delay_ms": 250, "max_attempts_per_model": 3}"#;

/// The chain's facts the policy is configured with: a model that refuses a prefilled turn,
/// then one that takes it through two pools — so `continue-answer` moves on, pools first.
fn chain_facts() -> Vec<backstop_core::contract::ModelFacts> {
    [
        "anthropic.claude-sonnet-4-6",
        "amazon.nova-pro-v1:0",
        "us.amazon.nova-pro-v1:0",
    ]
    .into_iter()
    .map(|id| backstop_core::contract::ModelFacts {
        id: id.into(),
        ..backstop_core::contract::ModelFacts::default()
    })
    .collect()
}

/// The facts as the host hands them to `configure` (completed from the catalogue, with each
/// id's first same-model index), in the shape jco's bindings take.
fn js_facts(facts: &[backstop_core::contract::ModelFacts]) -> Value {
    let same = backstop_core::contract::ModelFacts::same_model(facts);
    facts
        .iter()
        .zip(same)
        .map(|(f, same_model)| {
            let known = backstop_core::catalogue::facts(&f.id, facts);
            json!({
                "id": f.id,
                "contextWindow": known.context_window,
                "relativeCost": null,
                "region": null,
                "maxOutputTokens": known.max_output_tokens,
                "burndown": known.burndown,
                "tokensPerMinute": null,
                "sameModel": same_model,
                "continues": known.continues,
            })
        })
        .collect()
}

/// A component asked the tables: its bytes and the configuration it is asked under.
struct Subject {
    name: &'static str,
    wasm: Vec<u8>,
    /// The component as the host loaded it (once: a Python policy takes seconds to compile).
    module: backstop::PolicyModule,
    config: &'static str,
}

impl Subject {
    fn default_policy() -> Subject {
        Subject {
            name: "backstop-default",
            wasm: backstop_runtime::module::DEFAULT_POLICY_WASM.to_vec(),
            module: support::default_module().clone(),
            config: CONFIG,
        }
    }

    /// An example of `examples/policies/`, built from source; `None` without its tool.
    fn example(name: &'static str) -> Option<Subject> {
        let wasm = std::fs::read(support::example_policy(name)?).unwrap();
        let module = support::engine().load_bytes(&wasm, name).expect("loads");
        Some(Subject {
            name,
            wasm,
            module,
            config: "{}",
        })
    }

    fn is_default(&self) -> bool {
        self.name == "backstop-default"
    }
}

/// Feeds the tables to a runtime script and checks its answers against the host's.
fn agrees_with_wasmtime(mut runtime: Command, subject: &Subject) {
    let config = subject.config;
    let contexts = table();
    let routes = route_table();
    let facts = chain_facts();
    let input = json!({
        "export": backstop_core::contract::DECIDER_EXPORT,
        "config": config,
        "models": js_facts(&facts),
        "contexts": contexts.iter().map(js_context).collect::<Vec<_>>(),
        "routes": routes.iter().map(js_route_context).collect::<Vec<_>>(),
    });
    let mut child = runtime
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the runtime starts");
    // A runtime that fails early closes its stdin: its own error, below, says why.
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes());
    let answered = child.wait_with_output().unwrap();
    assert!(
        answered.status.success(),
        "{}: {}",
        subject.name,
        String::from_utf8_lossy(&answered.stderr)
    );
    let answered: Value = serde_json::from_slice(&answered.stdout).unwrap();
    let answers = answered["decisions"].as_array().unwrap();

    let policy = subject
        .module
        .configure_with(config, &facts)
        .expect("configures");
    assert_eq!(answers.len(), contexts.len());
    let mut kinds = std::collections::BTreeSet::new();
    for (c, theirs) in contexts.iter().zip(answers) {
        let verdict = policy.decide(c);
        assert_eq!(verdict.fault, None);
        let expected = js_decision(&verdict.decision);
        assert_eq!(
            theirs, &expected,
            "{}: context {}",
            subject.name, c.request_id
        );
        kinds.insert(expected["tag"].as_str().unwrap().to_string());
    }
    // The table reaches every kind of the default's decisions, so the comparison covers every
    // shape; an example answers in the shapes its strategy uses.
    if subject.is_default() {
        assert_eq!(kinds.len(), 6, "decisions seen: {kinds:?}");
    }

    let routed = answered["routes"].as_array().unwrap();
    assert_eq!(routed.len(), routes.len());
    let models: Vec<String> = facts.iter().map(|f| f.id.clone()).collect();
    let mut shapes = std::collections::BTreeSet::new();
    for (c, theirs) in routes.iter().zip(routed) {
        let query = RouteQuery::of(c, &models[..c.health.len()]);
        let (route, fault) = policy.route(&query).expect("the policy routes");
        assert_eq!(fault, None);
        let expected = js_route(&route);
        assert_eq!(
            theirs, &expected,
            "{}: route context {}",
            subject.name, c.request_id
        );
        shapes.insert(match route {
            Route::Send { hedge: Some(_), .. } => "send with a hedge",
            Route::Send { delay_ms: 0, .. } => "send now",
            Route::Send { .. } => "send after a wait",
            Route::Queue { .. } => "queue",
            Route::GiveUp { .. } => "give up",
        });
    }
    // Every shape of answer, the hedge among them, crossed the runtimes' boundary.
    if subject.is_default() {
        assert_eq!(shapes.len(), 5, "routes seen: {shapes:?}");
    }
}

fn script(name: &str) -> String {
    format!(
        "{}/../tests/backstop/conformance/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Node running `subject` transpiled by jco, in `dir`; `None` (skipped) without jco.
fn in_node(subject: &Subject, dir: &std::path::Path) -> Option<Command> {
    let Some(jco) = jco() else {
        support::skip_missing(
            "jco",
            "npm install --prefix target/jco @bytecodealliance/jco",
        );
    };
    let wasm = dir.join("policy_guest.wasm");
    std::fs::write(&wasm, &subject.wasm).unwrap();
    let out = dir.join("out");
    let transpiled = Command::new(&jco)
        .arg("transpile")
        .arg(&wasm)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("jco runs");
    assert!(
        transpiled.status.success(),
        "{}",
        String::from_utf8_lossy(&transpiled.stderr)
    );
    std::fs::write(out.join("package.json"), r#"{"type": "module"}"#).unwrap();
    // A component that imports WASI (Python's does) is given jco's shims, installed with jco.
    let shims = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/jco/node_modules");
    std::os::unix::fs::symlink(shims, out.join("node_modules")).unwrap();
    let mut node = Command::new("node");
    // CPython's core modules use extended constant expressions, which Node 20's V8 keeps
    // behind a flag (on by default from Node 22).
    node.arg("--experimental-wasm-extended-const")
        .arg(script("jco_decide.mjs"))
        .arg(&out);
    Some(node)
}

/// wasmtime-py running `subject` from `dir`; `None` (skipped) without wasmtime-py.
fn in_wasmtime_py(subject: &Subject, dir: &std::path::Path) -> Option<Command> {
    let has_wasmtime_py = Command::new("python3")
        .args(["-c", "import wasmtime.component"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_wasmtime_py {
        support::skip_missing("wasmtime-py", "pip install wasmtime");
    }
    let wasm = dir.join("policy_guest.wasm");
    std::fs::write(&wasm, &subject.wasm).unwrap();
    let mut python = Command::new("python3");
    python.arg(script("wasmtime_py_decide.py")).arg(&wasm);
    Some(python)
}

#[test]
#[ignore = "needs jco (npm install --prefix target/jco @bytecodealliance/jco@1.35.0)"]
fn node_via_jco_decides_as_wasmtime_does() {
    let dir = support::scratch_dir("jco");
    let subject = Subject::default_policy();
    if let Some(node) = in_node(&subject, &dir) {
        agrees_with_wasmtime(node, &subject);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[ignore = "needs wasmtime-py (pip install wasmtime==50.0.1)"]
fn wasmtime_py_decides_as_wasmtime_does() {
    let dir = support::scratch_dir("wasmtime-py");
    let subject = Subject::default_policy();
    if let Some(python) = in_wasmtime_py(&subject, &dir) {
        agrees_with_wasmtime(python, &subject);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[ignore = "needs jco, wasmtime-py, componentize-py and componentize-js (see .ci/run)"]
fn the_python_and_javascript_examples_decide_alike_in_wasmtime_jco_and_wasmtime_py() {
    for name in ["cost-aware-py", "latency-first-js"] {
        let Some(subject) = Subject::example(name) else {
            continue;
        };
        for (runtime, run) in [
            (
                "jco",
                in_node as fn(&Subject, &std::path::Path) -> Option<Command>,
            ),
            ("wasmtime-py", in_wasmtime_py),
        ] {
            let dir = support::scratch_dir(&format!("conformance-{name}-{runtime}"));
            if let Some(command) = run(&subject, &dir) {
                agrees_with_wasmtime(command, &subject);
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
