//! loadtest against real chat-nodes, agents and Redis: ramp holds and spreads connections; chat
//! traffic across two nodes arrives complete; loss detection bites when messages really are
//! dropped (Redis killed mid-run, so cross-node deliveries vanish); capacity stops where a node's
//! hard cap refuses connects, where its agent turns 503, or at a missed SLO; distribution reads
//! every agent's count.

use connscale_test_support::{RedisServer, ServerProcess, free_port, wait_for_port, workspace_bin};
use loadtest::{capacity, chat, distribution, ramp};
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

/// 20 clients over two nodes (client i on node i % 2) in 5 rooms (room i % 5): every room has
/// two members on each node, so its messages cross nodes (with 4 rooms each room would sit on
/// one node and Redis would carry nothing).
fn chat_cfg(targets: Vec<String>, secs: u64) -> chat::ChatConfig {
    chat::ChatConfig {
        targets,
        clients: 20,
        rooms: 5,
        send_rate: 100.0,
        duration: Duration::from_secs(secs),
        sources: vec![],
        stop_early: None,
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
        r.sent > 200 && r.expected_deliveries == r.sent * 3,
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
async fn heavy_chat_reports_clients_that_never_connected_by_cause() {
    let (_a, ua) = node(None);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let r = chat::run(chat_cfg(vec![ua, dead], 2)).await.expect("chat");
    assert_eq!(r.clients_connected, 10, "{}", r.table());
    assert_eq!(
        r.connect_failures.get("refused"),
        Some(&10),
        "{}",
        r.table()
    );
    assert!(
        r.table().contains("never connected: refused 10"),
        "{}",
        r.table()
    );
    assert_eq!((r.lost, r.duplicated), (0, 0), "{}", r.table());
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

/// Redis drops the nodes' subscriptions again and again (as it does to subscribers past their
/// `client-output-buffer-limit pubsub`) while the clients chat: no client stays connected having
/// missed a message; those that missed some are disconnected and recover them.
#[tokio::test]
async fn heavy_dropped_subscriptions_lose_nothing_while_connected() {
    let redis = RedisServer::start();
    let (_a, ua) = node(Some(&redis.url()));
    let (_b, ub) = node(Some(&redis.url()));
    let run = tokio::spawn(chat::run(chat_cfg(vec![ua, ub], 4)));
    let addr = redis.addr();
    let kills = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(1_200));
        for _ in 0..4 {
            kill_subscribers(addr);
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let r = run.await.expect("join").expect("chat");
    kills.await.expect("kills");
    assert_eq!(r.lost_while_connected, 0, "{}", r.table());
    assert!(r.reconnects > 0, "nobody was disconnected: {}", r.table());
    assert_eq!(r.duplicated, 0, "{}", r.table());
}

/// `CLIENT KILL TYPE pubsub` in RESP over a plain socket (loadtest has no Redis client).
fn kill_subscribers(addr: std::net::SocketAddr) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).expect("redis");
    c.write_all(b"*4\r\n$6\r\nCLIENT\r\n$4\r\nKILL\r\n$4\r\nTYPE\r\n$6\r\npubsub\r\n")
        .expect("CLIENT KILL");
    let mut reply = [0u8; 64];
    let n = c.read(&mut reply).expect("reply");
    assert_eq!(
        reply.first(),
        Some(&b':'),
        "{:?}",
        String::from_utf8_lossy(&reply[..n])
    );
}

/// A chat-node with a hard connection cap, and optionally its agent with a (lower) health cap.
fn capped_node(
    hard_cap: usize,
    agent_cap: Option<usize>,
) -> (Vec<ServerProcess>, String, Option<String>) {
    let port = free_port();
    let mut cmd = Command::new(workspace_bin("chat-node").unwrap_or_else(|e| panic!("{e}")));
    cmd.args(["--port", &port.to_string()])
        .env("CHAT_MAX_CONNECTIONS", hard_cap.to_string())
        .env("CHAT_RATE_PER_SEC", "1000")
        .env("CHAT_RATE_BURST", "1000");
    let mut procs = vec![ServerProcess::spawn("chat", cmd).expect("spawn chat-node")];
    assert!(wait_for_port(
        ([127, 0, 0, 1], port).into(),
        Duration::from_secs(15)
    ));
    let agent = agent_cap.map(|cap| {
        let hport = free_port();
        let mut a =
            Command::new(workspace_bin("connscale-agent").unwrap_or_else(|e| panic!("{e}")));
        a.args([
            "--port",
            &port.to_string(),
            "--bind",
            &format!("127.0.0.1:{hport}"),
            "--cap",
            &cap.to_string(),
            "--quiet",
        ])
        .env("CONNSCALE_AGENT_CLOUDWATCH", "off")
        .env("CONNSCALE_IMDS_ENDPOINT", "http://127.0.0.1:9");
        procs.push(ServerProcess::spawn("agent", a).expect("spawn agent"));
        assert!(wait_for_port(
            ([127, 0, 0, 1], hport).into(),
            Duration::from_secs(15)
        ));
        format!("http://127.0.0.1:{hport}")
    });
    (procs, format!("http://127.0.0.1:{port}"), agent)
}

fn capacity_cfg(target: String, agent: Option<String>, slo: f64) -> capacity::CapacityConfig {
    capacity::CapacityConfig {
        target,
        agent,
        slo_p99_ms: slo,
        step: 100,
        max: 1_000,
        rate: 1_000.0,
        probe: Duration::from_secs(2),
        sources: vec![],
        max_failure_ratio: 0.01,
        headroom: 0.9,
    }
}

#[tokio::test]
async fn heavy_capacity_stops_where_connects_fail_and_proposes_a_valid_policy() {
    let (_procs, url, _) = capped_node(350, None);
    let r = capacity::run(capacity_cfg(url, None, 10_000.0), |_| {})
        .await
        .expect("capacity");
    assert_eq!(r.sustainable, 300, "{}", r.table());
    assert!(r.stop_reason.contains("connects failed"), "{}", r.table());
    assert!(!r.reached_max);
    assert_eq!(r.proposed_cap, 270);
    let p = connscale_common::policy::Policy::parse(&r.policy_toml, "proposed")
        .unwrap_or_else(|e| panic!("{e}\n{}", r.policy_toml));
    assert_eq!(p.group.node_cap, 270);
    assert!(p.scale_out_threshold() < 270);
}

#[tokio::test]
async fn heavy_capacity_stops_when_the_agent_reports_full_or_the_slo_is_missed() {
    let (_procs, url, agent) = capped_node(5_000, Some(150));
    let r = capacity::run(capacity_cfg(url.clone(), agent, 10_000.0), |_| {})
        .await
        .expect("capacity");
    assert_eq!(r.sustainable, 100, "{}", r.table());
    assert!(
        r.stop_reason.contains("/health answered 503"),
        "{}",
        r.table()
    );
    assert_eq!(r.steps.last().and_then(|s| s.health), Some(503));

    // An SLO no node can meet: not even the first step is sustainable.
    let r = capacity::run(capacity_cfg(url, None, 0.000_001), |_| {})
        .await
        .expect("capacity");
    assert_eq!(r.sustainable, 0, "{}", r.table());
    assert!(r.stop_reason.contains("SLO"), "{}", r.table());
    assert!(r.policy_toml.is_empty());
}

#[tokio::test]
async fn heavy_distribution_reads_every_agent_and_the_spread() {
    let (_a, ua, agent_a) = capped_node(5_000, Some(5_000));
    let (_b, ub, agent_b) = capped_node(5_000, Some(5_000));
    let mut pool =
        loadtest::pool::Pool::new(&[ua, ub], vec![], Duration::from_secs(10)).expect("pool");
    pool.grow(300, 1_000.0, |_| {}).await;
    assert_eq!(pool.open(), 300);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let agents = vec![agent_a.expect("agent"), agent_b.expect("agent"), dead];
    // The agents sample once a second.
    let mut r = distribution::run(&agents, Duration::from_secs(2)).await;
    for _ in 0..50 {
        if r.total == 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        r = distribution::run(&agents, Duration::from_secs(2)).await;
    }
    assert_eq!(r.total, 300, "{}", r.table());
    let counts: Vec<Option<u64>> = r.nodes.iter().map(|n| n.connections).collect();
    assert_eq!(counts, vec![Some(150), Some(150), None], "{}", r.table());
    assert_eq!(r.unreachable, 1);
    assert_eq!(r.nodes[2].state, "unreachable");
    let s = r.spread.expect("spread");
    assert_eq!((s.nodes, s.min, s.max, s.max_over_avg), (2, 150, 150, 1.0));
    pool.close().await;
}

#[test]
fn heavy_ramp_spreads_over_worker_processes_and_merges_their_reports() {
    let (_a, ua) = node(None);
    let (_b, ub) = node(None);
    let out = Command::new(workspace_bin("loadtest").unwrap_or_else(|e| panic!("{e}")))
        .args(["ramp", "--target", &ua, "--target", &ub])
        .args(["--connections", "900", "--rate", "3000", "--hold", "500ms"])
        .args([
            "--workers",
            "3",
            "--source-ips",
            "127.0.0.2-127.0.0.4",
            "--json",
        ])
        .output()
        .expect("run loadtest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stderr}"));
    assert_eq!(r["connected"], 900, "{r:#}");
    assert_eq!(r["held_at_end"], 900, "{r:#}");
    assert_eq!(
        (r["per_target"][&ua].as_u64(), r["per_target"][&ub].as_u64()),
        (Some(450), Some(450)),
        "{r:#}"
    );
    assert!(stderr.contains("3 worker processes"), "{stderr}");
}

#[test]
fn heavy_ramp_reads_its_targets_from_a_file() {
    let (_a, ua) = node(None);
    let (_b, ub) = node(None);
    let dir = tempfile::tempdir().expect("tmp");
    let list = dir.path().join("targets.txt");
    let bare = |u: &str| u.trim_start_matches("http://").to_string();
    std::fs::write(
        &list,
        format!("# two nodes\n{}\n{}\n", bare(&ua), bare(&ub)),
    )
    .expect("write");
    let out = Command::new(workspace_bin("loadtest").unwrap_or_else(|e| panic!("{e}")))
        .args(["ramp", "--targets-from"])
        .arg(&list)
        .args(["--connections", "100", "--hold", "0s", "--json"])
        .output()
        .expect("run loadtest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(r["per_target"][&ua], 50, "{r:#}");
    assert_eq!(r["per_target"][&ub], 50, "{r:#}");
}
