//! The simulator: the classic baseline against hand-computed alarm timelines, deterministic
//! replays, and connscale's default policy against the baselines on the shared traces and on
//! generated traces the policy was not tuned on.

use connscale::control::Strategy;
use connscale::engine::{InstanceView, Lifecycle, Observation};
use connscale::sim::baselines::Classic;
use connscale::sim::fleet::FleetModel;
use connscale::sim::targets::Targets;
use connscale::sim::trace::Trace;
use connscale::sim::trace::synthetic as generated;
use connscale::sim::{SimConfig, simulate};
use connscale_common::policy::Policy;
use std::path::PathBuf;

fn fleet_at(now: i64, per_node: u64, n: usize, desired: u32) -> Observation {
    Observation {
        now,
        desired,
        min_size: 0,
        instances: (0..n)
            .map(|i| InstanceView {
                id: format!("i-{i}"),
                lifecycle: Lifecycle::InService,
                connections: Some(per_node),
                launched_at: -10_000,
                cordoned_since: None,
            })
            .collect(),
    }
}

/// Ticks of 10 s on a fleet whose size follows the decisions; returns (time, new desired).
fn run_classic(per_node: u64, n: usize, until: i64) -> Vec<(i64, u32)> {
    let mut c = Classic::new(28_000.0, 2, 40);
    let mut desired = n as u32;
    let mut changes = Vec::new();
    for t in (0..until).step_by(10) {
        let d = c.decide(&fleet_at(t, per_node, desired as usize, desired));
        if d.desired != desired {
            changes.push((t, d.desired));
            desired = d.desired;
        }
    }
    changes
}

#[test]
fn classic_scales_out_after_five_full_minutes_with_relative_steps() {
    // The fleet here is fixed at 4 nodes (new ones never become ready in this helper's model:
    // they count as launched at -10,000, i.e. past warmup, so re-executions can add more).
    // Minute datapoints complete at t = 50, 110, 170, 230, 290: the alarm's fifth breaching
    // datapoint is at t = 290. 24,000 is 4,000 over the threshold → +2.
    let first = run_classic(24_000, 4, 300);
    assert_eq!(first, vec![(290, 6)]);
    // 31,000 is 11,000 over → +3.
    assert_eq!(run_classic(31_000, 4, 300), vec![(290, 7)]);
}

#[test]
fn classic_counts_warming_instances_toward_capacity() {
    let mut c = Classic::new(28_000.0, 2, 40);
    let mut desired = 4;
    let mut changes = Vec::new();
    for t in (0..600).step_by(10) {
        let mut o = fleet_at(t, 24_000, 4, desired);
        for k in 4..desired as usize {
            o.instances.push(InstanceView {
                id: format!("new-{k}"),
                lifecycle: Lifecycle::InService,
                connections: Some(0),
                launched_at: 290,
                cordoned_since: None,
            });
        }
        let d = c.decide(&o);
        if d.desired != desired {
            changes.push((t, d.desired));
            desired = d.desired;
        }
    }
    // The ALARM persists and re-executes every minute, but the 2 warming instances already
    // cover the +2 step, so nothing more is added within the 150 s warmup.
    assert_eq!(changes, vec![(290, 6)]);
}

#[test]
fn classic_scales_in_after_three_five_minute_periods_then_cools_down() {
    // Five-minute datapoints complete at minutes 5, 10, 15 (t = 290, 590, 890): −1 at 890; the
    // 300 s cooldown allows the next −1 at the first minute boundary ≥ 1,190 (t = 1,190).
    let changes = run_classic(5_000, 6, 1_300);
    assert_eq!(changes, vec![(890, 5), (1_190, 4)]);
}

fn shared_traces() -> Vec<PathBuf> {
    let dir = std::env::var_os("CONNSCALE_TRACES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces"));
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "shared traces not found at {} ({e}); set CONNSCALE_TRACES=DIR",
                dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    v.sort();
    assert!(
        v.len() >= 3,
        "expected the three shared traces in {}",
        dir.display()
    );
    v
}

fn cfg() -> SimConfig {
    SimConfig {
        policy: Policy::default_policy(),
        peak_nodes: 10.0,
        time_scale: 1.0,
        compare: vec!["classic".into(), "classic-nopool".into(), "oracle".into()],
        model: FleetModel::default(),
    }
}

/// Asserts the acceptance criteria against classic without its warm pool (what the default
/// policy meets today; against the whole classic setup, pool included, it does not yet: issue
/// 20, and scripts/bench/simulator.sh's summary).
fn check_beats_classic(trace: &Trace) {
    let r = simulate(trace, &cfg()).expect("simulate");
    let (cs, cl, or) = (
        &r.policies["connscale"],
        &r.policies["classic-nopool"],
        &r.policies["oracle"],
    );
    let table = r.table();
    assert!(
        cs.rejected_connection_minutes <= 0.10 * cl.rejected_connection_minutes,
        "rejections not ≤ 10 % of classic's:\n{table}"
    );
    assert!(
        cs.instance_hours <= cl.instance_hours,
        "more instance-hours than classic:\n{table}"
    );
    assert!(
        cs.instance_hours <= 1.20 * or.instance_hours,
        "instance-hours not within 20 % of oracle:\n{table}"
    );
}

/// The shared traces on which the default policy meets issue 20's three targets against the
/// whole classic setup, warm pool included (scripts/bench/simulator.sh's summary). On the other
/// 5 it does not yet (issue 20: a policy that generalises); this list grows until it holds
/// them all.
const MEETS_EVERY_TARGET: [&str; 11] = [
    "Twitter_volume_AAPL.csv",
    "Twitter_volume_AMZN.csv",
    "Twitter_volume_CRM.csv",
    "Twitter_volume_IBM.csv",
    "Twitter_volume_KO.csv",
    "Twitter_volume_UPS.csv",
    "art_load_balancer_spikes.csv",
    "iio_us-east-1_i-a2eb1cd9_NetworkIn.csv",
    "nyc_taxi.csv",
    "occupancy_t4013.csv",
    "speed_7578.csv",
];

/// Shared traces where it meets the older, weaker bar (rejections and instance-hours against
/// classic without its pool) but not yet every target.
const BEATS_CLASSIC_NOPOOL: [&str; 1] = ["grok_asg_anomaly.csv"];

fn shared(name: &str) -> Trace {
    let traces = shared_traces();
    let path = traces
        .iter()
        .find(|p| p.file_name().is_some_and(|f| f == name))
        .unwrap_or_else(|| panic!("{name} missing from the shared traces"));
    Trace::load(path).expect("trace")
}

/// Runs `trace` and asserts issue 20's three targets against the whole classic setup, warm pool
/// included; returns that classic's rejected connection-minutes.
fn check_meets_every_target(name: &str, trace: &Trace) -> f64 {
    let r = simulate(trace, &cfg()).expect("simulate");
    let t = Targets::of(&r).expect("connscale, classic and oracle compared");
    assert!(
        t.all_met(),
        "{name}: rejected {:.3} (≤ 0.10), inst-h {:.3} of classic (≤ 1) and {:.3} of oracle (≤ 1.2), reconnects {:.3} of classic (≤ 1)\n{}",
        t.rejected,
        t.hours_vs_classic,
        t.hours_vs_oracle,
        t.reconnects,
        r.table()
    );
    r.policies["classic"].rejected_connection_minutes
}

#[test]
fn default_policy_meets_every_target_against_classic_with_its_pool() {
    for name in MEETS_EVERY_TARGET {
        check_meets_every_target(name, &shared(name));
    }
}

#[test]
fn default_policy_beats_classic_without_its_pool_on_the_other_shared_traces() {
    for name in BEATS_CLASSIC_NOPOOL {
        check_beats_classic(&shared(name));
    }
}

/// Issue 20's three targets against classic with its pool, on traces nobody tuned for.
#[test]
fn default_policy_meets_every_target_on_traces_it_was_not_tuned_on() {
    let mut classic_rejected = 0.0;
    for kind in ["diurnal", "flash", "walk"] {
        for seed in 1..=3 {
            let name = format!("{kind} {seed}");
            classic_rejected += check_meets_every_target(&name, &generated(kind, seed));
        }
    }
    assert!(
        classic_rejected > 1_000.0,
        "the generated traces must stress classic ({classic_rejected})"
    );
}

/// The same on 60 generated traces (20 seeds of each family): a benchmark, run by hand with
/// `cargo test --release -p connscale --test simulator -- --ignored` (BENCHMARKS.md).
#[test]
#[ignore = "a benchmark: 60 generated traces, about a minute in release"]
fn default_policy_meets_every_target_on_sixty_generated_traces() {
    for kind in ["diurnal", "flash", "walk"] {
        for seed in 1..=20 {
            check_meets_every_target(&format!("{kind} {seed}"), &generated(kind, seed));
        }
    }
}

#[test]
fn replays_are_deterministic() {
    let t = generated("flash", 7);
    let a = simulate(&t, &cfg()).expect("a");
    let b = simulate(&t, &cfg()).expect("b");
    assert_eq!(
        serde_json::to_string(&a.policies).ok(),
        serde_json::to_string(&b.policies).ok()
    );
    assert!(
        a.policies["connscale"].scaling_actions > 0,
        "the trace must make it act"
    );
}

/// `classic` is the whole classic setup: it keeps the policy's warm pool (and launches from it),
/// `classic-nopool` keeps none; `target-tracking` likewise. A pool can only help them.
#[test]
fn classic_and_target_tracking_keep_the_policy_s_warm_pool_and_the_nopool_variants_none() {
    let t = generated("flash", 3);
    let mut c = cfg();
    assert!(
        c.policy.warm_pool.is_some(),
        "the default policy has a pool"
    );
    c.compare = [
        "classic",
        "classic-nopool",
        "target-tracking",
        "target-tracking-nopool",
    ]
    .map(String::from)
    .to_vec();
    let r = simulate(&t, &c).expect("simulate");
    let p = &r.policies;
    let table = r.table();
    for base in ["classic", "target-tracking"] {
        let (with, without) = (&p[base], &p[&format!("{base}-nopool")]);
        assert!(with.warm_pool_hours > 0.0, "{base} keeps no pool:\n{table}");
        assert_eq!(without.warm_pool_hours, 0.0, "{table}");
        assert!(
            with.rejected_connection_minutes <= without.rejected_connection_minutes,
            "{base}'s pool made it reject more:\n{table}"
        );
    }
    assert!(
        p["classic"].rejected_connection_minutes < p["classic-nopool"].rejected_connection_minutes,
        "the trace must show what the pool buys:\n{table}"
    );
}
