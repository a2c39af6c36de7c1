//! `backstop serve` as an operator runs it: started from the command line in front of the
//! fault server, asked and changed with `backstop status` and `backstop swap`, and stopped
//! with SIGTERM while a request is in flight — which is answered before the process exits.

use backstop_test_support as support;

use crate::backstop;
use backstop_lab::scenario::{Latency, ModelFaults};
use backstop_lab::{FaultServer, Scenario};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::text;

const TOKEN: &str = "cli-serve-test-token-0123456789";

/// The URL after `marker` on a line of the sidecar's banner.
fn url_after(line: &str, marker: &str) -> Option<String> {
    let rest = line.split(marker).nth(1)?;
    Some(rest.split_whitespace().next()?.to_string())
}

/// One plain HTTP/1.1 request; the whole answer.
fn post(addr: &str, path: &str, body: &str) -> String {
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

/// One plain HTTP/1.1 GET; the whole answer.
fn get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn serve_answers_takes_a_swap_and_drains_on_sigterm() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut scenario = Scenario::default();
    scenario.models.insert(
        "slow".into(),
        ModelFaults {
            latency_ms: Latency {
                min: 1_500,
                max: 1_500,
            },
            ..ModelFaults::default()
        },
    );
    let server = runtime.block_on(FaultServer::start(scenario, 0)).unwrap();
    let dir = support::scratch_dir("cli-serve");
    let token = dir.join("admin.token");
    std::fs::write(&token, TOKEN).unwrap();
    let token = token.to_str().unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--upstream-endpoint",
            &server.endpoint_url(),
            "--admin-token-file",
            token,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
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
    let (data, admin) = (data.unwrap(), admin.unwrap());
    let rest = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });

    let status = backstop(&["status", "--admin", &admin]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let shown = text(&status.stdout);
    assert!(shown.contains("backstop-default"), "{shown}");

    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/policy-guest-0.1.0.wasm"
    );
    let refused = backstop(&["swap", "--admin", &admin, fixture]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("401"),
        "{}",
        text(&refused.stderr)
    );
    let swapped = backstop(&[
        "swap",
        "--admin",
        &admin,
        "--admin-token-file",
        token,
        fixture,
    ]);
    assert!(swapped.status.success(), "{}", text(&swapped.stderr));
    let status = text(&backstop(&["status", "--admin", &admin]).stdout);
    assert!(status.contains("0.1.0"), "{status}");

    let addr = data.trim_start_matches("http://").to_string();
    let in_flight = std::thread::spawn(move || {
        post(
            &addr,
            "/model/slow/converse",
            r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#,
        )
    });
    // SIGTERM once the request is in flight (the admin listener says so).
    let admin_addr = admin.trim_start_matches("http://").to_string();
    let in_progress = || get(&admin_addr, "/status").contains("\"in_flight\":1");
    assert!(
        support::eventually(Duration::from_secs(5), in_progress),
        "the request never arrived"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let answer = in_flight.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the request in flight is answered: {answer}"
    );
    assert!(answer.contains("x-backstop-model: slow"), "{answer}");
    let exit = child.wait().unwrap();
    let log = rest.join().unwrap();
    assert!(exit.success(), "{log}");
    assert!(log.contains("draining"), "{log}");
    assert_eq!(server.requests("slow"), 1);
    let _ = std::fs::remove_dir_all(dir);
}
