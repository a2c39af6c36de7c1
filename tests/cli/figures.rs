//! The simulator's figures that README.md and BENCHMARKS.md quote are what `backstop simulate`
//! prints now. The simulator is deterministic (same seed, same numbers), so a figure that
//! drifts from the code is a failed test, not a stale page: BENCHMARKS' table of today's
//! figures is generated (`BACKSTOP_UPDATE_README=1` rewrites it), and each figure the README's
//! prose quotes is derived from the same runs and must appear in it as printed.

use crate::backstop;
use backstop_test_support as support;

/// One row of `simulate`'s table.
struct Row {
    /// The row as printed.
    line: String,
    policy: String,
    requests: u64,
    served: u64,
    calls: u64,
    amplification: f64,
    p50_ms: u64,
    p99_ms: u64,
}

/// What `simulate` printed, and its table's rows.
struct Table {
    printed: String,
    rows: Vec<Row>,
}

impl std::ops::Deref for Table {
    type Target = [Row];
    fn deref(&self) -> &[Row] {
        &self.rows
    }
}

/// Runs `backstop simulate ARGS` (text output) and reads its table's rows.
fn simulate(args: &[&str]) -> Table {
    let mut all = vec!["simulate"];
    all.extend(args);
    let out = backstop(&all);
    assert!(
        out.status.success(),
        "backstop {}: {}",
        all.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Row> = printed
        .lines()
        .skip_while(|line| !line.starts_with("policy "))
        .skip(1)
        .take_while(|line| !line.is_empty() && !line.starts_with("failed under"))
        .map(|line| {
            // The policy's name has spaces; the 13 columns after it do not.
            let words: Vec<&str> = line.split_whitespace().collect();
            let (name, columns) = words.split_at(words.len() - 13);
            let number = |i: usize| columns[i].parse::<u64>().unwrap();
            Row {
                line: line.to_string(),
                policy: name.join(" "),
                requests: number(0),
                served: number(1),
                calls: number(5),
                amplification: columns[6].parse().unwrap(),
                p50_ms: number(8),
                p99_ms: number(10),
            }
        })
        .collect();
    assert!(!rows.is_empty(), "no table in:\n{printed}");
    Table {
        printed: printed.into_owned(),
        rows,
    }
}

/// Runs each argument list at once (they are independent processes) and returns their rows.
fn simulate_all(runs: &[&[&str]]) -> Vec<Table> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .iter()
            .map(|args| scope.spawn(move || simulate(args)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The file's text with every run of whitespace one space, so a figure may wrap.
fn prose(file: &str) -> String {
    let text = std::fs::read_to_string(support::workspace().join(file)).unwrap();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Every phrase must be in `file` as written; all missing ones are named at once.
fn says(file: &str, phrases: &[String]) {
    let text = prose(file);
    let missing: Vec<&String> = phrases
        .iter()
        .filter(|p| !text.contains(p.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{file} no longer says what simulate prints; it should say:\n{}",
        missing
            .iter()
            .map(|p| format!("  {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

const SCENARIOS: [&str; 8] = [
    "monday-spike",
    "spike-outage",
    "regional-outage",
    "brownout",
    "batch-backlog",
    "token-spike",
    "mid-stream",
    "slow-tails",
];

/// BENCHMARKS' first table: the default on every shipped scenario, as this build prints it.
#[test]
fn the_benchmarks_table_of_todays_figures_is_what_simulate_prints() {
    let runs: Vec<[&str; 3]> = SCENARIOS
        .iter()
        .map(|s| ["--scenario", *s, "--no-baselines"])
        .collect();
    let runs: Vec<&[&str]> = runs.iter().map(|r| r.as_slice()).collect();
    let results = simulate_all(&runs);
    let mut table = format!(
        "{:<17}{}\n",
        "scenario",
        "policy                 requests   served  fallback  failed   queued    calls  ampl.  \
         per srvd   p50 ms   p95 ms   p99 ms    max ms  breaker"
    );
    for (scenario, rows) in SCENARIOS.iter().zip(&results) {
        table.push_str(&format!("{scenario:<17}{}\n", rows[0].line));
    }
    quoted_block_is_current(
        "BENCHMARKS.md",
        "<!-- today's figures: generated by tests/cli/figures.rs -->",
        &table,
    );
}

/// The ```text block after `marker` in `file` must be `current`; with
/// `BACKSTOP_UPDATE_README=1` it is rewritten to it instead.
fn quoted_block_is_current(file: &str, marker: &str, current: &str) {
    let path = support::workspace().join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("{file} has no {marker:?}"));
    let open = at + text[at..].find("```text\n").expect("a text block after it") + 8;
    let close = open + text[open..].find("```").expect("the block ends");
    if text[open..close] == *current {
        return;
    }
    if std::env::var_os("BACKSTOP_UPDATE_README").is_some() {
        std::fs::write(
            &path,
            format!("{}{current}{}", &text[..open], &text[close..]),
        )
        .unwrap();
        return;
    }
    panic!(
        "{file}'s block after {marker:?} is stale; the command prints:\n{current}\n\
         (BACKSTOP_UPDATE_README=1 cargo test -p backstop-cli --test cli figures rewrites it)"
    );
}

/// The README's monday-spike table and its prose figures: the default on five scenarios, the
/// baselines on two, replicas alone and as a fleet, the default's older builds beside it.
#[test]
fn the_readmes_figures_are_what_simulate_prints() {
    let fixture = |name: &str| {
        support::workspace()
            .join("tests/fixtures")
            .join(name)
            .to_string_lossy()
            .into_owned()
    };
    let (v2, v3, v4) = (
        fixture("policy-guest-0.2.0.wasm"),
        fixture("policy-guest-0.3.0.wasm"),
        fixture("policy-guest-0.4.0.wasm"),
    );
    let runs: [&[&str]; 8] = [
        &["--scenario", "monday-spike"],
        &[
            "--scenario",
            "monday-spike",
            "--replicas",
            "8",
            "--fleet",
            "both",
            "--no-baselines",
        ],
        &["--scenario", "spike-outage"],
        &["--scenario", "batch-backlog", "--no-baselines"],
        &["--scenario", "token-spike", "--no-baselines"],
        &[
            "--scenario",
            "mid-stream",
            "--with-default",
            "--policy",
            &v2,
        ],
        &[
            "--scenario",
            "slow-tails",
            "--with-default",
            "--policy",
            &v3,
        ],
        &[
            "--scenario",
            "brownout",
            "--with-default",
            "--policy",
            &v4,
            "--no-baselines",
        ],
    ];
    let [
        monday,
        replicas,
        outage,
        backlog,
        tokens,
        mid,
        tails,
        brownout,
    ] = <[Table; 8]>::try_from(simulate_all(&runs)).ok().unwrap();
    let header = monday
        .printed
        .lines()
        .find(|l| l.starts_with("policy "))
        .unwrap();
    let rows: String = monday.iter().map(|row| format!("{}\n", row.line)).collect();
    quoted_block_is_current(
        "README.md",
        "backstop simulate --scenario monday-spike --plot docs/monday-spike.svg` gives:",
        &format!("{header}\n{rows}"),
    );
    let (one, alone, fleet) = (&monday[0], &replicas[0], &replicas[1]);
    assert!(fleet.policy.ends_with("fleet"), "{}", fleet.policy);
    let best_baseline = outage[1..]
        .iter()
        .max_by_key(|row| row.served)
        .expect("baselines ran");
    let baseline = |name: &str| {
        monday
            .iter()
            .find(|row| row.policy == name)
            .unwrap_or_else(|| panic!("{name} ran"))
    };
    let (naive, standard, adaptive, router_on_monday) = (
        baseline("naive"),
        baseline("sdk-standard"),
        baseline("sdk-adaptive"),
        baseline("router-cooldown"),
    );
    let whole_seconds = |ms: u64| (ms as f64 / 1000.0).round();
    let percent = |part: u64, of: u64| (part as f64 * 100.0 / of as f64).round();
    let hedged = &tails[0];
    let unhedged = &tails[1];
    for baseline in &tails[2..] {
        assert_eq!(baseline.p99_ms, unhedged.p99_ms, "{}", baseline.line);
    }
    // Only LiteLLM's router, which falls back, serves more than a build that cannot continue.
    let router = mid
        .iter()
        .find(|row| row.policy == "router-cooldown")
        .expect("the router ran");
    for baseline in mid[2..]
        .iter()
        .filter(|row| row.policy != "router-cooldown")
    {
        assert_eq!(baseline.served, mid[1].served, "{}", baseline.line);
    }
    let more_calls = (hedged.calls as f64 / unhedged.calls as f64 - 1.0) * 100.0;
    let (left, stayed) = (&brownout[0], &brownout[1]);
    assert!(left.calls <= stayed.calls, "{}\n{}", left.line, stayed.line);
    says(
        "README.md",
        &[
            format!(
                "this rule takes the default's p99 from {} to {} with no more calls",
                seconds(stayed.p99_ms),
                seconds(left.p99_ms)
            ),
            format!(
                "eight replicas alone spend {:.2} calls a request, as a fleet {:.2}, one process {:.2}",
                alone.amplification, fleet.amplification, one.amplification
            ),
            format!(
                "8 such replicas of the default spend {:.2} calls a request instead of {:.2}, \
                 with p99 {} instead of {}",
                alone.amplification,
                one.amplification,
                seconds(alone.p99_ms),
                seconds(one.p99_ms)
            ),
            format!(
                "serves {} of {} at {:.2} calls a request, where the same policy built for \
                 contract 0.2.0 — which cannot say `continue-answer` — and every baseline serve {} \
                 (LiteLLM's router, which falls back, {})",
                thousands(mid[0].served),
                thousands(mid[0].requests),
                mid[0].amplification,
                thousands(mid[1].served),
                thousands(router.served)
            ),
            format!(
                "the default hedges them, p99 {} at {more_calls:.1} % more calls, where the 0.3.0 \
                 build and every baseline wait them out, p99 {}",
                seconds(hedged.p99_ms),
                seconds(unhedged.p99_ms)
            ),
            format!(
                "sending {} calls per request and making the median user wait {} s",
                ["one", "two", "three", "four", "five"][naive.amplification.round() as usize - 1],
                whole_seconds(naive.p50_ms)
            ),
            format!(
                "the SDK modes never fall back, so {} % fails — the adaptive mode paces its own \
                 sends and makes the median user wait {} s for it",
                percent(standard.requests - standard.served, standard.requests),
                whole_seconds(adaptive.p50_ms)
            ),
            format!(
                "serves {} % at about one call per request",
                percent(router_on_monday.served, router_on_monday.requests)
            ),
            format!(
                "Backstop's default serves everything at **{:.2} calls per request**",
                one.amplification
            ),
            format!("with a p99 of {}: it learns", seconds(one.p99_ms)),
            format!(
                "it serves every request at {:.2} calls per request, p99 {}; the next best \
                 serves {:.1} % at {:.1}",
                outage[0].amplification,
                seconds(outage[0].p99_ms),
                best_baseline.served as f64 * 100.0 / best_baseline.requests as f64,
                best_baseline.amplification
            ),
            format!(
                "serve all {} requests at {:.2} calls per request",
                thousands(backlog[0].served),
                backlog[0].amplification
            ),
            format!(
                "the default serves every request at {:.2} calls a request with p99 {}",
                tokens[0].amplification,
                seconds(tokens[0].p99_ms)
            ),
        ],
    );
    // "every request", "all": the prose says nothing failed.
    for row in [&outage[0], &backlog[0], &tokens[0], one] {
        assert_eq!(row.served, row.requests, "{}", row.line);
    }
}
