//! The scalers the simulator compares: connscale's engine and the baselines it must beat.

use super::fleet::{DrainGrace, Scaler};
use super::trace::Trace;
use crate::control::{Autoscaler, Strategy};
use crate::engine::{Decision, Engine, InstanceView, Lifecycle, Observation};
use connscale_common::policy::{Policy, WarmPool};
use std::collections::VecDeque;

/// connscale's policy engine, exactly as the control loop runs it.
pub struct Connscale {
    autoscaler: Autoscaler,
    interval: i64,
    last: Option<i64>,
}

impl Connscale {
    pub fn new(policy: Policy) -> Self {
        let interval = policy.scale_out.interval.as_secs().max(1) as i64;
        Self {
            autoscaler: Autoscaler::new(Engine::new(policy)),
            interval,
            last: None,
        }
    }
}

impl Scaler for Connscale {
    fn name(&self) -> String {
        "connscale".into()
    }

    fn warm_pool(&self) -> Option<&WarmPool> {
        self.autoscaler.engine.policy.warm_pool.as_ref()
    }

    fn drain_grace(&self) -> DrainGrace {
        let si = &self.autoscaler.engine.policy.scale_in;
        DrainGrace {
            seconds: si.drain_grace.as_secs() as i64,
            until_below: f64::from(si.drain_grace_until_below),
        }
    }
}

impl Strategy for Connscale {
    fn decide(&mut self, obs: &Observation) -> Decision {
        if self.last.is_some_and(|t| obs.now - t < self.interval) {
            return hold(obs);
        }
        self.last = Some(obs.now);
        self.autoscaler.decide(obs)
    }
}

fn hold(obs: &Observation) -> Decision {
    Decision {
        desired: obs.desired,
        scale_in: Vec::new(),
        reason: String::new(),
        ..Decision::default()
    }
}

fn serving(obs: &Observation) -> impl Iterator<Item = &InstanceView> {
    obs.instances
        .iter()
        .filter(|i| i.lifecycle == Lifecycle::InService)
}

fn group_average(obs: &Observation) -> f64 {
    // CloudWatch's group average leaves out instances that published nothing.
    let (n, sum) = serving(obs)
        .filter_map(|i| i.connections)
        .fold((0usize, 0.0), |(n, s), c| (n + 1, s + c as f64));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// CloudWatch-style 60 s datapoints from 10 s samples: the mean of one minute's samples.
#[derive(Debug, Default)]
struct MinuteDatapoints {
    samples: Vec<f64>,
    start: Option<i64>,
}

impl MinuteDatapoints {
    /// Adds the sample taken at `now`; returns the minute's datapoint when it completes.
    fn push(&mut self, now: i64, value: f64) -> Option<f64> {
        let start = *self.start.get_or_insert(now);
        self.samples.push(value);
        if now - start + 10 < 60 {
            return None;
        }
        let dp = self.samples.iter().sum::<f64>() / self.samples.len() as f64;
        self.samples.clear();
        self.start = Some(now + 10);
        Some(dp)
    }
}

/// Instances still launching or inside their warmup (they count toward capacity, not the metric).
fn warming(obs: &Observation, warmup: i64) -> u32 {
    obs.instances
        .iter()
        .filter(|i| i.lifecycle == Lifecycle::Pending || obs.now - i.launched_at < warmup)
        .count() as u32
}

/// The classic alarm-driven policy of DESIGN.md, thresholds scaled to the node cap
/// (the original numbers are for a cap of 28,000).
///
/// - 60 s datapoints of the group's average connections per instance.
/// - Scale-out alarm: ≥ 20,000 for 5 of 5 datapoints; while in ALARM, a StepScaling execution per
///   datapoint with steps relative to the threshold ([0, 5,000) +2, [5,000, 10,000) +2,
///   [10,000, ∞) +3), instances inside the 150 s warmup counted toward capacity.
/// - Scale-in alarm: 300 s datapoints ≤ 9,500 for 3 of 3 → SimpleScaling −1, 300 s cooldown,
///   never while an instance is warming up. AWS picks the instance (modelled as a fixed-seed
///   pseudo-random pick among in-service instances).
pub struct Classic {
    k: f64,
    warmup: i64,
    cooldown: i64,
    datapoints: MinuteDatapoints,
    minutes: VecDeque<f64>,
    five_min: VecDeque<f64>,
    minutes_since_five: u32,
    last_simple: Option<i64>,
    rng: u64,
    min: u32,
    max: u32,
    /// The warm pool the classic setup keeps (DESIGN.md's classic setup has one).
    pool: Option<WarmPool>,
}

impl Classic {
    pub const OUT: f64 = 20_000.0;
    pub const IN: f64 = 9_500.0;
    pub const CAP: f64 = 28_000.0;

    pub fn new(node_cap: f64, min: u32, max: u32) -> Self {
        Self {
            k: node_cap / Self::CAP,
            warmup: 150,
            cooldown: 300,
            datapoints: MinuteDatapoints::default(),
            minutes: VecDeque::new(),
            five_min: VecDeque::new(),
            minutes_since_five: 0,
            last_simple: None,
            rng: 0x9E37_79B9_7F4A_7C15,
            min,
            max,
            pool: None,
        }
    }

    /// The same setup with a warm pool.
    pub fn with_pool(self, pool: Option<WarmPool>) -> Self {
        Self { pool, ..self }
    }

    /// The step adjustment for a datapoint breaching the (scaled) threshold.
    pub fn step_adjustment(&self, value: f64) -> u32 {
        let over = value - Self::OUT * self.k;
        if over >= 10_000.0 * self.k { 3 } else { 2 }
    }

    fn next_rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

impl Scaler for Classic {
    fn name(&self) -> String {
        "classic".into()
    }

    fn warm_pool(&self) -> Option<&WarmPool> {
        self.pool.as_ref()
    }
}

impl Strategy for Classic {
    fn decide(&mut self, obs: &Observation) -> Decision {
        let Some(dp) = self.datapoints.push(obs.now, group_average(obs)) else {
            return hold(obs);
        };
        self.minutes.push_back(dp);
        if self.minutes.len() > 5 {
            self.minutes.pop_front();
        }
        self.minutes_since_five += 1;
        if self.minutes_since_five == 5 {
            self.minutes_since_five = 0;
            let five = self.minutes.iter().sum::<f64>() / self.minutes.len() as f64;
            self.five_min.push_back(five);
            if self.five_min.len() > 3 {
                self.five_min.pop_front();
            }
        }
        let warming = warming(obs, self.warmup);
        let capacity = (obs.instances.len() as u32).max(obs.desired);
        let ready = capacity - warming;
        if self.minutes.len() == 5 && self.minutes.iter().all(|&v| v >= Self::OUT * self.k) {
            let adj = self.step_adjustment(dp);
            let want = (ready + adj).min(self.max);
            if want > capacity {
                return Decision {
                    desired: want,
                    scale_in: Vec::new(),
                    reason: format!(
                        "alarm: average {dp:.0} ≥ {:.0} for 5 of 5 minutes, step +{adj}",
                        Self::OUT * self.k
                    ),
                    ..Decision::default()
                };
            }
            return hold(obs);
        }
        let in_alarm =
            self.five_min.len() == 3 && self.five_min.iter().all(|&v| v <= Self::IN * self.k);
        let cooled = self
            .last_simple
            .is_none_or(|t| obs.now - t >= self.cooldown);
        if in_alarm && cooled && warming == 0 && capacity > self.min {
            let candidates: Vec<&InstanceView> = serving(obs).collect();
            if candidates.is_empty() {
                return hold(obs);
            }
            let victim = candidates[(self.next_rand() % candidates.len() as u64) as usize]
                .id
                .clone();
            self.last_simple = Some(obs.now);
            return Decision {
                desired: capacity - 1,
                scale_in: vec![victim],
                reason: format!(
                    "alarm: 5-minute average ≤ {:.0} for 3 periods, -1",
                    Self::IN * self.k
                ),
                ..Decision::default()
            };
        }
        hold(obs)
    }
}

/// AWS-style target tracking on average connections per node: scale out when 3 one-minute
/// datapoints exceed the target (to capacity × metric / target), scale in by at most 10 % when 15
/// datapoints sit below 90 % of it, with a 300 s scale-in cooldown and warmup respected.
pub struct TargetTracking {
    target: f64,
    warmup: i64,
    datapoints: MinuteDatapoints,
    minutes: VecDeque<f64>,
    last_in: Option<i64>,
    min: u32,
    max: u32,
    pool: Option<WarmPool>,
}

impl TargetTracking {
    pub fn new(target: f64, warmup: i64, min: u32, max: u32) -> Self {
        Self {
            target,
            warmup,
            datapoints: MinuteDatapoints::default(),
            minutes: VecDeque::new(),
            last_in: None,
            min,
            max,
            pool: None,
        }
    }

    /// The same setup with a warm pool.
    pub fn with_pool(self, pool: Option<WarmPool>) -> Self {
        Self { pool, ..self }
    }
}

impl Scaler for TargetTracking {
    fn name(&self) -> String {
        "target-tracking".into()
    }

    fn warm_pool(&self) -> Option<&WarmPool> {
        self.pool.as_ref()
    }
}

impl Strategy for TargetTracking {
    fn decide(&mut self, obs: &Observation) -> Decision {
        let Some(dp) = self.datapoints.push(obs.now, group_average(obs)) else {
            return hold(obs);
        };
        self.minutes.push_back(dp);
        if self.minutes.len() > 15 {
            self.minutes.pop_front();
        }
        let warming = warming(obs, self.warmup);
        let capacity = (obs.instances.len() as u32).max(obs.desired);
        let ready = (capacity - warming).max(1);
        let n = self.minutes.len();
        if n >= 3 && self.minutes.iter().skip(n - 3).all(|&v| v > self.target) {
            let want = ((ready as f64 * dp / self.target).ceil() as u32 + warming).min(self.max);
            if want > capacity {
                return Decision {
                    desired: want,
                    scale_in: Vec::new(),
                    reason: format!("average {dp:.0} > target {:.0}", self.target),
                    ..Decision::default()
                };
            }
            return hold(obs);
        }
        let low = n == 15 && self.minutes.iter().all(|&v| v < 0.9 * self.target);
        if low && warming == 0 && self.last_in.is_none_or(|t| obs.now - t >= 300) {
            let want = ((capacity as f64 * dp / self.target).ceil() as u32).max(self.min);
            let cut = capacity.saturating_sub(want).min((capacity / 10).max(1));
            if cut > 0 && capacity - cut >= self.min {
                let mut c: Vec<&InstanceView> = serving(obs).collect();
                c.sort_by_key(|i| i.launched_at);
                let victims: Vec<String> = c
                    .iter()
                    .rev()
                    .take(cut as usize)
                    .map(|i| i.id.clone())
                    .collect();
                self.last_in = Some(obs.now);
                return Decision {
                    desired: capacity - victims.len() as u32,
                    scale_in: victims,
                    reason: format!("average {dp:.0} < 90% of target for 15 minutes"),
                    ..Decision::default()
                };
            }
        }
        hold(obs)
    }
}

/// Peak provisioning: a fixed fleet big enough for the trace's peak at the scale-out threshold.
pub struct Static {
    pub nodes: u32,
}

impl Scaler for Static {
    fn name(&self) -> String {
        "static".into()
    }
}

impl Strategy for Static {
    fn decide(&mut self, obs: &Observation) -> Decision {
        Decision {
            desired: self.nodes,
            scale_in: Vec::new(),
            reason: if obs.desired == self.nodes {
                String::new()
            } else {
                format!("static fleet of {}", self.nodes)
            },
            ..Decision::default()
        }
    }
}

/// Perfect foresight: as many nodes as the peak demand over the next launch delay needs at
/// the cap, removing the least-connected at once. No real policy can do better; it is the floor.
pub struct Oracle {
    pub trace: Trace,
    pub cap: f64,
    pub lead: i64,
    pub min: u32,
    pub max: u32,
}

impl Scaler for Oracle {
    fn name(&self) -> String {
        "oracle".into()
    }
}

impl Strategy for Oracle {
    fn decide(&mut self, obs: &Observation) -> Decision {
        let peak = self.trace.max_between(obs.now, obs.now + self.lead);
        let want = ((peak / self.cap).ceil() as u32).clamp(self.min, self.max);
        let capacity = (obs.instances.len() as u32).max(obs.desired);
        if want >= capacity {
            return Decision {
                desired: want,
                scale_in: Vec::new(),
                reason: if want > capacity {
                    format!("demand reaches {peak:.0} within {}s", self.lead)
                } else {
                    String::new()
                },
                ..Decision::default()
            };
        }
        let mut c: Vec<&InstanceView> = obs.instances.iter().collect();
        c.sort_by_key(|i| (i.lifecycle == Lifecycle::InService, i.connections));
        let victims: Vec<String> = c
            .iter()
            .take((capacity - want) as usize)
            .map(|i| i.id.clone())
            .collect();
        Decision {
            desired: want,
            scale_in: victims,
            reason: format!("demand falls to {peak:.0}"),
            ..Decision::default()
        }
    }
}
