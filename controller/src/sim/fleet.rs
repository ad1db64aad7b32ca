//! The fleet model the simulator replays a trace through.
//!
//! Nodes launch after a cold delay (or a shorter warm-pool delay), hold connections up to the
//! per-node cap, and receive new connections round-robin among nodes under their cap, as the ALB
//! does when full nodes fail its health check; demand beyond every node's cap is rejected (and
//! retried the next tick, so rejected connection-minutes measure unmet demand over time). A
//! fraction of connections churns each tick and reconnects through the balancer. Scaling a node in
//! moves its connections to the rest (each one a forced reconnect), after the scaler's drain
//! grace: the victim takes no new clients and is billed while its own leave by themselves.

use super::trace::Trace;
use crate::control::{Controller, LoopOptions, Step, Strategy};
use crate::engine::Lifecycle;
use crate::provider::{FleetView, Member, Provider, ProviderError};
use connscale_common::policy::{PoolState, WarmPool};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Anything that scales the simulated fleet: connscale's engine or a baseline. The fleet's
/// control loop ([`crate::control`]) asks it for decisions as it asks the engine in `run`.
pub trait Scaler: Strategy {
    fn name(&self) -> String;
    /// The warm pool this scaler keeps, if any.
    fn warm_pool(&self) -> Option<&WarmPool> {
        None
    }
    /// How this scaler's victims wait for their clients to leave (none by default: all are
    /// moved at once, as when the group terminates an instance without a drain).
    fn drain_grace(&self) -> DrainGrace {
        DrainGrace::default()
    }
}

/// A scale-in victim waits, out of the balancer, for its clients to leave by themselves before
/// the rest are moved: policy `scale_in.drain_grace` (the agent's `drain.grace`).
#[derive(Debug, Clone, Copy, Default)]
pub struct DrainGrace {
    /// How long at most; 0: no wait.
    pub seconds: i64,
    /// The wait ends once fewer clients than this remain.
    pub until_below: f64,
}

/// Fleet model parameters.
#[derive(Debug, Clone, Serialize)]
pub struct FleetModel {
    pub node_cap: f64,
    /// Seconds from launch to serving, cold.
    pub cold_launch: i64,
    /// Seconds from a warm-pool instance's start to serving, per pool state.
    pub warm_stopped: i64,
    pub warm_hibernated: i64,
    pub warm_running: i64,
    /// Simulation step, seconds.
    pub tick: i64,
    /// Mean connection lifetime, seconds: 1/this of connections reconnect per second.
    pub mean_session: f64,
    /// Seconds from a cordon's change to the balancer acting on it: the agent's poll of its
    /// tag, then two failed (or passed) health checks 10 s apart.
    pub health_delay: i64,
}

impl Default for FleetModel {
    fn default() -> Self {
        Self {
            node_cap: 28_000.0,
            cold_launch: 180,
            warm_stopped: 60,
            warm_hibernated: 45,
            warm_running: 15,
            tick: 10,
            mean_session: 1_800.0,
            health_delay: 30,
        }
    }
}

impl FleetModel {
    fn warm_delay_of(&self, pool: Option<&WarmPool>) -> i64 {
        pool.map(|w| self.warm_delay(w.state)).unwrap_or(0)
    }

    fn warm_delay(&self, s: PoolState) -> i64 {
        match s {
            PoolState::Stopped => self.warm_stopped,
            PoolState::Hibernated => self.warm_hibernated,
            PoolState::Running => self.warm_running,
        }
    }
}

/// What one policy did over one trace. JSON keys are part of the CLI's contract.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    pub rejected_connection_minutes: f64,
    pub minutes_at_cap: f64,
    pub instance_hours: f64,
    pub warm_pool_hours: f64,
    pub scaling_actions: u64,
    pub forced_reconnects: f64,
    pub peak_nodes: u32,
    #[serde(skip)]
    pub timeline: Vec<Sample>,
    #[serde(skip)]
    pub actions: Vec<(i64, String)>,
}

/// One point of the plotted timeline.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub t: i64,
    pub demand: f64,
    pub served: f64,
    pub nodes: u32,
}

struct Node {
    id: String,
    conns: f64,
    ready_at: i64,
    /// Scaled in: takes no new connections and goes at this time (or once empty).
    leaves_at: Option<i64>,
}

impl Node {
    fn draining(&self) -> bool {
        self.leaves_at.is_some()
    }
}

/// The modelled fleet as the control loop's [`Provider`], on simulated time: nodes, the desired
/// capacity and the warm pool's prepared instances.
struct SimFleet<'a> {
    model: &'a FleetModel,
    now: i64,
    nodes: Vec<Node>,
    desired: u32,
    min_size: u32,
    max_size: u32,
    pool: Option<WarmPool>,
    /// Warm-pool instances: the time at which each is prepared (ready to start).
    pool_ready: Vec<i64>,
    seq: u64,
    /// Connections moved off removed nodes, so far.
    forced_reconnects: f64,
    /// The scaler's [`Scaler::drain_grace`].
    grace: DrainGrace,
    cordon: SimCordon,
}

/// The cordons as the controller wrote them and as the balancer acts on them, a health delay
/// later.
#[derive(Debug, Default)]
struct SimCordon {
    /// The instances the controller cordoned, and until when.
    written: BTreeMap<String, i64>,
    /// The instances the balancer sends no new clients.
    acting: BTreeSet<String>,
    /// When each instance's cordon was last written or lifted.
    changed_at: BTreeMap<String, i64>,
}

impl SimCordon {
    fn write(&mut self, id: &str, until: Option<i64>, now: i64) {
        let was = self.written.contains_key(id);
        match until {
            Some(u) => self.written.insert(id.to_string(), u),
            None => self.written.remove(id),
        };
        if was != until.is_some() {
            self.changed_at.insert(id.to_string(), now);
        }
    }

    /// Which nodes the balancer skips at `now`.
    fn skip(&mut self, nodes: &[Node], now: i64, delay: i64) -> Vec<bool> {
        let (written, acting) = (&self.written, &mut self.acting);
        self.changed_at.retain(|id, at| {
            if now - *at < delay {
                return true;
            }
            if written.contains_key(id) {
                acting.insert(id.clone());
            } else {
                acting.remove(id);
            }
            false
        });
        nodes.iter().map(|n| self.acting.contains(&n.id)).collect()
    }
}

impl SimFleet<'_> {
    fn new_id(&mut self) -> String {
        self.seq += 1;
        format!("n{:05}", self.seq)
    }

    /// Launches (from the warm pool when one is prepared) or removes the newest until the
    /// fleet matches the desired capacity.
    fn converge(&mut self) {
        while self.members() > self.desired {
            if let Some(i) = self.nodes.iter().rposition(|n| !n.draining()) {
                let n = self.nodes.remove(i);
                self.forced_reconnects += n.conns;
            }
        }
        while self.members() < self.desired {
            let t = self.now;
            let ready_at = match (&self.pool, self.pool_ready.iter().position(|&r| r <= t)) {
                (Some(w), Some(i)) => {
                    self.pool_ready.swap_remove(i);
                    t + self.model.warm_delay(w.state)
                }
                _ => t + self.model.cold_launch,
            };
            let id = self.new_id();
            self.nodes.push(Node {
                id,
                conns: 0.0,
                ready_at,
                leaves_at: None,
            });
        }
    }

    /// Nodes that count toward the desired capacity (not draining).
    fn members(&self) -> u32 {
        self.nodes.iter().filter(|n| !n.draining()).count() as u32
    }

    /// Ends the drains that are over: the victim's grace has passed or fewer clients than
    /// [`DrainGrace::until_below`] remain. Whoever is still on it is moved (a forced reconnect
    /// each), at once: the agent's closing window is short next to the grace.
    fn retire(&mut self) {
        let now = self.now;
        let (gone, kept): (Vec<Node>, Vec<Node>) =
            std::mem::take(&mut self.nodes).into_iter().partition(|n| {
                n.leaves_at
                    .is_some_and(|t| now >= t || n.conns < self.grace.until_below.max(0.5))
            });
        self.nodes = kept;
        for n in gone {
            self.forced_reconnects += n.conns;
            self.back_to_pool();
        }
    }

    /// A scaled-in instance returns to the warm pool when the policy reuses them.
    fn back_to_pool(&mut self) {
        if self.pool.as_ref().is_some_and(|w| w.reuse_on_scale_in) {
            self.pool_ready
                .push(self.now + self.model.warm_delay_of(self.pool.as_ref()));
        }
    }

    /// AWS sizes the pool as max(min_size, max_prepared (default max_size) − desired): it
    /// refills with cold launches and sheds the excess.
    fn size_pool(&mut self, first: bool) {
        let Some(w) = &self.pool else { return };
        let target = w.min_size.max(
            w.max_prepared
                .unwrap_or(self.max_size)
                .saturating_sub(self.desired),
        ) as usize;
        let prepared_at = if first {
            self.now
        } else {
            self.now + self.model.cold_launch
        };
        while self.pool_ready.len() < target {
            self.pool_ready.push(prepared_at);
        }
        self.pool_ready.sort_unstable();
        self.pool_ready.truncate(target);
    }
}

impl Provider for SimFleet<'_> {
    async fn observe(&mut self) -> Result<FleetView, ProviderError> {
        let t = self.now;
        let members = self
            .nodes
            .iter()
            .map(|n| {
                let (state, lifecycle) = match (n.draining(), n.ready_at <= t) {
                    (true, _) => ("Terminating:Wait", Lifecycle::Draining),
                    (false, true) => ("InService", Lifecycle::InService),
                    (false, false) => ("Pending", Lifecycle::Pending),
                };
                Member {
                    id: n.id.clone(),
                    state: state.into(),
                    lifecycle: Some(lifecycle),
                    healthy: true,
                    protected: false,
                    // The engine's warmup counts from here: in the model, from serving.
                    launched_at: n.ready_at.min(t),
                    connections: Some(n.conns.round() as u64),
                    address: None,
                    cordoned_until: self.cordon.written.get(&n.id).copied(),
                    // The simulated controller never restarts: its engine keeps the start.
                    cordoned_since: None,
                }
            })
            .collect();
        Ok(FleetView {
            name: "simulated".into(),
            desired: self.desired,
            min_size: self.min_size,
            max_size: self.max_size,
            members,
            warm_pool: self.pool.clone(),
            warm_instances: self.pool_ready.len() as u32,
            pool_terminations: Vec::new(),
        })
    }

    async fn set_desired(&mut self, desired: u32) -> Result<(), ProviderError> {
        self.desired = desired;
        self.converge();
        Ok(())
    }

    async fn terminate(&mut self, id: &str, decrement: bool) -> Result<(), ProviderError> {
        if let Some(pos) = self.nodes.iter().position(|n| n.id == id && !n.draining()) {
            if self.grace.seconds > 0 {
                self.nodes[pos].leaves_at = Some(self.now + self.grace.seconds);
            } else {
                let n = self.nodes.remove(pos);
                self.forced_reconnects += n.conns;
                self.back_to_pool();
            }
        }
        if decrement {
            self.desired = self.desired.saturating_sub(1);
        }
        self.converge();
        Ok(())
    }

    async fn cordon(&mut self, id: &str, until: i64, _since: i64) -> Result<(), ProviderError> {
        self.cordon.write(id, Some(until), self.now);
        Ok(())
    }

    async fn uncordon(&mut self, id: &str) -> Result<(), ProviderError> {
        self.cordon.write(id, None, self.now);
        Ok(())
    }
}

/// Replays `trace` through the model under `scaler`, starting with `initial_nodes` sharing the
/// initial demand, in a group bounded by `min_size`..=`max_size`. Each tick is one step of the
/// control loop that `run` and the demo use, on simulated time.
pub fn run(
    trace: &Trace,
    model: &FleetModel,
    scaler: &mut dyn Scaler,
    initial_nodes: u32,
    (min_size, max_size): (u32, u32),
    max_samples: usize,
) -> Outcome {
    let (start, end) = (trace.start(), trace.end());
    let cap = model.node_cap;
    let dt = model.tick;
    let mut out = Outcome::default();
    let d0 = trace.at(start);
    let mut fleet = SimFleet {
        model,
        now: start,
        nodes: Vec::new(),
        desired: initial_nodes.max(1),
        min_size,
        max_size,
        pool: scaler.warm_pool().cloned(),
        pool_ready: Vec::new(),
        seq: 0,
        forced_reconnects: 0.0,
        grace: scaler.drain_grace(),
        cordon: SimCordon::default(),
    };
    for _ in 0..initial_nodes.max(1) {
        let id = fleet.new_id();
        fleet.nodes.push(Node {
            id,
            conns: (d0 / initial_nodes.max(1) as f64).min(cap),
            ready_at: start - 3_600,
            leaves_at: None,
        });
    }
    let mut ctl = Controller::new(
        scaler as &mut dyn Strategy,
        LoopOptions {
            interval: std::time::Duration::from_secs(dt as u64),
            dry_run: false,
            max_backoff: std::time::Duration::from_secs(60),
        },
    );
    let sample_every = (((end - start) / dt) as usize / max_samples.max(1)).max(1);
    let churn = (dt as f64 / model.mean_session).min(1.0);
    let mut step = 0usize;
    let mut bucket = Sample {
        t: start,
        demand: 0.0,
        served: 0.0,
        nodes: 0,
    };
    let mut t = start;
    while t <= end {
        fleet.now = t;
        let demand = trace.at(t);
        let nodes = &mut fleet.nodes;
        // Departures, proportionally; then churn, which reconnects through the balancer.
        let held: f64 = nodes.iter().map(|n| n.conns).sum();
        let keep = if held > demand && held > 0.0 {
            demand / held
        } else {
            1.0
        };
        for n in nodes.iter_mut() {
            n.conns *= keep * (1.0 - churn);
        }
        let held: f64 = nodes.iter().map(|n| n.conns).sum();
        let arrivals = (demand - held).max(0.0);
        // A fraction of a connection left over from proportional placement is not a client.
        let skip = fleet.cordon.skip(&fleet.nodes, t, model.health_delay);
        let nodes = &mut fleet.nodes;
        let rejected = Some(place(nodes, arrivals, cap, t, &skip))
            .filter(|r| *r >= 1.0)
            .unwrap_or(0.0);
        out.rejected_connection_minutes += rejected * dt as f64 / 60.0;
        if nodes
            .iter()
            .any(|n| n.ready_at <= t && n.conns >= cap - 0.5)
        {
            out.minutes_at_cap += dt as f64 / 60.0;
        }

        fleet.retire();
        // The simulated fleet's calls never fail and never wait: the step completes at once.
        if let Ok((Step::Turned(turn), _)) = futures::executor::block_on(ctl.step(&mut fleet, t))
            && turn.changes
        {
            out.scaling_actions += 1;
            if out.actions.len() < 10_000 {
                out.actions.push((t, turn.decision.reason));
            }
        }
        fleet.size_pool(step == 0);
        if fleet.pool.is_some() {
            out.warm_pool_hours += fleet.pool_ready.len() as f64 * dt as f64 / 3_600.0;
        }
        let nodes = &fleet.nodes;
        out.instance_hours += nodes.len() as f64 * dt as f64 / 3_600.0;
        out.peak_nodes = out.peak_nodes.max(nodes.len() as u32);
        // Each plotted point keeps its bucket's maxima, so short spikes stay visible.
        bucket.demand = bucket.demand.max(demand);
        bucket.served = bucket.served.max(nodes.iter().map(|n| n.conns).sum());
        bucket.nodes = bucket.nodes.max(nodes.len() as u32);
        if (step + 1).is_multiple_of(sample_every) || t + dt > end {
            out.timeline.push(Sample { t, ..bucket });
            bucket = Sample {
                t,
                demand: 0.0,
                served: 0.0,
                nodes: 0,
            };
        }
        step += 1;
        t += dt;
    }
    out.forced_reconnects = fleet.forced_reconnects;
    out
}

/// Places new connections round-robin on serving nodes under the cap (equal shares, refilled
/// while any node has room), on the `skip`ped (cordoned) nodes only while every other one is
/// full; returns how many found no room.
fn place(nodes: &mut [Node], mut arrivals: f64, cap: f64, now: i64, skip: &[bool]) -> f64 {
    for _ in 0..nodes.len() + 1 {
        let open = |skip: &[bool]| -> Vec<usize> {
            (0..nodes.len())
                .filter(|&i| {
                    nodes[i].ready_at <= now
                        && !nodes[i].draining()
                        && nodes[i].conns < cap - 1e-9
                        && !skip.get(i).copied().unwrap_or(false)
                })
                .collect()
        };
        let open = Some(open(skip))
            .filter(|o| !o.is_empty())
            .unwrap_or_else(|| open(&[]));
        if open.is_empty() || arrivals <= 1e-9 {
            break;
        }
        let share = arrivals / open.len() as f64;
        for i in open {
            let take = share.min(cap - nodes[i].conns);
            nodes[i].conns += take;
            arrivals -= take;
        }
    }
    arrivals.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fleet of `nodes`, all of them desired, in a group of 1..=4, whose victims wait up to
    /// 30 minutes until fewer than 2,000 clients remain.
    fn fleet(model: &FleetModel, nodes: Vec<Node>) -> SimFleet<'_> {
        SimFleet {
            model,
            now: 0,
            desired: nodes.len() as u32,
            nodes,
            min_size: 1,
            max_size: 4,
            pool: None,
            pool_ready: Vec::new(),
            seq: 0,
            forced_reconnects: 0.0,
            grace: DrainGrace {
                seconds: 1_800,
                until_below: 2_000.0,
            },
            cordon: SimCordon::default(),
        }
    }

    fn node(conns: f64) -> Node {
        Node {
            id: String::new(),
            conns,
            ready_at: 0,
            leaves_at: None,
        }
    }

    #[test]
    fn placement_fills_open_nodes_and_rejects_the_rest() {
        let mut n = vec![node(27_000.0), node(0.0)];
        let rejected = place(&mut n, 30_000.0, 28_000.0, 0, &[]);
        assert_eq!((n[0].conns, n[1].conns), (28_000.0, 28_000.0));
        assert!((rejected - 1_000.0).abs() < 1e-6);
    }

    /// A victim with a drain grace stays, billed, takes no new clients, and goes once fewer
    /// than `until_below` remain: only those count as forced reconnects.
    #[test]
    fn a_victim_waits_out_its_grace_and_only_its_last_clients_are_forced() {
        let model = FleetModel::default();
        let mut f = fleet(
            &model,
            vec![
                Node {
                    id: "a".into(),
                    ..node(10_000.0)
                },
                Node {
                    id: "b".into(),
                    ..node(10_000.0)
                },
            ],
        );
        futures::executor::block_on(f.terminate("a", true)).unwrap();
        assert_eq!((f.nodes.len(), f.members(), f.desired), (2, 1, 1));
        place(&mut f.nodes, 1_000.0, 28_000.0, 0, &[]);
        assert_eq!(f.nodes[0].conns, 10_000.0, "the victim took new clients");
        f.nodes[0].conns = 2_500.0;
        f.now = 600;
        f.retire();
        assert_eq!(f.nodes.len(), 2, "gone with 2,500 clients still on it");
        f.nodes[0].conns = 1_500.0;
        f.retire();
        assert_eq!(f.nodes.len(), 1);
        assert_eq!(f.forced_reconnects, 1_500.0);
    }

    /// A cordoned node takes new clients only once the others are full.
    #[test]
    fn a_cordoned_node_takes_new_clients_last() {
        let mut n = vec![node(20_000.0), node(5_000.0), node(20_000.0)];
        place(&mut n, 1_000.0, 28_000.0, 0, &[false, true]);
        assert_eq!(
            (n[0].conns, n[1].conns, n[2].conns),
            (20_500.0, 5_000.0, 20_500.0)
        );
        let rejected = place(&mut n, 16_000.0, 28_000.0, 0, &[false, true]);
        assert_eq!((n[0].conns, n[1].conns), (28_000.0, 6_000.0));
        assert_eq!(rejected, 0.0);
    }

    /// The balancer acts on a cordon (and on its lifting) a health delay after the controller
    /// writes it.
    #[test]
    fn the_balancer_follows_the_cordon_a_health_delay_late() {
        let n = vec![
            Node {
                id: "a".into(),
                ..node(1.0)
            },
            Node {
                id: "b".into(),
                ..node(1.0)
            },
        ];
        let mut c = SimCordon::default();
        c.write("b", Some(400), 100);
        assert_eq!(c.skip(&n, 120, 30), [false, false]);
        assert_eq!(c.skip(&n, 130, 30), [false, true]);
        c.write("b", Some(700), 200);
        c.write("a", Some(700), 200);
        assert_eq!(
            c.skip(&n, 201, 30),
            [false, true],
            "a renewal changes nothing"
        );
        assert_eq!(
            c.skip(&n, 230, 30),
            [true, true],
            "each cordon on its own delay"
        );
        c.write("b", None, 300);
        assert_eq!(c.skip(&n, 310, 30), [true, true]);
        assert_eq!(c.skip(&n, 330, 30), [true, false]);
    }

    #[test]
    fn pending_nodes_take_nothing() {
        let mut n = vec![
            node(0.0),
            Node {
                ready_at: 100,
                ..node(0.0)
            },
        ];
        place(&mut n, 10.0, 28_000.0, 0, &[]);
        assert_eq!((n[0].conns, n[1].conns), (10.0, 0.0));
    }
}
