//! The operators' commands on a real group: `status`, `plan`, `apply` and the `run` loop.
//!
//! Thin over [`crate::aws`] and [`crate::control`]: this is where printing, `--watch`, leases and
//! backoff live, so the library calls stay testable on their own.

use crate::aws::{AwsProvider, AwsSettings, lease, plan, status};
use crate::control;
use crate::engine::Engine;
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

/// `connscale run`: the control loop ([`control::Controller`]) against an Auto Scaling group.
///
/// Each turn renews the lease (an item in the DynamoDB lease table) and the controller's
/// heartbeat, then observes, decides and acts; every scaling call first proves the lease is
/// still held ([`lease::fence`]). Transient errors (throttling, network, a lease lost to another
/// loop) back off exponentially; permanent ones (permissions, a missing group or table) end the
/// loop with the error. Ctrl-C or SIGTERM (systemd's stop) ends the loop after the turn in
/// progress and releases the lease, so a standby takes over at once.
pub async fn run(settings: AwsSettings, policy: Policy, opts: RunOptions) -> anyhow::Result<()> {
    let mut p = AwsProvider::connect(settings).await;
    let mut ctl = control::Controller::new(
        control::Autoscaler::new(Engine::new(policy)),
        control::LoopOptions {
            interval: opts.interval,
            dry_run: opts.dry_run,
            max_backoff: opts.max_backoff,
        },
    );
    // Registered before the first turn: a signal that arrives mid-turn is kept and ends the
    // loop once that turn is done (a turn's AWS calls are never cut off half-way).
    let stop = tokio_util::sync::CancellationToken::new();
    let mut signals = StopSignals::new();
    let on_signal = stop.clone();
    let listener = tokio::spawn(async move {
        let name = signals.recv().await;
        tracing::info!(
            signal = name,
            "stopping after this turn: releasing the lease"
        );
        on_signal.cancel();
    });
    let json = opts.json;
    let result = ctl
        .run(&mut p, opts.once, &stop, |step| report(step, json))
        .await;
    listener.abort();
    result.map_err(anyhow::Error::new)
}

/// Prints one step of `run`: the turn's line (or JSON), or who holds the lease.
fn report(step: &control::Step, json: bool) {
    match step {
        control::Step::Turned(t) if json => {
            println!("{}", serde_json::to_string(t).unwrap_or_default())
        }
        control::Step::Turned(t) => println!("{}", t.line()),
        control::Step::StandBy(msg) if json => {
            println!("{}", serde_json::json!({ "standby": msg }))
        }
        control::Step::StandBy(msg) => println!("{msg}"),
        // The loop has logged it with the retry's delay.
        control::Step::Failed(_) => {}
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
