//! The policy engine's rules, one test each, plus properties over random fleets.

use connscale::engine::{
    Direction, Engine, EngineState, InstanceView, Lifecycle, NO_DATA_HOLDS_SCALE_IN, Observation,
};
use connscale_common::policy::Policy;
use proptest::prelude::*;

fn node(id: &str, conns: u64, launched_at: i64) -> InstanceView {
    InstanceView {
        id: id.into(),
        lifecycle: Lifecycle::InService,
        connections: Some(conns),
        launched_at,
        cordoned_since: None,
    }
}

fn fleet(conns: &[u64]) -> Vec<InstanceView> {
    conns
        .iter()
        .enumerate()
        .map(|(i, &c)| node(&format!("i-{i}"), c, -10_000))
        .collect()
}

fn obs(now: i64, instances: Vec<InstanceView>) -> Observation {
    Observation {
        now,
        desired: instances.len() as u32,
        min_size: 0,
        instances,
    }
}

#[test]
fn a_breach_acts_at_the_first_evaluation() {
    let e = Engine::new(Policy::default_policy());
    let d = e.evaluate(&obs(0, fleet(&[26_000; 4])), &mut EngineState::default());
    assert!(d.desired >= 5, "{d:?}");
    assert_eq!(
        d.direction,
        Direction::ScaleOut {
            from: 4,
            to: d.desired
        },
        "{d:?}"
    );
}

#[test]
fn a_big_breach_takes_the_big_step() {
    let e = Engine::new(Policy::default_policy());
    let d = e.evaluate(&obs(0, fleet(&[27_900; 4])), &mut EngineState::default());
    assert_eq!(d.desired, 7, "{d:?}");
}

#[test]
fn launching_instances_count_toward_capacity() {
    let e = Engine::new(Policy::default_policy());
    let mut instances = fleet(&[25_200; 4]);
    instances.push(InstanceView {
        lifecycle: Lifecycle::Pending,
        ..node("new", 0, -5)
    });
    let d = e.evaluate(&obs(0, instances), &mut EngineState::default());
    assert_eq!(d.desired, 5, "step +1 is already launching: {d:?}");
}

#[test]
fn quiet_fleet_holds() {
    let e = Engine::new(Policy::default_policy());
    let o = obs(0, fleet(&[20_000; 4]));
    let d = e.evaluate(&o, &mut EngineState::default());
    assert!(!d.changes(&o) && d.direction == Direction::Hold, "{d:?}");
}

#[test]
fn scale_in_waits_for_sustain_then_drains_the_least_connected() {
    let p = Policy::default_policy();
    let sustain = p.scale_in.sustain.as_secs() as i64;
    let e = Engine::new(p);
    let mut st = EngineState::default();
    // The rest must hold 80,500 at ≤ max_after (24,000): 4 nodes can, 3 cannot, so 2 go (the
    // two the cordon has emptied below drain_grace_until_below).
    let conns = [20_000, 18_000, 1_500, 21_000, 1_000, 19_000];
    let mut t = 0;
    while t < sustain {
        let d = e.evaluate(&obs(t, fleet(&conns)), &mut st);
        assert_eq!(d.desired, 6, "scaled in before sustain at t={t}: {d:?}");
        t += 10;
    }
    let d = e.evaluate(&obs(t, fleet(&conns)), &mut st);
    assert_eq!(
        d.scale_in,
        vec!["i-4".to_string(), "i-2".to_string()],
        "{d:?}"
    );
    assert_eq!(d.desired, 4);
    assert_eq!(
        d.direction,
        Direction::ScaleIn {
            from: 6,
            to: 4,
            victims: d.scale_in.clone()
        }
    );
    // Cooldown: nothing more right after.
    let d = e.evaluate(
        &obs(t + 10, fleet(&[20_000, 18_000, 21_000, 19_000])),
        &mut st,
    );
    assert!(d.scale_in.is_empty(), "{d:?}");
}

/// The default policy without its drain grace: a scale-in's size alone, every node a victim at
/// once (the wait for the cordon has its own tests).
fn no_grace() -> Policy {
    let mut p = Policy::default_policy();
    p.scale_in.drain_grace = std::time::Duration::ZERO;
    p
}

/// After a spike the surplus goes in one action: as many nodes as the rest can hold at
/// max_after, up to `scale_in.step`, not two per sustain period.
#[test]
fn scale_in_removes_the_whole_surplus_the_rest_can_hold_at_once() {
    let p = no_grace();
    let (sustain, max_after) = (p.scale_in.sustain.as_secs() as i64, p.scale_in_max_after());
    assert!(
        p.scale_in.step >= 9,
        "the default step no longer allows this case"
    );
    let e = Engine::new(p);
    let mut st = EngineState::default();
    // 12 nodes at 5,000: 60,000 fit on 3 at 20,000 ≤ 24,000, not on 2 (30,000).
    let conns = [5_000; 12];
    let mut t = 0;
    let d = loop {
        let d = e.evaluate(&obs(t, fleet(&conns)), &mut st);
        if !d.scale_in.is_empty() || t > sustain + 600 {
            break d;
        }
        t += 10;
    };
    assert_eq!((d.desired, d.scale_in.len()), (3, 9), "{d:?}");
    assert!(60_000 / 3 <= max_after as u64);
}

#[test]
fn scale_in_never_leaves_the_rest_above_max_after() {
    let p = Policy::default_policy();
    let max_after = p.scale_in_max_after() as u64;
    let e = Engine::new(p);
    let mut st = EngineState::default();
    // 3 nodes at 17,000: removing one would leave 25,500 > 24,000.
    let mut last = None;
    for t in (0..3_600).step_by(10) {
        last = Some(e.evaluate(&obs(t, fleet(&[17_000; 3])), &mut st));
        assert!(last.as_ref().is_some_and(|d| d.scale_in.is_empty()));
    }
    assert!(last.is_some_and(|d| d.reason.contains(&max_after.to_string())));
}

#[test]
fn scale_in_waits_until_the_rest_would_hold_the_recent_peak() {
    let p = no_grace();
    let window = p.scale_in.peak_window.as_secs() as i64;
    assert!(window > p.scale_in.sustain.as_secs() as i64, "{p:?}");
    let e = Engine::new(p);
    let mut st = EngineState::default();
    // A peak of 4 × 23,000 at t = 0..50, then 4 × 15,000: 3 nodes would carry 20,000 now but
    // 30,667 at the peak, so nobody is cut off until the peak has left the window.
    let mut first_in = None;
    for t in (0..window + 600).step_by(10) {
        let per_node = if t < 60 { 23_000 } else { 15_000 };
        let d = e.evaluate(&obs(t, fleet(&[per_node; 4])), &mut st);
        if !d.scale_in.is_empty() {
            first_in = Some(t);
            break;
        }
        if t > 60 + 180 {
            assert!(d.reason.contains("the last"), "{}", d.reason);
        }
    }
    let t = first_in.expect("scale-in once the peak is out of the window");
    assert!(t > 50 + window && t <= 60 + window + 60, "scale-in at {t}");
}

#[test]
fn schedules_raise_the_floor_ahead_of_the_window() {
    let mut p = Policy::default_policy();
    p.schedules.push(connscale_common::policy::Schedule {
        name: "evening".into(),
        cron: "0 18 * * *".into(),
        timezone: "UTC".into(),
        duration: std::time::Duration::from_secs(3_600),
        min_size: 8,
        desired: None,
    });
    let lead = p.scale_out.lookahead.max(p.scale_out.warmup).as_secs() as i64;
    let e = Engine::new(p);
    let six_pm = 1_795_370_400; // 2026-11-22T18:00:00Z
    assert_eq!(six_pm % 86_400, 18 * 3_600);
    let mut st = EngineState::default();
    let before = e.evaluate(&obs(six_pm - lead - 60, fleet(&[100; 2])), &mut st);
    assert_eq!(before.desired, 2, "{before:?}");
    let ahead = e.evaluate(&obs(six_pm - lead + 10, fleet(&[100; 2])), &mut st);
    assert_eq!(ahead.desired, 8, "{ahead:?}");
    assert!(ahead.reason.contains("evening"), "{}", ahead.reason);
    // After the window the floor is gone and scale-in may proceed.
    let (floor, _) = e.schedule_floor(six_pm + 3_600 + 10, &mut st);
    assert_eq!(floor, 0);
}

#[test]
fn a_rising_trend_adds_capacity_before_the_threshold() {
    let e = Engine::new(Policy::default_policy());
    let mut st = EngineState::default();
    let mut d = None;
    // 4 nodes climbing 500 connections per 10 s each: 200 conns/s in total, up to 24,500 each,
    // under the first step's 25,000.
    for k in 0..20 {
        let c = 15_000 + 500 * k as u64;
        d = Some(e.evaluate(&obs(k * 10, fleet(&[c; 4])), &mut st));
        if d.as_ref().is_some_and(|d| d.desired > 4) {
            break;
        }
    }
    let d = d.expect("evaluated");
    assert!(d.desired > 4 && d.reason.contains("projected"), "{d:?}");
}

fn lifecycle() -> impl Strategy<Value = Lifecycle> {
    prop_oneof![
        Just(Lifecycle::InService),
        Just(Lifecycle::Pending),
        Just(Lifecycle::Draining)
    ]
}

prop_compose! {
    fn instances()(v in prop::collection::vec((0u64..30_000, lifecycle(), -1_000i64..0), 0..30)) -> Vec<InstanceView> {
        v.into_iter().enumerate().map(|(i, (c, l, t))| InstanceView { id: format!("i-{i}"), lifecycle: l, connections: Some(c), launched_at: t, cordoned_since: None }).collect()
    }
}

proptest! {
    #[test]
    fn never_outside_bounds(steps in prop::collection::vec((instances(), 0u32..60), 1..20)) {
        let p = Policy::default_policy();
        let (min, max) = (p.group.min_size, p.group.max_size);
        let e = Engine::new(p);
        let mut st = EngineState::default();
        for (k, (inst, desired)) in steps.into_iter().enumerate() {
            let d = e.evaluate(&Observation { now: k as i64 * 10, desired, min_size: 0, instances: inst }, &mut st);
            prop_assert!(d.desired >= min && d.desired <= max, "{d:?}");
            let agrees = match &d.direction {
                Direction::Hold => d.desired == desired && d.scale_in.is_empty(),
                Direction::ScaleOut { from, to } => *from == desired && *to == d.desired && *to > *from,
                Direction::ScaleIn { from, to, victims } => *from == desired && *to == d.desired && *victims == d.scale_in && (to < from || !victims.is_empty()),
            };
            prop_assert!(agrees, "{d:?}");
        }
    }

    #[test]
    fn no_scale_in_while_a_node_is_near_its_cap(inst in instances(), hot in 26_600u64..28_000) {
        // Without the grace, so that only this rule can hold the scale-in (not the cordon's wait).
        let p = no_grace();
        let e = Engine::new(p);
        let mut inst = inst;
        inst.push(node("hot", hot, -10_000));
        let mut st = EngineState::default();
        for k in 0..40 {
            let o = Observation { now: k * 10, desired: inst.len() as u32, min_size: 0, instances: inst.clone() };
            let d = e.evaluate(&o, &mut st);
            prop_assert!(d.scale_in.is_empty(), "{d:?}");
        }
    }
}

/// A fleet where some in-service members have no count: (instances, ids without a count).
fn with_unknowns(
    known: Vec<(u64, Lifecycle, i64)>,
    silent: usize,
) -> (Vec<InstanceView>, Vec<String>) {
    let mut inst: Vec<InstanceView> = known
        .into_iter()
        .enumerate()
        .map(|(i, (c, l, t))| InstanceView {
            id: format!("i-{i}"),
            lifecycle: l,
            connections: Some(c),
            launched_at: t,
            cordoned_since: None,
        })
        .collect();
    let ids: Vec<String> = (0..silent).map(|k| format!("silent-{k}")).collect();
    for id in &ids {
        inst.push(InstanceView {
            id: id.clone(),
            lifecycle: Lifecycle::InService,
            connections: None,
            launched_at: -10_000,
            cordoned_since: None,
        });
    }
    (inst, ids)
}

fn known_members() -> impl Strategy<Value = Vec<(u64, Lifecycle, i64)>> {
    prop::collection::vec((0u64..30_000, lifecycle(), -1_000i64..0), 0..25)
}

proptest! {
    #[test]
    fn a_member_without_a_count_is_never_scaled_in_nor_averaged(known in known_members(), silent in 1usize..8, desired in 0u32..60) {
        let p = Policy::default_policy();
        let warmup = p.scale_out.warmup.as_secs() as i64;
        let e = Engine::new(p);
        let (inst, silent_ids) = with_unknowns(known, silent);
        let mut st = EngineState::default();
        // Long enough for sustain and cooldown to pass.
        for k in 0..40 {
            let now = k * 10;
            let o = Observation { now, desired, min_size: 0, instances: inst.clone() };
            let d = e.evaluate(&o, &mut st);
            prop_assert!(d.scale_in.iter().all(|id| !silent_ids.contains(id)), "{d:?}");
            let mut no_data = d.no_data.clone();
            no_data.sort();
            prop_assert_eq!(&no_data, &silent_ids);
            for id in &silent_ids {
                prop_assert!(d.reason.contains(id.as_str()), "{}", d.reason);
            }
            // The average is over the counted in-service members past warmup (all counted
            // in-service ones while each is warming up), never over the silent ones.
            let serving = || inst.iter().filter(|i| i.lifecycle == Lifecycle::InService);
            let ready: Vec<u64> = serving().filter(|i| now - i.launched_at >= warmup).filter_map(|i| i.connections).collect();
            let counted = if ready.is_empty() { serving().filter_map(|i| i.connections).collect() } else { ready };
            let want = (!counted.is_empty()).then(|| counted.iter().sum::<u64>() as f64 / counted.len() as f64);
            prop_assert_eq!(d.average, want);
        }
    }

    #[test]
    fn a_third_of_the_fleet_without_counts_holds_scale_in(per_node in 0u64..20_000, n in 1usize..20, silent in 1usize..20) {
        let serving = n + silent;
        prop_assume!(silent as f64 >= NO_DATA_HOLDS_SCALE_IN * serving as f64);
        let p = no_grace();
        prop_assume!(serving as u32 <= p.group.max_size);
        let e = Engine::new(p);
        let (inst, _) = with_unknowns(vec![(per_node, Lifecycle::InService, -10_000); n], silent);
        let mut st = EngineState::default();
        for k in 0..60 {
            let o = Observation { now: k * 10, desired: serving as u32, min_size: 0, instances: inst.clone() };
            let d = e.evaluate(&o, &mut st);
            prop_assert!(d.scale_in.is_empty() && d.desired >= serving as u32, "{d:?}");
        }
    }
}

#[test]
fn a_silent_node_is_not_the_victim_and_does_not_pull_the_average_down() {
    // The case, on the default policy: two nodes near the scale-in threshold and one
    // silent. Read as zero, the average would be 2/3 of theirs and the silent node drained.
    let e = Engine::new(Policy::default_policy());
    let (inst, _) = with_unknowns(vec![(21_000, Lifecycle::InService, -10_000); 2], 1);
    let mut st = EngineState::default();
    for k in 0..60 {
        let d = e.evaluate(&obs(k * 10, inst.clone()), &mut st);
        assert_eq!(d.average, Some(21_000.0), "{d:?}");
        assert!(d.scale_in.is_empty() && d.desired == 3, "{d:?}");
        if k > 30 {
            assert!(d.reason.contains("no data from 1 of 3"), "{}", d.reason);
        }
    }
}

#[test]
fn scale_out_acts_on_the_known_counts() {
    let e = Engine::new(Policy::default_policy());
    let (inst, _) = with_unknowns(vec![(27_000, Lifecycle::InService, -10_000); 2], 2);
    let d = e.evaluate(&obs(0, inst), &mut EngineState::default());
    assert!(
        matches!(d.direction, Direction::ScaleOut { from: 4, to } if to > 4),
        "{d:?}"
    );
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The cordon: as many of the least-connected nodes as the group could lose above its minimum
/// (2) while the others hold every client under 95 % of their caps (26,600); none otherwise.
#[test]
fn as_many_nodes_are_cordoned_as_the_rest_could_hold_everyone_for() {
    let e = Engine::new(Policy::default_policy());
    let cordon = |conns: &[u64]| {
        let d = e.evaluate(&obs(0, fleet(conns)), &mut EngineState::default());
        assert_eq!(d.direction, Direction::Hold, "{d:?}");
        d.cordon
    };
    // 73,000: the other three would hold 24,333 each, two would hold 36,500.
    assert_eq!(cordon(&[23_000, 4_000, 23_000, 23_000]), ids(&["i-1"]));
    // 27,000: two would hold 13,500 each; the group keeps its minimum of 2 uncordoned.
    assert_eq!(
        cordon(&[10_000, 4_000, 10_000, 3_000]),
        ids(&["i-3", "i-1"])
    );
    // 81,000: 27,000 each without one.
    assert_eq!(
        cordon(&[25_000, 6_000, 25_000, 25_000]),
        Vec::<String>::new()
    );
    assert_eq!(cordon(&[100, 100]), Vec::<String>::new(), "the minimum");
    // The group's own minimum (here 3, above the policy's 2) keeps its nodes uncordoned too.
    let o = Observation {
        min_size: 3,
        ..obs(0, fleet(&[10_000, 4_000, 10_000, 3_000]))
    };
    let d = e.evaluate(&o, &mut EngineState::default());
    assert_eq!(d.cordon, ids(&["i-3"]), "{d:?}");
}

/// The cordon follows the least-connected node; last turn's keeps it on a tie, so it does not
/// hop between equal counts (each hop is two health-check transitions).
#[test]
fn the_cordon_follows_the_emptiest_node_and_keeps_its_place_on_a_tie() {
    let e = Engine::new(Policy::default_policy());
    let mut st = EngineState::default();
    let mut tie = fleet(&[20_000, 5_000, 5_000]);
    tie[2].launched_at = -9_000;
    let d = e.evaluate(&obs(0, tie.clone()), &mut st);
    assert_eq!(d.cordon, ids(&["i-2"]), "the newest of a tie first: {d:?}");
    tie[1].launched_at = -8_000;
    let d = e.evaluate(&obs(10, tie), &mut st);
    assert_eq!(
        d.cordon,
        ids(&["i-2"]),
        "a newer tie does not take it: {d:?}"
    );
    let d = e.evaluate(&obs(20, fleet(&[3_000, 5_000, 5_000])), &mut st);
    assert_eq!(d.cordon, ids(&["i-0"]), "{d:?}");
}

/// No cordon while the projected demand would not fit the others, or while a node's count is
/// missing (the others' load would be a guess); a scale-out lifts every cordon (the cordoned
/// nodes take clients again before a launch could); a node launched for a spike that is over is
/// cordoned as soon as it serves.
#[test]
fn no_cordon_while_rising_or_blind_and_a_scale_out_lifts_them() {
    let e = Engine::new(Policy::default_policy());
    // 60,000 → 70,000 in a minute: 70,000 / 3 = 23,333 fits, the 90,000 projected 120 s ahead
    // does not (30,000 each), and the 4 nodes hold it below their caps: a hold, uncordoned.
    let mut st = EngineState::default();
    e.evaluate(&obs(0, fleet(&[15_000; 4])), &mut st);
    let d = e.evaluate(&obs(60, fleet(&[17_500; 4])), &mut st);
    assert_eq!(
        (d.direction.clone(), d.cordon.clone()),
        (Direction::Hold, Vec::new()),
        "{d:?}"
    );

    // 19 × 26,000 + 8,000 = 502,000 on 20: the average 25,100 breaches, while 19 nodes would
    // hold it at 26,421, under 95 % of their caps. Scaling out, nothing is cordoned (the same
    // fleet on a holding turn would cordon i-19).
    let mut surge = vec![26_000; 19];
    surge.push(8_000);
    let d = e.evaluate(&obs(0, fleet(&surge)), &mut EngineState::default());
    assert!(matches!(d.direction, Direction::ScaleOut { .. }), "{d:?}");
    assert_eq!(d.cordon, Vec::<String>::new(), "{d:?}");
    let mut lower = no_grace();
    lower.scale_out.steps[0].lower = 26_500;
    lower.scale_in.threshold = 25_000;
    lower.scale_in.max_after = Some(25_100);
    let d = Engine::new(lower).evaluate(&obs(0, fleet(&surge)), &mut EngineState::default());
    assert_eq!(
        (d.direction.clone(), d.cordon.clone()),
        (Direction::Hold, ids(&["i-19"])),
        "{d:?}"
    );

    let mut instances = fleet(&[10_000, 10_000]);
    instances.push(node("new", 100, -5));
    let d = e.evaluate(&obs(0, instances), &mut EngineState::default());
    assert_eq!(d.cordon, ids(&["new"]), "{d:?}");
    let mut blind = fleet(&[10_000, 10_000, 10_000]);
    blind[2].connections = None;
    let d = e.evaluate(&obs(0, blind), &mut EngineState::default());
    assert_eq!(d.cordon, Vec::<String>::new(), "{d:?}");
}

/// With a drain grace, a scale-in takes only the nodes the cordon has emptied (fewer clients
/// than `drain_grace_until_below`, 2,000) and keeps the others cordoned; one cordoned for
/// `cordon_wait` goes whatever it holds. While none has emptied, the group holds.
#[test]
fn a_scale_in_takes_the_emptied_nodes_and_keeps_the_others_cordoned() {
    let p = Policy::default_policy();
    let sustain = p.scale_in.sustain.as_secs() as i64;
    let wait = p.cordon_wait().as_secs() as i64;
    let e = Engine::new(p);
    let mut st = EngineState::default();
    // 46,500: two would hold 23,250 each, under max_after (24,000) too.
    let d = e.evaluate(&obs(0, fleet(&[20_000, 5_000, 1_500, 20_000])), &mut st);
    assert_eq!(d.cordon, ids(&["i-2", "i-1"]), "{d:?}");
    let d = e.evaluate(
        &obs(sustain + 10, fleet(&[20_000, 5_000, 1_500, 20_000])),
        &mut st,
    );
    assert_eq!(d.scale_in, ids(&["i-2"]), "only the emptied one: {d:?}");
    assert_eq!(
        (d.desired, d.cordon.clone()),
        (3, ids(&["i-2", "i-1"])),
        "the victim stays cordoned until it drains: {d:?}"
    );

    // Every 10 s from then on: i-1 keeps 5,000 and goes once cordoned for cordon_wait.
    let rest = || fleet(&[20_000, 5_000, 20_000]);
    let mut t = sustain + 20;
    let d = loop {
        let d = e.evaluate(&obs(t, rest()), &mut st);
        if !d.scale_in.is_empty() {
            break d;
        }
        if t == wait - 600 {
            assert!(
                d.reason.contains("once the cordoned nodes have emptied"),
                "5,000 left, cordoned for less than cordon_wait: {d:?}"
            );
            assert_eq!(d.cordon, ids(&["i-1"]), "{d:?}");
        }
        t += 10;
    };
    assert_eq!(
        (d.scale_in.clone(), d.desired, t),
        (ids(&["i-1"]), 2, wait),
        "cordoned for cordon_wait: {d:?}"
    );
}

/// Without a drain grace a scale-in takes the least-connected nodes at once, whatever they hold.
#[test]
fn without_a_grace_a_scale_in_does_not_wait_for_the_cordon() {
    let p = no_grace();
    let sustain = p.scale_in.sustain.as_secs() as i64;
    let e = Engine::new(p);
    let mut st = EngineState::default();
    e.evaluate(&obs(0, fleet(&[20_000, 5_000, 20_000])), &mut st);
    let d = e.evaluate(&obs(sustain + 10, fleet(&[20_000, 5_000, 20_000])), &mut st);
    assert_eq!(d.scale_in, ids(&["i-1"]), "{d:?}");
}

/// A scale-in takes the cordoned node first among equally connected ones (the one that has
/// been emptying), not just the newest.
#[test]
fn a_scale_in_takes_the_cordoned_node_among_equals() {
    let p = Policy::default_policy();
    let sustain = p.scale_in.sustain.as_secs() as i64;
    let e = Engine::new(p);
    let mut st = EngineState::default();
    let mut f = fleet(&[1_000; 3]);
    f[0].launched_at = -20_000;
    let d = e.evaluate(&obs(0, f.clone()), &mut st);
    assert_eq!(d.cordon, ids(&["i-1"]), "the newest of the tie: {d:?}");
    f[1].launched_at = -30_000;
    let d = e.evaluate(&obs(10, f.clone()), &mut st);
    assert_eq!(d.cordon, ids(&["i-1"]), "kept on a tie: {d:?}");
    let d = e.evaluate(&obs(sustain + 10, f), &mut st);
    assert_eq!(d.scale_in, ids(&["i-1"]), "{d:?}");
}

/// A cordon keeps its place while a count is missing (the engine holds still rather than guess),
/// and a lift for one turn (demand wavered) keeps its start: `cordon_wait` counts from the first.
#[test]
fn a_cordon_survives_a_blind_turn_and_a_short_lift_with_its_start() {
    let p = Policy::default_policy();
    let wait = p.cordon_wait().as_secs() as i64;
    let e = Engine::new(p);
    let mut st = EngineState::default();
    let quiet = || fleet(&[20_000, 5_000, 20_000]);
    assert_eq!(e.evaluate(&obs(0, quiet()), &mut st).cordon, ids(&["i-1"]));
    let mut blind = quiet();
    blind[0].connections = None;
    let d = e.evaluate(&obs(10, blind), &mut st);
    assert_eq!(d.cordon, ids(&["i-1"]), "blind: {d:?}");
    // 58,400: the other two would hold 29,200 each (past the trend's window: no projection).
    let d = e.evaluate(&obs(250, fleet(&[26_700, 5_000, 26_700])), &mut st);
    assert_eq!(
        (d.direction.clone(), d.cordon.clone()),
        (Direction::Hold, Vec::new()),
        "{d:?}"
    );
    assert_eq!(
        e.evaluate(&obs(260, quiet()), &mut st).cordon,
        ids(&["i-1"])
    );
    let mut t = 270;
    let d = loop {
        let d = e.evaluate(&obs(t, quiet()), &mut st);
        if !d.scale_in.is_empty() || t > 2 * wait {
            break d;
        }
        t += 10;
    };
    assert_eq!(
        (d.scale_in.clone(), t),
        (ids(&["i-1"]), wait),
        "cordoned since 0, not since 260: {d:?}"
    );
}

/// A restarted engine (empty state) takes a cordon's start from the tag: a node the tag says
/// has been cordoned for `cordon_wait` goes at the first scale-in, and the decision hands the
/// same start back for the tag. A start in the future (a skewed clock) is not believed.
#[test]
fn a_restarted_engine_keeps_the_cordon_start_the_tag_remembers() {
    let p = Policy::default_policy();
    let sustain = p.scale_in.sustain.as_secs() as i64;
    let wait = p.cordon_wait().as_secs() as i64;
    let e = Engine::new(p);
    let now = 100_000;
    let tagged = |since| {
        let mut f = fleet(&[20_000, 5_000, 20_000]);
        f[1].cordoned_since = Some(since);
        f
    };
    let mut st = EngineState::default();
    let d = e.evaluate(&obs(now, tagged(now - wait)), &mut st);
    assert_eq!(d.cordoned_since.get("i-1"), Some(&(now - wait)), "{d:?}");
    let d = e.evaluate(&obs(now + sustain + 10, tagged(now - wait)), &mut st);
    assert_eq!(d.scale_in, ids(&["i-1"]), "cordoned for cordon_wait: {d:?}");

    let mut st = EngineState::default();
    e.evaluate(&obs(now, fleet(&[20_000, 5_000, 20_000])), &mut st);
    let d = e.evaluate(
        &obs(now + sustain + 10, fleet(&[20_000, 5_000, 20_000])),
        &mut st,
    );
    assert_eq!(d.direction, Direction::Hold, "no tag, no memory: {d:?}");

    let mut st = EngineState::default();
    let d = e.evaluate(&obs(now, tagged(now + wait)), &mut st);
    assert_eq!(d.cordoned_since.get("i-1"), Some(&now), "{d:?}");
}

/// `empty_below`: after a spike, nodes already near empty go without waiting out the peak
/// window (the rest hold today's demand at max_after), while a node still holding clients waits
/// for the window; with `empty_below = 0` all wait.
#[test]
fn nearly_empty_nodes_go_without_waiting_out_the_peak_window() {
    let run = |p: Policy, low: &[u64]| {
        let sustain = p.scale_in.sustain.as_secs() as i64;
        let e = Engine::new(p);
        let mut st = EngineState::default();
        // 90,000 a moment ago: 3 nodes would carry 30,000 at that peak, above max_after.
        e.evaluate(&obs(0, fleet(&[30_000, 30_000, 15_000, 15_000])), &mut st);
        e.evaluate(&obs(10, fleet(low)), &mut st);
        e.evaluate(&obs(20 + sustain, fleet(low)), &mut st)
    };
    let p = Policy::default_policy();
    assert_eq!(p.scale_in.empty_below, 1_000);
    let d = run(p.clone(), &[20_000, 20_000, 500, 800]);
    assert_eq!(
        (d.desired, d.scale_in.clone()),
        (2, ids(&["i-2", "i-3"])),
        "{d:?}"
    );
    assert!(d.reason.contains("under 1000 clients"), "{}", d.reason);
    let d = run(p.clone(), &[20_000, 20_000, 1_500, 800]);
    assert_eq!(
        d.scale_in,
        ids(&["i-3"]),
        "1,500 waits for the window: {d:?}"
    );
    let mut off = p;
    off.scale_in.empty_below = 0;
    let d = run(off, &[20_000, 20_000, 500, 800]);
    assert!(
        d.direction == Direction::Hold && d.reason.contains("the last"),
        "{d:?}"
    );
}

/// The nodes that skip the window are only ones a scale-in may take: with a grace that runs its
/// full length (`drain_grace_until_below = 0`), a node under `empty_below` not yet cordoned for
/// `cordon_wait` is not one, and its slot never goes to a fuller node that is.
#[test]
fn the_window_is_skipped_only_for_nodes_a_scale_in_may_take() {
    let mut p = Policy::default_policy();
    p.scale_in.drain_grace_until_below = 0;
    let sustain = p.scale_in.sustain.as_secs() as i64;
    let wait = p.cordon_wait().as_secs() as i64;
    let e = Engine::new(p);
    let now = 100_000;
    let low = || {
        let mut f = fleet(&[20_000, 20_000, 5_000, 500]);
        f[2].cordoned_since = Some(now - wait);
        f
    };
    let mut st = EngineState::default();
    e.evaluate(&obs(now, fleet(&[30_000, 30_000, 15_000, 15_000])), &mut st);
    e.evaluate(&obs(now + 10, low()), &mut st);
    let d = e.evaluate(&obs(now + 20 + sustain, low()), &mut st);
    assert!(
        d.scale_in.is_empty(),
        "5,000 clients wait out the peak window: {d:?}"
    );
}

/// After a gap in the evaluations (another controller held the lease meanwhile) the engine's
/// own memory is not trusted: the sustained low starts again, and a cordon's start comes from
/// the tag alone, never from before the instance launched.
#[test]
fn after_a_gap_only_the_tag_vouches_for_a_cordon_and_sustain_starts_again() {
    let p = Policy::default_policy();
    let sustain = p.scale_in.sustain.as_secs() as i64;
    let wait = p.cordon_wait().as_secs() as i64;
    let e = Engine::new(p);
    let quiet = |since: Option<i64>, launched_at: i64| {
        let mut f = fleet(&[20_000, 5_000, 20_000]);
        f[1].cordoned_since = since;
        f[1].launched_at = launched_at;
        f
    };
    let mut st = EngineState::default();
    assert_eq!(
        e.evaluate(&obs(0, quiet(None, -100)), &mut st).cordon,
        ids(&["i-1"])
    );
    let later = wait + 10;
    let d = e.evaluate(&obs(later, quiet(None, -100)), &mut st);
    assert!(d.reason.contains("for 0s"), "sustain starts again: {d:?}");
    let d = e.evaluate(&obs(later + sustain + 10, quiet(None, -100)), &mut st);
    assert!(
        d.scale_in.is_empty(),
        "no tag: the old start is not vouched for: {d:?}"
    );

    let mut st = EngineState::default();
    e.evaluate(&obs(later, quiet(Some(0), -100)), &mut st);
    let d = e.evaluate(&obs(later + sustain + 10, quiet(Some(0), -100)), &mut st);
    assert_eq!(
        d.scale_in,
        ids(&["i-1"]),
        "the tag says cordoned since 0: {d:?}"
    );

    let mut st = EngineState::default();
    let launched = later - 60;
    e.evaluate(&obs(later, quiet(Some(-1_000_000), launched)), &mut st);
    let d = e.evaluate(
        &obs(later + sustain + 10, quiet(Some(-1_000_000), launched)),
        &mut st,
    );
    assert!(
        d.scale_in.is_empty(),
        "a start before the launch counts from the launch: {d:?}"
    );
}
