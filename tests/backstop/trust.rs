//! Trust by effect and by origin: what an attacker or a careless author hands the host, and what
//! the host does with it. Each test is the attack.

use backstop_test_support as support;

use backstop::AttemptContext;
use backstop::ErrorInfo;
use backstop::ErrorKind;
use backstop::LoadError;
use backstop::PolicyHandle;
use backstop::SwapError;
use backstop::SwapOptions;
use backstop_runtime::cache::CacheUse;
use backstop_runtime::cache::Cached;
use backstop_runtime::cache::ModuleCache;
use backstop_runtime::engine::sha256_hex;
use backstop_runtime::handle::SwapEventKind;
use backstop_runtime::vetting::RollbackRule;
use std::time::Duration;

fn engine() -> &'static backstop::Engine {
    support::engine()
}

/// The default policy, precompiled, with one byte of its native code changed.
fn tampered_cwasm() -> Vec<u8> {
    let mut cwasm = engine()
        .precompile(backstop_runtime::module::DEFAULT_POLICY_WASM, "default")
        .unwrap();
    let middle = cwasm.len() / 2;
    cwasm[middle] ^= 0xff;
    cwasm
}

#[test]
fn a_cwasm_nobody_allow_listed_never_runs_by_any_path() {
    let tampered = tampered_cwasm();
    let err = engine().load_bytes(&tampered, "evil.cwasm").unwrap_err();
    assert!(
        matches!(&err, LoadError::UntrustedNative { digest, .. } if *digest == sha256_hex(&tampered)),
        "{err}"
    );
    assert!(err.to_string().contains("allowed_digests"), "{err}");

    let dir = support::scratch_dir("trust-file");
    let file = dir.join("evil.cwasm");
    std::fs::write(&file, &tampered).unwrap();
    assert!(matches!(
        engine().load_file(&file),
        Err(LoadError::UntrustedNative { .. })
    ));

    // Through a swap (the path of SIGHUP and the file watcher), with or without a cache.
    let cache = ModuleCache::new(engine(), dir.join("cache")).unwrap();
    for options in [
        SwapOptions::default(),
        SwapOptions::default().with_cache(cache),
    ] {
        let handle = PolicyHandle::new(engine().load_default().unwrap(), options).unwrap();
        let live = handle.status().digest;
        let err = handle.swap_file(&file).unwrap_err();
        assert!(
            matches!(err, SwapError::Load(LoadError::UntrustedNative { .. })),
            "{err}"
        );
        assert_eq!(handle.status().digest, live);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_allow_listed_cwasm_runs_and_a_tampered_one_is_not_on_the_list() {
    let cwasm = engine()
        .precompile(backstop_runtime::module::DEFAULT_POLICY_WASM, "default")
        .unwrap();
    let mut options = SwapOptions::default();
    options.allowed_digests = Some(
        [
            sha256_hex(&cwasm),
            sha256_hex(backstop_runtime::module::DEFAULT_POLICY_WASM),
        ]
        .into_iter()
        .collect(),
    );
    let admitted =
        backstop_runtime::vetting::load_allowed(engine(), &cwasm, "ok.cwasm", &options).unwrap();
    assert_eq!(admitted.module.info().name, "backstop-default");
    let err = backstop_runtime::vetting::load_allowed(
        engine(),
        &tampered_cwasm(),
        "evil.cwasm",
        &options,
    )
    .unwrap_err();
    assert!(matches!(err, SwapError::NotAllowed { .. }), "{err}");
}

#[test]
fn a_poisoned_cache_entry_is_recompiled_never_run() {
    let dir = support::scratch_dir("trust-cache");
    let cache = ModuleCache::new(engine(), &dir).unwrap();
    let sane = support::sane_component("1.0.0");
    let evil = support::policy_component(&support::CoreParts::default());
    assert_eq!(
        cache.load(engine(), &sane, "sane.wasm").unwrap().used,
        CacheUse::Miss
    );
    let entry = cache.entry(&sha256_hex(&sane));

    // 1. The entry replaced by another module's native code, compiled by this very engine
    //    (wasmtime would accept it): before, it ran under the allow-listed name.
    let foreign = engine().precompile(&evil, "evil").unwrap();
    // 2. The entry replaced by another module's signed entry (copied within the cache).
    cache.load(engine(), &evil, "evil.wasm").unwrap();
    let signed_evil = std::fs::read(cache.entry(&sha256_hex(&evil))).unwrap();
    // 3. The real entry with one byte of code changed.
    let mut edited = std::fs::read(&entry).unwrap();
    let last = edited.len() - 100;
    edited[last] ^= 0xff;

    for (attack, bytes) in [
        ("foreign code", foreign),
        ("another digest's entry", signed_evil),
        ("edited code", edited),
    ] {
        std::fs::write(&entry, &bytes).unwrap();
        let Cached { module, used } = cache.load(engine(), &sane, "sane.wasm").unwrap();
        assert_eq!(used, CacheUse::Miss, "{attack}: recompiled, not run");
        assert_eq!(module.info().name, "retry-1", "{attack}");
        assert_eq!(module.digest(), sha256_hex(&sane), "{attack}");
        assert_eq!(
            cache.load(engine(), &sane, "sane.wasm").unwrap().used,
            CacheUse::Hit,
            "{attack}: the rewritten entry verifies"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[test]
fn a_cache_others_may_write_to_is_refused_and_the_key_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = support::scratch_dir("trust-perms");
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = ModuleCache::new(engine(), &shared).unwrap_err();
    assert!(
        err.to_string().contains("writable by group or others"),
        "{err}"
    );

    let private = dir.join("private");
    ModuleCache::new(engine(), &private).unwrap();
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&private), 0o700);
    assert_eq!(
        mode(&private.join(backstop_runtime::cache::KEY_FILE)),
        0o600
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_allow_list_is_consulted_before_a_byte_is_parsed() {
    let mut options = SwapOptions::default();
    options.allowed_digests = Some([sha256_hex(b"something else")].into_iter().collect());
    // Garbage: refused as not allow-listed, not as "not WebAssembly" (nothing was parsed).
    let err =
        backstop_runtime::vetting::vet_bytes(engine(), b"garbage", "junk", &options).unwrap_err();
    assert!(matches!(err, SwapError::NotAllowed { .. }), "{err}");
}

#[cfg(unix)]
#[test]
fn device_files_and_oversized_files_are_refused_before_they_are_read() {
    let started = std::time::Instant::now();
    let err = engine().load_file("/dev/zero").unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");

    let dir = support::scratch_dir("trust-size");
    let huge = dir.join("huge.wasm");
    let file = std::fs::File::create(&huge).unwrap();
    file.set_len(backstop_runtime::module::MAX_MODULE_BYTES + 1)
        .unwrap(); // sparse: no disk used
    let err = engine().load_file(&huge).unwrap_err();
    assert!(err.to_string().contains("at most"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_module_that_names_itself_with_markup_is_refused() {
    for (name, version) in [
        ("forged\"} backstop_policy_info{digest=\"x", "1.0.0"),
        ("two\nlines", "1.0.0"),
        ("\u{1b}[2Jclear", "1.0.0"),
        ("fine", "not-a-version"),
    ] {
        let (info, data) = support::info_parts(name, version);
        let bytes = support::policy_component(&support::CoreParts {
            info: &info,
            extra: &data,
            ..Default::default()
        });
        let err = engine().load_bytes(&bytes, "forger.wasm").unwrap_err();
        assert!(
            matches!(err, LoadError::BadIdentity { .. }),
            "{name:?}: {err}"
        );
        assert!(
            !err.to_string().contains('\n') && !err.to_string().contains('\u{1b}'),
            "the error itself carries no raw control characters: {err:?}"
        );
    }
}

#[test]
fn an_error_message_of_many_megabytes_does_not_fault_a_good_module() {
    let policy = support::default_policy("{}");
    let mut ctx = AttemptContext::first_failure(ErrorInfo::of(ErrorKind::Throttling), ["a", "b"]);
    // More than the module's whole memory (16 MiB): lowered whole, it could only fault.
    ctx.error.message = "x".repeat(20 << 20);
    ctx.error.code = "y".repeat(1 << 20);
    let verdict = policy.decide(&ctx);
    assert_eq!(verdict.fault, None);
}

fn flaky_handle(first: Option<&[u8]>) -> (PolicyHandle, Vec<u8>) {
    let mut options = SwapOptions::default();
    options.rollback = RollbackRule::default().with_faults(3, Duration::from_secs(60));
    // Each instance answers 400 calls, then traps; the smoke table asks the live instance 135.
    let flaky = support::trap_after_component(400);
    let handle = match first {
        Some(bytes) => {
            let module = engine().load_bytes(bytes, "first.wasm").unwrap();
            PolicyHandle::new(module, options).unwrap()
        }
        None => {
            let handle = PolicyHandle::new(engine().load_default().unwrap(), options).unwrap();
            handle.swap_bytes(&flaky, "flaky.wasm").unwrap();
            handle
        }
    };
    (handle, flaky)
}

fn decide_until_rolled_back(handle: &PolicyHandle) {
    let ctx = support::ctx(ErrorKind::Throttling, &["a", "b"]);
    for _ in 0..2_000 {
        if handle.status().rollbacks > 0 {
            return;
        }
        handle.ask(&ctx);
    }
    panic!("never rolled back: {:?}", handle.status());
}

#[test]
fn a_rolled_back_module_stays_out_until_released() {
    let (handle, flaky) = flaky_handle(None);
    decide_until_rolled_back(&handle);
    let digest = sha256_hex(&flaky);
    assert_ne!(handle.status().digest, digest);

    // The next SIGHUP or watch event re-reads the same bytes: refused, the good module stays.
    let err = handle.swap_bytes(&flaky, "flaky.wasm").unwrap_err();
    assert!(matches!(err, SwapError::Quarantined { .. }), "{err}");
    let status = handle.status();
    assert_eq!(status.quarantined.len(), 1);
    assert_eq!(status.quarantined[0].digest, digest);
    assert_eq!(status.recent.last().unwrap().event, SwapEventKind::Rejected);

    // Other bytes are vetted as usual; the released digest is vetted again.
    handle
        .swap_bytes(&support::sane_component("2.0.0"), "sane.wasm")
        .expect("a different module goes live");
    assert!(handle.release(&digest));
    assert!(handle.status().quarantined.is_empty());
    handle
        .swap_bytes(&flaky, "flaky.wasm")
        .expect("released: vetted and live again");
}

#[test]
fn a_refused_module_is_quarantined_too() {
    let handle =
        PolicyHandle::new(engine().load_default().unwrap(), SwapOptions::default()).unwrap();
    let bad = support::policy_component(&support::CoreParts::default()); // retries everything
    let first = handle.swap_bytes(&bad, "bad.wasm").unwrap_err();
    assert!(matches!(first, SwapError::Smoke { .. }), "{first}");
    let again = handle.swap_bytes(&bad, "bad.wasm").unwrap_err();
    assert!(matches!(again, SwapError::Quarantined { .. }), "{again}");
}

#[test]
fn a_first_module_that_faults_is_rolled_back_to_the_built_in_default() {
    let flaky = support::trap_after_component(400);
    let (handle, _) = flaky_handle(Some(&flaky));
    assert_eq!(handle.status().name, "trap-later");
    decide_until_rolled_back(&handle);
    let status = handle.status();
    assert_eq!(status.name, "backstop-default");
    assert_eq!(status.rollbacks, 1);
    let last = status.recent.last().unwrap();
    assert_eq!(last.event, SwapEventKind::RolledBack);
    // The default decides from now on, without faults (it fails over, which the safe decision
    // never does).
    let ctx = support::ctx(ErrorKind::Throttling, &["a", "b"]);
    for _ in 0..300 {
        assert_eq!(handle.ask(&ctx).fault, None);
    }
}

/// A module vetted by `backstop check` and then swapped in, as an operator would.
fn vet(decide: &str, extra: &str) -> Result<(), SwapError> {
    let (info, data) = support::info_parts("cheat", "1.0.0");
    let extra = format!("{data} {extra}");
    let bytes = support::policy_component(&support::CoreParts {
        decide,
        info: &info,
        extra: &extra,
        ..Default::default()
    });
    backstop_runtime::vetting::vet_bytes(engine(), &bytes, "cheat.wasm", &SwapOptions::default())
        .map(|_| ())
}

/// Behaves only when the request id is five bytes long — as the old, fixed smoke id `smoke`
/// was — and otherwise retries everything, even what cannot heal.
#[test]
fn a_module_that_behaves_only_for_a_recognisable_table_is_refused() {
    let sane_function = format!(
        "(func $sane (param i32) (result i32) {})",
        support::SANE_DECIDE
    );
    let err = vet(
        "(if (i32.eq (i32.load offset=4 (local.get 0)) (i32.const 5))
           (then (return (call $sane (local.get 0)))))
         (i32.store8 (i32.const 2048) (i32.const 0))
         (i64.store (i32.const 2056) (i64.const 1))
         (i32.const 2048)",
        &sane_function,
    )
    .unwrap_err();
    assert!(
        matches!(&err, SwapError::Smoke { failure, .. } if failure.problem.contains("resends")),
        "{err}"
    );
}

#[test]
fn a_module_whose_answers_differ_for_the_same_context_is_refused() {
    // Sane, except that its retry waits 1 or 2 ms by the parity of a call counter.
    let decide = format!(
        "(global.set $calls (i32.add (global.get $calls) (i32.const 1))) {}",
        support::SANE_DECIDE.replace(
            "(i64.store (i32.const 2056) (i64.const 1))\n    (i32.const 2048)",
            "(i64.store (i32.const 2056) (i64.extend_i32_u (i32.add (i32.const 1) \
             (i32.and (global.get $calls) (i32.const 1)))))\n    (i32.const 2048)"
        )
    );
    let err = vet(&decide, "(global $calls (mut i32) (i32.const 0))").unwrap_err();
    assert!(
        matches!(&err, SwapError::Smoke { failure, .. } if failure.problem.contains("pure function")),
        "{err}"
    );
}

#[test]
fn a_module_that_burns_much_of_its_fuel_per_decision_is_refused() {
    // About 1.5 M instructions of busy work (15 % of the budget), then a sane answer.
    let decide = format!(
        "(local $i i32)
         (loop $spin
           (local.set $i (i32.add (local.get $i) (i32.const 1)))
           (br_if $spin (i32.lt_u (local.get $i) (i32.const 300000))))
         {}",
        support::SANE_DECIDE
    );
    let err = vet(&decide, "").unwrap_err();
    assert!(
        matches!(&err, SwapError::Smoke { failure, .. } if failure.problem.contains("fuel")),
        "{err}"
    );
    // The same module without the busy work passes.
    vet(support::SANE_DECIDE, "").expect("a sane module passes");
}

/// Misbehaves only when the primary's id is seven bytes long, like the client's real `primary`:
/// a module that behaves for any test but the traffic it will serve. The smoke table meets it
/// with the chain the handle's client serves.
#[test]
fn the_smoke_table_uses_the_chain_the_client_serves() {
    let sane_function = format!(
        "(func $sane (param i32) (result i32) {})",
        support::SANE_DECIDE
    );
    let (info, data) = support::info_parts("two-faced", "1.0.0");
    let extra = format!("{data} {sane_function}");
    let bytes = support::policy_component(&support::CoreParts {
        // models is the list at offset 48 of the context; its first string's length at +4.
        decide: "(if (i32.ne (i32.load offset=4 (i32.load offset=48 (local.get 0))) (i32.const 7))
                   (then (return (call $sane (local.get 0)))))
                 (i32.store8 (i32.const 2048) (i32.const 0))
                 (i64.store (i32.const 2056) (i64.const 1))
                 (i32.const 2048)",
        info: &info,
        extra: &extra,
        ..Default::default()
    });
    let unaware =
        PolicyHandle::new(engine().load_default().unwrap(), SwapOptions::default()).unwrap();
    unaware
        .swap_bytes(&bytes, "two-faced.wasm")
        .expect("made-up ids: the module behaves");
    let serving =
        PolicyHandle::new(engine().load_default().unwrap(), SwapOptions::default()).unwrap();
    serving.serve_chain(&["primary".to_string(), "fallback".to_string()]);
    let err = serving.swap_bytes(&bytes, "two-faced.wasm").unwrap_err();
    assert!(matches!(err, SwapError::Smoke { .. }), "{err}");
}

/// Each instance of this module keeps 8 MiB; many concurrent callers create many instances. The
/// idle pool keeps at most its memory budget of them, and shrinks back once they go unused.
#[test]
fn instances_that_keep_memory_are_not_all_kept_and_the_idle_pool_shrinks() {
    let mut limits = backstop::Limits::default();
    limits.idle_memory_bytes = 16 << 20;
    limits.idle_ttl = Duration::from_millis(200);
    let engine = backstop::Engine::new(limits).unwrap();
    let decide = format!(
        "(local $i i32)
         (if (i32.lt_u (memory.size) (i32.const 130)) (then (drop (memory.grow (i32.const 128)))))
         (loop $spin
           (local.set $i (i32.add (local.get $i) (i32.const 1)))
           (br_if $spin (i32.lt_u (local.get $i) (i32.const 50000))))
         {}",
        support::SANE_DECIDE
    );
    let bytes = support::policy_component(&support::CoreParts {
        decide: &decide,
        ..Default::default()
    });
    let policy = engine
        .load_bytes(&bytes, "hoarder.wasm")
        .unwrap()
        .configure("{}")
        .unwrap();
    let ctx = support::ctx(ErrorKind::Throttling, &["a", "b"]);
    let start = std::sync::Barrier::new(8);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                start.wait();
                for _ in 0..30 {
                    assert_eq!(policy.decide(&ctx).fault, None);
                }
            });
        }
    });
    let idle = policy.idle();
    assert!(idle.instances >= 1);
    assert!(
        idle.memory_bytes <= 16 << 20,
        "{} bytes kept idle in {} instances",
        idle.memory_bytes,
        idle.instances
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(policy.decide(&ctx).fault, None);
    assert_eq!(
        policy.idle().instances,
        1,
        "the pool shrank to the instance just used"
    );
}

#[test]
fn a_module_whose_route_faults_is_refused_before_it_goes_live() {
    let handle = PolicyHandle::new(support::default_module().clone(), SwapOptions::default())
        .expect("the default goes live");
    // Its decisions are sane; its routing traps.
    let error = handle
        .swap_bytes(&support::route_trap_component(), "route-trap.wasm")
        .unwrap_err();
    assert!(
        matches!(&error, SwapError::Smoke { failure, .. } if failure.case.starts_with("route")),
        "{error}"
    );
    assert!(error.to_string().contains("faulted"), "{error}");
    // The same component with a sane route passes.
    let sane = handle.swap_bytes(&support::sane_newest_component(), "sane.wasm");
    assert!(sane.is_ok(), "{sane:?}");
}

fn ended(handle: &backstop::PolicyHandle, served: bool, attempts: u32) {
    use backstop::Decider;
    let digest = handle.status().digest;
    handle.on_finished(&backstop_core::decision::Finished {
        request_id: "req-1",
        served,
        attempts,
        breaker_opens: 0,
        last_decided_by: Some(&digest),
    });
}

fn judged_after(requests: u32) -> backstop::SwapOptions {
    backstop::SwapOptions::default().with_rollback(
        backstop_runtime::vetting::RollbackRule::default().with_outcomes(
            backstop_core::decision::OutcomeRule::default().with_min_requests(requests),
        ),
    )
}

/// The attack: a retry storm is live (it serves everything, at many calls each); the operator
/// swaps the built-in default back in; the default meets a bad minute and fails a few requests.
/// Judged against the storm, it used to be rolled back *to* the storm and its digest
/// quarantined. The default is the yardstick, not on trial, and is never quarantined.
#[test]
fn a_retry_storm_cannot_become_the_yardstick_that_rolls_the_default_back() {
    let storm = engine()
        .load_bytes(&support::sane_component("6.6.6"), "storm.wasm")
        .unwrap()
        .configure("{}")
        .unwrap();
    let handle = backstop::PolicyHandle::unchecked(storm, judged_after(20));
    let storm_digest = handle.status().digest;
    for _ in 0..40 {
        ended(&handle, true, 8);
    }
    handle
        .swap_bytes(
            backstop_runtime::module::DEFAULT_POLICY_WASM,
            "the built-in default",
        )
        .expect("the default passes vetting");
    let default_digest =
        backstop_runtime::engine::sha256_hex(backstop_runtime::module::DEFAULT_POLICY_WASM);
    assert!(!handle.status().on_probation, "the default is not on trial");
    for i in 0..40 {
        ended(&handle, i % 4 != 0, 1);
    }
    let status = handle.status();
    assert_eq!(status.rollbacks, 0, "{:?}", status.recent.last());
    assert_eq!(status.digest, default_digest);

    // Nor does an operator's rollback away from it hold the default.
    handle
        .roll_back_by_operator("test")
        .expect("back to the storm");
    let status = handle.status();
    assert_eq!(status.digest, storm_digest);
    assert!(
        status
            .quarantined
            .iter()
            .all(|q| q.digest != default_digest),
        "{:?}",
        status.quarantined
    );
    handle
        .swap_bytes(
            backstop_runtime::module::DEFAULT_POLICY_WASM,
            "the built-in default",
        )
        .expect("the default can always come back");
}

/// A newcomer is judged against the better of its predecessor and the built-in default: a
/// module that storms like its stormy predecessor is caught against the default's record.
#[test]
fn a_newcomer_is_judged_against_the_default_when_the_default_fared_better() {
    let handle =
        backstop::PolicyHandle::new(support::default_module().clone(), judged_after(20)).unwrap();
    for _ in 0..40 {
        ended(&handle, true, 1);
    }
    let storm = support::sane_component("6.6.6");
    handle.swap_bytes(&storm, "storm.wasm").unwrap();
    // The storm is on probation against the default; it is swapped out before judgement.
    let another = support::sane_component("6.6.7");
    handle.swap_bytes(&another, "another-storm.wasm").unwrap();
    assert!(handle.status().on_probation);
    for _ in 0..20 {
        ended(&handle, true, 8);
    }
    let status = handle.status();
    assert_eq!(status.rollbacks, 1, "{:?}", status.recent.last());
    let reason = status.recent.last().unwrap().reason.clone().unwrap();
    assert!(reason.contains("calls per request"), "{reason}");
}

/// The attack: a module that recognises the smoke table by its entropy (always 0 or
/// `u64::MAX`) behaves there and traps on every production decision. Entropy is now drawn over
/// the whole range, so the module faults in the table and never goes live.
#[test]
fn a_module_that_behaves_only_for_the_smoke_tables_entropy_is_refused() {
    let trap = support::entropy_trap_component();
    let module = engine().load_bytes(&trap, "entropy-trap.wasm").unwrap();
    // It is a working policy when the entropy is the old table's.
    let policy = module.configure("{}").unwrap();
    let mut ctx = AttemptContext::first_failure(ErrorInfo::of(ErrorKind::Throttling), ["m"]);
    ctx.entropy = u64::MAX;
    assert!(policy.decide(&ctx).fault.is_none());
    ctx.entropy = 0x1234_5678_9abc_def0;
    assert!(
        policy.decide(&ctx).fault.is_some(),
        "and traps on a production draw"
    );
    let refused = backstop_runtime::vetting::vet_bytes(
        engine(),
        &trap,
        "entropy-trap.wasm",
        &SwapOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(refused, SwapError::Smoke { .. }), "{refused}");
    assert!(refused.to_string().contains("faulted"), "{refused}");
}
