//! What a retry storm costs Bedrock, with and without the client's retry budget, next to
//! Backstop's default policy, in one run of the simulator on the shipped scenarios.
//!
//! The storm is a module that passes `backstop check`: it gives up on what cannot heal and after
//! output, and retries everything else after 1 ms, up to the guardrails' attempt cap.
//!
//! `cargo bench -p backstop-lab --bench retry_budget`; the table is recorded in BENCHMARKS.md.

use backstop_test_support as support;

use backstop::HostConfig;
use backstop_lab::simulate::{self, Contender, SimReport};

fn main() {
    let engine = support::engine();
    let storm = support::sane_component("1.0.0");
    let contenders = [
        ("backstop-default", engine.load_default().unwrap()),
        (
            "retry-storm",
            engine.load_bytes(&storm, "retry-storm.wasm").unwrap(),
        ),
    ];
    let with_budget = HostConfig::default();
    let mut without_budget = HostConfig::default();
    without_budget.retry_budget = None;
    println!(
        "| scenario | policy | retry budget | requests | served | calls per request | p99 ms | refused resends |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for scenario_name in [
        "monday-spike",
        "regional-outage",
        "brownout",
        "batch-backlog",
    ] {
        let scenario = simulate::shipped(scenario_name).unwrap().unwrap();
        for (name, module) in &contenders {
            for (budget, host) in [("off", &without_budget), ("default", &with_budget)] {
                let contender = Contender::Module {
                    module: module.clone(),
                    config: "{}".to_string(),
                    shadow: None,
                };
                let report: SimReport = simulate::run(&scenario, &contender, host, |_| {})
                    .expect("the simulation runs");
                println!(
                    "| {scenario_name} | {name} | {budget} | {} | {} | {:.2} | {} | {} |",
                    report.requests,
                    report.served,
                    report.amplification,
                    report.p99_ms,
                    report.retry_budget_refusals
                );
            }
        }
    }
}
