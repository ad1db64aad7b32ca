//! The controller's cordon: the agent reads the instance tag `connscale-cordon` from IMDS (the
//! instance stub) and, while it holds a second still to come, fails /health (503, state
//! `cordoned`) and leaves the open connections alone. A past second, no tag, a malformed value
//! and IMDS not answering all mean serving again; a scale-in drain wins over the cordon.

mod common;
use common::{Agent, start_agent};
use connscale_common::cordon::TAG;
use connscale_test_support::{InstanceIdentity, InstanceStub};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The stub, a service with three clients, and the agent (cap 100) reading IMDS every 300 ms.
struct Rig {
    stub: InstanceStub,
    agent: Agent,
    held: Vec<(TcpStream, TcpStream)>,
    _svc: TcpListener,
    _dir: tempfile::TempDir,
}

const HELD: usize = 3;

fn rig() -> Rig {
    // Nothing here reaches Auto Scaling but a drain's lifecycle calls, which the stub answers.
    let stub = InstanceStub::start(InstanceIdentity::default(), "http://127.0.0.1:9");
    let port = connscale_test_support::free_port();
    let svc = TcpListener::bind(("0.0.0.0", port)).expect("bind service");
    let held = (0..HELD)
        .map(|_| {
            let c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            (c, svc.accept().expect("accept").0)
        })
        .collect();
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("agent.toml");
    // The lifecycle watcher (and with it the cordon's) runs with the drain enabled; a drain's
    // grace outlasts the test, so nothing is asked of the (absent) drain URL.
    std::fs::write(
        &cfg,
        "[drain]\nenabled = true\npoll_interval = \"300ms\"\ngrace = \"600s\"\ntimeout = \"900s\"\n",
    )
    .expect("write config");
    let env = [
        ("CONNSCALE_IMDS_ENDPOINT", stub.imds_endpoint()),
        ("CONNSCALE_AGENT_CLOUDWATCH", "off".into()),
        ("AWS_ENDPOINT_URL", stub.autoscaling_endpoint()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_MAX_ATTEMPTS", "1".into()),
    ];
    let agent = start_agent(
        &[
            "--config",
            cfg.to_str().expect("utf8"),
            "--port",
            &port.to_string(),
            "--cap",
            "100",
        ],
        &env,
    );
    Rig {
        stub,
        agent,
        held,
        _svc: svc,
        _dir: dir,
    }
}

/// /health's status, `state` and `cordon_until`.
async fn health(agent: &Agent) -> (u16, String, Option<i64>) {
    let (code, body) = agent.get("/health").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    (
        code,
        v["state"].as_str().unwrap_or("").to_string(),
        v["cordon_until"].as_i64(),
    )
}

/// Polls /health until it answers `code` with `state` (generous deadline: the agent reads IMDS
/// every 300 ms and samples every second); returns its `cordon_until`.
async fn wait_state(agent: &Agent, code: u16, state: &str, why: &str) -> Option<i64> {
    let mut last = (0, String::new(), None);
    for _ in 0..200 {
        last = health(agent).await;
        if last.0 == code && last.1 == state {
            return last.2;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{why}: /health never answered {code} {state}; last {last:?}");
}

/// Every held connection still carries data both ways (none was closed or reset).
fn assert_open(held: &[(TcpStream, TcpStream)]) {
    for (i, (client, server)) in held.iter().enumerate() {
        for (mut from, mut to) in [(client, server), (server, client)] {
            to.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            from.write_all(b"x").expect("write on a held connection");
            let mut b = [0u8; 1];
            to.read_exact(&mut b)
                .unwrap_or_else(|e| panic!("held connection {i} closed: {e}"));
            assert_eq!(&b, b"x");
        }
    }
}

/// A metadata GET against the stub, as the agent makes it (token first).
async fn imds(stub: &InstanceStub, path: &str) -> (u16, String) {
    let http = reqwest::Client::new();
    let token = http
        .put(format!("{}/latest/api/token", stub.imds_endpoint()))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
        .send()
        .await
        .expect("token")
        .text()
        .await
        .expect("token body");
    let r = http
        .get(format!("{}/latest/meta-data/{path}", stub.imds_endpoint()))
        .header("X-aws-ec2-metadata-token", token)
        .send()
        .await
        .expect("IMDS GET");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_cordon_fails_health_until_it_lapses_or_goes_and_leaves_connections_open() {
    let r = rig();
    let tag_path = format!("tags/instance/{TAG}");
    assert_eq!(imds(&r.stub, &tag_path).await.0, 404, "no tag: 404");
    r.agent
        .wait_health(20, |code, c| code == 200 && c == HELD as u64)
        .await;
    assert_eq!(health(&r.agent).await, (200, "ok".into(), None));
    assert_eq!(r.agent.metric("connscale_cordoned").await, 0.0);

    // Cordoned: 503 for the load balancer, nothing closed.
    let until = now() + 300;
    r.stub.set_instance_tag(TAG, Some(&until.to_string()));
    let (_, list) = imds(&r.stub, "tags/instance").await;
    assert!(list.lines().any(|k| k == TAG), "tag listed: {list:?}");
    assert_eq!(imds(&r.stub, &tag_path).await, (200, until.to_string()));
    let shown = wait_state(&r.agent, 503, "cordoned", "cordon until now+300").await;
    assert_eq!(shown, Some(until), "/health shows the cordon's second");
    assert_eq!(r.agent.metric("connscale_cordoned").await, 1.0);
    assert_eq!(r.agent.metric("connscale_healthy").await, 0.0);
    assert_eq!(r.agent.metric("connscale_draining").await, 0.0);
    assert_open(&r.held);
    r.agent.wait_health(5, |_, c| c == HELD as u64).await;

    // A second already past: not cordoned.
    r.stub
        .set_instance_tag(TAG, Some(&(now() - 10).to_string()));
    assert_eq!(
        wait_state(&r.agent, 200, "ok", "cordon in the past").await,
        None
    );
    assert_eq!(r.agent.metric("connscale_cordoned").await, 0.0);

    // The tag removed.
    r.stub
        .set_instance_tag(TAG, Some(&(now() + 300).to_string()));
    wait_state(&r.agent, 503, "cordoned", "cordoned again").await;
    r.stub.set_instance_tag(TAG, None);
    assert_eq!(imds(&r.stub, &tag_path).await.0, 404);
    wait_state(&r.agent, 200, "ok", "tag removed").await;

    // The controller's value, with the second the cordon began: the first field holds.
    let until = now() + 300;
    let written = connscale_common::cordon::value(until, now() - 3_600);
    r.stub.set_instance_tag(TAG, Some(&written));
    let shown = wait_state(&r.agent, 503, "cordoned", "cordon with its start").await;
    assert_eq!(
        shown,
        Some(until),
        "/health shows the cordon's end, not its start"
    );
    r.stub.set_instance_tag(TAG, None);
    wait_state(&r.agent, 200, "ok", "tag removed").await;

    // A malformed value cordons nothing.
    r.stub
        .set_instance_tag(TAG, Some(&(now() + 300).to_string()));
    wait_state(&r.agent, 503, "cordoned", "cordoned again").await;
    r.stub.set_instance_tag(TAG, Some("soon"));
    wait_state(&r.agent, 200, "ok", "malformed tag").await;
    assert_open(&r.held);

    // IMDS gone: serving, not out of the balancer.
    r.stub
        .set_instance_tag(TAG, Some(&(now() + 300).to_string()));
    wait_state(&r.agent, 503, "cordoned", "cordoned again").await;
    drop(r.stub);
    wait_state(&r.agent, 200, "ok", "IMDS unreachable").await;
    assert_eq!(r.agent.metric("connscale_cordoned").await, 0.0);
    assert_open(&r.held);
}

#[tokio::test]
async fn a_scale_in_drain_wins_over_the_cordon() {
    let r = rig();
    r.stub
        .set_instance_tag(TAG, Some(&(now() + 300).to_string()));
    wait_state(&r.agent, 503, "cordoned", "cordon until now+300").await;
    r.stub.set_target_lifecycle_state("Terminated");
    let shown = wait_state(&r.agent, 503, "draining", "scale-in while cordoned").await;
    assert!(shown.is_some(), "the cordon still shows while draining");
    assert_eq!(r.agent.metric("connscale_draining").await, 1.0);
    assert_eq!(r.agent.metric("connscale_cordoned").await, 1.0);
    // The cordon lifted, the drain stays.
    r.stub.set_instance_tag(TAG, None);
    for _ in 0..30 {
        if r.agent.metric("connscale_cordoned").await == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(r.agent.metric("connscale_cordoned").await, 0.0);
    tokio::time::sleep(Duration::from_millis(1_500)).await; // a sample or more
    assert_eq!(health(&r.agent).await, (503, "draining".into(), None));
}
