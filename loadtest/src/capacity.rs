//! `loadtest capacity`: ramps one node in steps, holding every connection, and after each step
//! measures chat latency with a small probe and asks the node's agent for its health. The first
//! step that fails connects, misses the p99 SLO, loses a message or turns the agent's health 503
//! ends the ramp; the last good step is the node's sustainable connection count, from which it
//! proposes a cap and a whole policy (the default policy's thresholds scaled to that cap).

use crate::chat::{self, ChatConfig};
use crate::pool::Pool;
use connscale_common::policy::Policy;
use serde::Serialize;
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct CapacityConfig {
    pub target: String,
    /// The node's agent (`http://IP:PORT`), whose `/health` turning 503 ends the ramp.
    pub agent: Option<String>,
    pub slo_p99_ms: f64,
    /// Connections added per step.
    pub step: usize,
    /// Stop here even if the node still copes.
    pub max: usize,
    /// Connection attempts per second within a step.
    pub rate: f64,
    /// How long the latency probe (10 chat clients in one room) runs after each step.
    pub probe: Duration,
    pub sources: Vec<IpAddr>,
    /// A step fails when more than this share of its attempts fail.
    pub max_failure_ratio: f64,
    /// Share of the sustainable count proposed as the cap.
    pub headroom: f64,
}

/// What one step saw.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    /// Held connections after the step (the probe's 10 clients come on top).
    pub connections: usize,
    pub failed: usize,
    pub p99_ms: f64,
    pub lost: u64,
    /// The agent's /health status, when an agent was given.
    pub health: Option<u16>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CapacityReport {
    pub steps: Vec<StepResult>,
    /// Connections held at the last step that met every condition.
    pub sustainable: usize,
    pub stop_reason: String,
    /// True when the ramp stopped at `--max` with the node still coping.
    pub reached_max: bool,
    pub proposed_cap: u32,
    /// The default policy with its thresholds scaled to the proposed cap (valid TOML for
    /// `connscale validate` / `--policy`).
    pub policy_toml: String,
}

/// The default policy's thresholds (steps, scale-in, max_after) and client counts
/// (`drain_grace_until_below`, `empty_below`; 0 stays off) scaled from its cap to `cap`.
pub fn proposed_policy(cap: u32) -> Policy {
    let mut p = Policy::default_policy();
    let k = f64::from(cap) / f64::from(p.group.node_cap);
    let scale = |v: u32| ((f64::from(v) * k).round() as u32).max(1);
    p.group.node_cap = cap;
    for s in &mut p.scale_out.steps {
        s.lower = scale(s.lower);
        s.upper = s.upper.map(scale);
    }
    p.scale_in.threshold = scale(p.scale_in.threshold);
    p.scale_in.max_after = p.scale_in.max_after.map(scale);
    let count = |v: u32| if v == 0 { 0 } else { scale(v) };
    p.scale_in.drain_grace_until_below = count(p.scale_in.drain_grace_until_below);
    p.scale_in.empty_below = count(p.scale_in.empty_below);
    p
}

async fn health(agent: &str) -> Option<u16> {
    let url = format!("{}/health", agent.trim_end_matches('/'));
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?
        .get(url)
        .send()
        .await
        .ok()?;
    Some(r.status().as_u16())
}

/// Runs the ramp; `progress` gets each step as it completes.
pub async fn run(
    cfg: CapacityConfig,
    progress: impl Fn(&StepResult),
) -> Result<CapacityReport, String> {
    if cfg.step == 0 || cfg.max == 0 {
        return Err("--step and --max must be positive".into());
    }
    if cfg.slo_p99_ms <= 0.0 {
        return Err(format!(
            "--slo-p99 must be positive, got {}",
            cfg.slo_p99_ms
        ));
    }
    let mut pool = Pool::new(
        std::slice::from_ref(&cfg.target),
        cfg.sources.clone(),
        Duration::from_secs(10),
    )?;
    let mut steps = Vec::new();
    let mut sustainable = 0;
    let stop_reason = loop {
        let before = pool.stats().failed();
        let n = cfg.step.min(cfg.max - pool.open().min(cfg.max)).max(1);
        pool.grow(n, cfg.rate, |_| {}).await;
        let failed = pool.stats().failed() - before;
        let probe = chat::run(ChatConfig {
            targets: vec![cfg.target.clone()],
            clients: 10,
            rooms: 1,
            send_rate: 50.0,
            duration: cfg.probe,
            sources: cfg.sources.clone(),
            stop_early: None,
        })
        .await;
        let (p99_ms, lost, probe_ok) = match &probe {
            Ok(r) => (
                r.latency_ms_p99,
                r.lost + r.duplicated,
                r.clients_connected == 10,
            ),
            Err(_) => (f64::INFINITY, 0, false),
        };
        let health = match &cfg.agent {
            Some(a) => Some(health(a).await.unwrap_or(0)),
            None => None,
        };
        let step = StepResult {
            connections: pool.open(),
            failed,
            p99_ms,
            lost,
            health,
        };
        progress(&step);
        steps.push(step.clone());
        if failed as f64 > cfg.max_failure_ratio * n as f64 {
            break format!("{failed} of {n} connects failed in the last step");
        }
        if !probe_ok {
            break "the latency probe's clients could not all connect".to_string();
        }
        if p99_ms > cfg.slo_p99_ms {
            break format!("p99 {p99_ms:.1} ms > SLO {} ms", cfg.slo_p99_ms);
        }
        if lost > 0 {
            break format!("the probe lost or duplicated {lost} messages");
        }
        if let Some(code) = health.filter(|c| *c != 200) {
            break format!("the agent's /health answered {code} (full or draining)");
        }
        sustainable = step.connections;
        if step.connections >= cfg.max {
            break format!("reached --max {}", cfg.max);
        }
    };
    pool.close().await;
    let reached_max = sustainable >= cfg.max;
    let proposed_cap = (sustainable as f64 * cfg.headroom).floor() as u32;
    let policy_toml = if proposed_cap > 0 {
        proposed_policy(proposed_cap).to_toml()
    } else {
        String::new()
    };
    Ok(CapacityReport {
        steps,
        sustainable,
        stop_reason,
        reached_max,
        proposed_cap,
        policy_toml,
    })
}

impl CapacityReport {
    pub fn table(&self) -> String {
        let mut s = String::from("connections  failed  p99 ms   lost  health\n");
        for st in &self.steps {
            s.push_str(&format!(
                "{:>11}  {:>6}  {:>7.1}  {:>5}  {}\n",
                st.connections,
                st.failed,
                st.p99_ms,
                st.lost,
                st.health
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| "-".into())
            ));
        }
        s.push_str(&format!(
            "stopped: {}\nsustainable: {} connections{}\nproposed node_cap: {}\n",
            self.stop_reason,
            self.sustainable,
            if self.reached_max {
                " (the node still coped: raise --max)"
            } else {
                ""
            },
            self.proposed_cap
        ));
        if !self.policy_toml.is_empty() {
            s.push_str("\n# policy scaled to this cap: save as my-policy.toml, check with `connscale validate`\n");
            s.push_str(&self.policy_toml);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposed_policies_are_valid_across_caps() {
        for cap in [200, 1_000, 5_000, 28_000, 60_000] {
            let p = proposed_policy(cap);
            assert_eq!(p.group.node_cap, cap);
            assert!(p.validate().is_empty(), "cap {cap}: {:?}", p.validate());
            let again = Policy::parse(&p.to_toml(), "proposed").expect("round trip");
            assert_eq!(again, p);
        }
        assert_eq!(proposed_policy(28_000), Policy::default_policy());
        let small = proposed_policy(1_400);
        assert_eq!(
            (
                small.scale_in.empty_below,
                small.scale_in.drain_grace_until_below
            ),
            (50, 100),
            "client counts scale with the cap"
        );
    }
}
