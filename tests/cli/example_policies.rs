//! The example policies in Python and JavaScript (`examples/policies/`), built from source by
//! their own build scripts as an author builds them, then checked, simulated beside the
//! default, and swapped into a running sidecar under load.

use crate::backstop;
use ::backstop::ErrorKind;
use backstop_lab::scenario::ModelFaults;
use backstop_lab::{FaultServer, Scenario};
use backstop_test_support as support;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::text;

const TOKEN: &str = "cli-example-swap-token-0123456789";

/// A host configuration every test here shares: the JavaScript example's fuel budget (its
/// runtime lifts each context into objects, ~0.8 M fuel before its code runs) and one cache,
/// so each 12-18 MB component is compiled once for the whole binary.
fn host_config() -> &'static Path {
    static HOST: OnceLock<PathBuf> = OnceLock::new();
    HOST.get_or_init(|| {
        let dir = support::scratch_dir("example-host");
        let cache = dir.join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        let shipped = support::workspace().join("examples/policies/latency-first-js/host.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(shipped).unwrap()).unwrap();
        config["cache_dir"] = cache.to_str().unwrap().into();
        config["chains"] = serde_json::json!({ "m": ["f"] });
        let path = dir.join("host.json");
        std::fs::write(&path, config.to_string()).unwrap();
        path
    })
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Checks `wasm` (one round, the default host configuration): it must break `invariant` alone,
/// and the table must show each of `shown`.
fn breaks_only(wasm: &Path, invariant: &str, shown: &[&str]) {
    let out = backstop(&["check", "--policy", path(wasm), "--rounds", "1"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("breaks 1 of 11 invariants: {invariant}")),
        "{stderr}"
    );
    let table = text(&out.stdout);
    assert!(shown.iter().all(|s| table.contains(s)), "{table}");
}

#[test]
#[ignore = "needs componentize-py (pip install componentize-py==0.25.1); componentize-js (npm install --prefix target/jco @bytecodealliance/jco@1.35.0)"]
fn the_python_and_javascript_examples_build_from_source_and_pass_check() {
    for (name, policy) in [
        ("cost-aware-py", "cost-aware"),
        ("latency-first-js", "latency-first"),
    ] {
        let Some(wasm) = support::example_policy(name) else {
            continue;
        };
        let out = backstop(&[
            "check",
            "--policy",
            path(&wasm),
            "--host-config",
            path(host_config()),
            "--json",
        ]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["verdict"], "would go live", "{name}");
        assert_eq!(report["name"], policy);
        // Settings are checked by the policy itself, with the field named.
        let out = backstop(&[
            "check",
            "--policy",
            path(&wasm),
            "--host-config",
            path(host_config()),
            "--config",
            r#"{"max_attempts": 99}"#,
        ]);
        assert!(!out.status.success());
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("rejected its configuration") && stderr.contains("max_attempts"),
            "{name}: {stderr}"
        );
    }
}

#[test]
#[ignore = "needs componentize-js (npm install --prefix target/jco @bytecodealliance/jco@1.35.0)"]
fn the_javascript_example_needs_the_fuel_its_runtime_costs_and_check_says_how_much() {
    let Some(wasm) = support::example_policy("latency-first-js") else {
        return;
    };
    breaks_only(
        &wasm,
        "fuel-per-decision",
        &[
            "the 99th percentile of its decisions burned",
            "of its budget of 10000000; at most 5 %",
        ],
    );
}

#[test]
#[ignore = "needs componentize-py (pip install componentize-py==0.25.1)"]
fn a_python_policy_that_reads_the_clock_while_deciding_is_refused_by_check() {
    let Some(_) = support::example_policy("cost-aware-py") else {
        return;
    };
    // The example, planted with one clock read in `decide`, built by its own script.
    let dir = support::scratch_dir("example-clock");
    let source = support::workspace().join("examples/policies/cost-aware-py");
    for file in ["policy.py", "build.sh"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    let policy = std::fs::read_to_string(dir.join("policy.py")).unwrap();
    let planted = policy.replace(
        "    def decide(self, ctx):\n",
        "    def decide(self, ctx):\n        import time\n        time.time()\n",
    );
    assert_ne!(planted, policy, "the plant found its place");
    std::fs::write(dir.join("policy.py"), planted).unwrap();
    // The script finds the WIT three levels up: give it the workspace's.
    let script = std::fs::read_to_string(dir.join("build.sh")).unwrap();
    let wit = support::workspace().join("wit");
    std::fs::write(
        dir.join("build.sh"),
        script.replace("../../../wit", path(&wit)),
    )
    .unwrap();
    let wasm = dir.join("clock.wasm");
    let built = std::process::Command::new("sh")
        .arg(dir.join("build.sh"))
        .arg(&wasm)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text(&built.stderr));

    breaks_only(
        &wasm,
        "pure",
        &["impure: read the clock 1 time(s) during the call"],
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[ignore = "needs componentize-py (pip install componentize-py==0.25.1); componentize-js (npm install --prefix target/jco @bytecodealliance/jco@1.35.0)"]
fn simulate_runs_both_examples_beside_the_default() {
    let (Some(python), Some(js)) = (
        support::example_policy("cost-aware-py"),
        support::example_policy("latency-first-js"),
    ) else {
        return;
    };
    let out = backstop(&[
        "simulate",
        "--scenario",
        "monday-spike",
        "--with-default",
        "--policy",
        path(&python),
        "--policy",
        path(&js),
        "--host-config",
        path(host_config()),
        "--no-baselines",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    let reports = reports.as_array().expect("reports");
    let names: Vec<&str> = reports
        .iter()
        .map(|r| r["policy"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        [
            "backstop-default 0.5.0",
            "cost-aware 0.1.0",
            "latency-first 0.1.0"
        ]
    );
    // Each strategy serves the Monday spike (throttles, then a fallback) nearly whole.
    for report in reports {
        let (served, requests) = (
            report["served"].as_u64().unwrap(),
            report["requests"].as_u64().unwrap(),
        );
        assert!(served * 1000 >= requests * 995, "{report}");
    }
}

#[test]
#[ignore = "needs componentize-py (pip install componentize-py==0.25.1)"]
fn the_python_example_is_hot_swapped_into_a_running_sidecar_under_load_and_nothing_is_lost() {
    let Some(python) = support::example_policy("cost-aware-py") else {
        return;
    };
    let runtime = backstop_test_support::runtime();
    // One throttle in ten on the primary, so decisions are asked of whichever policy is live.
    let mut scenario = Scenario::default();
    for model in ["m", "f"] {
        let mut faults = ModelFaults::default();
        faults.error_rates.insert(ErrorKind::Throttling, 0.1);
        scenario.models.insert(model.into(), faults);
    }
    let server = runtime.block_on(FaultServer::start(scenario, 0)).unwrap();
    let dir = support::scratch_dir("example-swap");
    let token = dir.join("admin.token");
    std::fs::write(&token, TOKEN).unwrap();
    let upstream = server.endpoint_url();
    let sidecar = support::ServeProcess::start(
        env!("CARGO_BIN_EXE_backstop"),
        &[
            "--upstream-endpoint",
            &upstream,
            "--admin-token-file",
            path(&token),
            "--host-config",
            path(host_config()),
        ],
        &[],
    );

    // Four callers, one request after another, until told to stop.
    let addr = sidecar.data.trim_start_matches("http://").to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let swapping = Arc::new(AtomicBool::new(false));
    let during_swap = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop, swapping, during_swap, answers) = (
                addr.clone(),
                stop.clone(),
                swapping.clone(),
                during_swap.clone(),
                answers.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let answer = support::http_post(
                        &addr,
                        "/model/m/converse",
                        r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#,
                    );
                    if swapping.load(Ordering::Relaxed) {
                        during_swap.fetch_add(1, Ordering::Relaxed);
                    }
                    answers.lock().unwrap().push(answer);
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(500));
    swapping.store(true, Ordering::Relaxed);
    let swapped = backstop(&[
        "swap",
        "--admin",
        &sidecar.admin,
        "--admin-token-file",
        path(&token),
        path(&python),
    ]);
    swapping.store(false, Ordering::Relaxed);
    assert!(swapped.status.success(), "{}", text(&swapped.stderr));
    let status = text(&backstop(&["status", "--admin", &sidecar.admin]).stdout);
    assert!(status.contains("cost-aware"), "{status}");
    std::thread::sleep(Duration::from_millis(1_000));
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.join().unwrap();
    }

    let answers = answers.lock().unwrap();
    let failed: Vec<&String> = answers
        .iter()
        .filter(|a| !a.starts_with("HTTP/1.1 200"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} lost: {:?}",
        failed.len(),
        answers.len(),
        failed.first()
    );
    // Compiling and vetting 18 MB took seconds, and requests went on being answered meanwhile.
    assert!(
        during_swap.load(Ordering::Relaxed) > 0,
        "no request was answered while the module was compiled and vetted"
    );
    let last = answers.last().unwrap();
    let digest = last
        .lines()
        .find_map(|l| l.strip_prefix("x-backstop-policy: "))
        .unwrap_or_default()
        .trim();
    assert!(
        status.contains(&digest[..12.min(digest.len())]),
        "{status} vs {digest}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
