//! The policy engine: a pure function of (policy, observation, engine state) → decision.
//!
//! The control loop, `plan` and the simulator all call [`Engine::evaluate`]; nothing here does I/O
//! or reads a clock. Times are Unix seconds. The engine's own state (trend history, streaks,
//! last action times) is small and rebuilt safely after a restart: an empty state only makes the
//! engine more conservative (no scale-in until `sustain` has been observed again).

use chrono::{DateTime, Utc};
use connscale_common::cron::{Cron, parse_tz};
use connscale_common::policy::Policy;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// Where an instance is in its life, as far as scaling is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Launching: counts toward capacity, serves nothing yet.
    Pending,
    /// Serving (possibly still inside its warmup).
    InService,
    /// Being drained for scale-in: its connections are moving to the others.
    Draining,
}

/// One instance as the engine sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceView {
    pub id: String,
    pub lifecycle: Lifecycle,
    /// Established connections; `None` when no fresh count exists (the agent is silent or its
    /// datapoint is late). Unknown is never read as zero: such an instance is never a scale-in
    /// victim and is left out of the average.
    pub connections: Option<u64>,
    pub launched_at: i64,
    /// When its cordon began, from the cordon tag while the cordon is in force: a restarted
    /// engine's memory of how long the node has been emptying (`None`: not cordoned, or the
    /// tag does not say).
    pub cordoned_since: Option<i64>,
}

impl InstanceView {
    /// In service with a fresh count: the only kind the engine drains or keeps cordoned blind.
    fn drainable(&self) -> bool {
        self.lifecycle == Lifecycle::InService && self.connections.is_some()
    }
}

/// Everything the engine is told at one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub now: i64,
    /// The group's current desired capacity.
    pub desired: u32,
    /// The group's own minimum size (0 when unknown). The policy's may be lower; the control
    /// loop never sets desired below either, so the engine cordons nothing the group keeps.
    pub min_size: u32,
    pub instances: Vec<InstanceView>,
}

/// Which way a decision moves the group, as a value callers match on (the reason is for people).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Direction {
    /// The desired capacity stays and nothing is drained.
    #[default]
    Hold,
    /// The desired capacity rises `from` → `to`.
    ScaleOut { from: u32, to: u32 },
    /// The desired capacity falls `from` → `to`, draining `victims` (may name fewer than the
    /// decrease when instances are not yet visible).
    ScaleIn {
        from: u32,
        to: u32,
        victims: Vec<String>,
    },
}

impl Direction {
    /// The direction of going from the observed desired capacity `from` to `to`, draining
    /// `victims`.
    pub fn of(from: u32, to: u32, victims: &[String]) -> Self {
        if to > from {
            Direction::ScaleOut { from, to }
        } else if to < from || !victims.is_empty() {
            Direction::ScaleIn {
                from,
                to,
                victims: victims.to_vec(),
            }
        } else {
            Direction::Hold
        }
    }
}

/// What the engine wants done.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Decision {
    /// Which way the group moves: derived from `desired` and `scale_in` against the observed
    /// desired capacity (see [`Decision::settle`]).
    pub direction: Direction,
    /// The desired capacity to set (equal to the observed one: no change).
    pub desired: u32,
    /// Instances to drain and terminate with decrement (already subtracted from `desired`;
    /// may name fewer than the decrease when instances are not yet visible).
    pub scale_in: Vec<String>,
    /// The average connections per ready in-service instance with a fresh count (`None` when
    /// no such instance exists): the number the steps and the scale-in threshold compare.
    pub average: Option<f64>,
    /// In-service instances without a fresh count (left out of the average, never drained).
    pub no_data: Vec<String>,
    /// The instances to cordon (the load balancer sends them no new clients, so they empty
    /// before a scale-in takes them); every other cordon is lifted: see [`Engine::cordon`].
    pub cordon: Vec<String>,
    /// When each of `cordon`'s began (Unix seconds), for the cordon tag: a restarted engine
    /// reads it back ([`InstanceView::cordoned_since`]). One missing here begins now.
    pub cordoned_since: BTreeMap<String, i64>,
    /// Why, in words for the operator's log.
    pub reason: String,
}

impl Decision {
    /// Sets [`Decision::direction`] from `desired` and `scale_in`, after either changed.
    pub fn settle(&mut self, observed_desired: u32) {
        self.direction = Direction::of(observed_desired, self.desired, &self.scale_in);
    }

    pub fn changes(&self, obs: &Observation) -> bool {
        self.desired != obs.desired || !self.scale_in.is_empty()
    }
}

/// The engine's memory between evaluations.
#[derive(Debug, Clone, Default)]
pub struct EngineState {
    history: VecDeque<(i64, f64)>,
    /// Demand over the last `scale_in.peak_window`, kept as a decreasing run: the front is
    /// the window's peak.
    peaks: VecDeque<(i64, f64)>,
    breach_streak: u32,
    below_since: Option<i64>,
    last_action: Option<i64>,
    windows: Vec<Option<(i64, i64)>>,
    /// The instances cordoned last turn: they keep the cordon on a tie, and a scale-in takes
    /// them first among equals.
    cordoned: Vec<String>,
    /// When each instance's cordon began, and when it last held: one cordoned for
    /// [`Policy::cordon_wait`] may go however many clients it still holds. A cordon lifted for
    /// less than [`CORDON_MEMORY`] (a turn when demand wavered) keeps its start.
    cordon_since: BTreeMap<String, (i64, i64)>,
    /// The demand projected `scale_out.lookahead` ahead at the last evaluation.
    projected: f64,
}

/// Seconds of history the demand trend is fitted over.
const TREND_WINDOW: i64 = 180;
/// Share of the cap the projected demand may fill: the rest absorbs uneven spread.
const HOLD_FRACTION: f64 = 0.95;

/// The connections one node may carry before the engine counts it full: [`HOLD_FRACTION`] of
/// the cap. The projection needs capacity at this, the cordon leaves the others this much, and
/// a node past it holds a scale-in.
fn room(policy: &Policy) -> f64 {
    f64::from(policy.group.node_cap) * HOLD_FRACTION
}
/// Seconds a lifted cordon keeps its start ([`EngineState`]): the cordon tag's own hold, within
/// which the balancer may not even have noticed the lift.
const CORDON_MEMORY: i64 = connscale_common::cordon::HOLD;
/// While at least this share of the in-service instances has no fresh count, scale-in holds:
/// the known ones are too few to say the fleet is quiet (scale-out still acts on them).
pub const NO_DATA_HOLDS_SCALE_IN: f64 = 1.0 / 3.0;

/// A policy compiled for evaluation (cron expressions parsed once).
#[derive(Debug, Clone)]
pub struct Engine {
    pub policy: Policy,
    schedules: Vec<(Cron, chrono_tz::Tz)>,
}

impl Engine {
    /// Compiles a validated policy. Schedules that fail to parse are skipped (validation has
    /// already reported them).
    pub fn new(policy: Policy) -> Self {
        let schedules = policy
            .schedules
            .iter()
            .filter_map(|s| Some((s.cron.parse().ok()?, parse_tz(&s.timezone).ok()?)))
            .collect();
        Self { policy, schedules }
    }

    /// The floor and desired count that schedules impose at `now` (applied `lead` seconds
    /// before each window opens, so capacity is in service when the peak starts).
    pub fn schedule_floor(
        &self,
        now: i64,
        state: &mut EngineState,
    ) -> (u32, Option<(u32, String)>) {
        let p = &self.policy;
        let lead = p.scale_out.lookahead.max(p.scale_out.warmup).as_secs() as i64;
        state.windows.resize(self.schedules.len(), None);
        let mut floor = 0;
        let mut active = None;
        for (i, ((cron, tz), sched)) in self.schedules.iter().zip(&p.schedules).enumerate() {
            let dur = sched.duration.as_secs() as i64;
            let stale = state.windows[i].is_none_or(|(_, end)| now >= end);
            if stale {
                let from = DateTime::<Utc>::from_timestamp(now - dur - 1, 0).unwrap_or_default();
                state.windows[i] = cron
                    .next_after(from, *tz)
                    .map(|s| (s.timestamp(), s.timestamp() + dur));
            }
            if let Some((start, end)) = state.windows[i]
                && now >= start - lead
                && now < end
            {
                floor = floor.max(sched.min_size.max(sched.desired.unwrap_or(0)));
                active = Some((floor, sched.name.clone()));
            }
        }
        (floor, active)
    }

    /// Decides the group's desired capacity and which instances to scale in.
    pub fn evaluate(&self, obs: &Observation, state: &mut EngineState) -> Decision {
        after_a_gap(obs.now, state);
        remember_cordons(obs, state);
        let sum = Summary::of(obs, self.policy.scale_out.warmup.as_secs() as i64);
        let schedule = self.schedule_floor(obs.now, state);
        let mut d = self.decide(obs, state, &sum, &schedule);
        d.average = sum.average;
        if !sum.no_data.is_empty() {
            d.reason = format!(
                "{}; no data from {} (left out of the average)",
                d.reason,
                sum.no_data.join(", ")
            );
        }
        d.settle(obs.desired);
        let floor = (self.policy.group.min_size)
            .max(obs.min_size)
            .max(schedule.0);
        d.cordon = match &d.direction {
            Direction::Hold => self.cordon(obs, &sum, state, floor),
            // Victims included: the others go on emptying, and a victim the group's bounds keep
            // (or whose termination fails) stays out of the balancer until the next turn.
            Direction::ScaleIn { .. } => state.cordoned.clone(),
            // The demand needs them: a cordoned node takes clients again before any launch serves.
            Direction::ScaleOut { .. } => Vec::new(),
        };
        let now = obs.now;
        for id in &d.cordon {
            let entry = state.cordon_since.entry(id.clone()).or_insert((now, now));
            entry.1 = now;
            d.cordoned_since.insert(id.clone(), entry.0);
        }
        state
            .cordon_since
            .retain(|_, (_, last)| now - *last < CORDON_MEMORY);
        state.cordoned = d.cordon.clone();
        d.no_data = sum.no_data;
        d
    }

    /// The instances to cordon: as many of the least-connected in-service ones (last turn's
    /// first on a tie, then the newest) as the group could lose above `floor` while the others
    /// still hold every client, draining instances' included, under 95 % of their caps, now and
    /// at the projection. The load balancer sends them no new clients (it routes to every
    /// target again only once all fail their health checks), so they empty as their clients
    /// leave by themselves; a scale-in takes them once [emptied](Self::emptied): few forced
    /// reconnects and a short drain. As demand rises, cordons lift, the most-connected
    /// cordoned node's first, and a scale-out lifts them all in the turn it launches: the
    /// cordoned nodes serve before any launch could. The bound is the caps' (the room the
    /// engine keeps for the projection), not the scale-out threshold: a cordon only steers new
    /// clients, the nodes it leaves open run fuller meanwhile, and the cordoned ones are the
    /// reserve; the steps still read the average over every node. While any in-service
    /// instance has no count (the sum would be a guess), last turn's cordons stay. Near the
    /// bound a cordon may come and go from one turn to the next; the balancer acts only after
    /// two health checks agree.
    fn cordon(
        &self,
        obs: &Observation,
        sum: &Summary,
        state: &EngineState,
        floor: u32,
    ) -> Vec<String> {
        let room = room(&self.policy);
        let demand = sum.total.max(state.projected);
        if !sum.no_data.is_empty() {
            // Blind, hold still: last turn's cordons stay on the nodes still serving and counted.
            let counted = |id: &String| obs.instances.iter().any(|i| &i.id == id && i.drainable());
            return state
                .cordoned
                .iter()
                .filter(|id| counted(id))
                .cloned()
                .collect();
        }
        let mut k = sum.serving.saturating_sub(floor.max(1) as usize);
        while k > 0 && demand / (sum.serving - k) as f64 > room {
            k -= 1;
        }
        let mut serving: Vec<&InstanceView> = obs
            .instances
            .iter()
            .filter(|i| i.lifecycle == Lifecycle::InService)
            .collect();
        serving.sort_by_key(|i| drain_order(i, &state.cordoned));
        serving.iter().take(k).map(|i| i.id.clone()).collect()
    }

    /// The decision proper, on the fleet as [`Summary`] sums it up.
    fn decide(
        &self,
        obs: &Observation,
        state: &mut EngineState,
        sum: &Summary,
        schedule: &(u32, Option<(u32, String)>),
    ) -> Decision {
        let p = &self.policy;
        let now = obs.now;
        let threshold = p.scale_out_threshold() as f64;
        let (serving, ready, warming, total, capacity) =
            (sum.serving, sum.ready, sum.warming, sum.total, sum.capacity);
        let avg = sum.average.unwrap_or(0.0);

        // Trend: least-squares slope of the total over the last few minutes.
        state.history.push_back((now, total));
        while state
            .history
            .front()
            .is_some_and(|(t, _)| *t < now - TREND_WINDOW)
        {
            state.history.pop_front();
        }
        let slope = slope(&state.history).max(0.0);
        let window = p.scale_in.peak_window.as_secs() as i64;
        while state.peaks.back().is_some_and(|(_, y)| *y <= total) {
            state.peaks.pop_back();
        }
        state.peaks.push_back((now, total));
        while state.peaks.front().is_some_and(|(t, _)| *t < now - window) {
            state.peaks.pop_front();
        }
        let recent_peak = state.peaks.front().map_or(total, |(_, y)| *y);
        let lookahead = p.scale_out.lookahead.as_secs_f64();
        let projected = total + slope * lookahead;
        state.projected = projected;

        let (sched_floor, sched) = schedule;
        let sched_floor = *sched_floor;
        let floor = p.group.min_size.max(sched_floor).min(p.group.max_size);
        let clamp = |n: u32| n.clamp(floor, p.group.max_size);

        // Scale-out: the larger of the breached step and the capacity the projection needs.
        let step = p.step_for(avg);
        state.breach_streak = if step.is_some() {
            state.breach_streak + 1
        } else {
            0
        };
        let mut want = capacity;
        let mut why = Vec::new();
        if let Some(s) = step
            && state.breach_streak >= p.scale_out.datapoints
        {
            let by_step = ready as u32 + warming + s.add.saturating_sub(warming);
            if by_step > want {
                want = by_step;
                why.push(format!("average {avg:.0} ≥ {} (step +{})", s.lower, s.add));
            }
        }
        // Now: keep the average under the scale-out threshold. Ahead: have room to hold the
        // projected demand below the caps (with 5 % slack for uneven spread).
        let need_now = (total / threshold).ceil() as u32;
        let need_ahead = (projected / room(p)).ceil() as u32;
        if need_now > want {
            want = need_now;
            why.push(format!(
                "{total:.0} connections need {need_now} nodes at {threshold:.0}"
            ));
        }
        if need_ahead > want {
            want = need_ahead;
            why.push(format!(
                "{projected:.0} connections projected in {lookahead:.0}s (trend {slope:+.1}/s) need {need_ahead} nodes"
            ));
        }
        if floor > want {
            want = floor;
            match &sched {
                Some((_, name)) if sched_floor >= floor => {
                    why.push(format!("schedule {name:?} floor {floor}"))
                }
                _ => why.push(format!("group minimum {floor}")),
            }
        }
        let want = clamp(want);
        if want > capacity {
            state.last_action = Some(now);
            state.below_since = None;
            return Decision {
                desired: want,
                scale_in: Vec::new(),
                reason: format!("scale out {capacity} → {want}: {}", why.join("; ")),
                ..Decision::default()
            };
        }
        if capacity > p.group.max_size {
            return self.scale_in(
                obs,
                state,
                capacity,
                capacity - p.group.max_size,
                "above group maximum".into(),
                None,
            );
        }

        // Scale-in: sustained low average, cooled down, nothing warming, nobody hot, and the
        // rest stay under max_after (never near their caps) even with the projected trend.
        let si = &p.scale_in;
        if avg > si.threshold as f64 || serving == 0 {
            state.below_since = None;
            return self.hold(obs, floor, format!("average {avg:.0}"));
        }
        let silent = sum.no_data.len();
        if silent as f64 >= NO_DATA_HOLDS_SCALE_IN * serving as f64 {
            // The low average may come from too few nodes: start `sustain` again once they report.
            state.below_since = None;
            return self.hold(
                obs,
                floor,
                format!(
                    "no data from {silent} of {serving} in-service nodes (a third or more): scale-in waits for their counts"
                ),
            );
        }
        let since = *state.below_since.get_or_insert(now);
        if now - since < si.sustain.as_secs() as i64 {
            return self.hold(
                obs,
                floor,
                format!(
                    "average {avg:.0} ≤ {} for {}s of {}s",
                    si.threshold,
                    now - since,
                    si.sustain.as_secs()
                ),
            );
        }
        if warming > 0 {
            return self.hold(obs, floor, format!("{warming} node(s) warming up"));
        }
        if state
            .last_action
            .is_some_and(|t| now - t < si.cooldown.as_secs() as i64)
        {
            return self.hold(obs, floor, "in cooldown".into());
        }
        let hottest = obs
            .instances
            .iter()
            .filter(|i| i.lifecycle == Lifecycle::InService)
            .filter_map(|i| i.connections)
            .max()
            .unwrap_or(0);
        // The cordon lets the nodes it leaves open run up to the room it keeps (95 % of their
        // caps): holding here at the scale-out threshold would keep its emptied nodes forever.
        let room = room(p);
        if hottest as f64 >= room {
            return self.hold(
                obs,
                floor,
                format!("a node holds {hottest} ≥ {room:.0} (95 % of its cap)"),
            );
        }
        let max_after = p.scale_in_max_after() as f64;
        // Only instances with a count may go: the group must not pick a silent one itself.
        let victims = serving - silent;
        let most = si
            .step
            .min(capacity.saturating_sub(floor))
            .min(victims as u32);
        // As many as the rest can do without, holding `demand` at or below max_after.
        let fits = |demand: f64| {
            let mut k = most;
            while k > 0 && demand / f64::from(capacity - k) > max_after {
                k -= 1;
            }
            k
        };
        let keep_for = projected.max(total).max(recent_peak);
        // Nodes already near empty need not wait out the window (`scale_in.empty_below`). Only
        // ones a scale-in may take count, so the extra victims are exactly these: the least
        // connected of the candidates.
        let empty = obs
            .instances
            .iter()
            .filter(|i| {
                i.drainable()
                    && i.connections.is_some_and(|c| c < u64::from(si.empty_below))
                    && self.emptied(i, state, now)
            })
            .count() as u32;
        let held = fits(keep_for);
        let k = held.max(fits(projected.max(total)).min(empty));
        if k == 0 {
            return self.hold(
                obs,
                floor,
                format!(
                    "average {avg:.0}: removing a node would leave the rest above {max_after:.0} (demand {keep_for:.0}, the highest of the projection and the last {window}s)"
                ),
            );
        }
        let mut reason = format!(
            "average {avg:.0} ≤ {} for {}s; the remaining {} nodes carry {:.0} ≤ {max_after:.0}",
            si.threshold,
            now - since,
            capacity - k,
            total / f64::from(capacity - k)
        );
        if k > held {
            reason.push_str(&format!(
                " ({} under {} clients without waiting out the last {window}s's peak of {recent_peak:.0})",
                k - held,
                si.empty_below
            ));
        }
        self.scale_in(obs, state, capacity, k, reason, Some(floor))
    }

    /// Whether a scale-in may take `i` now: with a drain grace, only once it holds fewer clients
    /// than `drain_grace_until_below` (the cordon emptied it) or has been cordoned for
    /// [`Policy::cordon_wait`] (its clients stay; the agent's drain then moves them). Without a
    /// grace, always.
    fn emptied(&self, i: &InstanceView, state: &EngineState, now: i64) -> bool {
        let si = &self.policy.scale_in;
        let wait = self.policy.cordon_wait().as_secs() as i64;
        si.drain_grace.is_zero()
            || i.connections
                .is_some_and(|c| c < u64::from(si.drain_grace_until_below))
            || state
                .cordon_since
                .get(&i.id)
                .is_some_and(|(since, _)| now - since >= wait)
    }

    /// No scaling; a desired capacity outside the bounds (set by hand, say) is still corrected.
    fn hold(&self, obs: &Observation, floor: u32, reason: String) -> Decision {
        let desired = obs.desired.clamp(floor, self.policy.group.max_size);
        Decision {
            desired,
            reason: format!("hold at {desired}: {reason}"),
            ..Decision::default()
        }
    }

    /// Removes up to `k` of the least-connected serving instances (ties: the cordoned, then the
    /// newest, which AWS bills least). With `wait_floor`, only instances the cordon has
    /// [emptied](Self::emptied) go, and the group holds (bounded below by the floor) while none
    /// has; without, the `k` go whatever they hold (above the group's maximum).
    fn scale_in(
        &self,
        obs: &Observation,
        state: &mut EngineState,
        capacity: u32,
        k: u32,
        reason: String,
        wait_floor: Option<u32>,
    ) -> Decision {
        let mut candidates: Vec<&InstanceView> =
            obs.instances.iter().filter(|i| i.drainable()).collect();
        candidates.sort_by_key(|i| drain_order(i, &state.cordoned));
        if let Some(floor) = wait_floor {
            candidates.retain(|i| self.emptied(i, state, obs.now));
            if candidates.is_empty() {
                return self.hold(
                    obs,
                    floor,
                    format!("{reason}, once the cordoned nodes have emptied"),
                );
            }
        }
        candidates.truncate(k as usize);
        let k = if wait_floor.is_some() {
            candidates.len() as u32
        } else {
            k
        };
        let chosen: Vec<String> = candidates.iter().map(|i| i.id.clone()).collect();
        // Desired drops by k even when fewer instances can be named: the group removes the rest.
        let desired = capacity - k;
        state.last_action = Some(obs.now);
        state.below_since = None;
        let who = candidates
            .iter()
            .map(|i| format!("{} ({} conns)", i.id, i.connections.unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ");
        Decision {
            desired,
            scale_in: chosen,
            reason: format!("scale in {capacity} → {desired}: {reason}; drain {who}"),
            ..Decision::default()
        }
    }
}

/// After a gap of [`CORDON_MEMORY`] or more in the evaluations (another controller held the
/// lease meanwhile, or the fleet could not be read) the engine cannot vouch for what happened:
/// a sustained low starts again, and a cordon's start is kept only if it held within
/// `CORDON_MEMORY` (the tags tell the rest).
fn after_a_gap(now: i64, state: &mut EngineState) {
    if state
        .history
        .back()
        .is_some_and(|(t, _)| now - t >= CORDON_MEMORY)
    {
        state.below_since = None;
    }
    state
        .cordon_since
        .retain(|_, (_, last)| now - *last < CORDON_MEMORY);
}

/// Takes each cordon's start from its tag when the engine has none (it restarted, or another
/// controller held the lease): the node has been emptying since then, and a scale-in after
/// [`Policy::cordon_wait`] should not wait that long again.
/// A start in the future (a skewed clock) is not believed; one before the instance launched
/// (a tag edited by hand) counts from the launch.
fn remember_cordons(obs: &Observation, state: &mut EngineState) {
    for i in &obs.instances {
        if let Some(since) = i.cordoned_since.filter(|s| *s <= obs.now) {
            state
                .cordon_since
                .entry(i.id.clone())
                .or_insert((since.max(i.launched_at), obs.now));
        }
    }
}

/// The order in which instances are cordoned and scaled in: the least-connected first (an
/// instance without a count last), the cordoned ones first among equals, then the newest (AWS
/// bills it least), then by id.
fn drain_order<'a>(
    i: &'a InstanceView,
    cordoned: &[String],
) -> (bool, Option<u64>, bool, std::cmp::Reverse<i64>, &'a str) {
    (
        i.connections.is_none(),
        i.connections,
        !cordoned.contains(&i.id),
        std::cmp::Reverse(i.launched_at),
        &i.id,
    )
}

/// The fleet summed up for one evaluation.
struct Summary {
    /// In-service instances.
    serving: usize,
    /// In-service instances past their warmup.
    ready: usize,
    /// Pending instances plus in-service ones still inside their warmup.
    warming: u32,
    /// Average connections over ready instances with a count (over every counted in-service
    /// one while all are warming up); `None` when none has a count.
    average: Option<f64>,
    /// Demand: every count (draining nodes' clients are reconnecting to the rest), plus the
    /// average for each in-service node without one.
    total: f64,
    /// Instances the group has or is launching (at least the desired capacity).
    capacity: u32,
    /// In-service instances without a fresh count.
    no_data: Vec<String>,
}

impl Summary {
    fn of(obs: &Observation, warmup: i64) -> Self {
        let serving: Vec<&InstanceView> = obs
            .instances
            .iter()
            .filter(|i| i.lifecycle == Lifecycle::InService)
            .collect();
        let pending = obs
            .instances
            .iter()
            .filter(|i| i.lifecycle == Lifecycle::Pending)
            .count() as u32;
        let ready: Vec<&InstanceView> = serving
            .iter()
            .copied()
            .filter(|i| obs.now - i.launched_at >= warmup)
            .collect();
        let no_data: Vec<String> = serving
            .iter()
            .filter(|i| i.connections.is_none())
            .map(|i| i.id.clone())
            .collect();
        // Unknown is never read as zero: an instance without a count is left out of the
        // average, which would otherwise fall and invite a scale-in.
        let counts =
            |v: &[&InstanceView]| -> Vec<u64> { v.iter().filter_map(|i| i.connections).collect() };
        let mut counted = counts(&ready);
        if counted.is_empty() {
            counted = counts(&serving);
        }
        let average = (!counted.is_empty())
            .then(|| counted.iter().sum::<u64>() as f64 / counted.len() as f64);
        // A silent node is taken to carry the known average: it neither hides demand nor, when
        // it reports again, looks like a surge to the trend.
        let known: f64 = obs
            .instances
            .iter()
            .filter_map(|i| i.connections)
            .map(|c| c as f64)
            .sum();
        Self {
            serving: serving.len(),
            ready: ready.len(),
            warming: (serving.len() - ready.len()) as u32 + pending,
            average,
            total: known + no_data.len() as f64 * average.unwrap_or(0.0),
            capacity: (serving.len() as u32 + pending).max(obs.desired),
            no_data,
        }
    }
}

/// Least-squares slope (units per second) of (t, y) points; 0 with fewer than two.
pub fn slope(points: &VecDeque<(i64, f64)>) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let t0 = points.front().map(|p| p.0).unwrap_or(0);
    let (mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0);
    for &(t, y) in points {
        let x = (t - t0) as f64;
        sx += x;
        sy += y;
        sxx += x * x;
        sxy += x * y;
    }
    let den = n * sxx - sx * sx;
    if den.abs() < f64::EPSILON {
        0.0
    } else {
        (n * sxy - sx * sy) / den
    }
}

/// The warm-pool change a fleet needs: the policy's pool when the observed one differs (or is
/// missing), `Some(None)` to delete a pool the policy no longer has, `None` when nothing changes.
/// Pure, like [`Engine::evaluate`]; providers apply it (AWS PutWarmPool / DeleteWarmPool).
pub fn warm_pool_change(
    policy: &Policy,
    observed: Option<&connscale_common::policy::WarmPool>,
) -> Option<Option<connscale_common::policy::WarmPool>> {
    match (&policy.warm_pool, observed) {
        (Some(want), Some(have)) if want == have => None,
        (None, None) => None,
        (want, _) => Some(want.clone()),
    }
}

#[cfg(test)]
mod warm_pool_tests {
    use super::*;

    #[test]
    fn warm_pool_changes_only_when_different() {
        let p = Policy::default_policy();
        let want = p.warm_pool.clone().expect("default policy has a pool");
        assert_eq!(warm_pool_change(&p, Some(&want)), None);
        assert_eq!(warm_pool_change(&p, None), Some(Some(want.clone())));
        let mut other = want.clone();
        other.min_size += 1;
        assert_eq!(warm_pool_change(&p, Some(&other)), Some(Some(want.clone())));
        let mut none = p.clone();
        none.warm_pool = None;
        assert_eq!(warm_pool_change(&none, Some(&want)), Some(None));
        assert_eq!(warm_pool_change(&none, None), None);
    }
}
