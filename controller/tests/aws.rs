//! The controller against a real Auto Scaling API (the moto emulator in server mode): `apply`
//! writes the policy's alarms, scaling policies, schedules, warm pool and drain hook, read back with
//! the Describe calls; a second `apply` changes nothing; the control loop, fed per-instance
//! connections through CloudWatch PutMetricData, scales the group out and back in within its
//! bounds, terminating the least-connected instance with decrement; the lease keeps a second loop
//! standing by; `status --json` shows the group as AWS does.

use aws_sdk_autoscaling::Client as Asg;
use aws_sdk_cloudwatch::Client as Cw;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use connscale::aws::{AwsProvider, AwsSettings, lease};
use connscale::control;
use connscale::engine::Engine;
use connscale_common::policy::Policy;
use connscale_test_support::{MotoServer, workspace_bin};
use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

const GROUP: &str = "chat";

/// Group max 4 is below the policy's max 6: the loop must respect the tighter bound.
const POLICY: &str = r#"
[group]
min_size = 1
max_size = 6
node_cap = 1000

[scale_out]
interval = "10s"
datapoints = 1
warmup = "1s"
lookahead = "0s"

[[scale_out.steps]]
lower = 700
upper = 800
add = 1

[[scale_out.steps]]
lower = 800
upper = 900
add = 2

[[scale_out.steps]]
lower = 900
add = 3

[scale_in]
threshold = 400
sustain = "1s"
step = 1
cooldown = "1s"
max_after = 650

[[schedule]]
name = "evening"
cron = "0 18 * * MON-FRI"
timezone = "Europe/Berlin"
duration = "3h"
min_size = 3

[warm_pool]
min_size = 1
max_prepared = 5
state = "stopped"
reuse_on_scale_in = true
"#;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

struct Env {
    moto: MotoServer,
    asg: Asg,
    cw: Cw,
    policy_file: tempfile::NamedTempFile,
    policy: Policy,
}

impl Env {
    async fn new() -> Self {
        let moto = MotoServer::start();
        moto.reset().await;
        let conf = moto.sdk_config().await;
        let asg = Asg::new(&conf);
        asg.create_launch_configuration()
            .launch_configuration_name("chat-lc")
            .image_id("ami-12c6146b")
            .instance_type("t3.micro")
            .send()
            .await
            .expect("CreateLaunchConfiguration");
        asg.create_auto_scaling_group()
            .auto_scaling_group_name(GROUP)
            .launch_configuration_name("chat-lc")
            .availability_zones("us-east-1a")
            .min_size(1)
            .max_size(4)
            .desired_capacity(2)
            .send()
            .await
            .expect("CreateAutoScalingGroup");
        let mut policy_file = tempfile::NamedTempFile::new().expect("tmp");
        std::io::Write::write_all(&mut policy_file, POLICY.as_bytes()).expect("write policy");
        let policy = Policy::parse(POLICY, "test").expect("valid test policy");
        // Past the policy's 1 s warmup, so the group's instances count in the average.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let env = Self {
            asg,
            cw: Cw::new(&conf),
            moto,
            policy_file,
            policy,
        };
        let created = lease::ensure_table(&env.provider().await)
            .await
            .expect("create the lease table");
        assert!(created, "a fresh emulator has no lease table");
        env
    }

    fn settings(&self) -> AwsSettings {
        AwsSettings {
            group: GROUP.into(),
            region: Some("us-east-1".into()),
            endpoint: Some(self.moto.endpoint()),
            metric: self.policy.metric.clone(),
            // One-second buckets: the latest datapoint is the one the test just wrote.
            metric_period: 1,
            max_attempts: 1,
            lease_table: lease::DEFAULT_TABLE.into(),
        }
    }

    async fn provider(&self) -> AwsProvider {
        AwsProvider::with_config(self.settings(), &self.moto.sdk_config().await)
    }

    /// Runs the `connscale` binary against the emulator.
    fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run connscale")
    }

    /// The `connscale` command against the emulator, not yet started.
    fn command(&self, args: &[&str]) -> Command {
        let bin = workspace_bin("connscale").unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = Command::new(bin);
        cmd.args(args);
        for (flag, value) in [("--group", GROUP), ("--metric-period", "1")] {
            if !args.contains(&flag) {
                cmd.args([flag, value]);
            }
        }
        cmd.env("CONNSCALE_POLICY", self.policy_file.path())
            .env_remove("CONNSCALE_GROUP");
        for (k, v) in self.moto.env() {
            cmd.env(k, v);
        }
        cmd
    }

    fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "connscale {args:?} failed:\n{}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "connscale {args:?}: bad JSON ({e}):\n{}\n{stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// (desired, in-service instance ids sorted).
    async fn group(&self) -> (i32, Vec<String>) {
        let g = self
            .asg
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(GROUP)
            .send()
            .await
            .expect("DescribeAutoScalingGroups");
        let g = &g.auto_scaling_groups()[0];
        let mut ids: Vec<String> = g
            .instances()
            .iter()
            .filter(|i| i.lifecycle_state().map(|s| s.as_str()) == Some("InService"))
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        ids.sort();
        (g.desired_capacity().unwrap_or(-1), ids)
    }

    /// Publishes each instance's connection count now, as the agent does.
    async fn publish(&self, counts: &BTreeMap<String, f64>) {
        let mut req = self
            .cw
            .put_metric_data()
            .namespace(&self.policy.metric.namespace);
        for (id, v) in counts {
            req = req.metric_data(
                MetricDatum::builder()
                    .metric_name(&self.policy.metric.name)
                    .dimensions(
                        Dimension::builder()
                            .name("AutoScalingGroupName")
                            .value(GROUP)
                            .build(),
                    )
                    .dimensions(Dimension::builder().name("InstanceId").value(id).build())
                    .timestamp(DateTime::from_secs(now()))
                    .value(*v)
                    .unit(StandardUnit::Count)
                    .storage_resolution(1)
                    .build(),
            );
        }
        req.send().await.expect("PutMetricData");
    }

    /// Gives every in-service instance a count: `f(rank)` by sorted id.
    async fn publish_by_rank(&self, f: impl Fn(usize) -> f64) -> BTreeMap<String, f64> {
        let (_, ids) = self.group().await;
        let counts: BTreeMap<String, f64> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| (id.clone(), f(n)))
            .collect();
        self.publish(&counts).await;
        counts
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_writes_the_policy_and_a_second_apply_changes_nothing() {
    let env = Env::new().await;
    let pending = env.cli(&["plan", "--json"]);
    assert_eq!(
        pending.status.code(),
        Some(2),
        "plan with changes pending exits 2"
    );

    let applied = env.cli_json(&["apply", "--json"]);
    let kinds: Vec<&str> = applied
        .as_array()
        .expect("list of changes")
        .iter()
        .filter_map(|c| c["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"alarm") && kinds.contains(&"warm-pool"),
        "{applied:#}"
    );

    let pol = env
        .asg
        .describe_policies()
        .auto_scaling_group_name(GROUP)
        .send()
        .await
        .expect("DescribePolicies");
    let by_name: BTreeMap<&str, _> = pol
        .scaling_policies()
        .iter()
        .filter_map(|p| Some((p.policy_name()?, p)))
        .collect();
    let out = by_name["chat-scale-out"];
    assert_eq!(out.policy_type(), Some("StepScaling"));
    let steps: Vec<(Option<f64>, Option<f64>, Option<i32>)> = out
        .step_adjustments()
        .iter()
        .map(|s| {
            (
                s.metric_interval_lower_bound(),
                s.metric_interval_upper_bound(),
                s.scaling_adjustment(),
            )
        })
        .collect();
    // Bounds are relative to the alarm threshold (700).
    assert_eq!(
        steps,
        vec![
            (Some(0.0), Some(100.0), Some(1)),
            (Some(100.0), Some(200.0), Some(2)),
            (Some(200.0), None, Some(3)),
        ]
    );
    let inn = by_name["chat-scale-in"];
    assert_eq!(inn.policy_type(), Some("SimpleScaling"));
    assert_eq!(inn.scaling_adjustment(), Some(-1));
    assert_eq!(inn.cooldown(), Some(1));

    let sched = env
        .asg
        .describe_scheduled_actions()
        .auto_scaling_group_name(GROUP)
        .send()
        .await
        .expect("DescribeScheduledActions");
    let mut names: Vec<_> = sched
        .scheduled_update_group_actions()
        .iter()
        .map(|a| {
            (
                a.scheduled_action_name().unwrap_or_default(),
                a.recurrence(),
                a.time_zone(),
                a.min_size(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(
        names[1],
        (
            "evening-start",
            Some("0 18 * * MON-FRI"),
            Some("Europe/Berlin"),
            Some(3)
        )
    );
    assert_eq!(names[0].0, "evening-end");
    assert_eq!(names[0].1, Some("0 21 * * MON-FRI"));

    let wp = env
        .asg
        .describe_warm_pool()
        .auto_scaling_group_name(GROUP)
        .send()
        .await
        .expect("DescribeWarmPool");
    let c = wp.warm_pool_configuration().expect("a warm pool");
    assert_eq!(c.min_size(), Some(1));
    assert_eq!(c.max_group_prepared_capacity(), Some(5));
    assert_eq!(c.pool_state().map(|s| s.as_str()), Some("Stopped"));

    let alarms = env
        .cw
        .describe_alarms()
        .alarm_names("chat-connections-high")
        .alarm_names("chat-connections-low")
        .send()
        .await
        .expect("DescribeAlarms");
    let th: BTreeMap<&str, Option<f64>> = alarms
        .metric_alarms()
        .iter()
        .filter_map(|a| Some((a.alarm_name()?, a.threshold())))
        .collect();
    assert_eq!(th["chat-connections-high"], Some(700.0));
    assert_eq!(th["chat-connections-low"], Some(400.0));
    for a in alarms.metric_alarms() {
        // Metric math (the heartbeat fallback): the metric is in the `conns` query.
        let conns = a.metrics().iter().find(|q| q.id() == Some("conns"));
        let metric = conns.and_then(|q| q.metric_stat()).and_then(|m| m.metric());
        assert_eq!(metric.and_then(|m| m.metric_name()), Some("TCPconnections"));
        assert_eq!(a.alarm_actions().len(), 1, "each alarm triggers its policy");
    }

    // Idempotent: nothing left to plan or apply.
    assert_eq!(env.cli_json(&["plan", "--json"]), serde_json::json!([]));
    assert_eq!(env.cli_json(&["apply", "--json"]), serde_json::json!([]));

    // A change to the policy shows up as exactly that change.
    let edited = POLICY.replace("threshold = 400", "threshold = 350");
    std::fs::write(env.policy_file.path(), edited).expect("edit policy");
    let out = env.cli(&["plan", "--json"]);
    assert_eq!(out.status.code(), Some(2), "changes pending");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    let names: Vec<&str> = plan
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, vec!["chat-connections-low"], "{plan:#}");
    env.cli_json(&["apply", "--json"]);
    assert_eq!(env.cli_json(&["plan", "--json"]), serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_loop_scales_out_and_in_within_bounds_removing_the_least_connected() {
    let env = Env::new().await;
    let mut p = env.provider().await;
    // The loop runs on the wall clock, and the policy's "evening" schedule (min 3 on weekday
    // evenings in Berlin) would hold the group at 3 during those hours: this test is about the
    // dynamic steps, so its engine has no schedule.
    let mut policy = env.policy.clone();
    policy.schedules.clear();
    let mut scaler = control::Autoscaler::new(Engine::new(policy));

    // Both nodes near their caps: step +3 wants 5, the group's max is 4.
    env.publish_by_rank(|_| 950.0).await;
    let t = control::turn(&mut p, &mut scaler, now(), false)
        .await
        .expect("turn");
    assert!(t.acted, "{t:?}");
    assert_eq!(t.decision.desired, 4, "{}", t.decision.reason);
    let (desired, ids) = env.group().await;
    assert_eq!((desired, ids.len()), (4, 4));

    // Load falls: one node at a time goes, always the least-connected, never below min 1.
    let mut seen = Vec::new();
    for _ in 0..20 {
        let (desired, ids) = env.group().await;
        assert!(
            (1..=4).contains(&desired),
            "desired {desired} outside 1..=4"
        );
        if desired == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        // The last id gets the fewest connections.
        let counts = env.publish_by_rank(|n| (10 * (ids.len() - n)) as f64).await;
        let t = control::turn(&mut p, &mut scaler, now(), false)
            .await
            .expect("turn");
        if !t.decision.scale_in.is_empty() {
            let least = counts
                .iter()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .map(|(id, _)| id.clone())
                .unwrap();
            assert_eq!(
                t.decision.scale_in,
                vec![least.clone()],
                "{}",
                t.decision.reason
            );
            let (after, ids) = env.group().await;
            assert_eq!(after, desired - 1, "terminated with decrement");
            assert!(!ids.contains(&least), "{least} still in service");
            seen.push(least);
        }
    }
    let (desired, ids) = env.group().await;
    assert_eq!((desired, ids.len()), (1, 1), "back to the minimum");
    assert_eq!(seen.len(), 3, "three scale-ins of one node each");

    // At the minimum with no load, further turns hold.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    env.publish_by_rank(|_| 0.0).await;
    let t = control::turn(&mut p, &mut scaler, now(), false)
        .await
        .expect("turn");
    assert!(!t.changes && t.decision.desired == 1, "{t:?}");
}

/// Scale-in bounds under which a silent node read as zero is drained: with 800, 800 and
/// nothing, the old average was 533 ≤ 900 and the two left would carry 800 ≤ 1000.
const QUIET_POLICY: &str = r#"
[group]
min_size = 1
max_size = 6
node_cap = 2000

[scale_out]
interval = "10s"
datapoints = 1
warmup = "1s"
lookahead = "0s"

[[scale_out.steps]]
lower = 1200
add = 1

[scale_in]
threshold = 900
sustain = "1s"
step = 1
cooldown = "1s"
max_after = 1000
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_instance_is_not_drained_and_does_not_pull_the_average_down() {
    let env = Env::new().await;
    env.asg
        .set_desired_capacity()
        .auto_scaling_group_name(GROUP)
        .desired_capacity(3)
        .send()
        .await
        .expect("SetDesiredCapacity");
    // Past the warmup of the third instance.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, ids) = env.group().await;
    assert_eq!(ids.len(), 3, "{ids:?}");
    let silent = ids[2].clone();
    let mut scaler = control::Autoscaler::new(Engine::new(
        Policy::parse(QUIET_POLICY, "quiet").expect("valid policy"),
    ));
    let mut p = env.provider().await;
    // Enough turns for sustain and cooldown: read as zero, the silent node went at the second.
    for _ in 0..3 {
        env.publish(&ids[..2].iter().map(|id| (id.clone(), 800.0)).collect())
            .await;
        let t = control::turn(&mut p, &mut scaler, now(), false)
            .await
            .expect("turn");
        let d = &t.decision;
        assert!(d.scale_in.is_empty() && d.desired == 3, "{}", d.reason);
        assert_eq!(d.average, Some(800.0), "{}", d.reason);
        assert!(
            d.reason.contains("no data from 1 of 3") && d.reason.contains(&silent),
            "{}",
            d.reason
        );
        let json = serde_json::to_value(&t).expect("turn as JSON");
        let member = json["fleet"]["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["id"] == silent.as_str()))
            .cloned()
            .unwrap_or_default();
        assert_eq!(member["connections"], serde_json::Value::Null, "{json:#}");
        assert_eq!(json["decision"]["no_data"], serde_json::json!([silent]));
        assert_eq!(json["decision"]["direction"]["kind"], "hold", "{json:#}");
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    assert_eq!(env.group().await, (3, ids));
}

#[tokio::test(flavor = "multi_thread")]
async fn run_once_acts_under_the_lease_and_stands_by_when_another_loop_holds_it() {
    let env = Env::new().await;
    env.publish_by_rank(|_| 950.0).await;

    // A dry run decides but changes nothing.
    let dry = env.cli_json(&["run", "--once", "--dry-run", "--json"]);
    assert_eq!(dry["decision"]["desired"], 4, "{dry:#}");
    assert_eq!(
        dry["decision"]["direction"],
        serde_json::json!({"kind": "scale_out", "from": 2, "to": 4}),
        "{dry:#}"
    );
    assert_eq!(dry["acted"], false);
    assert_eq!(env.group().await.0, 2);

    // Another loop holds the lease: this one stands by and changes nothing.
    let p = env.provider().await;
    let held = lease::acquire(&p, "other-host:1:x", now(), Duration::from_secs(600))
        .await
        .expect("lease call");
    assert!(held.is_ok(), "free lease taken");
    let standby = env.cli_json(&["run", "--once", "--json"]);
    assert!(
        standby["standby"]
            .as_str()
            .is_some_and(|s| s.contains("other-host:1:x")),
        "{standby:#}"
    );
    assert_eq!(env.group().await.0, 2);

    // Released: the loop takes the lease, acts, and gives the lease back on exit.
    lease::release(&p, "other-host:1:x").await.expect("release");
    let acted = env.cli_json(&["run", "--once", "--json"]);
    assert_eq!(acted["acted"], true, "{acted:#}");
    assert_eq!(env.group().await.0, 4);
    assert_eq!(lease::read(&p).await.expect("read lease"), None);

    // status --json shows what AWS shows.
    let s = env.cli_json(&["status", "--json"]);
    assert_eq!(s["desired"], 4, "{s:#}");
    assert_eq!(s["max_size"], 4);
    assert_eq!(s["members"].as_array().map(Vec::len), Some(4));
    let with_counts = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["connections"].as_u64().is_some())
        .count();
    assert!(
        with_counts >= 2,
        "the two original instances have counts: {s:#}"
    );
}

/// systemd stops the controller with SIGTERM: the loop finishes its turn, gives the lease back
/// (a standby need not wait for it to expire) and exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_the_loop_and_releases_the_lease() {
    use std::io::BufRead;
    let env = Env::new().await;
    env.publish_by_rank(|_| 500.0).await;
    /// Kills the loop if the test fails before it exits on its own.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(
        env.command(&["run", "--json", "--interval", "1s"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start connscale run"),
    );
    let mut lines = std::io::BufReader::new(child.0.stdout.take().expect("stdout")).lines();
    // The first turn's line: by then the loop holds the lease.
    let first = tokio::task::block_in_place(|| lines.next())
        .expect("a turn's line")
        .expect("read stdout");
    let turn: serde_json::Value = serde_json::from_str(&first).expect("a JSON turn");
    assert!(
        turn.get("decision").is_some(),
        "a turn, not a standby: {turn:#}"
    );
    let p = env.provider().await;
    let held = lease::read(&p)
        .await
        .expect("read lease")
        .expect("lease held");
    assert!(held.holder.contains(':'), "{held:?}");

    // SAFETY: kill sends a signal to the child we started; it has no memory effects here.
    let rc = unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0, "SIGTERM sent");
    let status = tokio::task::block_in_place(|| child.0.wait()).expect("wait for connscale run");
    assert!(
        status.success(),
        "connscale run exits 0 on SIGTERM: {status}"
    );
    assert_eq!(
        lease::read(&p).await.expect("read lease"),
        None,
        "lease released"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_name_the_group_and_the_fix() {
    let env = Env::new().await;
    let out = env.cli(&["status", "--group", "no-such-group"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no-such-group") && err.contains("DescribeAutoScalingGroups"),
        "{err}"
    );
    let out = env.cli(&["run", "--once", "--metric-period", "7"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--metric-period 7"),
        "{err}"
    );
}

/// EC2 DescribeInstances (src/aws/ec2.rs: a signed Query call through the SDK's runtime, not the
/// aws-sdk-ec2 crate) against moto: the fleet view has each instance's launch time and private
/// address as EC2 reports them (not the fallbacks: now and none), and an EC2 error response
/// comes back with its code.
#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_view_reads_launch_times_and_addresses_from_ec2() {
    use connscale::provider::{ErrorKind, Provider};
    let before = now();
    let env = Env::new().await;
    let mut p = env.provider().await;
    let view = p.observe().await.expect("observe");
    let observed = now();
    let (_, mut ids) = env.group().await;
    let mut seen: Vec<String> = view.members.iter().map(|m| m.id.clone()).collect();
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids, "every in-service instance is a member");
    for m in &view.members {
        // Env::new waits 1.5 s after creating the group: a launch time read from EC2 is at
        // least a second old, the fallback (now) is not.
        assert!(
            m.launched_at >= before - 2 && m.launched_at < observed,
            "{}: launched_at {} not within [{}, {observed})",
            m.id,
            m.launched_at,
            before - 2,
        );
        let ip: std::net::Ipv4Addr = m
            .address
            .as_deref()
            .unwrap_or_default()
            .parse()
            .unwrap_or_else(|e| panic!("{}: private address {:?}: {e}", m.id, m.address));
        assert!(ip.is_private(), "{}: {ip}", m.id);
    }
    let err = p
        .ec2
        .describe_instances(vec!["i-0000000000000dead".into()])
        .await
        .map_err(|e| connscale::aws::sdk_error("ec2:DescribeInstances", e))
        .expect_err("an unknown instance id is an error");
    assert_eq!(err.kind, ErrorKind::Other, "{err}");
    assert!(err.message.contains("InvalidInstanceID"), "{err}");
}

/// The cordon against moto's EC2: a holding turn tags the least-connected instance with
/// `connscale-cordon` (CreateTags; value: the second it holds until and the second it began),
/// the next observe reads it back from DescribeInstances' tagSet, a restarted controller keeps
/// the cordon's start from it, and once the fleet is too busy for it the turn removes it
/// (DeleteTags).
#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_fleet_cordons_its_least_connected_instance_and_a_busy_one_lifts_it() {
    use connscale::provider::Provider;
    use connscale_common::cordon;
    let env = Env::new().await;
    let mut p = env.provider().await;
    let mut policy = env.policy.clone();
    policy.schedules.clear();
    let mut scaler = control::Autoscaler::new(Engine::new(policy));
    // 300 + 100: the other one alone would hold 400 ≤ 950 (95 % of its cap). The scale-in waits
    // for `sustain`, so the turn holds.
    let counts = env
        .publish_by_rank(|n| if n == 0 { 300.0 } else { 100.0 })
        .await;
    let least = counts
        .iter()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
        .clone();
    let at = now();
    let t = control::turn(&mut p, &mut scaler, at, false)
        .await
        .expect("turn");
    assert_eq!(
        t.decision.cordon,
        std::slice::from_ref(&least),
        "{}",
        t.decision.reason
    );
    let tags: Vec<(String, Option<String>)> = p
        .ec2
        .describe_instances(counts.keys().cloned().collect())
        .await
        .expect("describe")
        .into_iter()
        .map(|i| (i.id, i.cordon))
        .collect();
    for (id, tag) in &tags {
        let want = (id == &least).then(|| cordon::value(at + cordon::HOLD, at));
        assert_eq!(tag, &want, "{id}: {tags:?}");
    }
    let view = p.observe().await.expect("observe");
    let cordoned: Vec<_> = view
        .members
        .iter()
        .filter_map(|m| Some((m.id.clone(), m.cordoned_until?)))
        .collect();
    assert_eq!(cordoned, vec![(least.clone(), at + cordon::HOLD)]);

    // A restarted controller (a new engine, a new client) a minute on: the cordon began at `at`.
    let mut restarted = control::Autoscaler::new(Engine::new(scaler.engine.policy.clone()));
    let mut p2 = env.provider().await;
    let t = control::turn(&mut p2, &mut restarted, at + 60, false)
        .await
        .expect("turn");
    assert_eq!(t.decision.cordon, std::slice::from_ref(&least));
    assert_eq!(
        t.decision.cordoned_since.get(&least),
        Some(&at),
        "the start comes from the tag, not the restart: {:?}",
        t.decision
    );

    // 650 + 650: one alone would hold 1,300. No cordon, and the tag goes.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    env.publish_by_rank(|_| 650.0).await;
    let t = control::turn(&mut p, &mut scaler, now(), false)
        .await
        .expect("turn");
    assert!(t.decision.cordon.is_empty(), "{}", t.decision.reason);
    let view = p.observe().await.expect("observe");
    assert!(
        view.members.iter().all(|m| m.cordoned_until.is_none()),
        "{:?}",
        view.members
    );
}

/// Many loops started at once: in every turn exactly one of them holds the lease (DynamoDB's
/// conditional write decides), and the holder keeps it while it renews.
#[tokio::test(flavor = "multi_thread")]
async fn of_many_loops_racing_for_the_lease_exactly_one_holds_it_each_turn() {
    let env = Env::new().await;
    let loops = 12;
    let ttl = Duration::from_secs(30);
    let mut holders = Vec::new();
    for turn in 0..5 {
        // All loops ask in the same instant; `now` moves past the TTL every other turn, so the
        // lease is free (expired) in some turns and held in the others.
        let at = now() + (turn / 2) * 60;
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(loops));
        let mut tasks = Vec::new();
        for i in 0..loops {
            let p = env.provider().await;
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let r = lease::acquire(&p, &format!("loop-{i}"), at, ttl).await;
                r.expect("lease call").ok()
            }));
        }
        let mut won = Vec::new();
        for t in tasks {
            if let Some(l) = t.await.expect("task") {
                won.push(l);
            }
        }
        assert_eq!(won.len(), 1, "turn {turn}: exactly one holder, got {won:?}");
        holders.push(won.remove(0));
    }
    // Turns 0 and 1 share a lease (renewed by its holder, same token); turn 2 is past the TTL:
    // whoever takes it gets a new token.
    assert!(holders[1].token >= holders[0].token, "{holders:?}");
    assert!(holders[2].token > holders[1].token, "{holders:?}");
}

/// A loop that lost its lease (it paused past the TTL and another loop took over) does not act:
/// the scaling call's fence check fails, and the group is unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn a_loop_that_lost_the_lease_cannot_scale() {
    use connscale::provider::{ErrorKind, Provider};
    let env = Env::new().await;
    let ttl = Duration::from_secs(30);
    let mut stale = env.provider().await;
    let mine = lease::acquire(&stale, "stale-loop", now(), ttl)
        .await
        .expect("lease call")
        .expect("free lease");
    stale.fence = Some(lease::Fence {
        holder: mine.holder,
        token: mine.token,
        ttl,
    });
    // While it holds the lease, its calls go through.
    stale.set_desired(3).await.expect("holder may scale");
    assert_eq!(env.group().await.0, 3);

    // Another loop takes the lease once it has expired (its clock is past the TTL).
    let other = env.provider().await;
    let theirs = lease::acquire(&other, "new-loop", now() + 31, ttl)
        .await
        .expect("lease call")
        .expect("expired lease taken");
    assert!(theirs.token > mine.token);

    let err = stale.set_desired(4).await.expect_err("stale holder fenced");
    assert_eq!(err.kind, ErrorKind::LeaseLost, "{err}");
    assert!(
        err.transient(),
        "a lost lease means standing by, not exiting"
    );
    let err = stale
        .terminate("i-anything", true)
        .await
        .expect_err("stale holder fenced");
    assert_eq!(err.kind, ErrorKind::LeaseLost, "{err}");
    assert_eq!(env.group().await.0, 3, "the stale loop changed nothing");

    // Release gives it up only for its holder.
    lease::release(&other, "stale-loop").await.expect("release");
    assert_eq!(
        lease::read(&other).await.expect("read").map(|l| l.holder),
        Some("new-loop".into())
    );
    lease::release(&other, "new-loop").await.expect("release");
    assert_eq!(lease::read(&other).await.expect("read"), None);
}

/// Without the lease table, `run` says which table and how to create it; `plan` lists it and
/// `apply` creates it.
#[tokio::test(flavor = "multi_thread")]
async fn the_lease_table_is_planned_created_and_named_when_missing() {
    let env = Env::new().await;
    let out = env.cli(&["run", "--once", "--lease-table", "elsewhere"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("\"elsewhere\"") && err.contains("connscale apply"),
        "{err}"
    );
    let plan_json = |out: Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "plan --json: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let plan = plan_json(env.cli(&["plan", "--json", "--lease-table", "elsewhere"]));
    let lease_changes: Vec<_> = plan
        .as_array()
        .expect("array")
        .iter()
        .filter(|c| c["kind"] == "lease-table")
        .collect();
    assert_eq!(lease_changes.len(), 1, "{plan:#}");
    assert_eq!(lease_changes[0]["name"], "elsewhere");
    assert!(
        env.cli(&["apply", "--lease-table", "elsewhere"])
            .status
            .success()
    );
    let again = plan_json(env.cli(&["plan", "--json", "--lease-table", "elsewhere"]));
    assert!(
        !again
            .as_array()
            .expect("array")
            .iter()
            .any(|c| c["kind"] == "lease-table"),
        "{again:#}"
    );
}

/// The heartbeat datapoints moto holds for the group: (timestamp, sum) per 10 s period.
async fn heartbeats(cw: &Cw, from: i64, to: i64) -> Vec<(i64, f64)> {
    use aws_sdk_cloudwatch::types::{Metric, MetricDataQuery, MetricStat};
    let out = cw
        .get_metric_data()
        .metric_data_queries(
            MetricDataQuery::builder()
                .id("hb")
                .metric_stat(
                    MetricStat::builder()
                        .metric(
                            Metric::builder()
                                .namespace("connscale")
                                .metric_name("ControllerHeartbeat")
                                .dimensions(
                                    Dimension::builder()
                                        .name("AutoScalingGroupName")
                                        .value(GROUP)
                                        .build(),
                                )
                                .build(),
                        )
                        .period(10)
                        .stat("Sum")
                        .build(),
                )
                .build(),
        )
        .start_time(DateTime::from_secs(from - from.rem_euclid(10)))
        .end_time(DateTime::from_secs(to))
        .send()
        .await
        .expect("GetMetricData");
    let r = &out.metric_data_results()[0];
    let mut v: Vec<(i64, f64)> = r
        .timestamps()
        .iter()
        .map(|t| t.secs())
        .zip(r.values().iter().copied())
        .collect();
    v.sort_by_key(|(t, _)| *t);
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn the_alarms_act_only_while_the_controller_heartbeat_is_missing() {
    let env = Env::new().await;
    env.cli_json(&["apply", "--json"]);
    let alarms = env
        .cw
        .describe_alarms()
        .alarm_names("chat-connections-high")
        .alarm_names("chat-connections-low")
        .send()
        .await
        .expect("DescribeAlarms");
    assert_eq!(alarms.metric_alarms().len(), 2);
    for a in alarms.metric_alarms() {
        let name = a.alarm_name().unwrap_or_default();
        let (period, stat_never, cmp, missing) = if name.ends_with("high") {
            (10, "-1", "GreaterThanOrEqualToThreshold", "missing")
        } else {
            (60, "401", "LessThanOrEqualToThreshold", "notBreaching")
        };
        // No single metric at the top level: the alarm compares the expression.
        assert_eq!(a.metric_name(), None, "{name}");
        let q: Vec<_> = a
            .metrics()
            .iter()
            .map(|q| {
                let m = q.metric_stat();
                (
                    q.id().unwrap_or_default(),
                    q.return_data(),
                    q.expression(),
                    m.and_then(|m| m.metric()).and_then(|m| m.metric_name()),
                    m.and_then(|m| m.stat()),
                    m.and_then(|m| m.period()),
                    m.and_then(|m| m.metric()).map(|m| {
                        m.dimensions()
                            .iter()
                            .map(|d| (d.name(), d.value()))
                            .collect::<Vec<_>>()
                    }),
                )
            })
            .collect();
        let dims = Some(vec![(Some("AutoScalingGroupName"), Some(GROUP))]);
        let expr = format!("IF(FILL(hb, 0) == 0, conns, {stat_never})");
        assert_eq!(
            q,
            vec![
                (
                    "conns",
                    Some(false),
                    None,
                    Some("TCPconnections"),
                    Some("Average"),
                    Some(period),
                    dims.clone()
                ),
                (
                    "hb",
                    Some(false),
                    None,
                    Some("ControllerHeartbeat"),
                    Some("Sum"),
                    Some(period),
                    dims.clone()
                ),
                (
                    "fallback",
                    Some(true),
                    Some(expr.as_str()),
                    None,
                    None,
                    None,
                    None
                ),
            ],
            "{name}"
        );
        assert_eq!(
            a.comparison_operator().map(|c| c.as_str()),
            Some(cmp),
            "{name}"
        );
        assert_eq!(a.treat_missing_data(), Some(missing), "{name}");
        assert_eq!(a.alarm_actions().len(), 1, "{name}");
        // moto does not evaluate alarms (it shows a new alarm as OK): the state is read back,
        // the expression's semantics are a unit test in aws::plan.
        assert!(
            a.state_value().is_some_and(|s| s.as_str() != "ALARM"),
            "{name}: {:?}",
            a.state_value()
        );
    }
    // Read back, the metric-math alarms equal what the policy wants: nothing to plan.
    assert_eq!(env.cli_json(&["plan", "--json"]), serde_json::json!([]));

    env.publish_by_rank(|_| 500.0).await;
    let t0 = now();
    // A dry run never takes the lease and publishes no heartbeat: the alarms stay in charge.
    env.cli_json(&["run", "--once", "--dry-run", "--json"]);
    assert_eq!(
        heartbeats(&env.cw, t0 - 20, t0 + 120).await,
        vec![],
        "dry run"
    );
    // A run holding the lease publishes the heartbeat for every 10 s period until its lease
    // (interval 10 s x 3 + 10 s) would expire, so the alarms stand down until then.
    env.cli_json(&["run", "--once", "--json"]);
    let t1 = now();
    let hb = heartbeats(&env.cw, t0 - 20, t1 + 120).await;
    assert!(
        (4..=6).contains(&hb.len()) && hb.iter().all(|(t, v)| t % 10 == 0 && *v >= 1.0),
        "{hb:?}"
    );
    let last = hb.last().map(|(t, _)| *t).unwrap_or_default();
    assert!(
        last >= t1 + 20 && last < t1 + 50,
        "last heartbeat {last} vs now {t1}: {hb:?}"
    );
}
