//! loadtest against real chat-nodes and Redis: ramp holds and spreads connections; chat traffic
//! across two nodes arrives complete; and loss detection bites when messages really are dropped
//! (Redis killed mid-run, so cross-node deliveries vanish).

use connscale_test_support::{RedisServer, ServerProcess, free_port, wait_for_port, workspace_bin};
use loadtest::{chat, ramp};
use std::process::Command;
use std::time::Duration;

fn node(redis: Option<&str>) -> (ServerProcess, String) {
    let port = free_port();
    let mut cmd = Command::new(workspace_bin("chat-node").unwrap_or_else(|e| panic!("{e}")));
    cmd.args(["--port", &port.to_string()])
        .env("CHAT_RATE_PER_SEC", "1000")
        .env("CHAT_RATE_BURST", "1000");
    if let Some(r) = redis {
        cmd.args(["--redis-url", r]);
    }
    let p = ServerProcess::spawn("chat", cmd).expect("spawn chat-node");
    assert!(wait_for_port(
        ([127, 0, 0, 1], port).into(),
        Duration::from_secs(15)
    ));
    (p, format!("http://127.0.0.1:{port}"))
}

#[tokio::test]
async fn heavy_ramp_holds_and_spreads_connections() {
    let (_a, ua) = node(None);
    let (_b, ub) = node(None);
    let cfg = ramp::RampConfig {
        targets: vec![ua.clone(), ub.clone()],
        connections: 2_000,
        rate: 2_000.0,
        hold: Duration::from_secs(1),
        sources: loadtest::client::parse_sources("127.0.0.2-127.0.0.3").expect("sources"),
        connect_timeout: Duration::from_secs(10),
    };
    let r = ramp::run(cfg, |_, _| {}).await.expect("ramp");
    assert_eq!(r.connected, 2_000, "{}", r.table());
    assert_eq!((r.per_target[&ua], r.per_target[&ub]), (1_000, 1_000));
    assert_eq!(r.held_at_end, 2_000);
}

#[tokio::test]
async fn ramp_counts_failures_by_cause() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cfg = ramp::RampConfig {
        targets: vec![dead],
        connections: 5,
        rate: 100.0,
        hold: Duration::ZERO,
        sources: vec![],
        connect_timeout: Duration::from_secs(2),
    };
    let r = ramp::run(cfg, |_, _| {}).await.expect("ramp");
    assert_eq!(r.connected, 0);
    assert_eq!(r.failures.get("refused"), Some(&5), "{:?}", r.failures);
}

fn chat_cfg(targets: Vec<String>, secs: u64) -> chat::ChatConfig {
    chat::ChatConfig {
        targets,
        clients: 20,
        rooms: 4,
        send_rate: 100.0,
        duration: Duration::from_secs(secs),
        sources: vec![],
    }
}

#[tokio::test]
async fn heavy_chat_across_two_nodes_is_complete() {
    let redis = RedisServer::start();
    let (_a, ua) = node(Some(&redis.url()));
    let (_b, ub) = node(Some(&redis.url()));
    let r = chat::run(chat_cfg(vec![ua, ub], 3)).await.expect("chat");
    assert_eq!(r.clients_connected, 20);
    assert!(
        r.sent > 200 && r.expected_deliveries == r.sent * 4,
        "{}",
        r.table()
    );
    assert_eq!(
        (r.lost, r.duplicated, r.out_of_order),
        (0, 0, 0),
        "{}",
        r.table()
    );
    assert!(r.latency_ms_p50 > 0.0);
}

#[tokio::test]
async fn heavy_loss_detection_catches_really_dropped_messages() {
    let mut redis = RedisServer::start();
    let (_a, ua) = node(Some(&redis.url()));
    let (_b, ub) = node(Some(&redis.url()));
    let run = tokio::spawn(chat::run(chat_cfg(vec![ua, ub], 4)));
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    redis.kill(); // cross-node deliveries are dropped from here on
    let r = run.await.expect("join").expect("chat");
    assert!(r.lost > 0, "losses went undetected: {}", r.table());
    assert_eq!(r.duplicated, 0);
}
