//! `connscale simulate`: replay a demand trace through a fleet model under connscale's policy
//! and the baselines, and compare what each cost and whom each turned away.

pub mod baselines;
pub mod fleet;
pub mod plot;
pub mod targets;
pub mod trace;

use baselines::{Classic, Connscale, Oracle, Static, TargetTracking};
use connscale_common::policy::Policy;
use fleet::{FleetModel, Outcome, Scaler};
use serde::Serialize;
use std::collections::BTreeMap;
use trace::Trace;

/// The policies `--compare` accepts besides connscale's own. `classic` and `target-tracking`
/// keep the same warm pool as the policy under test (its `[warm_pool]`; none when it has none),
/// as the setups they stand for would; the `-nopool` variants keep none.
pub const BASELINES: [&str; 6] = [
    "classic",
    "target-tracking",
    "static",
    "oracle",
    "classic-nopool",
    "target-tracking-nopool",
];

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub policy: Policy,
    /// Scale the trace so its peak needs this many nodes at the cap.
    pub peak_nodes: f64,
    pub time_scale: f64,
    pub compare: Vec<String>,
    pub model: FleetModel,
}

/// The result for one trace: per-policy outcomes, keyed by policy name.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub trace: String,
    pub points: usize,
    pub peak_connections: f64,
    pub simulated_hours: f64,
    pub policies: BTreeMap<String, Outcome>,
}

/// Builds a scaler by name; unknown names are an error listing the valid ones.
pub fn scaler(name: &str, cfg: &SimConfig, trace: &Trace) -> Result<Box<dyn Scaler>, String> {
    let p = &cfg.policy;
    let (min, max) = (p.group.min_size, p.group.max_size);
    let cap = cfg.model.node_cap;
    Ok(match name {
        "connscale" => Box::new(Connscale::new(p.clone())),
        "classic" => Box::new(Classic::new(cap, min, max).with_pool(p.warm_pool.clone())),
        "classic-nopool" => Box::new(Classic::new(cap, min, max)),
        "target-tracking" => Box::new(target_tracking(p).with_pool(p.warm_pool.clone())),
        "target-tracking-nopool" => Box::new(target_tracking(p)),
        "static" => Box::new(Static {
            nodes: ((trace.peak() / p.scale_out_threshold() as f64).ceil() as u32).clamp(min, max),
        }),
        "oracle" => Box::new(Oracle {
            trace: trace.clone(),
            cap,
            lead: cfg.model.cold_launch + cfg.model.tick,
            min,
            max,
        }),
        other => {
            return Err(format!(
                "unknown policy {other:?} in --compare (choose from connscale, {})",
                BASELINES.join(", ")
            ));
        }
    })
}

fn target_tracking(p: &Policy) -> TargetTracking {
    TargetTracking::new(
        p.scale_out_threshold() as f64,
        p.scale_out.warmup.as_secs() as i64,
        p.group.min_size,
        p.group.max_size,
    )
}

/// Runs connscale and each compared baseline over `raw` (an unscaled trace).
pub fn simulate(raw: &Trace, cfg: &SimConfig) -> Result<Report, String> {
    let mut model = cfg.model.clone();
    model.node_cap = cfg.policy.group.node_cap as f64;
    let cfg = SimConfig {
        model,
        ..cfg.clone()
    };
    let trace = raw.scaled(cfg.peak_nodes * cfg.model.node_cap, cfg.time_scale);
    let initial = ((trace.at(trace.start()) / cfg.policy.scale_out_threshold() as f64).ceil()
        as u32)
        .clamp(cfg.policy.group.min_size.max(1), cfg.policy.group.max_size);
    let mut names = vec!["connscale".to_string()];
    names.extend(cfg.compare.iter().filter(|c| *c != "connscale").cloned());
    let mut policies = BTreeMap::new();
    for name in names {
        let mut s = scaler(&name, &cfg, &trace)?;
        let start = if name == "static" { 0 } else { initial };
        let first = if start == 0 {
            s.decide(&empty_obs(trace.start())).desired
        } else {
            start
        };
        policies.insert(
            name,
            fleet::run(
                &trace,
                &cfg.model,
                s.as_mut(),
                first,
                (cfg.policy.group.min_size, cfg.policy.group.max_size),
                1500,
            ),
        );
    }
    Ok(Report {
        trace: raw.name.clone(),
        points: raw.points.len(),
        peak_connections: trace.peak(),
        simulated_hours: (trace.end() - trace.start()) as f64 / 3600.0,
        policies,
    })
}

fn empty_obs(now: i64) -> crate::engine::Observation {
    crate::engine::Observation {
        now,
        desired: 0,
        min_size: 0,
        instances: Vec::new(),
    }
}

impl Report {
    /// A fixed-width table, one row per policy.
    pub fn table(&self) -> String {
        let mut s = format!(
            "trace {} ({} points, {:.0} h simulated, peak {:.0} connections)\n",
            self.trace, self.points, self.simulated_hours, self.peak_connections
        );
        s.push_str(&format!(
            "{:<16} {:>14} {:>10} {:>10} {:>10} {:>8} {:>12} {:>6}\n",
            "policy",
            "rejected c·min",
            "min@cap",
            "inst-h",
            "warm-h",
            "actions",
            "forced-recon",
            "peak"
        ));
        for (name, o) in &self.policies {
            s.push_str(&format!(
                "{:<16} {:>14.0} {:>10.1} {:>10.1} {:>10.1} {:>8} {:>12.0} {:>6}\n",
                name,
                o.rejected_connection_minutes,
                o.minutes_at_cap,
                o.instance_hours,
                o.warm_pool_hours,
                o.scaling_actions,
                o.forced_reconnects,
                o.peak_nodes
            ));
        }
        s
    }
}
