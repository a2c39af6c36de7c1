//! Shared helpers of the integration tests and benchmarks: the default policy, contexts, and
//! hostile components assembled from a few lines of core-wasm text plus the real WIT contract.
//! A crate of its own (not a `mod` copied into each test binary), so every helper is compiled
//! once and none is dead code in a binary that does not use it.

use backstop::AttemptContext;
use backstop::Engine;
use backstop::ErrorInfo;
use backstop::ErrorKind;
use backstop::Limits;
use backstop::PolicyModule;
use backstop_runtime::policy::Policy;
use std::io::{BufRead, Read, Write};
use std::sync::OnceLock;

/// The frozen contract 0.1.0 that the hand-written test modules are built against: their
/// core-wasm bodies read `attempt-context` at its canonical-ABI offsets. The host keeps loading
/// 0.1.0 modules, so every such module still exercises the host as it did.
pub const WIT: &str = include_str!("../../wit/v0.1.0/policy.wit");

/// The version of [`WIT`].
pub const WIT_VERSION: &str = "0.1.0";

/// The newest contract, for components that must have its exact signature.
pub const WIT_NEWEST: &str = include_str!("../../wit/policy.wit");

/// The cheapest possible policy of the newest contract: every call answers a constant
/// (`retry(1)`, `send(0)`), reading nothing of its context — the floor a real policy's cost is
/// measured against, with the very same signature (and so the same lowering) as the default.
pub fn floor_component() -> Vec<u8> {
    newest_component(CoreParts::default().decide, SEND_TO_PRIMARY)
}

/// A `route` body answering `send(route-send { model: 0, delay-ms: 0 })`.
const SEND_TO_PRIMARY: &str = "(i32.store8 (i32.const 2048) (i32.const 0)) \
    (i32.store (i32.const 2056) (i32.const 0)) (i64.store (i32.const 2064) (i64.const 0)) \
    i32.const 2048";

/// [`SANE_DECIDE`] for the newest contract, whose context has no list of names: its
/// `output-delivered` byte is at 81, not 89.
fn sane_decide_newest() -> String {
    SANE_DECIDE.replace("offset=89", "offset=81")
}

/// A sane policy of the newest contract that routes every request to the primary.
pub fn sane_newest_component() -> Vec<u8> {
    newest_component(&sane_decide_newest(), SEND_TO_PRIMARY)
}

/// [`sane_newest_component`] whose `route` traps: sane in every decision, broken in routing.
pub fn route_trap_component() -> Vec<u8> {
    newest_component(&sane_decide_newest(), "unreachable")
}

/// [`sane_newest_component`] whose instances each trap on every route after their first
/// `calls`: it passes vetting, and faults only once it has been live a while.
pub fn route_trap_after_component(calls: u32) -> Vec<u8> {
    let route = format!(
        "(global.set $routes (i32.add (global.get $routes) (i32.const 1)))
         (if (i32.gt_u (global.get $routes) (i32.const {calls})) (then unreachable))
         {SEND_TO_PRIMARY}"
    );
    newest_component_with(
        &sane_decide_newest(),
        &route,
        "(global $routes (mut i32) (i32.const 0))",
    )
}

/// A component of the newest contract running `decide_body` for every decision and
/// `route_body` (core wasm returning a pointer to its `destination`) for every route.
fn newest_component(decide_body: &str, route_body: &str) -> Vec<u8> {
    newest_component_with(decide_body, route_body, "")
}

/// [`newest_component`] with `extra` module fields (globals the bodies use).
fn newest_component_with(decide_body: &str, route_body: &str, extra: &str) -> Vec<u8> {
    let parts = CoreParts {
        decide: decide_body,
        extra,
        ..CoreParts::default()
    };
    let core = core_wat(&parts, backstop_core::contract::WIT_VERSION);
    // Since 0.2.0 configure also takes the chain's facts (a list: two more flat parameters);
    // 0.3.0's route context (a reservation and an expected settled cost where 0.2.0 had
    // tokens) flattens to 14 parameters.
    let configure = "#configure\") (param i32 i32) (result i32)";
    assert!(
        core.contains(configure),
        "the builder's configure signature"
    );
    let export = format!(
        "backstop:policy/decider@{}",
        backstop_core::contract::WIT_VERSION
    );
    let route = format!(
        "(func (export \"{export}#route\") \
         (param i32 i32 i32 i64 i64 i32 i32 i64 i64 i32 i32 i32 i32 i64) (result i32) \
         {route_body})\n)"
    );
    let core = core
        .replace(
            configure,
            "#configure\") (param i32 i32 i32 i32) (result i32)",
        )
        .trim_end()
        .trim_end_matches(')')
        .to_string()
        + &route;
    component(&core, WIT_NEWEST, "policy")
}

/// The default policy as it was built against contract 0.1.0 (it has no `route`), kept so that
/// every release shows the host still loads and runs 0.1.0 modules.
pub const POLICY_0_1_0: &[u8] = include_bytes!("../fixtures/policy-guest-0.1.0.wasm");

/// The default policy as it was built against contract 0.2.0 (it routes, and never continues
/// an answer), kept so that every release shows the host still loads and runs 0.2.0 modules.
pub const POLICY_0_2_0: &[u8] = include_bytes!("../fixtures/policy-guest-0.2.0.wasm");

/// The default policy as it was built against contract 0.3.0 (it continues answers, and never
/// hedges), kept so that every release shows the host still loads and runs 0.3.0 modules.
pub const POLICY_0_3_0: &[u8] = include_bytes!("../fixtures/policy-guest-0.3.0.wasm");

/// [`POLICY_0_1_0`], loaded and configured with `config`.
pub fn policy_0_1_0(config: &str) -> Policy {
    fixture_policy(POLICY_0_1_0, "policy-guest-0.1.0.wasm", config)
}

/// One engine for the whole test binary, as a host would have.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::new(Limits::default()).expect("engine"))
}

/// The embedded default policy, compiled once per test binary.
pub fn default_module() -> &'static PolicyModule {
    static MODULE: OnceLock<PolicyModule> = OnceLock::new();
    MODULE.get_or_init(|| engine().load_default().expect("default policy loads"))
}

/// The embedded default policy, configured with `config`.
pub fn default_policy(config: &str) -> Policy {
    default_module().configure(config).expect("configures")
}

/// A first-failure context for `kind` on a chain of `models`.
pub fn ctx(kind: ErrorKind, models: &[&str]) -> AttemptContext {
    AttemptContext::first_failure(ErrorInfo::of(kind), models.iter().copied())
}

/// Full jitter as the README specifies it: uniform over `[0, min(base * 2^exp, cap)]`, the
/// uniform draw being `floor(entropy * (window + 1) / 2^64)`.
pub fn expected_jitter(base: u64, cap: u64, exponent: u32, entropy: u64) -> u64 {
    let window = base.saturating_mul(1u64 << exponent).min(cap);
    ((u128::from(entropy) * (u128::from(window) + 1)) >> 64) as u64
}

/// Core-wasm bodies for the three functions of `backstop:policy/decider`, wrapped into a
/// component with the WIT contract embedded as metadata (what wit-bindgen does for Rust).
pub struct CoreParts<'a> {
    pub configure: &'a str,
    pub decide: &'a str,
    pub info: &'a str,
    /// Extra module fields (functions, data, imports go in `imports`).
    pub extra: &'a str,
    pub imports: &'a str,
}

impl Default for CoreParts<'_> {
    fn default() -> Self {
        CoreParts {
            // result<_, string> at address 0: zeroed memory is `ok`.
            configure: "i32.const 0",
            // retry(1): discriminant 0, payload u64 at offset 8.
            decide: "(i64.store (i32.const 2056) (i64.const 1)) (i32.store8 (i32.const 2048) (i32.const 0)) i32.const 2048",
            // A valid identity: `test-policy 0.0.0` at the contract's version (see `core_wat`).
            info: DEFAULT_INFO,
            extra: "",
            imports: "",
        }
    }
}

/// The `info` body of [`CoreParts::default`]: `core_wat` answers `test-policy`, `0.0.0` and the
/// contract's version from a data segment of its own.
pub const DEFAULT_INFO: &str = "DEFAULT_INFO";

/// The core module text for a policy at `version` with the given bodies.
pub fn core_wat(parts: &CoreParts, version: &str) -> String {
    let export = format!("backstop:policy/decider@{version}");
    // The default identity lives at 3500.., clear of `info_parts` (3000..) and the heap (4096..).
    let (default_info, identity_data) = identity(["test-policy", "0.0.0", version], 3500);
    let info = if parts.info == DEFAULT_INFO {
        default_info.as_str()
    } else {
        parts.info
    };
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  ;; A bump allocator that wraps around: enough for a few thousand calls of a test.
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (i32.and
      (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
      (i32.xor (i32.sub (local.get 2) (i32.const 1)) (i32.const -1))))
    (if (i32.gt_u (i32.add (local.get $ptr) (local.get 3)) (i32.const 120000))
      (then (local.set $ptr (i32.const 4096))))
    (global.set $heap (i32.add (local.get $ptr) (local.get 3)))
    (local.get $ptr))
  (func (export "{export}#configure") (param i32 i32) (result i32) {configure})
  (func (export "{export}#decide") (param i32) (result i32) {decide})
  (func (export "{export}#info") (result i32) {info})
  {identity_data}
  {extra}
)"#,
        imports = parts.imports,
        configure = parts.configure,
        decide = parts.decide,
        extra = parts.extra,
    )
}

/// Builds a component from core text and WIT text, selecting `world` of the package `main`.
pub fn component(core: &str, wit: &str, world: &str) -> Vec<u8> {
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve.push_str("test.wit", wit).expect("test WIT parses");
    let world = resolve
        .select_world(&[package], Some(world))
        .expect("world exists");
    let mut module = wat::parse_str(core).expect("core wat parses");
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .expect("metadata embeds");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("module accepted")
        .validate(true)
        .encode()
        .expect("component encodes")
}

/// A policy component with the given bodies against the real contract.
pub fn policy_component(parts: &CoreParts) -> Vec<u8> {
    component(&core_wat(parts, WIT_VERSION), WIT, "policy")
}

/// Log lines captured from a `tracing` subscriber, for asserting what an operator would see.
#[derive(Clone, Default)]
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

pub fn capture_logs() -> CapturedLogs {
    // tracing caches per call site whether anyone listens. Tests run in parallel threads; a
    // call site first hit by a test with no subscriber could be cached as "nobody" and then
    // skip a capturing test's scoped subscriber. A global subscriber (writing nowhere) that
    // listens at INFO keeps every call site live.
    static GLOBAL: OnceLock<()> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let sink = tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .finish();
        let _ = tracing::subscriber::set_global_default(sink);
    });
    CapturedLogs::default()
}

impl CapturedLogs {
    pub fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
        let sink = self.clone();
        tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A `decide` body that behaves: gives up (output-committed) once output was delivered, gives
/// up (not-retryable) on the four errors that cannot heal, and retries after 1 ms otherwise.
/// Offsets follow the canonical ABI layout of `attempt-context`: the error kind is the byte at
/// 8, `output-delivered` the byte at 89.
pub const SANE_DECIDE: &str = r#"
    (if (i32.load8_u offset=89 (local.get 0))
      (then (i32.store8 (i32.const 2048) (i32.const 4))
            (i32.store8 (i32.const 2056) (i32.const 3))
            (return (i32.const 2048))))
    (if (i32.le_u (i32.sub (i32.load8_u offset=8 (local.get 0)) (i32.const 8)) (i32.const 3))
      (then (i32.store8 (i32.const 2048) (i32.const 4))
            (i32.store8 (i32.const 2056) (i32.const 0))
            (return (i32.const 2048))))
    (i32.store8 (i32.const 2048) (i32.const 0))
    (i64.store (i32.const 2056) (i64.const 1))
    (i32.const 2048)"#;

/// An `info` body answering `name`, `version` and the contract version, with the data segment
/// it needs (to go in `extra`).
pub fn info_parts(name: &str, version: &str) -> (String, String) {
    identity([name, version, WIT_VERSION], 3000)
}

/// An `info` body answering `strings`, which writes its record at `record` and reads the
/// strings from a data segment 100 bytes further on, and that data segment. Every byte is a
/// `\hh` escape, so any text fits: quotes and control characters included.
fn identity(strings: [&str; 3], record: usize) -> (String, String) {
    let mut body = String::new();
    let mut at = record + 100;
    for (i, s) in strings.iter().enumerate() {
        body += &format!(
            "(i32.store (i32.const {}) (i32.const {at})) (i32.store (i32.const {}) (i32.const {})) ",
            record + 8 * i,
            record + 4 + 8 * i,
            s.len()
        );
        at += s.len();
    }
    body += &format!("i32.const {record}");
    let escaped: String = strings
        .concat()
        .bytes()
        .map(|b| format!("\\{b:02x}"))
        .collect();
    let data = format!("(data (i32.const {}) \"{escaped}\")", record + 100);
    (body, data)
}

/// A well-behaved policy that is not the default: `retry-1` at `version`.
pub fn sane_component(version: &str) -> Vec<u8> {
    let (info, data) = info_parts("retry-1", version);
    policy_component(&CoreParts {
        decide: SANE_DECIDE,
        info: &info,
        extra: &data,
        ..Default::default()
    })
}

/// [`sane_component`], except that each instance traps on every call after its first `calls`.
pub fn trap_after_component(calls: u32) -> Vec<u8> {
    let (info, data) = info_parts("trap-later", "1.0.0");
    let decide = format!(
        "(global.set $calls (i32.add (global.get $calls) (i32.const 1)))
         (if (i32.gt_u (global.get $calls) (i32.const {calls})) (then unreachable))
         {SANE_DECIDE}"
    );
    let extra = format!("(global $calls (mut i32) (i32.const 0)) {data}");
    policy_component(&CoreParts {
        decide: &decide,
        info: &info,
        extra: &extra,
        ..Default::default()
    })
}

/// A module that gives up on every error (`not-retryable`): it resends nothing that cannot
/// heal, so it passes the smoke table, and it never faults, yet it fails every request that
/// meets an error.
pub fn give_up_component() -> Vec<u8> {
    let (info, data) = info_parts("give-up", "1.0.0");
    policy_component(&CoreParts {
        decide: "(i32.store8 (i32.const 2048) (i32.const 4)) (i32.store8 (i32.const 2056) (i32.const 0)) i32.const 2048",
        info: &info,
        extra: &data,
        ..Default::default()
    })
}

/// [`sane_component`] carrying `functions` extra functions of ~600 bytes of code each:
/// harmless, and slow to compile when there are thousands (a compile bomb by bulk).
pub fn heavy_component(functions: usize) -> Vec<u8> {
    let (info, data) = info_parts("heavy", "1.0.0");
    let body: String = (0..40)
        .map(|i| {
            format!(
                "local.get 0 i64.const {} i64.mul i64.const 7 i64.xor local.set 0 ",
                i + 3
            )
        })
        .collect();
    let mut extra = data;
    for i in 0..functions {
        extra += &format!("(func $heavy{i} (param i64) (result i64) {body} local.get 0)\n");
    }
    policy_component(&CoreParts {
        decide: SANE_DECIDE,
        info: &info,
        extra: &extra,
        ..Default::default()
    })
}

/// A fresh, empty directory under the system temp dir, unique to this process and `name`.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("backstop-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Polls `done` every 20 ms for up to `limit`; whether it became true.
pub fn eventually(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    done()
}

/// Command output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits until something listens on loopback `port` (a server `what` just started), for at
/// most 10 s.
pub fn wait_for_port(port: u16, what: &str) {
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{what} did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A `redis-server` of the test's own, killed when dropped.
pub struct RedisServer {
    /// The server process.
    pub child: std::process::Child,
    /// Its port.
    pub port: u16,
}

impl RedisServer {
    /// Starts one on a free loopback port (or on `port`); `None` when redis-server is missing.
    pub fn start(port: Option<u16>) -> Option<RedisServer> {
        let port = port.unwrap_or_else(|| {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        });
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else {
            skip_missing("redis-server", "apt-get install redis-server");
        };
        wait_for_port(port, "redis-server");
        Some(RedisServer { child, port })
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// `backstop serve` as a process, for the CLI's tests and benchmarks.

/// The URL after `marker` on a line of the sidecar's banner.
fn url_after(line: &str, marker: &str) -> Option<String> {
    let rest = line.split(marker).nth(1)?;
    Some(rest.split_whitespace().next()?.to_string())
}

/// One plain HTTP/1.1 request; the whole answer.
pub fn http_post(addr: &str, path: &str, body: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// A `backstop serve` process on loopback ports of its choosing, killed when dropped.
pub struct ServeProcess {
    /// The process.
    pub child: std::process::Child,
    /// The data listener's URL.
    pub data: String,
    /// The admin listener's URL.
    pub admin: String,
    log: Option<std::thread::JoinHandle<String>>,
}

impl ServeProcess {
    /// Starts `backstop serve` (the binary at `backstop`) with `args` and `env`, and reads
    /// its banner for the URLs.
    pub fn start(backstop: &str, args: &[&str], env: &[(&str, &str)]) -> ServeProcess {
        let mut child = std::process::Command::new(backstop)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let (mut data, mut admin) = (None, None);
        let mut banner = String::new();
        while data.is_none() || admin.is_none() {
            let mut line = String::new();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "serve exited: {banner}"
            );
            data = data.or_else(|| url_after(&line, "Bedrock Runtime on "));
            admin = admin.or_else(|| url_after(&line, "admin on "));
            banner += &line;
        }
        let log = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stderr.read_to_string(&mut rest);
            banner + &rest
        });
        ServeProcess {
            child,
            data: data.unwrap(),
            admin: admin.unwrap(),
            log: Some(log),
        }
    }

    /// Waits for the process to exit: its status and everything it logged.
    pub fn wait(&mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        let log = self
            .log
            .take()
            .map(|l| l.join().unwrap())
            .unwrap_or_default();
        (status, log)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One plain HTTP/1.1 GET; the whole answer.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// The fleet key the test replicas share.
pub const FLEET_KEY: &str = "test-fleet-key-0123456789abcdef0123456789";

/// `count` `backstop serve` processes (the binary at `backstop`) in front of `upstream`, with
/// the host configuration at `config`, sharing [`FLEET_KEY`].
pub fn serve_replicas(
    backstop: &str,
    upstream: &str,
    config: &std::path::Path,
    count: usize,
) -> Vec<ServeProcess> {
    let config = config.to_str().expect("a UTF-8 path");
    let args = ["--upstream-endpoint", upstream, "--host-config", config];
    (0..count)
        .map(|_| ServeProcess::start(backstop, &args, &[("BACKSTOP_FLEET_KEY", FLEET_KEY)]))
        .collect()
}

/// A module that behaves only when it recognises the old smoke table — entropy exactly 0 or
/// `u64::MAX`, the two draws it always used — and traps on every other entropy, which is every
/// production decision. `entropy` sits at offset 104 of 0.1.0's `attempt-context`.
pub fn entropy_trap_component() -> Vec<u8> {
    trap_when(
        "entropy-trap",
        "(i32.and (i64.ne (i64.load offset=104 (local.get 0)) (i64.const 0))
                  (i64.ne (i64.load offset=104 (local.get 0)) (i64.const -1)))",
    )
}

/// A 0.1.0 module named `name` that traps in `decide` when `condition` (a WAT `i32`
/// expression over the context at `local 0`) holds, and decides sanely otherwise.
fn trap_when(name: &str, condition: &str) -> Vec<u8> {
    let (info, data) = info_parts(name, "1.0.0");
    let decide = format!("(if {condition} (then unreachable)) {SANE_DECIDE}");
    policy_component(&CoreParts {
        decide: &decide,
        info: &info,
        extra: &data,
        ..Default::default()
    })
}

/// The built-in default under another name: `backstop-variant`, at the default's version, its
/// name's bytes patched in place (same length, so the component stays valid) — a module that
/// decides exactly as the default does, so it passes the effect trial, with a digest and a
/// name of its own for tests that need a good module that is not the default.
pub fn variant_component() -> Vec<u8> {
    let mut bytes = backstop_runtime::module::DEFAULT_POLICY_WASM.to_vec();
    let (from, to) = ("backstop-default", "backstop-variant");
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .expect("the default's name is in its data");
    bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
    assert!(
        !bytes.windows(from.len()).any(|w| w == from.as_bytes()),
        "the name is written once"
    );
    bytes
}

/// The version [`variant_component`] reports: the default's own.
pub fn variant_version() -> String {
    default_module().info().version.clone()
}

/// A module that answers every smoke question (their `remaining-ms` is always 20 s or more)
/// and traps once a request has less than 20 s left — which the effect trial's 30 s deadlines
/// reach. `remaining-ms` sits at offset 80 of 0.1.0's `attempt-context`.
pub fn late_trap_component() -> Vec<u8> {
    trap_when(
        "late-trap",
        "(i64.lt_u (i64.load offset=80 (local.get 0)) (i64.const 20000))",
    )
}

/// A policy built earlier (a fixture's `bytes`, `name` for errors), configured with `config`.
pub fn fixture_policy(bytes: &[u8], name: &str, config: &str) -> Policy {
    engine()
        .load_bytes(bytes, name)
        .unwrap_or_else(|e| panic!("the fixture {name} loads: {e}"))
        .configure(config)
        .unwrap_or_else(|e| panic!("the fixture {name} takes {config}: {e}"))
}

/// A multi-threaded runtime with I/O and time, on two workers (the machines CI and the
/// benchmarks run on have two cores): the one builder of every test and bench that drives
/// async code from a plain `#[test]` or `main`.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A test that needs a tool this machine lacks. Such a test is `#[ignore]`d with the tool it
/// needs, so a plain `cargo test` lists it as ignored (never as passed); it runs when asked
/// for (`-- --include-ignored`, as the README's test command and CI do), and then a missing
/// tool is a failure that says what to install.
pub fn skip_missing(tool: &str, install: &str) -> ! {
    panic!(
        "{tool} is not installed ({install}); run `cargo test --workspace` without \
         --include-ignored to leave out the tests that need it"
    );
}

/// The workspace's root directory.
pub fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `PATH` with the tools `.ci/run` installs under `target/jco` (componentize-js, jco) after
/// the machine's own.
pub fn path_with_jco() -> String {
    let jco_bin = workspace().join("target/jco/node_modules/.bin");
    format!(
        "{}:{}",
        std::env::var("PATH").unwrap_or_default(),
        jco_bin.display()
    )
}

/// Whether `tool` runs from [`path_with_jco`].
pub fn has_tool(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .env("PATH", path_with_jco())
        .output()
        .is_ok_and(|out| out.status.success())
}

/// An example policy of `examples/policies/` (`cost-aware-py`, `latency-first-js`), built from
/// source by its own `build.sh` once per test process, as its author would; `None` (after
/// [`skip_missing`]) when the language's tool is not installed.
pub fn example_policy(name: &str) -> Option<std::path::PathBuf> {
    static BUILT: OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, std::path::PathBuf>>,
    > = OnceLock::new();
    let (tool, install) = if name.ends_with("-py") {
        ("componentize-py", "pip install componentize-py==0.25.1")
    } else {
        (
            "componentize-js",
            "npm install --prefix target/jco @bytecodealliance/jco@1.35.0",
        )
    };
    if !has_tool(tool) {
        skip_missing(tool, install);
    }
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(path) = built.get(name) {
        return Some(path.clone());
    }
    let out = scratch_dir(&format!("example-{name}")).join(format!("{name}.wasm"));
    let script = workspace()
        .join("examples/policies")
        .join(name)
        .join("build.sh");
    let status = std::process::Command::new(&script)
        .arg(&out)
        .output()
        .expect("the build script runs");
    assert!(
        status.status.success() && out.is_file(),
        "{} failed: {}{}",
        script.display(),
        text(&status.stdout),
        text(&status.stderr)
    );
    built.insert(name.to_string(), out.clone());
    Some(out)
}

/// A throttle on the primary, third attempt, realistic ids and a full health snapshot.
pub fn full_context() -> AttemptContext {
    let mut error = ErrorInfo::of(ErrorKind::Throttling);
    error.message = "Too many requests, please wait before trying again.".into();
    let models = [
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "us.anthropic.claude-3-5-sonnet-20240620-v1:0",
        "us.amazon.nova-pro-v1:0",
    ];
    let mut ctx = AttemptContext::first_failure(error, models);
    ctx.request_id = "req-123456".into();
    ctx.attempts_on_model = 3;
    ctx.attempts_total = 3;
    ctx.elapsed_ms = 2_400;
    ctx.remaining_ms = 57_600;
    ctx.entropy = 0x9e37_79b9_7f4a_7c15;
    ctx.reservation = 5_096;
    ctx.expected_settled = 2_000;
    ctx.health = vec![
        backstop_core::contract::ModelHealth {
            requests: 120,
            throttles: 40,
            errors: 2,
            consecutive_failures: 3,
            consecutive_errors: 0,
            breaker: backstop_core::contract::BreakerState::Closed,
            in_state_ms: 600_000,
            first_event_limit_ms: 2_000,
            idle_limit_ms: 5_000,
            start_p95_ms: 2_400,
        },
        backstop_core::contract::ModelHealth {
            requests: 30,
            throttles: 1,
            errors: 0,
            consecutive_failures: 0,
            consecutive_errors: 0,
            breaker: backstop_core::contract::BreakerState::Closed,
            in_state_ms: 600_000,
            first_event_limit_ms: 2_000,
            idle_limit_ms: 5_000,
            start_p95_ms: 1_500,
        },
        backstop_core::contract::ModelHealth {
            requests: 0,
            throttles: 0,
            errors: 0,
            consecutive_failures: 0,
            consecutive_errors: 0,
            breaker: backstop_core::contract::BreakerState::Closed,
            in_state_ms: 600_000,
            first_event_limit_ms: 2_000,
            idle_limit_ms: 5_000,
            start_p95_ms: 0,
        },
    ];
    ctx
}

/// A handle around `policy` as it is, without vetting: what a test that drives a client with a
/// module of its own means, spelled out ([`PolicyHandle::unchecked`](backstop::PolicyHandle::unchecked)).
pub fn unvetted(policy: Policy) -> backstop::PolicyHandle {
    backstop::PolicyHandle::unchecked(policy, backstop::SwapOptions::default())
}

/// A client on the fault server at `endpoint` with `options`, deciding with the default policy
/// (unvetted, see [`unvetted`]), each attempt bounded by `attempt_timeout`.
pub async fn default_client(
    endpoint: &str,
    attempt_timeout: std::time::Duration,
    options: backstop::ClientOptions,
) -> backstop::ResilientClient {
    let sdk = backstop::sdk_client(backstop::SdkOptions::local(endpoint, attempt_timeout)).await;
    backstop::ResilientClient::new(sdk, unvetted(default_policy("{}")), options)
        .expect("the client's options are valid")
}
