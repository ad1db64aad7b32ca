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
    let changes = if apply {
        plan::apply(&mut p, policy).await?
    } else {
        plan::plan(&p, policy).await?
    };
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
    /// Wait between writing the lease and reading it back (two loops racing for a free lease:
    /// the later write wins, the earlier writer sees it and stands by).
    pub lease_verify: Duration,
}

/// `connscale run`: the control loop against an Auto Scaling group.
///
/// Each turn renews the lease (a tag on the group), observes, decides and acts. Transient errors
/// (throttling, network) back off exponentially; permanent ones (permissions, a missing group)
/// end the loop with the error. Ctrl-C or SIGTERM (systemd's stop) ends the loop after the turn
/// in progress and releases the lease, so a standby takes over at once.
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
    if !opts.dry_run
        && let Err(other) = lease::acquire(p, holder, epoch(), ttl, opts.lease_verify).await?
    {
        let msg = format!(
            "standing by: {} holds the lease on {} until {} (tag {})",
            other.holder,
            p.group(),
            other.expires,
            lease::LEASE_TAG
        );
        if opts.json {
            println!("{}", serde_json::json!({ "standby": msg }));
        } else {
            println!("{msg}");
        }
        return Ok(());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_periods_cloudwatch_serves() {
        assert_eq!(metric_period_for(Duration::from_secs(10)), 10);
        assert_eq!(metric_period_for(Duration::from_secs(15)), 60);
        assert_eq!(metric_period_for(Duration::from_secs(120)), 120);
        assert_eq!(metric_period_for(Duration::from_secs(90)), 60);
    }
}
