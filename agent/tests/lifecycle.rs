//! The scale-in drain path. moto neither pauses instances in Terminating:Wait nor implements
//! RecordLifecycleActionHeartbeat / CompleteLifecycleAction (HTTP 500), so this test runs the
//! agent against a small local stand-in that serves exactly what the agent calls: the IMDSv2
//! token and metadata paths, and those two Auto Scaling query-protocol actions, answered with
//! the responses AWS documents (an empty `<...Result/>` and a request id). The stand-in records
//! every request so the test can check what the agent sent.

mod common;
use axum::{
    Router,
    extract::State,
    routing::{get, post, put},
};
use common::start_agent;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Stand {
    lifecycle_state: String,
    drains: u32,
    calls: Vec<String>,
}
type S = Arc<Mutex<Stand>>;

fn stand_in(s: S) -> Router {
    Router::new()
        .route("/latest/api/token", put(|| async { "token" }))
        .route("/latest/meta-data/instance-id", get(|| async { "i-0abc" }))
        .route("/latest/meta-data/placement/region", get(|| async { "us-east-1" }))
        .route("/latest/meta-data/tags/instance/aws:autoscaling:groupName", get(|| async { "chat" }))
        .route(
            "/latest/meta-data/autoscaling/target-lifecycle-state",
            get(|State(s): State<S>| async move { s.lock().expect("lock").lifecycle_state.clone() }),
        )
        .route(
            "/drain",
            post(|State(s): State<S>| async move {
                s.lock().expect("lock").drains += 1;
                "draining"
            }),
        )
        .route(
            "/",
            post(|State(s): State<S>, body: String| async move {
                let action = body.split('&').find_map(|kv| kv.strip_prefix("Action=")).unwrap_or("").to_string();
                s.lock().expect("lock").calls.push(body.clone());
                let xml = format!(
                    r#"<{action}Response xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><{action}Result/><ResponseMetadata><RequestId>7c6e177f-f082-11e1-ac58-3714bEXAMPLE</RequestId></ResponseMetadata></{action}Response>"#
                );
                ([("content-type", "text/xml")], xml)
            }),
        )
        .with_state(s)
}

#[tokio::test]
async fn terminating_instance_drains_heartbeats_and_continues() {
    let state: S = Arc::new(Mutex::new(Stand {
        lifecycle_state: "InService".into(),
        ..Default::default()
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind stand-in");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(axum::serve(listener, stand_in(state.clone())).into_future());

    let port = connscale_test_support::free_port();
    let svc = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind service");
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"));
        held.push(svc.accept().expect("accept").0);
    }
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[drain]\nenabled = true\nmethod = \"http\"\ndrain_url = \"{base}/drain\"\nthreshold = 1\ntimeout = \"60s\"\nheartbeat_interval = \"1s\"\nhook_name = \"connscale-drain\"\n"
        ),
    )
    .expect("write config");
    let env = vec![
        ("CONNSCALE_IMDS_ENDPOINT", base.clone()),
        ("CONNSCALE_AGENT_CLOUDWATCH", "off".into()),
        ("AWS_ENDPOINT_URL", base.clone()),
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
        ],
        &env,
    );
    agent.wait_health(10, |code, c| code == 200 && c == 5).await;

    state.lock().expect("lock").lifecycle_state = "Terminated".into();
    let (code, _) = agent.wait_health(20, |code, _| code == 503).await;
    assert_eq!(code, 503);
    let (_, body) = agent.get("/health").await;
    assert!(body.contains("draining"), "{body}");
    for _ in 0..100 {
        if state.lock().expect("lock").drains > 0
            && state
                .lock()
                .expect("lock")
                .calls
                .iter()
                .any(|c| c.contains("RecordLifecycleActionHeartbeat"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    {
        let s = state.lock().expect("lock");
        assert_eq!(s.drains, 1, "the service was asked to drain once");
        assert!(
            s.calls
                .iter()
                .any(|c| c.contains("Action=RecordLifecycleActionHeartbeat")),
            "{:?}",
            s.calls
        );
        assert!(
            !s.calls
                .iter()
                .any(|c| c.contains("CompleteLifecycleAction")),
            "completed while connections remain"
        );
    }
    held.clear(); // the clients leave
    let mut complete = None;
    for _ in 0..100 {
        complete = state
            .lock()
            .expect("lock")
            .calls
            .iter()
            .find(|c| c.contains("Action=CompleteLifecycleAction"))
            .cloned();
        if complete.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = complete.expect("CompleteLifecycleAction was called");
    for part in [
        "LifecycleActionResult=CONTINUE",
        "InstanceId=i-0abc",
        "AutoScalingGroupName=chat",
        "LifecycleHookName=connscale-drain",
    ] {
        assert!(c.contains(part), "{part} missing from {c}");
    }
    assert_eq!(
        agent.get("/health").await.0,
        503,
        "stays out of service after the drain"
    );
}
