//! Swapping from the command line: `backstop check`, `compile --cache-dir`, the host config,
//! and a running `backstop demo` that takes a new module on SIGHUP or from `--watch`.

use backstop_test_support as support;

use crate::backstop;
use backstop_runtime::cache::CacheUse;
use backstop_runtime::cache::ModuleCache;
use backstop_runtime::engine::sha256_hex;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::text;

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn check_passes_a_good_module_and_says_why_a_bad_one_would_be_refused() {
    let dir = support::scratch_dir("cli-check");
    let sane = dir.join("sane.wasm");
    std::fs::write(&sane, support::variant_component()).unwrap();
    let out = backstop(&["check", "--policy", path(&sane), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verdict"], "would go live");
    assert_eq!(report["name"], "backstop-variant");
    assert_eq!(report["version"], support::variant_version().as_str());
    assert!(report["smoke_decisions"].as_u64().unwrap() > 100);

    let reckless = dir.join("reckless.wasm");
    std::fs::write(&reckless, support::policy_component(&Default::default())).unwrap();
    let out = backstop(&["check", "--policy", path(&reckless)]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("never-resends-what-cannot-heal")
            && stderr.contains("never-resends-after-output"),
        "{stderr}"
    );
    let table = text(&out.stdout);
    assert!(
        table.contains("resends an error that cannot heal") && table.contains("context: {"),
        "the first failing context is shown: {table}"
    );

    // A module that answers every smoke question sanely and gives up on everything: judged by
    // its effect beside the default, it would not go live.
    let quitter = dir.join("give-up.wasm");
    std::fs::write(&quitter, support::give_up_component()).unwrap();
    let out = backstop(&["check", "--policy", path(&quitter)]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("fared worse than the built-in default") && stderr.contains("failure rate"),
        "{stderr}"
    );

    // An allow-list that does not name the module.
    let host = dir.join("host.json");
    let other = sha256_hex(b"some other module");
    std::fs::write(&host, format!(r#"{{"allowed_digests": ["{other}"]}}"#)).unwrap();
    let out = backstop(&[
        "check",
        "--policy",
        path(&sane),
        "--host-config",
        path(&host),
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("not on the allow-list"), "{stderr}");
    assert!(
        stderr.contains(&sha256_hex(&std::fs::read(&sane).unwrap())),
        "{stderr}"
    );

    // Bad host configs name what is wrong.
    for (config, expected) in [
        (r#"{"allowed_digests": ["abc"]}"#, "allowed_digests[0]"),
        (r#"{"rollbak": {}}"#, "unknown field `rollbak`"),
        (r#"{"rollback": {"window_ms": 0}}"#, "window_ms"),
        // Ceilings no configuration lifts: a module's effect stays bounded.
        (
            r#"{"guardrails": {"max_total_attempts": 4294967295}}"#,
            "guardrails.max_total_attempts is 4294967295; at most 100",
        ),
        (r#"{"guardrails": {"max_total_attempts": 0}}"#, "at least 1"),
        (
            r#"{"queue_capacity": 18446744073709551615}"#,
            "queue_capacity is 18446744073709551615",
        ),
        (
            r#"{"guardrails": {"max_delay_ms": 99999999999}}"#,
            "max_delay_ms",
        ),
        (
            r#"{"rollback": {"outcomes": {"worse_by": 0.5}}}"#,
            "rollback.outcomes.worse_by is 0.5; it must be between 1 and 100",
        ),
        (
            r#"{"rollback": {"outcomes": {"probation_ms": 99999999999}}}"#,
            "rollback.outcomes.probation_ms",
        ),
        (
            r#"{"limits": {"idle_ms": 10}}"#,
            "limits.idle_ms must be at least 100",
        ),
        (
            r#"{"limits": {"first_event_floor_ms": 10}}"#,
            "limits.first_event_floor_ms must be at least 100",
        ),
        (
            r#"{"compile": {"timeout_ms": 99999999}}"#,
            "compile.timeout_ms is 99999999; at most 600000",
        ),
        (
            r#"{"chains": {"a": ["b", "a"]}}"#,
            r#"chains["a"]: a model cannot be its own fallback"#,
        ),
        (
            r#"{"serve": {"max_in_flight": 0}}"#,
            "serve.max_in_flight: 0 is outside 1..=100000",
        ),
        (
            r#"{"serve": {"default_max_tokens": {"*": 0}}}"#,
            r#"serve.default_max_tokens: "*": 0 (a model id of 1 to 256 characters, 1..=1000000 tokens)"#,
        ),
        (
            r#"{"serve": {"otlp_endpoint": "https://collector:4318"}}"#,
            "serve.otlp_endpoint",
        ),
        (
            r#"{"serve": {"listen": "0.0.0.0:80"}}"#,
            "unknown field `listen`",
        ),
    ] {
        std::fs::write(&host, config).unwrap();
        let out = backstop(&[
            "check",
            "--policy",
            path(&sane),
            "--host-config",
            path(&host),
        ]);
        assert!(!out.status.success(), "{config}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(expected), "{config}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn compile_into_the_cache_makes_the_first_swap_a_hit() {
    let dir = support::scratch_dir("cli-compile");
    let sane_bytes = support::sane_component("2.0.0");
    let sane = dir.join("sane.wasm");
    std::fs::write(&sane, &sane_bytes).unwrap();
    let cache_dir = dir.join("cache");
    let out = backstop(&["compile", path(&sane), "--cache-dir", path(&cache_dir)]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let engine = support::engine();
    let cache = ModuleCache::new(engine, &cache_dir).unwrap();
    assert!(cache.entry(&sha256_hex(&sane_bytes)).is_file());
    let used = cache.load(engine, &sane_bytes, "sane.wasm").unwrap().used;
    assert_eq!(used, CacheUse::Hit);
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs `backstop demo` on a copy of the default policy, its requests spread over
/// `spread_secs` seconds; once it has printed its policy line, calls `swap` with the policy path
/// and the child's pid. Returns stdout.
fn demo_swapped_over(
    name: &str,
    spread_secs: &str,
    extra: &[&str],
    swap: impl FnOnce(&Path, u32),
) -> String {
    let dir = support::scratch_dir(name);
    let policy = dir.join("policy.wasm");
    std::fs::write(&policy, backstop_runtime::module::DEFAULT_POLICY_WASM).unwrap();
    let mut args = vec![
        "demo",
        "--policy",
        path(&policy),
        "--requests",
        "40",
        "--batch",
        "0",
        "--spread-secs",
        spread_secs,
    ];
    args.extend_from_slice(extra);
    let mut child = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    // The policy's own log lines (a module going live is logged at info) may come first.
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "no policy line: {seen}"
        );
        if line.starts_with("policy backstop-default") {
            break;
        }
        assert!(seen.lines().count() < 20, "no policy line: {seen}");
        seen.push_str(&line);
    }
    // Keep draining the progress output so the child never blocks on a full pipe.
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });
    swap(&policy, child.id());
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = child.wait().unwrap();
    let stderr = drain.join().unwrap();
    assert!(status.success(), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
    stdout
}

#[test]
fn sighup_swaps_the_policy_of_a_running_demo() {
    // Long enough for the swap's effect trial (seconds in a debug build under a loaded CI).
    let stdout = demo_swapped_over("cli-sighup", "12", &[], |policy, pid| {
        backstop_runtime::cache::write_atomically(policy, &support::variant_component()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let killed = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    });
    assert!(
        stdout.contains(&format!(
            "policy at the end: backstop-variant {}",
            support::variant_version()
        )) && stdout.contains("swaps 1,"),
        "{stdout}"
    );
}

#[test]
fn watch_swaps_the_policy_of_a_running_demo_and_keeps_it_through_garbage() {
    let stdout = demo_swapped_over("cli-watch", "12", &["--watch"], |policy, _| {
        std::fs::write(policy, support::variant_component()).unwrap();
        std::thread::sleep(Duration::from_millis(1_000));
        std::fs::write(policy, b"garbage").unwrap();
    });
    assert!(
        stdout.contains(&format!(
            "policy at the end: backstop-variant {}",
            support::variant_version()
        )) && stdout.contains("swaps 1,")
            && stdout.contains("rejected 1,"),
        "{stdout}"
    );
}

/// A `.cwasm` is native code: with one byte of its code changed it would run arbitrary
/// instructions. Every command that takes a policy refuses it unless its digest is allow-listed,
/// and every one of them honours `--host-config`'s allow-list before loading anything.
#[test]
fn every_command_refuses_unlisted_native_code_and_honours_the_allow_list() {
    let dir = support::scratch_dir("cli-native");
    let engine = support::engine();
    let mut cwasm = engine
        .precompile(backstop_runtime::module::DEFAULT_POLICY_WASM, "default")
        .unwrap();
    let middle = cwasm.len() / 2;
    cwasm[middle] ^= 0xff;
    let tampered = dir.join("tampered.cwasm");
    std::fs::write(&tampered, &cwasm).unwrap();
    let sane = dir.join("sane.wasm");
    std::fs::write(&sane, support::sane_component("2.0.0")).unwrap();
    let host = dir.join("host.json");
    let other = sha256_hex(b"some other module");
    std::fs::write(&host, format!(r#"{{"allowed_digests": ["{other}"]}}"#)).unwrap();

    let commands: [&[&str]; 5] = [
        &["decide", "--error", "ThrottlingException"],
        &["info"],
        &["check"],
        &["simulate", "--scenario", "monday-spike", "--no-baselines"],
        &[
            "demo",
            "--requests",
            "2",
            "--batch",
            "0",
            "--spread-secs",
            "0.1",
        ],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.extend(["--policy", path(&tampered)]);
        let out = backstop(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("allowed_digests"), "{args:?}: {stderr}");

        let mut args = command.to_vec();
        args.extend(["--policy", path(&sane), "--host-config", path(&host)]);
        let out = backstop(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("not on the allow-list"),
            "{args:?}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_gives_a_custom_policy_its_own_configuration() {
    let dir = support::scratch_dir("cli-check-config");
    let sane = dir.join("sane.wasm");
    std::fs::write(&sane, support::sane_component("2.0.0")).unwrap();
    // This test is about configuration: the module (which resends at once, and so would fail
    // the effect trial beside the default) is checked with the trial off.
    let host = dir.join("host.json");
    std::fs::write(&host, r#"{ "effect_trial": false }"#).unwrap();
    // The default policy would refuse this key; the module under check accepts it.
    let out = backstop(&[
        "check",
        "--policy",
        path(&sane),
        "--config",
        r#"{"custom_knob": 3}"#,
        "--host-config",
        path(&host),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_demo_runs_the_newest_module_of_a_watched_directory() {
    let dir = support::scratch_dir("cli-demo-dir");
    std::fs::write(dir.join("policy-2.0.0.wasm"), support::variant_component()).unwrap();
    let out = backstop(&[
        "demo",
        "--policy",
        path(&dir),
        "--watch",
        "--requests",
        "4",
        "--batch",
        "0",
        "--spread-secs",
        "0.1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["policy"]["name"], "backstop-variant");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_module_too_costly_to_compile_is_refused_with_the_bound_it_passed() {
    let dir = support::scratch_dir("cli-costly");
    let host = dir.join("host.json");
    std::fs::write(&host, r#"{"compile": {"timeout_ms": 300}}"#).unwrap();
    // Bulk: 5,000 functions compile for seconds (Cranelift is optimised even in test builds);
    // the child is stopped at 300 ms.
    let heavy = dir.join("heavy.wasm");
    std::fs::write(&heavy, support::heavy_component(5_000)).unwrap();
    // Depth: a function nesting 2,000 blocks is refused before anything compiles.
    let (info, data) = support::info_parts("deep", "1.0.0");
    let extra = format!(
        "{data} (func $deep {}{})",
        "(block ".repeat(2_000),
        ")".repeat(2_000)
    );
    let deep = dir.join("deep.wasm");
    std::fs::write(
        &deep,
        support::policy_component(&support::CoreParts {
            decide: support::SANE_DECIDE,
            info: &info,
            extra: &extra,
            ..Default::default()
        }),
    )
    .unwrap();
    for (module, expected) in [
        (&heavy, "compiling took longer than 300 ms and was stopped"),
        (&deep, "nests blocks more than 1000 deep"),
    ] {
        let out = backstop(&[
            "check",
            "--policy",
            path(module),
            "--host-config",
            path(&host),
        ]);
        assert!(!out.status.success());
        let stderr = text(&out.stderr);
        assert!(stderr.contains("is too costly to compile"), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The compiling children of `parent` still alive.
fn compile_workers_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        // Field 4 of /proc/PID/stat (after the parenthesised name) is the parent's pid.
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && String::from_utf8_lossy(&cmdline).contains("compile-worker") {
            found.push(pid);
        }
    }
    found
}

#[cfg(target_os = "linux")]
#[test]
fn a_demo_ends_on_time_while_a_watched_compile_bomb_is_still_compiling() {
    let dir = support::scratch_dir("cli-bomb-config");
    let host = dir.join("host.json");
    // A minute allowed: without cancellation the demo would wait for the whole compile.
    std::fs::write(&host, r#"{"compile": {"timeout_ms": 60000}}"#).unwrap();
    // 10,000 functions: about 40 s to compile in a debug build, far longer than the demo's 12 s.
    let bomb = support::heavy_component(10_000);
    let started = std::time::Instant::now();
    let stdout = demo_swapped_over(
        "cli-bomb",
        "12",
        &["--watch", "--host-config", path(&host)],
        |policy, pid| {
            std::fs::write(policy, &bomb).unwrap();
            let compiling = support::eventually(Duration::from_secs(8), || {
                !compile_workers_of(pid).is_empty()
            });
            assert!(compiling, "the watcher compiles in a child");
        },
    );
    let took = started.elapsed();
    assert!(
        stdout.contains("policy at the end: backstop-default") && stdout.contains("swaps 0,"),
        "{stdout}"
    );
    assert!(
        took < Duration::from_secs(22),
        "the demo waited for the compile: {took:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_quarantine_outlives_the_host_and_the_operator_releases_it_from_the_command_line() {
    use backstop::Engine;
    use backstop::HostConfig;
    use backstop::Limits;
    use backstop::PolicyHandle;
    use backstop::SwapError;
    let dir = support::scratch_dir("cli-quarantine");
    let host = dir.join("host.json");
    let file = dir.join("quarantine.json");
    std::fs::write(
        &host,
        format!(r#"{{"quarantine_file": {:?}}}"#, file.to_str().unwrap()),
    )
    .unwrap();
    let config = HostConfig::from_json(&std::fs::read_to_string(&host).unwrap()).unwrap();
    let engine = Engine::new(Limits::default()).unwrap();
    let start = || {
        let options = config.swap_options(&engine, "{}").unwrap();
        PolicyHandle::new(engine.load_default().unwrap(), options).unwrap()
    };
    // Retries what cannot heal: refused by the smoke table, and quarantined.
    let bad = support::policy_component(&support::CoreParts::default());
    let digest = sha256_hex(&bad);
    assert!(matches!(
        start().swap_bytes(&bad, "bad.wasm"),
        Err(SwapError::Smoke { .. })
    ));

    // A restarted host still refuses the same bytes without running them.
    let restarted = start();
    assert!(matches!(
        restarted.swap_bytes(&bad, "bad.wasm"),
        Err(SwapError::Quarantined { .. })
    ));
    let listed = backstop(&["quarantine", "--host-config", path(&host), "list"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let list: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(list[0]["digest"], digest.as_str(), "{list}");

    // Released from the command line: the running host vets the bytes again at its next swap.
    let released = backstop(&[
        "quarantine",
        "--host-config",
        path(&host),
        "release",
        &digest,
    ]);
    assert!(released.status.success(), "{}", text(&released.stderr));
    assert!(matches!(
        restarted.swap_bytes(&bad, "bad.wasm"),
        Err(SwapError::Smoke { .. })
    ));
    // Releasing what is not held says so.
    let again = backstop(&[
        "quarantine",
        "--host-config",
        path(&host),
        "release",
        &"0".repeat(64),
    ]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("is not quarantined"));
    let _ = std::fs::remove_dir_all(dir);
}
