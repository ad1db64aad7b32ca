//! /health turns 503 at the cap under a real connection ramp, stays 503 inside the hysteresis
//! band, and returns to 200 below it.

mod common;
use common::start_agent;
use std::net::{TcpListener, TcpStream};

#[tokio::test]
async fn health_follows_the_cap_with_hysteresis() {
    // Below the ephemeral range (no other test's client socket can have it as local port P)
    // and on the wildcard address, as a real service listens.
    let port = connscale_test_support::free_port();
    let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
    let agent = start_agent(
        &["--port", &port.to_string(), "--cap", "200"],
        &[("CONNSCALE_AGENT_CLOUDWATCH", "off".into())],
    );
    let mut held = Vec::new();
    let ramp = |n: usize, held: &mut Vec<(TcpStream, TcpStream)>| {
        while held.len() < n {
            let c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            held.push((c, l.accept().expect("accept").0));
        }
    };
    ramp(150, &mut held);
    agent
        .wait_health(10, |code, c| code == 200 && c == 150)
        .await;
    ramp(200, &mut held);
    let (code, _) = agent.wait_health(10, |_, c| c == 200).await;
    assert_eq!(code, 503, "at the cap");
    held.truncate(191); // 191 ≥ 200 × 0.95 = 190: still inside the band
    let (code, _) = agent.wait_health(10, |_, c| c == 191).await;
    assert_eq!(code, 503, "inside the hysteresis band");
    held.truncate(189);
    let (code, _) = agent.wait_health(10, |_, c| c == 189).await;
    assert_eq!(code, 200, "below the band");
    assert_eq!(agent.metric("connscale_connections").await, 189.0);
    assert_eq!(agent.metric("connscale_count_method_netlink").await, 1.0);
}

/// A node whose service is down must leave the load balancer: /health is 503 "no_listener" until
/// something listens on the counted port, 200 while it does, and 503 again once it stops.
#[tokio::test]
async fn health_is_down_while_nothing_listens_on_the_port() {
    let port = connscale_test_support::free_port();
    let agent = start_agent(
        &["--port", &port.to_string()],
        &[("CONNSCALE_AGENT_CLOUDWATCH", "off".into())],
    );
    let state = || async {
        let (code, body) = agent.get("/health").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        (code, v["state"].as_str().unwrap_or("").to_string())
    };
    agent.wait_health(10, |_, c| c == 0).await;
    assert_eq!(
        state().await,
        (503, "no_listener".into()),
        "before the service starts"
    );
    let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
    let (code, _) = agent.wait_health(10, |code, _| code == 200).await;
    assert_eq!(code, 200);
    assert_eq!(state().await, (200, "ok".into()));
    assert_eq!(agent.metric("connscale_listening").await, 1.0);
    drop(l); // the service dies
    let (code, _) = agent.wait_health(20, |code, _| code == 503).await;
    assert_eq!(code, 503);
    assert_eq!(
        state().await,
        (503, "no_listener".into()),
        "after the service stopped"
    );
    assert_eq!(agent.metric("connscale_listening").await, 0.0);
}
