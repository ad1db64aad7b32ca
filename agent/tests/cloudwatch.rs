//! Publishing through the moto emulator: statistic sets read back with GetMetricData per instance
//! and per group; then moto is stopped and restarted (empty, as moto keeps state in memory) and
//! every period completed during the outage arrives exactly once with its original timestamp.
//! The outage lasts CONNSCALE_OUTAGE_SECS (default 30 s, to keep the suite short; the mechanism
//! does not depend on the length up to `max_buffer_age`).

mod common;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
use common::start_agent;
use connscale_test_support::MotoServer;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const PERIOD: i64 = 5;
const HELD: f64 = 7.0;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// (timestamp → (average, sample count)) for one dimension set.
async fn read(
    cw: &aws_sdk_cloudwatch::Client,
    dims: &[(&str, &str)],
    from: i64,
    to: i64,
) -> BTreeMap<i64, (f64, f64)> {
    let metric = Metric::builder()
        .namespace("connscale-test")
        .metric_name("TCPconnections")
        .set_dimensions(Some(
            dims.iter()
                .map(|(k, v)| Dimension::builder().name(*k).value(*v).build())
                .collect(),
        ));
    let q = |id: &str, stat: &str| {
        MetricDataQuery::builder()
            .id(id)
            .metric_stat(
                MetricStat::builder()
                    .metric(metric.clone().build())
                    .period(PERIOD as i32)
                    .stat(stat)
                    .build(),
            )
            .build()
    };
    // moto buckets from StartTime (CloudWatch from the epoch): align so both agree on periods.
    let from = from - from.rem_euclid(PERIOD);
    let out = cw
        .get_metric_data()
        .start_time(DateTime::from_secs(from))
        .end_time(DateTime::from_secs(to))
        .metric_data_queries(q("avg", "Average"))
        .metric_data_queries(q("n", "SampleCount"))
        .send()
        .await
        .expect("GetMetricData");
    let mut m: BTreeMap<i64, (f64, f64)> = BTreeMap::new();
    for r in out.metric_data_results() {
        for (t, v) in r.timestamps().iter().zip(r.values()) {
            let e = m.entry(t.secs()).or_default();
            if r.id() == Some("avg") {
                e.0 = *v;
            } else {
                e.1 = *v;
            }
        }
    }
    m
}

/// The agent's environment for moto: CloudWatch on, PERIOD-second statistic sets in the test
/// namespace, for `instance` of `group`.
fn cloudwatch_env(moto: &MotoServer, instance: &str, group: &str) -> Vec<(&'static str, String)> {
    let mut env = moto.env();
    env.extend([
        ("CONNSCALE_AGENT_CLOUDWATCH", "on".to_string()),
        ("CONNSCALE_AGENT_PERIOD", format!("{PERIOD}s")),
        ("CONNSCALE_AGENT_NAMESPACE", "connscale-test".into()),
        ("CONNSCALE_INSTANCE_ID", instance.into()),
        ("CONNSCALE_GROUP", group.into()),
    ]);
    env
}

/// Waits up to 30 s for the agent to have published `n` points; whether it did.
async fn published(agent: &common::Agent, n: f64) -> bool {
    for _ in 0..300 {
        if agent.metric("connscale_published_points_total").await >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn heavy_statistic_sets_reach_cloudwatch_and_survive_an_outage() {
    let outage = std::env::var("CONNSCALE_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30u64);
    let mut moto = MotoServer::start();
    moto.reset().await;
    // Below the ephemeral range, where no other test's client socket can have it as local port.
    let port = connscale_test_support::free_port();
    let l = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind");
    let mut held = Vec::new();
    for _ in 0..HELD as usize {
        held.push(std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"));
        held.push(l.accept().expect("accept").0);
    }
    let env = cloudwatch_env(&moto, "i-0abc", "chat");
    let start = now();
    let agent = start_agent(&["--port", &port.to_string()], &env);
    let cw = aws_sdk_cloudwatch::Client::new(&moto.sdk_config().await);

    // Normal operation: a few periods published and readable per instance and per group.
    assert!(published(&agent, 3.0).await, "nothing published");
    for dims in [
        vec![("AutoScalingGroupName", "chat"), ("InstanceId", "i-0abc")],
        vec![("AutoScalingGroupName", "chat")],
    ] {
        let pts = read(&cw, &dims, start - PERIOD, now() + PERIOD).await;
        assert!(pts.len() >= 3, "{dims:?}: {pts:?}");
        assert!(
            pts.values().all(|&(avg, _)| avg == HELD),
            "{dims:?}: {pts:?}"
        );
    }

    // Outage: stop moto, let periods complete, restart it empty.
    moto.stop();
    let down = now();
    tokio::time::sleep(Duration::from_secs(outage)).await;
    let buffered = agent.metric("connscale_buffered_points").await;
    assert!(
        buffered >= (outage as i64 / PERIOD - 2) as f64,
        "buffered only {buffered}"
    );
    moto.resume();
    let up = now();
    for _ in 0..600 {
        if agent.metric("connscale_buffered_points").await == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        agent.metric("connscale_buffered_points").await,
        0.0,
        "backlog not drained"
    );
    assert_eq!(agent.metric("connscale_dropped_points_total").await, 0.0);

    // Every period wholly inside the outage is present once: one statistic set of ~PERIOD
    // samples (a doubled point would show about twice as many), at its original timestamp.
    let pts = read(
        &cw,
        &[("AutoScalingGroupName", "chat"), ("InstanceId", "i-0abc")],
        down - PERIOD,
        now() + PERIOD,
    )
    .await;
    let first = down - down.rem_euclid(PERIOD) + PERIOD;
    let mut ts = first;
    while ts + PERIOD <= up {
        let (avg, n) = pts
            .get(&ts)
            .copied()
            .unwrap_or_else(|| panic!("period {ts} lost (outage {down}..{up}): {pts:?}"));
        assert_eq!(avg, HELD);
        assert!(
            (PERIOD as f64 - 1.0..=PERIOD as f64 + 1.0).contains(&n),
            "period {ts} has {n} samples: doubled or torn ({pts:?})"
        );
        ts += PERIOD;
    }
    assert!(ts > first + PERIOD, "the outage must span several periods");
    drop(agent);
}

/// A warm-pool instance (target `Warmed:Running`) publishes its count per instance only: in the
/// group's dimension its zeros would pull the average the fallback alarms read toward a
/// scale-in (10 nodes at 24,000 and 6 warm ones read as 15,000). In service, it counts there too.
#[tokio::test]
async fn heavy_a_warm_pool_instance_stays_out_of_the_group_average() {
    use connscale_test_support::{InstanceIdentity, InstanceStub};
    let moto = MotoServer::start();
    moto.reset().await;
    let stub = InstanceStub::start(
        InstanceIdentity {
            instance_id: "i-0warm".into(),
            group: "chat-pool".into(),
            ..InstanceIdentity::default()
        },
        &moto.endpoint(),
    );
    stub.set_target_lifecycle_state("Warmed:Running");
    let port = connscale_test_support::free_port();
    let _service = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind");
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "[drain]\nenabled = true\npoll_interval = \"300ms\"\n").expect("config");
    let mut env = cloudwatch_env(&moto, "i-0warm", "chat-pool");
    env.push(("CONNSCALE_IMDS_ENDPOINT", stub.imds_endpoint()));
    let start = now();
    let args = [
        "--config",
        cfg.to_str().expect("utf8"),
        "--port",
        &port.to_string(),
    ];
    let agent = start_agent(&args, &env);
    let cw = aws_sdk_cloudwatch::Client::new(&moto.sdk_config().await);
    let instance = [
        ("AutoScalingGroupName", "chat-pool"),
        ("InstanceId", "i-0warm"),
    ];
    let group = [("AutoScalingGroupName", "chat-pool")];
    assert!(
        published(&agent, 3.0).await,
        "nothing published from the pool"
    );
    let pts = read(&cw, &instance, start - PERIOD, now() + PERIOD).await;
    assert!(pts.len() >= 3, "per instance: {pts:?}");
    let pts = read(&cw, &group, start - PERIOD, now() + PERIOD).await;
    assert!(
        pts.is_empty(),
        "a warm instance in the group's average: {pts:?}"
    );

    stub.set_target_lifecycle_state("InService");
    let switched = now();
    let so_far = agent.metric("connscale_published_points_total").await;
    assert!(
        published(&agent, so_far + 3.0).await,
        "nothing published in service"
    );
    let pts = read(&cw, &group, start - PERIOD, now() + PERIOD).await;
    assert!(!pts.is_empty(), "in service, not in the group's average");
    assert!(
        pts.keys().all(|&ts| ts >= switched - PERIOD),
        "a period from the pool in the group's average (in service from {switched}): {pts:?}"
    );
}
