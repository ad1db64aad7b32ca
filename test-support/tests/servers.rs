//! The test-support servers are real and leave nothing behind: redis-server through redis-rs,
//! moto through the Rust AWS SDK (a metric written and read back), both stopped by PID afterwards.

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricDatum, MetricStat};
use connscale_test_support::{MotoServer, RedisServer, find_tool, pid_alive};

#[tokio::test]
async fn redis_and_moto_work_through_real_clients_and_stop() {
    let redis = RedisServer::start();
    let moto = MotoServer::start();
    let (redis_pid, moto_pid) = (redis.pid(), moto.pid());
    assert!(pid_alive(redis_pid) && pid_alive(moto_pid));

    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let v: String = redis::cmd("GET")
        .arg("k")
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(v, "v");

    moto.reset().await;
    let cw = aws_sdk_cloudwatch::Client::new(&moto.sdk_config().await);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let minute = now - now % 60 - 120;
    let dim = Dimension::builder()
        .name("AutoScalingGroupName")
        .value("g")
        .build();
    cw.put_metric_data()
        .namespace("connscale-test")
        .metric_data(
            MetricDatum::builder()
                .metric_name("TCPconnections")
                .dimensions(dim.clone())
                .timestamp(DateTime::from_secs(minute))
                .value(42.0)
                .build(),
        )
        .send()
        .await
        .expect("PutMetricData");
    let out = cw
        .get_metric_data()
        .start_time(DateTime::from_secs(minute - 60))
        .end_time(DateTime::from_secs(minute + 60))
        .metric_data_queries(
            MetricDataQuery::builder()
                .id("q")
                .metric_stat(
                    MetricStat::builder()
                        .metric(
                            Metric::builder()
                                .namespace("connscale-test")
                                .metric_name("TCPconnections")
                                .dimensions(dim)
                                .build(),
                        )
                        .period(60)
                        .stat("Sum")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("GetMetricData");
    let values: Vec<f64> = out
        .metric_data_results()
        .iter()
        .flat_map(|r| r.values().to_vec())
        .collect();
    assert_eq!(values, vec![42.0]);

    drop(conn);
    drop(redis);
    drop(moto);
    assert!(
        !pid_alive(redis_pid),
        "redis-server {redis_pid} left behind"
    );
    assert!(!pid_alive(moto_pid), "moto_server {moto_pid} left behind");
}

#[test]
fn servers_stop_even_when_the_test_panics() {
    let pids = std::sync::Mutex::new(0u32);
    let result = std::panic::catch_unwind(|| {
        let r = RedisServer::start();
        *pids.lock().expect("lock") = r.pid();
        panic!("simulated test failure");
    });
    assert!(result.is_err());
    let pid = *pids.lock().expect("lock");
    assert!(
        pid != 0 && !pid_alive(pid),
        "redis-server {pid} survived a panic"
    );
}

#[test]
fn a_missing_tool_is_one_line_naming_it_and_the_install_command() {
    let err = find_tool(
        "no-such-tool-xyz",
        &[],
        "apt-get install -y no-such-tool-xyz",
    )
    .unwrap_err();
    let msg = err.to_string();
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(
        msg.contains("no-such-tool-xyz") && msg.contains("apt-get install"),
        "{msg}"
    );
}
