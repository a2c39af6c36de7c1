//! `backstop simulate` as an operator runs it: a table, JSON, a plot, and clear errors.

use backstop_test_support as support;

use crate::backstop;
use serde_json::Value;
use support::text;

#[test]
fn a_shipped_scenario_prints_one_row_per_policy_and_baseline() {
    let out = backstop(&["simulate", "--scenario", "regional-outage"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let rows: Vec<&str> = table.lines().collect();
    assert!(
        rows[0].starts_with("scenario regional-outage (seed 21)"),
        "{table}"
    );
    assert!(
        rows[1].starts_with("policy") && rows[1].contains("ampl."),
        "{table}"
    );
    for (row, name) in rows[2..].iter().zip([
        "backstop-default",
        "naive ",
        "naive-on-sdk",
        "sdk-standard ",
        "sdk-standard-pre2026",
        "sdk-adaptive ",
        "sdk-adaptive-pre2026",
        "boto3-adaptive",
        "router-cooldown",
        "no-retries",
    ]) {
        assert!(row.starts_with(name), "{table}");
    }
    assert!(
        text(&out.stderr).contains("simulated 1500 s in"),
        "progress is shown"
    );
}

#[test]
fn json_and_plot_carry_the_per_minute_series() {
    let dir = std::env::temp_dir().join(format!("backstop-cli-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("brownout.svg");
    let out = backstop(&[
        "simulate",
        "--scenario",
        "brownout",
        "--baseline",
        "naive",
        "--json",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[1]["policy"], "naive");
    let minutes = reports[0]["per_minute"].as_array().unwrap();
    assert!(minutes.len() >= 20, "20 simulated minutes");
    let offered: u64 = minutes.iter().map(|m| m["offered"].as_u64().unwrap()).sum();
    assert_eq!(offered, reports[0]["requests"].as_u64().unwrap());

    // `--arrivals` lists the very requests the run offered, minute by minute: what a real-time
    // replay sends.
    let out = backstop(&["simulate", "--scenario", "brownout", "--arrivals"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut per_minute = vec![0u64; minutes.len()];
    for line in text(&out.stdout).lines() {
        let arrival: Value = serde_json::from_str(line).unwrap();
        let minute = arrival["at_ms"].as_u64().unwrap() / 60_000;
        per_minute[minute as usize] += 1;
        assert!(["interactive", "batch"].contains(&arrival["workload"].as_str().unwrap()));
        assert!(arrival["model"].is_string() && arrival["deadline_ms"].as_u64().unwrap() > 0);
    }
    let offered: Vec<u64> = minutes
        .iter()
        .map(|m| m["offered"].as_u64().unwrap())
        .collect();
    assert_eq!(per_minute, offered);

    let svg = std::fs::read_to_string(&svg).unwrap();
    for title in [
        "offered load",
        "served per minute",
        "throttling answers",
        "fallback model",
    ] {
        assert!(svg.contains(title), "panel {title}");
    }
    assert!(
        svg.contains("naive") && svg.contains("backstop-default"),
        "a legend per policy"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_input_names_what_is_wrong() {
    let out = backstop(&["simulate", "--scenario", "tuesday-lull"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("tuesday-lull") && stderr.contains("monday-spike"),
        "{stderr}"
    );

    let out = backstop(&["simulate", "--scenario", "brownout", "--baseline", "yolo"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("unknown baseline `yolo`"));

    let dir = std::env::temp_dir().join(format!("backstop-cli-sim-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("no-traffic.json");
    std::fs::write(&file, r#"{"seed": 1, "models": {}}"#).unwrap();
    let out = backstop(&["simulate", "--scenario", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no `traffic` section"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(
        &file,
        r#"{"traffic": {"duration_s": 10, "models": [], "phases": []}}"#,
    )
    .unwrap();
    let out = backstop(&["simulate", "--scenario", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("traffic.models"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_shadow_candidate_is_weighed_on_the_replayed_traffic() {
    let dir = support::scratch_dir("cli-sim-shadow");
    let candidate = dir.join("give-up.wasm");
    std::fs::write(&candidate, support::give_up_component()).unwrap();
    let args = [
        "simulate",
        "--scenario",
        "regional-outage",
        "--no-baselines",
        "--shadow",
        candidate.to_str().unwrap(),
    ];
    let out = backstop(&[&args[..], &["--json"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = &reports[0];
    let shadow = &report["shadow"];
    assert_eq!(shadow["name"], "give-up");
    let asked = shadow["decisions"].as_u64().unwrap();
    // Asked once per decision of the live policy, which is one per failed call.
    let calls = report["calls_sent"].as_u64().unwrap();
    let served = report["served"].as_u64().unwrap();
    assert_eq!(asked, calls - served, "{shadow}");
    // The default rides out the outage; the candidate would have given up instead.
    assert!(
        shadow["disagreements"]["would-give-up"].as_u64().unwrap() > 0,
        "{shadow}"
    );

    // The table says it in words.
    let out = backstop(&args);
    let table = text(&out.stdout);
    assert!(table.contains("shadow give-up 1.0.0"), "{table}");
    assert!(table.contains("would-give-up"), "{table}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn two_modules_of_one_name_and_version_are_told_apart_by_their_digests() {
    let dir = support::scratch_dir("cli-sim-twins");
    // The default with a custom section appended: the same name and version, its own digest.
    let mut twin = backstop_runtime::module::DEFAULT_POLICY_WASM.to_vec();
    twin.extend_from_slice(&[0, 6, 4, b't', b'w', b'i', b'n', b'!']);
    let path = dir.join("twin.wasm");
    std::fs::write(&path, &twin).unwrap();
    let out = backstop(&[
        "simulate",
        "--scenario",
        "brownout",
        "--with-default",
        "--policy",
        path.to_str().unwrap(),
        "--baseline",
        "no-retries",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = reports
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["policy"].as_str().unwrap())
        .collect();
    let twin_digest = backstop_runtime::engine::sha256_hex(&twin);
    let default_digest =
        backstop_runtime::engine::sha256_hex(backstop_runtime::module::DEFAULT_POLICY_WASM);
    assert_eq!(
        names[0],
        format!("backstop-default 0.5.0 ({})", &default_digest[..8])
    );
    assert_eq!(
        names[1],
        format!("backstop-default 0.5.0 ({})", &twin_digest[..8])
    );
    assert_eq!(names[2], "no-retries", "a name of its own stays as it is");
    let _ = std::fs::remove_dir_all(dir);
}
