//! Hot swap: what goes live, what never does, rollback, the `.cwasm` cache, the file watcher,
//! and 64 concurrent requests through the real SDK while the module changes 1,000 times.

use backstop_test_support as support;

use backstop::ChatRequest;
use backstop::ClientOptions;
use backstop::Decider;
use backstop::Decision;
use backstop::ErrorKind;
use backstop::LoadError;
use backstop::PolicyHandle;
use backstop::ResilientClient;
use backstop::SwapError;
use backstop::SwapOptions;
use backstop_core::decision::OutcomeRule;
use backstop_lab::scenario::ModelFaults;
use backstop_lab::{FaultServer, Scenario};
use backstop_runtime::cache::CacheUse;
use backstop_runtime::cache::ModuleCache;
#[cfg(feature = "watch")]
use backstop_runtime::cache::write_atomically;
use backstop_runtime::engine::sha256_hex;
use backstop_runtime::handle::SwapEventKind;
use backstop_runtime::handle::Swapped;
use backstop_runtime::vetting::RollbackRule;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

fn default_handle(options: SwapOptions) -> PolicyHandle {
    PolicyHandle::new(support::default_module().clone(), options).expect("default goes live")
}

fn throttle(handle: &PolicyHandle) -> Decision {
    handle
        .ask(&support::ctx(ErrorKind::Throttling, &["a", "b"]))
        .decision
}

/// A module built against another contract version.
fn other_version() -> Vec<u8> {
    let wit = support::WIT.replace(
        &format!("backstop:policy@{}", support::WIT_VERSION),
        "backstop:policy@9.0.0",
    );
    support::component(
        &support::core_wat(&support::CoreParts::default(), "9.0.0"),
        &wit,
        "policy",
    )
}

/// Retries everything, including what cannot heal: loads fine, fails the smoke table.
fn always_retry() -> Vec<u8> {
    support::policy_component(&support::CoreParts::default())
}

#[test]
fn a_vetted_module_goes_live_and_every_bad_one_leaves_the_live_one_in_place() {
    let handle = default_handle(SwapOptions::default());
    let default_digest = handle.status().digest;
    assert!(matches!(throttle(&handle), Decision::Retry { delay_ms } if delay_ms <= 1_000));

    let sane = support::sane_component("2.0.0");
    let swapped = handle.swap_bytes(&sane, "sane.wasm").expect("goes live");
    assert_eq!(
        swapped,
        Swapped::Live {
            digest: sha256_hex(&sane),
            version: "2.0.0".into(),
            cache: None
        }
    );
    // The new module decides now (it answers retry(1) where the default backs off).
    assert_eq!(throttle(&handle), Decision::Retry { delay_ms: 1 });
    assert_eq!(
        handle.swap_bytes(&sane, "again").unwrap(),
        Swapped::Unchanged {
            digest: sha256_hex(&sane)
        }
    );

    type Expected = fn(&SwapError) -> bool;
    let refusals: [(Vec<u8>, &str, Expected); 4] = [
        (b"garbage".to_vec(), "load-failed", |e| {
            matches!(e, SwapError::Load(LoadError::NotWasm { .. }))
        }),
        (sane[..sane.len() / 2].to_vec(), "load-failed", |e| {
            matches!(e, SwapError::Load(LoadError::Invalid { .. }))
        }),
        (other_version(), "load-failed", |e| {
            matches!(e, SwapError::Load(LoadError::WrongVersion { .. }))
        }),
        (
            always_retry(),
            "smoke-failed",
            |e| matches!(e, SwapError::Smoke { failure, .. } if failure.problem.contains("resends")),
        ),
    ];
    for (bytes, kind, expected) in &refusals {
        let error = handle.swap_bytes(bytes, "bad.wasm").unwrap_err();
        assert!(expected(&error), "{error}");
        assert_eq!(error.kind().as_str(), *kind);
        assert_eq!(handle.status().digest, sha256_hex(&sane), "after {error}");
        assert_eq!(throttle(&handle), Decision::Retry { delay_ms: 1 });
    }

    let status = handle.status();
    assert_eq!((status.swaps, status.rejections), (1, 4));
    let events: Vec<SwapEventKind> = status.recent.iter().map(|e| e.event).collect();
    use SwapEventKind::{Rejected, Swapped as Live};
    assert_eq!(events, [Live, Live, Rejected, Rejected, Rejected, Rejected]);
    assert_eq!(status.recent[0].digest, default_digest);
    assert!(
        status.recent[5]
            .reason
            .as_deref()
            .unwrap()
            .contains("smoke table"),
        "{:?}",
        status.recent[5]
    );
}

#[test]
fn the_operators_config_goes_to_every_new_module() {
    // The sane module accepts any config; the default refuses an unknown key.
    let sane = support::engine()
        .load_bytes(&support::sane_component("2.0.0"), "sane.wasm")
        .unwrap();
    let mut options = SwapOptions::default();
    options.config = r#"{"no_such_knob": 1}"#.into();
    let handle = PolicyHandle::new(sane, options).unwrap();
    let error = handle
        .swap_bytes(backstop_runtime::module::DEFAULT_POLICY_WASM, "default")
        .unwrap_err();
    assert_eq!(error.kind().as_str(), "config-rejected");
    assert!(error.to_string().contains("no_such_knob"), "{error}");
}

#[test]
fn only_allow_listed_digests_go_live() {
    let default_digest = sha256_hex(backstop_runtime::module::DEFAULT_POLICY_WASM);
    let mut options = SwapOptions::default();
    options.allowed_digests = Some([default_digest.clone()].into());
    let handle = default_handle(options.clone());
    let sane = support::sane_component("2.0.0");
    let error = handle.swap_bytes(&sane, "sane.wasm").unwrap_err();
    assert!(
        matches!(&error, SwapError::NotAllowed { digest } if *digest == sha256_hex(&sane)),
        "{error}"
    );
    assert_eq!(handle.status().digest, default_digest);

    let module = support::engine().load_bytes(&sane, "sane.wasm").unwrap();
    assert!(matches!(
        PolicyHandle::new(module, options),
        Err(SwapError::NotAllowed { .. })
    ));
}

#[test]
fn a_module_that_starts_trapping_is_rolled_back_to_the_last_good_one() {
    let mut rule = RollbackRule::default();
    rule.faults = 3;
    rule.window = Duration::from_secs(60);
    let handle = default_handle(SwapOptions::default().with_rollback(rule));
    let good = handle.status().digest;
    // Each instance of this module answers 400 calls, then traps; the smoke table asks the live
    // instance 135 times (and a fresh one 135 more).
    let flaky = support::trap_after_component(400);
    handle
        .swap_bytes(&flaky, "flaky.wasm")
        .expect("passes the smoke table");
    assert_eq!(handle.status().digest, sha256_hex(&flaky));

    let ctx = support::ctx(ErrorKind::Throttling, &["a", "b"]);
    let mut faults = 0;
    let mut calls = 0;
    while handle.status().rollbacks == 0 && calls < 2_000 {
        let verdict = handle.ask(&ctx);
        calls += 1;
        if verdict.fault.is_some() {
            faults += 1;
            // Every faulted call still got a usable (safe) decision.
            assert!(matches!(verdict.decision, Decision::Retry { .. }));
        }
    }
    let status = handle.status();
    assert_eq!(
        status.rollbacks, 1,
        "after {calls} calls and {faults} faults"
    );
    assert_eq!(faults, 3, "rolled back at the rule's threshold");
    assert_eq!(status.digest, good);
    let last = status.recent.last().unwrap();
    assert_eq!(last.event, SwapEventKind::RolledBack);
    assert!(
        last.reason
            .as_deref()
            .unwrap()
            .contains(&sha256_hex(&flaky))
    );
    // The good module decides again, without faults.
    for _ in 0..300 {
        assert_eq!(handle.ask(&ctx).fault, None);
    }
}

/// A route's fault is reported beside the question, as a decision's is: the loop that asked
/// counts it towards the rollback rule, and requests are served by the host's own choice
/// meanwhile.
#[tokio::test(start_paused = true)]
async fn a_module_whose_routes_start_trapping_in_the_loop_is_rolled_back() {
    let mut rule = RollbackRule::default();
    rule.faults = 3;
    rule.window = Duration::from_secs(600);
    let handle = default_handle(SwapOptions::default().with_rollback(rule));
    let good = handle.status().digest;
    let flaky = support::route_trap_after_component(400);
    handle
        .swap_bytes(&flaky, "route-trap.wasm")
        .expect("passes vetting: its routes trap only later");
    let core = backstop_resilience::Resilience::new(
        Arc::new(handle.clone()),
        ClientOptions::new(["a", "b"]),
    )
    .unwrap();
    let mut served = 0;
    while handle.status().rollbacks == 0 && served < 3_000 {
        core.call(
            backstop::RequestOptions::default(),
            backstop::Cost::flat(10),
            |_| async { Ok::<(), (backstop::ErrorInfo, backstop_resilience::error::BoxError)>(()) },
        )
        .await
        .expect("served by the host's own route while the module faults");
        served += 1;
    }
    let status = handle.status();
    assert_eq!(status.rollbacks, 1, "after {served} requests");
    assert_eq!(status.digest, good);
    let reason = status.recent.last().unwrap().reason.clone().unwrap();
    assert!(reason.contains(&sha256_hex(&flaky)), "{reason}");
}

#[test]
fn swaps_load_compiled_modules_from_the_cache() {
    let engine = support::engine();
    let dir = support::scratch_dir("cache");
    let cache = ModuleCache::new(engine, &dir).unwrap();
    let sane = support::sane_component("2.0.0");

    let backstop_runtime::cache::Cached {
        module: first,
        used,
    } = cache.load(engine, &sane, "sane.wasm").unwrap();
    assert_eq!(used, CacheUse::Miss);
    let entry = cache.entry(&sha256_hex(&sane));
    assert!(entry.is_file(), "{} written", entry.display());
    let backstop_runtime::cache::Cached {
        module: second,
        used,
    } = cache.load(engine, &sane, "sane.wasm").unwrap();
    assert_eq!(used, CacheUse::Hit);
    assert_eq!(
        first.digest(),
        second.digest(),
        "named by the .wasm either way"
    );

    // A damaged entry costs a compile, never a failed load.
    std::fs::write(&entry, b"\0asm but not really").unwrap();
    let used = cache.load(engine, &sane, "sane.wasm").unwrap().used;
    assert_eq!(used, CacheUse::Miss);
    let used = cache.load(engine, &sane, "sane.wasm").unwrap().used;
    assert_eq!(used, CacheUse::Hit);

    // Through a handle: the first swap to a module compiles it, later swaps hit.
    let handle = default_handle(SwapOptions::default().with_cache(cache));
    let cached = |swapped: Swapped| match swapped {
        Swapped::Live { cache, .. } => cache,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        cached(handle.swap_bytes(&sane, "sane").unwrap()),
        Some(CacheUse::Hit)
    );
    let default = backstop_runtime::module::DEFAULT_POLICY_WASM;
    assert_eq!(
        cached(handle.swap_bytes(default, "default").unwrap()),
        Some(CacheUse::Miss)
    );
    assert_eq!(
        cached(handle.swap_bytes(&sane, "sane").unwrap()),
        Some(CacheUse::Hit)
    );
    assert_eq!(
        cached(handle.swap_bytes(default, "default").unwrap()),
        Some(CacheUse::Hit)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(feature = "watch")]
#[test]
fn a_watched_file_swaps_on_change_and_ignores_garbage() {
    let dir = support::scratch_dir("watch-file");
    let path = dir.join("policy.wasm");
    std::fs::write(&path, backstop_runtime::module::DEFAULT_POLICY_WASM).unwrap();
    let handle = default_handle(SwapOptions::default());
    let _watcher = backstop::PolicyWatcher::start(handle.clone(), &path).unwrap();
    let live = || handle.status().digest;
    let wait = Duration::from_secs(10);

    // Written the way deploy tools do it: a temporary file renamed over the old one.
    let sane = support::sane_component("2.0.0");
    write_atomically(&path, &sane).unwrap();
    assert!(support::eventually(wait, || live() == sha256_hex(&sane)));

    // Garbage written in place is refused; the live module stays.
    std::fs::write(&path, b"this is not a policy").unwrap();
    assert!(support::eventually(wait, || handle.status().rejections >= 1));
    assert_eq!(live(), sha256_hex(&sane));
    assert_eq!(throttle(&handle), Decision::Retry { delay_ms: 1 });

    // A good module written in place goes live.
    std::fs::write(&path, backstop_runtime::module::DEFAULT_POLICY_WASM).unwrap();
    assert!(support::eventually(wait, || live()
        == sha256_hex(backstop_runtime::module::DEFAULT_POLICY_WASM)));
    assert_eq!(handle.status().swaps, 2);
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(feature = "watch")]
#[test]
fn a_watched_directory_runs_its_newest_module() {
    let dir = support::scratch_dir("watch-dir");
    let handle = default_handle(SwapOptions::default());
    let _watcher = backstop::PolicyWatcher::start(handle.clone(), &dir).unwrap();
    let sane = support::sane_component("3.1.0");
    write_atomically(&dir.join("policy-v3.1.0.wasm"), &sane).unwrap();
    assert!(support::eventually(Duration::from_secs(10), || handle
        .status()
        .version
        == "3.1.0"));
    // Files that are not modules are not looked at.
    std::fs::write(dir.join("NOTES.txt"), "v3.1.0 rolled out").unwrap();
    std::thread::sleep(backstop_runtime::watch::SETTLE * 3);
    assert_eq!(handle.status().rejections, 0);
    let _ = std::fs::remove_dir_all(dir);
}

/// Pulls `backstop_policy_decisions_total{digest="…",…} N` lines out of the Prometheus text.
fn decisions_by_digest(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter(|line| line.starts_with("backstop_policy_decisions_total{"))
        .map(|line| {
            let digest = line.split("digest=\"").nth(1).unwrap();
            let digest = digest[..digest.find('"').unwrap()].to_string();
            let count = line.rsplit(' ').next().unwrap().parse().unwrap();
            (digest, count)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_requests_in_flight_lose_nothing_across_a_thousand_swaps() {
    // Every fifth request is throttled; both modules retry throttles, so every request can be
    // served and any failure would be the swap's fault.
    let dir = support::scratch_dir("load");
    let engine = support::engine();
    let handle =
        default_handle(SwapOptions::default().with_cache(ModuleCache::new(engine, &dir).unwrap()));
    let (_server, client) = throttled_client(&handle, 0.2, 4).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..64)
        .map(|worker| {
            let (client, stop) = (client.clone(), stop.clone());
            let (served, failed) = (served.clone(), failed.clone());
            tokio::spawn(async move {
                let mut sent = 0;
                while sent == 0 || !stop.load(Ordering::Relaxed) {
                    sent += 1;
                    let request = ChatRequest::user(format!("worker {worker} request {sent}"));
                    match client.converse(&request).await {
                        Ok(_) => served.fetch_add(1, Ordering::Relaxed),
                        Err(error) => {
                            eprintln!("worker {worker}: {error}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    let default = backstop_runtime::module::DEFAULT_POLICY_WASM.to_vec();
    let sane = support::sane_component("2.0.0");
    let valid = [sha256_hex(&default), sha256_hex(&sane)];
    let invalid = [
        b"not wasm".to_vec(),
        sane[..sane.len() - 9].to_vec(),
        other_version(),
        always_retry(),
    ];
    let swapper = {
        let handle = handle.clone();
        tokio::task::spawn_blocking(move || {
            let (mut went_live, mut refused) = (0u64, 0u64);
            for i in 0..1_000usize {
                if i % 5 == 4 {
                    let bad = &invalid[(i / 5) % invalid.len()];
                    assert!(handle.swap_bytes(bad, "bad").is_err(), "swap {i} refused");
                    refused += 1;
                } else {
                    let next = if went_live % 2 == 0 { &sane } else { &default };
                    assert!(matches!(
                        handle.swap_bytes(next, "good"),
                        Ok(Swapped::Live { .. })
                    ));
                    went_live += 1;
                }
                if i % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            (went_live, refused)
        })
    };
    let (went_live, refused) = swapper.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let (served, failed) = (
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    eprintln!("{served} requests served across the swaps");
    assert_eq!(failed, 0, "{served} served");
    assert!(served >= 64, "{served} served");
    let status = handle.status();
    assert_eq!((status.swaps, status.rejections), (went_live, refused));
    assert_eq!((went_live, refused), (800, 200));

    // Every decision was made by one of the two valid modules, and both made some.
    let metrics = client.metrics().snapshot();
    let by_digest = decisions_by_digest(&client.metrics().prometheus_text());
    assert!(
        by_digest.iter().all(|(digest, _)| valid.contains(digest)),
        "{by_digest:?}"
    );
    let decided: u64 = by_digest.iter().map(|(_, n)| n).sum();
    // A hedge's race leaves one of its two attempts undecided: cancelled, or failed while the
    // other still ran.
    assert_eq!(
        decided,
        metrics.attempts - metrics.succeeded - metrics.hedges,
        "one decision per failed attempt"
    );
    assert!(
        by_digest.iter().filter(|(_, n)| *n > 0).count() == 2,
        "both modules decided: {by_digest:?}"
    );
    assert_eq!(metrics.policy_faults, 0);
    let _ = std::fs::remove_dir_all(dir);
}

/// `primary` and `fallback`, each throttling `rate` of its calls.
fn two_throttled_models(rate: f64, seed: u64) -> Scenario {
    let flaky = ModelFaults {
        error_rates: [(ErrorKind::Throttling, rate)].into(),
        ..ModelFaults::default()
    };
    Scenario {
        seed,
        models: [
            ("primary".to_string(), flaky.clone()),
            ("fallback".to_string(), flaky),
        ]
        .into(),
        ..Scenario::default()
    }
}

/// A client of `handle` against a fault server whose two models throttle `rate` of calls.
/// Backoffs of policy seconds take real milliseconds; the deadline and the attempt timeout stay
/// generous in real time (10 s, 5 s), so only the policy could make a request fail.
async fn throttled_client(
    handle: &PolicyHandle,
    rate: f64,
    seed: u64,
) -> (FaultServer, ResilientClient) {
    let server = FaultServer::start(two_throttled_models(rate, seed), 0)
        .await
        .unwrap();
    let mut options = ClientOptions::new(["primary", "fallback"]);
    options.time_scale = 0.001;
    options.deadline = Duration::from_secs(10_000);
    options.attempt_timeout = Duration::from_secs(5_000);
    let sdk = backstop::sdk_client(backstop::SdkOptions::local(
        &server.endpoint_url(),
        Duration::from_secs(5),
    ))
    .await;
    let client = ResilientClient::new(sdk, handle.clone(), options).unwrap();
    (server, client)
}

/// Sends `n` requests, eight at a time; how many failed.
async fn send(client: &ResilientClient, n: usize) -> usize {
    let mut failed = 0;
    for wave in 0..n.div_ceil(8) {
        let calls: Vec<_> = (0..8.min(n - wave * 8))
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move {
                    client
                        .converse(&ChatRequest::user(format!("wave {wave} request {i}")))
                        .await
                        .is_err()
                })
            })
            .collect();
        for call in calls {
            failed += usize::from(call.await.unwrap());
        }
    }
    failed
}

fn judged_after(requests: u32) -> SwapOptions {
    SwapOptions::default().with_rollback(
        RollbackRule::default().with_outcomes(OutcomeRule::default().with_min_requests(requests)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_never_faults_but_fails_requests_is_rolled_back_by_its_outcomes() {
    let handle = default_handle(judged_after(40));
    let default = handle.status().digest;
    let (_server, client) = throttled_client(&handle, 0.3, 11).await;
    assert_eq!(
        send(&client, 48).await,
        0,
        "the default serves every request"
    );

    let give_up = support::give_up_component();
    handle
        .swap_bytes(&give_up, "give-up.wasm")
        .expect("passes the smoke table");
    assert!(handle.status().on_probation);
    let failed = send(&client, 96).await;

    let status = handle.status();
    assert_eq!(
        status.rollbacks,
        1,
        "{failed} of 96 failed; {:?}",
        status.recent.last()
    );
    assert_eq!(status.digest, default, "the predecessor is live again");
    assert_eq!(status.faults, 0);
    let reason = status.recent.last().unwrap().reason.clone().unwrap();
    assert!(reason.contains("failure rate"), "{reason}");
    assert!(reason.contains(&sha256_hex(&give_up)), "{reason}");
    // Judged on its first batch of 40, then the default served the rest.
    assert!((10..=40).contains(&failed), "{failed} failed");
    // Rolled back means quarantined: the same bytes do not come back.
    assert!(matches!(
        handle.swap_bytes(&give_up, "give-up.wasm"),
        Err(SwapError::Quarantined { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_serves_as_well_as_its_predecessor_stays_live() {
    let handle = default_handle(judged_after(40));
    let (_server, client) = throttled_client(&handle, 0.3, 12).await;
    assert_eq!(send(&client, 48).await, 0);
    let sane = support::sane_component("2.0.0");
    handle.swap_bytes(&sane, "sane.wasm").unwrap();
    assert_eq!(send(&client, 96).await, 0);
    let status = handle.status();
    assert_eq!(status.rollbacks, 0, "{:?}", status.recent.last());
    assert_eq!(status.digest, sha256_hex(&sane));
}

#[test]
fn a_shadow_candidate_is_asked_every_context_and_changes_nothing_until_promoted() {
    let handle = default_handle(SwapOptions::default());
    let without_shadow: Vec<Decision> = [ErrorKind::Throttling, ErrorKind::Validation]
        .map(|kind| {
            Decider::decide(&handle, &support::ctx(kind, &["a", "b"]))
                .verdict
                .decision
        })
        .to_vec();
    let give_up = support::give_up_component();
    let started = handle.shadow_bytes(&give_up, "candidate.wasm").unwrap();
    assert_eq!(started.digest, sha256_hex(&give_up));

    let mut registry = prometheus_client::registry::Registry::default();
    handle.register_metrics(&mut registry);
    for _ in 0..10 {
        for (kind, live) in [ErrorKind::Throttling, ErrorKind::Validation]
            .into_iter()
            .zip(&without_shadow)
        {
            let verdict = handle.ask(&support::ctx(kind, &["a", "b"]));
            assert_eq!(&verdict.decision, live, "the shadow changes no answer");
        }
    }
    let status = handle.status();
    let shadow = status.shadow.as_ref().expect("a shadow runs");
    assert_eq!(shadow.decisions, 20);
    // It would give up on the throttles the default retries, and agrees on what cannot heal.
    assert_eq!(shadow.disagreements["would-give-up"], 10);
    assert_eq!(shadow.agreed, 10);
    assert_eq!(shadow.recent.len(), 10);
    assert_eq!(shadow.recent[0].error, "throttling");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let series = format!(
        "policy_shadow_disagreements_total{{digest=\"{}\",kind=\"would-give-up\"}} 10",
        sha256_hex(&give_up)
    );
    assert!(text.contains(&series), "{text}");

    // Promotion is an explicit swap.
    assert_eq!(
        status.digest,
        sha256_hex(backstop_runtime::module::DEFAULT_POLICY_WASM)
    );
    assert!(matches!(
        handle.promote_shadow(),
        Ok(Some(Swapped::Live { .. }))
    ));
    let status = handle.status();
    assert_eq!(status.digest, sha256_hex(&give_up));
    assert!(status.shadow.is_none());
    assert!(matches!(handle.promote_shadow(), Ok(None)));
}

#[test]
fn a_shadow_candidate_is_also_asked_where_each_attempt_goes() {
    use backstop_core::contract::ModelCapacity;
    use backstop_core::contract::ModelHealth;
    use backstop_core::contract::Route;
    use backstop_core::contract::Workload;
    use backstop_core::decision::RouteQuery;
    let handle = default_handle(SwapOptions::default());
    // A 0.2.0 candidate that sends every attempt to the primary.
    handle
        .shadow_bytes(&support::sane_newest_component(), "candidate.wasm")
        .unwrap();
    let models = ["a".to_string(), "b".to_string()];
    let health = vec![ModelHealth::default(); 2];
    // The primary's room is promised ten requests deep; nothing was learned of the fallback.
    let full = ModelCapacity {
        requests_per_minute: Some(600.0),
        tokens_per_minute: Some(600_000.0),
        headroom_requests: Some(-10.0),
        headroom_tokens: Some(50_000.0),
        in_flight: 4,
    };
    let ask = |capacity: &[ModelCapacity]| {
        handle.ask_route(&RouteQuery {
            request_id: "r1",
            workload: Workload::Interactive,
            reservation: 1_000,
            expected_settled: 1_000,
            input_tokens: 1_000,
            attempts_total: 0,
            current: 0,
            elapsed_ms: 0,
            remaining_ms: 60_000,
            clock_ms: 0,
            models: &models,
            health: &health,
            capacity,
            entropy: 0,
        })
    };
    assert_eq!(
        ask(&[full, ModelCapacity::default()]),
        Route::send(1, 0),
        "the live default's answer stands"
    );
    assert_eq!(
        ask(&[ModelCapacity::default(), ModelCapacity::default()]),
        Route::send(0, 0)
    );
    let shadow = handle.status().shadow.expect("a shadow runs");
    assert_eq!((shadow.decisions, shadow.agreed), (2, 1));
    assert_eq!(shadow.disagreements["other-model"], 1);
    let sample = &shadow.recent[0];
    assert_eq!(sample.error, backstop_runtime::shadow::ROUTE);
    assert_eq!(
        (sample.live, sample.candidate),
        (
            Decision::SwitchModel {
                model: 1,
                delay_ms: 0
            },
            Decision::Retry { delay_ms: 0 }
        ),
        "the candidate would have sent it into the saturated primary"
    );
}

#[test]
fn a_candidate_that_fails_vetting_never_runs_in_shadow() {
    let handle = default_handle(SwapOptions::default());
    assert!(handle.shadow_bytes(&always_retry(), "bad.wasm").is_err());
    assert!(handle.status().shadow.is_none());
    assert_eq!(handle.status().rejections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_in_use_are_bounded_by_the_deciding_threads_not_by_requests_in_flight() {
    let handle = default_handle(SwapOptions::default());
    let (_server, client) = throttled_client(&handle, 0.3, 13).await;
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.converse(&ChatRequest::user(format!("r{i}"))).await })
        })
        .collect();
    for call in calls {
        assert!(call.await.unwrap().is_ok());
    }
    assert!(
        client.metrics().snapshot().attempts > 64,
        "some decisions were made"
    );
    // Every instance ever made is back in the idle pool: at most one per worker thread.
    let idle = handle.policy().idle();
    assert!(
        (1..=2).contains(&idle.instances),
        "{} instances for 64 requests in flight on 2 workers",
        idle.instances
    );
}
