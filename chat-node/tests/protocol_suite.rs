//! The official Socket.IO protocol suite (github.com/socketio/socket.io-protocol, test-suite/,
//! kept in ../shared/conformance/socket.io-protocol) against `protocol-server`, chat-node's
//! transport with the suite's reference handlers: every one of its tests passes. The suite's npm
//! packages (mocha, chai, ws, node-fetch) come from its own package-lock.json, installed by
//! scripts/test (scripts/protocol-suite) into target/protocol-suite.

mod common;

use connscale_test_support::{ServerProcess, free_port, wait_for_port, workspace_root};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the suite is: $CONNSCALE_PROTOCOL_SUITE, or ../shared beside the repository.
fn suite_dir() -> PathBuf {
    std::env::var_os("CONNSCALE_PROTOCOL_SUITE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/conformance/socket.io-protocol"))
}

/// The suite's mocha process, in a process group of its own, killed with the group on drop.
struct Mocha(std::process::Child);

impl Drop for Mocha {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill(2) on the process group this test created (the group id is the
            // child's pid).
            unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        }
        let _ = self.0.wait();
    }
}

#[test]
fn the_official_protocol_suite_passes() {
    let suite = suite_dir();
    let deps = workspace_root().join("target/protocol-suite");
    let mocha = deps.join("node_modules/.bin/mocha");
    assert!(
        suite.join("test-suite.js").is_file(),
        "no protocol suite at {} (set CONNSCALE_PROTOCOL_SUITE to its directory)",
        suite.display()
    );
    assert!(
        mocha.is_file(),
        "the protocol suite's npm packages are not installed ({} is missing): run scripts/test \
         (or just scripts/protocol-suite) first",
        mocha.display()
    );

    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_protocol-server"));
    cmd.args(["--port", &port.to_string()]);
    let _server = ServerProcess::spawn("protocol-server", cmd).expect("spawn protocol-server");
    assert!(
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(15)
        ),
        "protocol-server did not listen"
    );

    // The suite hard-codes `const URL = "http://localhost:3000";` (test-suite.js): a copy in a
    // temporary directory points at this test's free port instead (127.0.0.1: the server listens
    // there, and Node.js may resolve localhost to ::1 first). Nothing else is changed.
    let dir = tempfile::tempdir().expect("temp dir");
    for f in ["node-imports.js", "package.json"] {
        std::fs::copy(suite.join(f), dir.path().join(f)).expect("copy the suite");
    }
    let original = std::fs::read_to_string(suite.join("test-suite.js")).expect("test-suite.js");
    let from = r#"const URL = "http://localhost:3000";"#;
    assert!(
        original.contains(from),
        "test-suite.js no longer has {from}: update this test"
    );
    let patched = original.replace(from, &format!(r#"const URL = "http://127.0.0.1:{port}";"#));
    std::fs::write(dir.path().join("test-suite.js"), patched).expect("write test-suite.js");
    std::os::unix::fs::symlink(deps.join("node_modules"), dir.path().join("node_modules"))
        .expect("link node_modules");
    // The suite's total: one `it(` per test, one a line.
    let total = original
        .lines()
        .filter(|l| l.trim_start().starts_with("it("))
        .count();
    assert!(total > 0, "no tests found in test-suite.js");

    let log = dir.path().join("mocha.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut child = Mocha(
        Command::new(&mocha)
            .args(["--no-color", "test-suite.js"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("run mocha"),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for mocha") {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("mocha did not finish in 120 s:\n{text}"));
    let passing = text
        .lines()
        .find_map(|l| l.trim().strip_suffix(')')?.split_once(" passing ("))
        .and_then(|(n, _)| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    assert!(
        status.success() && passing == total,
        "{passing} of {total} protocol tests passed (mocha: {status}):\n{text}"
    );
    println!("{passing} of {total} protocol tests passed");
}

/// Socket.IO's connectTimeout on the chat server: an Engine.IO session that answers every ping
/// but never sends CONNECT is closed once `connect_timeout` (CHAT_CONNECT_TIMEOUT) is over.
#[test]
fn a_session_that_never_connects_is_closed_after_connect_timeout() {
    let n = common::node(
        "noconnect",
        None,
        &[
            ("CHAT_CONNECT_TIMEOUT", "2s"),
            ("CHAT_PING_INTERVAL", "1s"),
            ("CHAT_PING_TIMEOUT", "1s"),
        ],
    );
    let port = n.port;
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let (pings, closed) = rt.block_on(async move {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
        let mut pings = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "2" => {
                    pings += 1;
                    ws.send(Message::text("3")).await.expect("pong");
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                    break (pings, true);
                }
                Ok(Some(Ok(_))) => {}
                Err(_) => break (pings, false),
            }
        }
    });
    assert!(
        closed,
        "a session without CONNECT was still open after 20 s ({pings} pings answered)"
    );
}
