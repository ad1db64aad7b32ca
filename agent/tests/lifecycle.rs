//! The scale-in drain path. moto neither pauses instances in Terminating:Wait nor implements
//! RecordLifecycleActionHeartbeat / CompleteLifecycleAction (HTTP 500), so this test runs the
//! agent against a small local stand-in that serves exactly what the agent calls: the IMDSv2
//! token and metadata paths, and those two Auto Scaling query-protocol actions, answered with
//! the responses AWS documents (an empty `<...Result/>` and a request id). The stand-in records
//! every request so the test can check what the agent sent. Like AWS behind an ALB, the hook can
//! be inactive (during the deregistration delay): lifecycle calls then fail with the
//! ValidationError AWS returns, and a completed action is no longer active.

mod common;
use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::{get, post, put},
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Stand {
    lifecycle_state: String,
    /// Whether the lifecycle action is active (calls succeed).
    active: bool,
    drains: u32,
    /// Authorization headers of the drain requests.
    drain_auth: Vec<String>,
    /// Every Auto Scaling request body, and whether it was accepted.
    calls: Vec<(String, bool)>,
}
type S = Arc<Mutex<Stand>>;

impl Stand {
    fn accepted(&self, action: &str) -> Vec<String> {
        self.calls
            .iter()
            .filter(|(c, ok)| *ok && c.contains(&format!("Action={action}")))
            .map(|(c, _)| c.clone())
            .collect()
    }
    /// Whether the agent's CompleteLifecycleAction was accepted.
    fn completed(&self) -> bool {
        !self.accepted("CompleteLifecycleAction").is_empty()
    }
    fn rejected(&self, action: &str) -> usize {
        self.calls
            .iter()
            .filter(|(c, ok)| !*ok && c.contains(&format!("Action={action}")))
            .count()
    }
}

/// One Auto Scaling query-protocol call, answered as AWS does.
fn autoscaling(s: &S, body: String) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let action = body
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("")
        .to_string();
    let mut st = s.lock().expect("lock");
    let ok = st.active;
    st.calls.push((body, ok));
    if !ok {
        let xml = r#"<ErrorResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><Error><Type>Sender</Type><Code>ValidationError</Code><Message>No active Lifecycle Action found with instance ID i-0abc</Message></Error><RequestId>7c6e177f-f082-11e1-ac58-3714bEXAMPLE</RequestId></ErrorResponse>"#;
        return (
            StatusCode::BAD_REQUEST,
            [("content-type", "text/xml")],
            xml.into(),
        );
    }
    if action == "CompleteLifecycleAction" {
        st.active = false; // AWS: the action is over
    }
    let xml = format!(
        r#"<{action}Response xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><{action}Result/><ResponseMetadata><RequestId>7c6e177f-f082-11e1-ac58-3714bEXAMPLE</RequestId></ResponseMetadata></{action}Response>"#
    );
    (StatusCode::OK, [("content-type", "text/xml")], xml)
}

fn stand_in(s: S) -> Router {
    Router::new()
        .route("/latest/api/token", put(|| async { "token" }))
        .route("/latest/meta-data/instance-id", get(|| async { "i-0abc" }))
        .route(
            "/latest/meta-data/placement/region",
            get(|| async { "us-east-1" }),
        )
        .route(
            "/latest/meta-data/tags/instance/aws:autoscaling:groupName",
            get(|| async { "chat" }),
        )
        .route(
            "/latest/meta-data/autoscaling/target-lifecycle-state",
            get(
                |State(s): State<S>| async move { s.lock().expect("lock").lifecycle_state.clone() },
            ),
        )
        .route(
            "/drain",
            post(|State(s): State<S>, headers: HeaderMap| async move {
                let mut st = s.lock().expect("lock");
                st.drains += 1;
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                st.drain_auth.push(auth.to_string());
                "draining"
            }),
        )
        .route(
            "/",
            post(|State(s): State<S>, body: String| async move { autoscaling(&s, body) }),
        )
        .with_state(s)
}

/// The stand-in, a service with `held` clients, and the agent with the drain enabled.
struct Rig {
    state: S,
    agent: common::Agent,
    held: Vec<std::net::TcpStream>,
    _svc: std::net::TcpListener,
    _dir: tempfile::TempDir,
}

/// The stand-in on a free port: its state and its base URL (IMDS and Auto Scaling alike).
async fn stand(first_state: &str, active: bool) -> (S, String) {
    let state: S = Arc::new(Mutex::new(Stand {
        lifecycle_state: first_state.into(),
        active,
        ..Default::default()
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind stand-in");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(axum::serve(listener, stand_in(state.clone())).into_future());
    (state, base)
}

/// The environment that points the agent's IMDS and SDK calls at the stand-in.
fn stand_env(base: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CONNSCALE_IMDS_ENDPOINT", base.to_string()),
        ("AWS_ENDPOINT_URL", base.to_string()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_MAX_ATTEMPTS", "1".into()),
    ]
}

async fn rig(first_state: &str, active: bool, held: usize, extra_env: &[(&str, String)]) -> Rig {
    let http = "method = \"http\"\ngrace = \"0s\"\ndrain_url = \"{base}/drain\"\nthreshold = 1\ntimeout = \"60s\"\n";
    rig_with(first_state, active, held, extra_env, http, &[]).await
}

/// A rig whose `[drain]` method lines are `method` (`{base}` is the stand-in's URL), with the
/// agent started through `wrapper`.
async fn rig_with(
    first_state: &str,
    active: bool,
    held: usize,
    extra_env: &[(&str, String)],
    method: &str,
    wrapper: &[&str],
) -> Rig {
    let (state, base) = stand(first_state, active).await;
    let method = method.replace("{base}", &base);

    let port = connscale_test_support::free_port();
    let svc = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind service");
    let mut streams = Vec::new();
    for _ in 0..held {
        streams.push(std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"));
        streams.push(svc.accept().expect("accept").0);
    }
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[drain]\nenabled = true\n{method}heartbeat_interval = \"1s\"\nhook_name = \"connscale-drain\"\nhook_heartbeat_timeout = \"60s\"\npoll_interval = \"300ms\"\n"
        ),
    )
    .expect("write config");
    let mut env = vec![
        ("CONNSCALE_IMDS_ENDPOINT", base.clone()),
        ("CONNSCALE_AGENT_CLOUDWATCH", "off".into()),
        ("AWS_ENDPOINT_URL", base.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_MAX_ATTEMPTS", "1".into()),
    ];
    env.extend(extra_env.iter().cloned());
    let agent = common::start_agent_under(
        wrapper,
        &[
            "--config",
            cfg.to_str().expect("utf8"),
            "--port",
            &port.to_string(),
        ],
        &env,
    );
    let n = held as u64;
    agent.wait_health(10, |code, c| code == 200 && c == n).await;
    Rig {
        state,
        agent,
        held: streams,
        _svc: svc,
        _dir: dir,
    }
}

/// Polls the stand-in until `pred` holds (up to `secs`); false if it never did.
async fn until(s: &S, secs: u64, pred: impl Fn(&Stand) -> bool) -> bool {
    for _ in 0..secs * 10 {
        if pred(&s.lock().expect("lock")) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn assert_continue(c: &str) {
    for part in [
        "LifecycleActionResult=CONTINUE",
        "InstanceId=i-0abc",
        "AutoScalingGroupName=chat",
        "LifecycleHookName=connscale-drain",
    ] {
        assert!(c.contains(part), "{part} missing from {c}");
    }
}

/// `drain.grace` with the http method: while its clients stay, the service is not told; once
/// those that leave by themselves bring the count under `grace_until_below`, it is, long
/// before the grace's full length.
#[tokio::test]
async fn http_drain_waits_out_its_grace_until_few_clients_remain() {
    let method = "method = \"http\"\ngrace = \"50s\"\ngrace_until_below = 3\ndrain_url = \"{base}/drain\"\nthreshold = 1\ntimeout = \"60s\"\n";
    let mut r = rig_with("InService", true, 5, &[], method, &[]).await;
    r.state.lock().expect("lock").lifecycle_state = "Terminated".into();
    let (code, _) = r.agent.wait_health(20, |code, _| code == 503).await;
    assert_eq!(code, 503, "out of the balancer during the grace");
    assert!(
        !until(&r.state, 3, |s| s.drains > 0).await,
        "the service was told to drain while 5 clients stayed in the grace"
    );
    // Three of the five leave by themselves (each is a client and a server stream).
    r.held.truncate(4);
    assert!(
        until(&r.state, 10, |s| s.drains == 1).await,
        "2 clients < grace_until_below 3, and the service was not told"
    );
}

#[tokio::test]
async fn terminating_instance_drains_heartbeats_and_continues() {
    let mut r = rig("InService", true, 5, &[]).await;
    r.state.lock().expect("lock").lifecycle_state = "Terminated".into();
    let (code, _) = r.agent.wait_health(20, |code, _| code == 503).await;
    assert_eq!(code, 503);
    let (_, body) = r.agent.get("/health").await;
    assert!(body.contains("draining"), "{body}");
    let beat = until(&r.state, 10, |s| {
        s.drains > 0 && !s.accepted("RecordLifecycleActionHeartbeat").is_empty()
    })
    .await;
    {
        let s = r.state.lock().expect("lock");
        assert!(beat, "no heartbeat: {:?}", s.calls);
        assert_eq!(s.drains, 1, "the service was asked to drain once");
        assert!(
            s.calls
                .iter()
                .all(|(c, _)| !c.contains("CompleteLifecycleAction")),
            "completed while connections remain"
        );
    }
    r.held.clear(); // the clients leave
    assert!(
        until(&r.state, 10, |s| s.completed()).await,
        "CompleteLifecycleAction was not called"
    );
    assert_continue(
        &r.state
            .lock()
            .expect("lock")
            .accepted("CompleteLifecycleAction")[0],
    );
    assert_eq!(
        r.agent.get("/health").await.0,
        503,
        "stays out of service after the drain"
    );
}

/// Scale-in with ReuseOnScaleIn into a Running pool: the target reads Warmed:Running, the node
/// drains and completes; when the group takes it back, /health is healthy again.
#[tokio::test]
async fn warm_pool_return_drains_completes_and_serves_again() {
    let mut r = rig("InService", true, 3, &[]).await;
    r.state.lock().expect("lock").lifecycle_state = "Warmed:Running".into();
    let (code, _) = r.agent.wait_health(20, |code, _| code == 503).await;
    assert_eq!(code, 503, "a warm-pool return drains");
    assert!(
        until(&r.state, 10, |s| s.drains == 1).await,
        "the service was not told"
    );
    r.held.clear();
    assert!(
        until(&r.state, 10, |s| s.completed()).await,
        "CompleteLifecycleAction was not called: {:?}",
        r.state.lock().expect("lock").calls
    );
    assert_continue(
        &r.state
            .lock()
            .expect("lock")
            .accepted("CompleteLifecycleAction")[0],
    );
    assert_eq!(
        r.agent.get("/health").await.0,
        503,
        "still out while in the pool"
    );

    // Scale-out takes the instance back from the pool.
    r.state.lock().expect("lock").lifecycle_state = "InService".into();
    let (code, _) = r.agent.wait_health(20, |code, _| code == 200).await;
    assert_eq!(code, 200, "healthy again in service");
    let (_, body) = r.agent.get("/health").await;
    assert!(body.contains("\"ok\""), "{body}");
    assert_eq!(r.state.lock().expect("lock").drains, 1, "drained once");

    // And a later scale-in drains again: the watcher kept running.
    r.state.lock().expect("lock").active = true;
    r.state.lock().expect("lock").lifecycle_state = "Terminated".into();
    assert!(
        until(&r.state, 20, |s| s
            .accepted("CompleteLifecycleAction")
            .len()
            == 2)
        .await,
        "the second scale-in was not drained"
    );
    assert_eq!(r.state.lock().expect("lock").drains, 2);
}

/// Behind an ALB the target reads Terminated during the deregistration delay, before the hook is
/// active: heartbeats and the completion fail then, and are retried until they land.
#[tokio::test]
async fn lifecycle_calls_are_retried_until_the_hook_is_active() {
    let token = "s3cr3t-token";
    let creds = tempfile::tempdir().expect("tmp");
    std::fs::write(creds.path().join("api-token"), format!("{token}\n")).expect("write token");
    let mut r = rig(
        "InService",
        false,
        3,
        &[("CREDENTIALS_DIRECTORY", creds.path().display().to_string())],
    )
    .await;
    r.state.lock().expect("lock").lifecycle_state = "Terminated".into();
    let (code, _) = r.agent.wait_health(20, |code, _| code == 503).await;
    assert_eq!(
        code, 503,
        "draining starts at once, before the hook is active"
    );
    assert!(
        until(&r.state, 20, |s| s
            .rejected("RecordLifecycleActionHeartbeat")
            >= 2)
        .await,
        "failed heartbeats are not retried: {:?}",
        r.state.lock().expect("lock").calls
    );
    // The clients leave during the delay: the completion fails too, and is retried.
    r.held.clear();
    assert!(
        until(&r.state, 20, |s| s.rejected("CompleteLifecycleAction") >= 2).await,
        "a failed completion is not retried: {:?}",
        r.state.lock().expect("lock").calls
    );
    r.state.lock().expect("lock").active = true; // the deregistration delay is over
    assert!(
        until(&r.state, 30, |s| s.completed()).await,
        "the completion never landed"
    );
    assert_continue(
        &r.state
            .lock()
            .expect("lock")
            .accepted("CompleteLifecycleAction")[0],
    );
    assert_eq!(
        r.state.lock().expect("lock").drain_auth,
        vec![format!("Bearer {token}")],
        "the drain token comes from $CREDENTIALS_DIRECTORY/api-token"
    );
    // ServerProcess writes the agent's output to this file.
    let log = std::env::temp_dir().join(format!("connscale-test-agent-{}.log", std::process::id()));
    let text = std::fs::read_to_string(&log).expect("agent log");
    assert!(text.contains("lifecycle action completed"), "{text}");
    assert!(!text.contains(token), "the token was logged: {text}");
}

/// Runs `connscale-agent complete-lifecycle ARGS` against the stand-in (no region set: it comes
/// from IMDS, like the instance and the group); returns (exit code, stderr).
async fn complete_lifecycle(base: &str, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_connscale-agent"))
        .arg("complete-lifecycle")
        .args(args)
        .envs(stand_env(base))
        .env_remove("AWS_REGION")
        .env("CONNSCALE_AGENT_CLOUDWATCH", "off")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run complete-lifecycle");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The first boot completes the launch hook after the services are up; calls made before the
/// hook is active fail and are retried until the completion lands.
#[tokio::test]
async fn complete_lifecycle_retries_until_the_launch_hook_is_active() {
    let (state, base) = stand("Warmed:Pending:Wait", false).await;
    let run = tokio::spawn({
        let base = base.clone();
        async move { complete_lifecycle(&base, &["--hook", "connscale-launch"]).await }
    });
    assert!(
        until(&state, 20, |s| s.rejected("CompleteLifecycleAction") >= 2).await,
        "a failed completion is not retried"
    );
    state.lock().expect("lock").active = true;
    let (code, err) = run.await.expect("join");
    assert_eq!(code, 0, "{err}");
    let done = state
        .lock()
        .expect("lock")
        .accepted("CompleteLifecycleAction");
    assert_eq!(done.len(), 1);
    for part in [
        "LifecycleActionResult=CONTINUE",
        "LifecycleHookName=connscale-launch",
        "InstanceId=i-0abc",
        "AutoScalingGroupName=chat",
    ] {
        assert!(done[0].contains(part), "{part} missing from {}", done[0]);
    }

    // ABANDON, and a hook that never becomes active: a non-zero exit that says why.
    let (code, err) = complete_lifecycle(
        &base,
        &[
            "--hook",
            "connscale-launch",
            "--result",
            "abandon",
            "--timeout",
            "3s",
        ],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("connscale-launch") && err.contains("No active Lifecycle Action"),
        "{err}"
    );
    assert!(
        state
            .lock()
            .expect("lock")
            .calls
            .iter()
            .any(|(c, _)| c.contains("LifecycleActionResult=ABANDON")),
    );
}

/// Watches each client connection on its own thread: when (since `t0`) and how it ended.
fn watch_clients(
    clients: Vec<std::net::TcpStream>,
    t0: std::time::Instant,
) -> Vec<std::thread::JoinHandle<(Duration, std::io::ErrorKind)>> {
    clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buf = [0u8; 64];
                let kind = loop {
                    match c.read(&mut buf) {
                        Ok(0) => break std::io::ErrorKind::UnexpectedEof,
                        Ok(_) => continue,
                        Err(e) => break e.kind(),
                    }
                };
                (t0.elapsed(), kind)
            })
        })
        .collect()
}

const CLOSE: &str =
    "method = \"close\"\ngrace = \"1s\"\nwindow = \"4s\"\nthreshold = 1\ntimeout = \"30s\"\n";

/// `method = "close"` on a service that knows nothing of draining (a bare listener): after the
/// grace the agent resets every client itself, spread over the window, then completes.
#[tokio::test(flavor = "multi_thread")]
async fn close_drain_resets_every_client_spread_over_the_window_then_continues() {
    const N: usize = 40;
    let cap = [("CONNSCALE_AGENT_CAP", "50".to_string())];
    let r = rig_with("InService", true, N, &cap, CLOSE, &[]).await;
    assert_eq!(r.agent.metric("connscale_drain_close_available").await, 1.0);
    let (_, body) = r.agent.get("/health").await;
    assert!(
        body.contains("\"cap\":50") && body.contains("\"ok\""),
        "{body}"
    );
    // The rig holds (client, served) pairs: the clients are the even ones.
    let clients: Vec<_> = r
        .held
        .iter()
        .step_by(2)
        .map(|c| c.try_clone().expect("clone client"))
        .collect();
    let t0 = std::time::Instant::now();
    let watchers = watch_clients(clients, t0);
    r.state.lock().expect("lock").lifecycle_state = "Terminated".into();
    // The agent's own count at each step of the drain, until the hook is completed.
    let completed = |r: &Rig| r.state.lock().expect("lock").completed();
    let mut steps: Vec<(u16, u64)> = Vec::new();
    for _ in 0..300 {
        let (code, body) = r.agent.get("/health").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        steps.push((code, v["connections"].as_u64().unwrap_or(u64::MAX)));
        if completed(&r) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        completed(&r),
        "CompleteLifecycleAction was not called: {:?}",
        r.state.lock().expect("lock").calls
    );
    let completed = t0.elapsed();
    // The sampler's count lags the closer by up to a sample: it reaches 0 next.
    steps.push(r.agent.wait_health(5, |_, c| c == 0).await);
    let draining: Vec<(u16, u64)> = steps
        .iter()
        .copied()
        .skip_while(|(c, _)| *c == 200)
        .collect();
    assert!(draining.iter().all(|(c, _)| *c == 503), "{steps:?}");
    assert!(
        draining.windows(2).all(|w| w[1].1 <= w[0].1),
        "the count only falls: {steps:?}"
    );
    assert_eq!(draining.last().map(|s| s.1), Some(0), "{steps:?}");
    let between: std::collections::BTreeSet<u64> = draining
        .iter()
        .map(|s| s.1)
        .filter(|n| (1..N as u64).contains(n))
        .collect();
    assert!(
        between.len() >= 3,
        "the count steps down through the window, not at once: {steps:?}"
    );
    let ends: Vec<_> = watchers
        .into_iter()
        .map(|w| w.join().expect("watcher"))
        .collect();
    assert!(
        ends.iter()
            .all(|(_, k)| *k == std::io::ErrorKind::ConnectionReset),
        "every client is reset: {ends:?}"
    );
    let mut at: Vec<Duration> = ends.iter().map(|(t, _)| *t).collect();
    at.sort();
    assert!(
        at[N - 1] <= completed,
        "completed before the last reset: {at:?}"
    );
    // Spread: an even schedule closes N/4 a second over the 4 s window; no second holds half.
    let most = at
        .iter()
        .map(|t| {
            at.iter()
                .filter(|u| **u >= *t && **u < *t + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        most <= N / 2,
        "{most} of {N} resets within one second: {at:?}"
    );
    assert!(
        at[N - 1] - at[0] >= Duration::from_secs(2),
        "resets spread over the window, not at once: {at:?}"
    );
    assert_eq!(
        r.agent.metric("connscale_drain_closed_total").await,
        N as f64
    );
    assert_eq!(
        r.agent.metric("connscale_drain_open_at_close_start").await,
        N as f64
    );
    assert!(r.agent.metric("connscale_drain_seconds").await > 0.0);
    assert_continue(
        &r.state
            .lock()
            .expect("lock")
            .accepted("CompleteLifecycleAction")[0],
    );
}

/// Without CAP_NET_ADMIN the close drain says so (a 0 gauge, an error at start-up) and falls
/// back to waiting: no client is reset, and the action completes once they have left.
#[tokio::test(flavor = "multi_thread")]
async fn close_drain_without_the_capability_waits_instead_of_closing() {
    let no_net_admin = [
        "setpriv",
        "--bounding-set",
        "-net_admin",
        "--inh-caps",
        "-net_admin",
        "--",
    ];
    let mut r = rig_with("InService", true, 3, &[], CLOSE, &no_net_admin).await;
    assert_eq!(r.agent.metric("connscale_drain_close_available").await, 0.0);
    r.state.lock().expect("lock").lifecycle_state = "Terminated".into();
    let (code, _) = r.agent.wait_health(20, |code, _| code == 503).await;
    assert_eq!(code, 503);
    // Past grace + window: nothing was closed, nothing completed.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for c in r.held.iter().step_by(2) {
        c.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 1];
        let e = std::io::Read::read(&mut &*c, &mut buf).expect_err("still open, no data");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "not reset: {e}");
    }
    assert!(
        r.state
            .lock()
            .expect("lock")
            .accepted("CompleteLifecycleAction")
            .is_empty()
    );
    assert_eq!(r.agent.metric("connscale_drain_closed_total").await, 0.0);
    r.held.clear();
    assert!(
        until(&r.state, 15, |s| s.completed()).await,
        "completed once the clients left"
    );
}

/// An agent restarted while its instance returns to the warm pool never saw it InService, but
/// the clients on the port say it served: it drains them instead of reading a pool launch.
#[tokio::test]
async fn an_agent_restarted_during_a_warm_pool_return_still_drains() {
    // The agent starts (as after a restart) without ever reading InService; its clients are
    // already there. Then the return's hook pauses the instance.
    let mut r = rig("Pending", true, 3, &[]).await;
    r.state.lock().expect("lock").lifecycle_state = "Warmed:Pending:Wait".into();
    assert!(
        until(&r.state, 10, |s| s.drains == 1).await,
        "the service was not told to drain: {:?}",
        r.state.lock().expect("lock").calls
    );
    assert_eq!(r.agent.get("/health").await.0, 503);
    r.held.clear();
    assert!(
        until(&r.state, 10, |s| s.completed()).await,
        "CompleteLifecycleAction was not called"
    );
}

/// This machine's boot id, as the agent reads it.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("boot id")
        .trim()
        .to_string()
}

/// The agent with `[launch]` only (no drain), its marker holding `recorded` (none: no file), a
/// listening service, and the stand-in at `first_state` with the hook `active`.
struct LaunchRig {
    state: S,
    marker: std::path::PathBuf,
    _agent: common::Agent,
    _svc: std::net::TcpListener,
    _dir: tempfile::TempDir,
}

async fn launch_rig(first_state: &str, active: bool, recorded: Option<&str>) -> LaunchRig {
    let (state, base) = stand(first_state, active).await;
    let port = connscale_test_support::free_port();
    let svc = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind service");
    let dir = tempfile::tempdir().expect("tmp");
    let marker = dir.path().join("state/launched");
    if let Some(r) = recorded {
        std::fs::create_dir_all(marker.parent().expect("parent")).expect("mkdir");
        std::fs::write(&marker, format!("{r}\n")).expect("write marker");
    }
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[drain]\npoll_interval = \"300ms\"\n[launch]\nhook_name = \"connscale-launch\"\ntimeout = \"60s\"\nmarker_file = {:?}\n",
            marker.display().to_string()
        ),
    )
    .expect("write config");
    let mut env = stand_env(&base);
    env.push(("CONNSCALE_AGENT_CLOUDWATCH", "off".into()));
    env.push(("AWS_REGION", "us-east-1".into()));
    let agent = common::start_agent(
        &[
            "--config",
            cfg.to_str().expect("utf8"),
            "--port",
            &port.to_string(),
        ],
        &env,
    );
    agent.wait_health(10, |code, _| code == 200).await;
    LaunchRig {
        state,
        marker,
        _agent: agent,
        _svc: svc,
        _dir: dir,
    }
}

/// The accepted completions of the launch hook.
fn launch_completions(s: &Stand) -> Vec<String> {
    s.accepted("CompleteLifecycleAction")
        .into_iter()
        .filter(|c| c.contains("LifecycleHookName=connscale-launch"))
        .collect()
}

/// A stopped warm-pool instance boots again in Pending:Wait, and cloud-init does not run the
/// user data again: the agent completes the launch hook (CONTINUE) and records this boot.
#[tokio::test]
async fn a_stopped_pool_instance_booting_again_has_its_launch_hook_completed() {
    let r = launch_rig("InService", true, Some("the-first-boots-id")).await;
    assert!(
        until(&r.state, 20, |s| !launch_completions(s).is_empty()).await,
        "the launch hook of a later boot was not completed: {:?}",
        r.state.lock().expect("lock").calls
    );
    let done = launch_completions(&r.state.lock().expect("lock"));
    assert_eq!(done.len(), 1);
    assert!(
        done[0].contains("LifecycleActionResult=CONTINUE"),
        "{}",
        done[0]
    );
    let wrote = || std::fs::read_to_string(&r.marker).unwrap_or_default();
    for _ in 0..50 {
        if wrote().trim() == boot_id() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(wrote().trim(), boot_id(), "this boot was not recorded");
}

/// A running (or hibernated) pool instance leaves the pool while the agent runs: Warmed:Running,
/// then InService, in the boot that launched it. The agent completes the hook then.
#[tokio::test]
async fn a_running_pool_instance_leaving_the_pool_has_its_launch_hook_completed() {
    let r = launch_rig("Warmed:Running", false, Some(&boot_id())).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    {
        let mut st = r.state.lock().expect("lock");
        assert!(
            st.calls.is_empty(),
            "a lifecycle call while in the pool: {:?}",
            st.calls
        );
        st.lifecycle_state = "InService".into();
    }
    // The hook becomes active a moment after the target turns InService (Pending, then
    // Pending:Wait): the first calls fail and are retried.
    assert!(until(&r.state, 10, |s| s.rejected("CompleteLifecycleAction") >= 1).await);
    r.state.lock().expect("lock").active = true;
    assert!(
        until(&r.state, 20, |s| launch_completions(s).len() == 1).await,
        "leaving the pool, the launch hook was not completed"
    );
}

/// Nothing is owed on the first boot before its user data finished (no record: the user data
/// completes the hook), nor when the agent restarts during the boot that launched.
#[tokio::test]
async fn the_first_boot_and_an_agent_restart_leave_the_launch_hook_alone() {
    for recorded in [None, Some(boot_id())] {
        let r = launch_rig("InService", true, recorded.as_deref()).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let calls = r.state.lock().expect("lock").calls.clone();
        assert!(
            calls.is_empty(),
            "record {recorded:?}: the agent called {calls:?}"
        );
    }
}

/// `complete-lifecycle --launched` records the boot before it completes the hook (a pool
/// instance is stopped at once after), and a plain completion records nothing.
#[tokio::test]
async fn complete_lifecycle_launched_records_the_boot() {
    let (state, base) = stand("Warmed:Running", true).await;
    let dir = tempfile::tempdir().expect("tmp");
    let marker = dir.path().join("launched");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[launch]\nmarker_file = {:?}\n",
            marker.display().to_string()
        ),
    )
    .expect("write config");
    let c = cfg.to_str().expect("utf8");
    let (code, err) =
        complete_lifecycle(&base, &["--config", c, "--hook", "connscale-launch"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!marker.exists(), "recorded without --launched");
    state.lock().expect("lock").active = true;
    let (code, err) = complete_lifecycle(
        &base,
        &["--config", c, "--hook", "connscale-launch", "--launched"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let rec = std::fs::read_to_string(&marker).expect("the boot was recorded");
    assert_eq!(rec.trim(), boot_id());
}
