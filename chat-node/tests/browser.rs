//! The page at `/` in headless Chromium: a tab on each of two nodes; a message sent in one
//! appears in the other. Saves target/screenshots/chat-two-nodes.png.

mod common;
use common::node;
use connscale_test_support::{RedisServer, find_tool, workspace_root};
use std::process::Command;

#[test]
fn heavy_two_tabs_on_two_nodes_chat_through_the_page() {
    let chromium = find_tool(
        "chromium",
        &[],
        "apt-get install -y chromium (scripts/test does)",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let nodejs =
        find_tool("node", &[], "apt-get install -y nodejs npm").unwrap_or_else(|e| panic!("{e}"));
    let redis = RedisServer::start();
    let (a, b) = (
        node("a", Some(&redis.url()), &[]),
        node("b", Some(&redis.url()), &[]),
    );
    let shots = workspace_root().join("target/screenshots");
    std::fs::create_dir_all(&shots).expect("mkdir");
    let shot = shots.join("chat-two-nodes.png");
    let _ = std::fs::remove_file(&shot);
    let out = Command::new(nodejs)
        .arg(workspace_root().join("chat-node/tests/js/browser.js"))
        .args([a.url(), b.url()])
        .arg(&shot)
        .env("NODE_PATH", workspace_root().join("node_modules"))
        .env("CHROMIUM", chromium)
        .output()
        .expect("run browser.js");
    assert!(
        out.status.success(),
        "browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 5_000)
            .unwrap_or(false),
        "no screenshot at {}",
        shot.display()
    );
}
