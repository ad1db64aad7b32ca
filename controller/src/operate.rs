//! The operators' commands on a real group: `status`, `plan`, `apply` and the `run` loop.
//!
//! Thin over [`crate::aws`] and [`crate::control`]: this is where printing, `--watch`, leases and
//! backoff live, so the library calls stay testable on their own.

use crate::aws::{AwsProvider, AwsSettings, lease, plan, status};
use crate::control;
use crate::engine::{Engine, EngineState};
use connscale_common::policy::Policy;
use std::time::Duration;

/// CloudWatch periods GetMetricData serves for the agent's metric: high resolution (1, 5, 10,
/// 30 s) or a multiple of 60 s.
pub fn metric_period_for(interval: Duration) -> i32 {
    let s = interval.as_secs() as i32;
    match s {
        1 | 5 | 10 | 30 => s,
        s if s >= 60 && s % 60 == 0 => s,
        _ => 60,
    }
}

fn epoch() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `connscale status`: once, or every `watch` until Ctrl-C.
pub async fn status(
    settings: AwsSettings,
    json: bool,
    watch: Option<Duration>,
) -> anyhow::Result<()> {
    let mut p = AwsProvider::connect(settings).await;
    loop {
        let s = status::status(&mut p).await?;
        if json {
            println!("{}", serde_json::to_string(&s)?);
        } else {
            if watch.is_some() {
                // Clear the screen so the view stays in place, like `watch`.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", status::render(&s));
        }
        let Some(every) = watch else { return Ok(()) };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// `connscale plan` / `apply`: prints the changes; returns how many there were.
pub async fn plan_or_apply(
    settings: AwsSettings,
    policy: &Policy,
    apply: bool,
    json: bool,
) -> anyhow::Result<usize> {
    let mut p = AwsProvider::connect(settings).await;
    let mut changes = if apply {
        plan::apply(&mut p, policy).await?
    } else {
        plan::plan(&p, policy).await?
    };
    if let Some(c) = lease_table_change(&p, apply).await? {
        changes.push(c);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&changes)?);
    } else if changes.is_empty() {
        println!(
            "group {}: up to date with the policy, no changes",
            p.group()
        );
    } else {
        for c in &changes {
            println!("{c}");
        }
        let verb = if apply { "applied" } else { "to apply" };
        println!("{} change(s) {verb}", changes.len());
    }
    Ok(changes.len())
}

/// The lease table `run` needs: planned when missing, created by `apply`.
async fn lease_table_change(p: &AwsProvider, apply: bool) -> anyhow::Result<Option<plan::Change>> {
    let missing = if apply {
        lease::ensure_table(p).await?
    } else {
        !lease::table_exists(p).await?
    };
    Ok(missing.then(|| plan::Change {
        kind: "lease-table".into(),
        name: p.settings.lease_table.clone(),
        op: plan::Op::Create,
        spec: None,
    }))
}

/// Settings of the `run` loop beyond the group's.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Decide and print, never act (and never take the lease).
    pub dry_run: bool,
    /// One turn, then exit.
    pub once: bool,
    /// Time between turns (default: the policy's evaluation interval).
    pub interval: Duration,
    /// Print each turn as a JSON line.
    pub json: bool,
    /// Longest wait after repeated transient failures.
    pub max_backoff: Duration,
}

/// `connscale run`: the control loop against an Auto Scaling group.
///
/// Each turn renews the lease (an item in the DynamoDB lease table), observes, decides and acts;
/// every scaling call first proves the lease is still held ([`lease::fence`]). Transient errors
/// (throttling, network, a lease lost to another loop) back off exponentially; permanent ones
/// (permissions, a missing group or table) end the loop with the error. Ctrl-C or SIGTERM
/// (systemd's stop) ends the loop after the turn in progress and releases the lease, so a
/// standby takes over at once.
pub async fn run(settings: AwsSettings, policy: Policy, opts: RunOptions) -> anyhow::Result<()> {
    let mut p = AwsProvider::connect(settings).await;
    let engine = Engine::new(policy);
    let mut state = EngineState::default();
    let holder = lease::holder_name();
    let ttl = opts.interval * 3 + Duration::from_secs(10);
    let mut failures = 0u32;
    // Registered once, before the first turn: a signal that arrives mid-turn is kept and ends
    // the loop once that turn is done (a turn's AWS calls are never cut off half-way).
    let mut stop = StopSignals::new();
    let result = loop {
        let wait = match one_turn(&mut p, &engine, &mut state, &holder, ttl, &opts).await {
            Ok(()) => {
                failures = 0;
                opts.interval
            }
            Err(e) if e.transient() && !opts.once => {
                let wait = control::backoff(failures, opts.max_backoff);
                failures += 1;
                tracing::warn!(error = %e, retry_in = ?wait, "turn failed; backing off");
                wait
            }
            Err(e) => break Err(anyhow::Error::new(e)),
        };
        if opts.once {
            break Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            name = stop.recv() => {
                tracing::info!(signal = name, "stopping: releasing the lease");
                break Ok(());
            }
        }
    };
    if !opts.dry_run
        && let Err(e) = lease::release(&p, &holder).await
    {
        tracing::warn!(error = %e, "could not release the lease; it expires on its own");
    }
    result
}

/// Says who holds the lease; this loop changes nothing this turn.
fn stand_by(p: &AwsProvider, other: &lease::Lease, json: bool) {
    let msg = format!(
        "standing by: {} holds the lease on {} until {} (token {}, table {})",
        other.holder,
        p.group(),
        other.expires,
        other.token,
        p.settings.lease_table
    );
    if json {
        println!("{}", serde_json::json!({ "standby": msg }));
    } else {
        println!("{msg}");
    }
}

/// SIGINT (Ctrl-C) and SIGTERM, as one stream.
struct StopSignals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind, name| {
            signal(kind)
                .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for {name}"))
                .ok()
        };
        Self {
            int: listen(SignalKind::interrupt(), "SIGINT"),
            term: listen(SignalKind::terminate(), "SIGTERM"),
        }
    }

    /// The name of the next stop signal (never returns if neither could be listened for).
    async fn recv(&mut self) -> &'static str {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.int) => "SIGINT",
            _ = one(&mut self.term) => "SIGTERM",
        }
    }
}

async fn one_turn(
    p: &mut AwsProvider,
    engine: &Engine,
    state: &mut EngineState,
    holder: &str,
    ttl: Duration,
    opts: &RunOptions,
) -> Result<(), crate::provider::ProviderError> {
    p.fence = None;
    if !opts.dry_run {
        match lease::acquire(p, holder, epoch(), ttl).await? {
            Ok(held) => {
                p.fence = Some(lease::Fence {
                    holder: held.holder,
                    token: held.token,
                    ttl,
                })
            }
            Err(other) => {
                stand_by(p, &other, opts.json);
                return Ok(());
            }
        }
    }
    if !opts.dry_run {
        // Before acting: the alarms stand down while this heartbeat is present. A failed
        // publish fails the turn, so the loop never acts while the alarms may act too.
        publish_heartbeat(p, &engine.policy.metric.namespace, epoch(), ttl).await?;
    }
    let t = control::turn(p, engine, state, epoch(), opts.dry_run).await?;
    if opts.json {
        println!("{}", serde_json::to_string(&t).unwrap_or_default());
    } else {
        let f = &t.fleet;
        let verb = match (t.changes, t.acted) {
            (false, _) => "hold",
            (true, true) => "acted",
            (true, false) => "would act (dry run)",
        };
        println!(
            "{}: desired {} → {} [{verb}] {} | in service {} of {}",
            p.group(),
            f.desired,
            t.decision.desired,
            t.decision.reason,
            f.members
                .iter()
                .filter(|m| m.lifecycle == Some(crate::engine::Lifecycle::InService))
                .count(),
            f.members.len()
        );
    }
    Ok(())
}

/// Resolution of the heartbeat's datapoints: the shortest alarm period the module allows.
const HEARTBEAT_STEP: i64 = 10;

/// Timestamps of the heartbeat datapoints one turn publishes: every `HEARTBEAT_STEP` from `now`
/// (rounded down) to the lease's expiry. The heartbeat says "a controller holds the lease until
/// then", so each alarm period up to the expiry sees it however long the turns are apart, and
/// the alarms take over when the lease would have expired.
pub fn heartbeat_timestamps(now: i64, ttl: Duration) -> Vec<i64> {
    let start = now - now.rem_euclid(HEARTBEAT_STEP);
    let end = now + ttl.as_secs() as i64;
    (0..)
        .map(|i| start + i * HEARTBEAT_STEP)
        .take_while(|t| *t < end)
        .collect()
}

/// Publishes `ControllerHeartbeat` {AutoScalingGroupName} = 1 (high resolution) until the lease
/// expires; see [`plan::HEARTBEAT_METRIC`].
async fn publish_heartbeat(
    p: &AwsProvider,
    namespace: &str,
    now: i64,
    ttl: Duration,
) -> Result<(), crate::provider::ProviderError> {
    use aws_sdk_cloudwatch::primitives::DateTime;
    use aws_sdk_cloudwatch::types::{Dimension, MetricDatum};
    let data = heartbeat_timestamps(now, ttl)
        .into_iter()
        .map(|t| {
            MetricDatum::builder()
                .metric_name(plan::HEARTBEAT_METRIC)
                .dimensions(
                    Dimension::builder()
                        .name(connscale_common::metric::DIM_GROUP)
                        .value(p.group())
                        .build(),
                )
                .timestamp(DateTime::from_secs(t))
                .value(1.0)
                .storage_resolution(1)
                .build()
        })
        .collect();
    p.cw.put_metric_data()
        .namespace(namespace)
        .set_metric_data(Some(data))
        .send()
        .await
        .map_err(|e| crate::aws::sdk_error("cloudwatch:PutMetricData", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_covers_every_period_until_the_lease_expires() {
        let ts = heartbeat_timestamps(1_000_007, Duration::from_secs(40));
        assert_eq!(
            ts,
            vec![1_000_000, 1_000_010, 1_000_020, 1_000_030, 1_000_040]
        );
        assert!(ts.iter().all(|t| t % 10 == 0));
        assert_eq!(heartbeat_timestamps(60, Duration::from_secs(10)), vec![60]);
    }

    #[test]
    fn metric_periods_cloudwatch_serves() {
        assert_eq!(metric_period_for(Duration::from_secs(10)), 10);
        assert_eq!(metric_period_for(Duration::from_secs(15)), 60);
        assert_eq!(metric_period_for(Duration::from_secs(120)), 120);
        assert_eq!(metric_period_for(Duration::from_secs(90)), 60);
    }
}
