//! The control loop: one for `connscale run` (AWS), the demo (the local fleet) and the
//! simulator (a modelled fleet on simulated time).
//!
//! In the manner of a kube-rs controller: a reconcile [`turn`] that reads everything it acts on
//! from the fleet, so it is idempotent and safe to restart (the strategy's memory only makes a
//! fresh loop more cautious), and an [`ErrorPolicy`] that decides what a failed turn leads to.
//! [`Controller::step`] is one turn with the lease and the error policy around it;
//! [`Controller::run`] repeats it until stopped and then releases the lease. The loop knows the
//! fleet only through [`Provider`] and the decisions only through [`Strategy`].

use crate::engine::{Decision, Engine, EngineState, Lifecycle, Observation};
use crate::provider::{Claim, FleetView, Provider, ProviderError};
use connscale_common::cordon;
use serde::Serialize;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Decides from what the fleet looks like what it should be: connscale's engine
/// ([`Autoscaler`]) or one of the simulator's baselines.
pub trait Strategy {
    fn decide(&mut self, obs: &Observation) -> Decision;
}

impl<S: Strategy + ?Sized> Strategy for &mut S {
    fn decide(&mut self, obs: &Observation) -> Decision {
        (**self).decide(obs)
    }
}

/// connscale's policy engine with its memory between turns.
pub struct Autoscaler {
    pub engine: Engine,
    pub state: EngineState,
}

impl Autoscaler {
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            state: EngineState::default(),
        }
    }
}

impl Strategy for Autoscaler {
    fn decide(&mut self, obs: &Observation) -> Decision {
        self.engine.evaluate(obs, &mut self.state)
    }
}

/// What one turn saw and did.
#[derive(Debug, Clone, Serialize)]
pub struct Turn {
    pub now: i64,
    pub fleet: FleetView,
    pub decision: Decision,
    /// Whether the decision changes the fleet.
    pub changes: bool,
    /// Whether the changes were made (false in a dry run or when nothing changes).
    pub acted: bool,
}

impl Turn {
    /// One line for the operator's log: `desired 2 → 3 [acted] <reason> | in service 2 of 3`.
    pub fn line(&self) -> String {
        let f = &self.fleet;
        let verb = match (self.changes, self.acted) {
            (false, _) => "hold",
            (true, true) => "acted",
            (true, false) => "would act (dry run)",
        };
        let in_service = f
            .members
            .iter()
            .filter(|m| m.lifecycle == Some(Lifecycle::InService))
            .count();
        let cordon = match self.decision.cordon.as_slice() {
            [] => String::new(),
            ids => format!(" | cordon {}", ids.join(", ")),
        };
        format!(
            "{}: desired {} → {} [{verb}] {} | in service {in_service} of {}{cordon}",
            f.name,
            f.desired,
            self.decision.desired,
            self.decision.reason,
            f.members.len()
        )
    }
}

/// One reconcile turn: observes the fleet, lets `strategy` decide, bounds the decision by the
/// group's own min/max, and (unless `dry_run`) acts: scale-in first terminates the chosen
/// instances with decrement (each drains through the termination hook), then sets the desired
/// capacity if it still differs.
pub async fn turn<P: Provider, S: Strategy + ?Sized>(
    provider: &mut P,
    strategy: &mut S,
    now: i64,
    dry_run: bool,
) -> Result<Turn, ProviderError> {
    let fleet = provider.observe().await?;
    let obs = fleet.observation(now);
    let mut decision = strategy.decide(&obs);
    bound(&mut decision, &fleet);
    decision.settle(fleet.desired);
    let changes = decision.changes(&obs);
    if !dry_run {
        release_pool_terminations(provider, &fleet).await;
        // Before the scaling calls: a scale-out's lifts must not wait on a throttled call, and a
        // scale-in's victims are still among the cordoned.
        reconcile_cordon(provider, &fleet, &decision, now).await;
    }
    if changes && !dry_run {
        let mut desired = fleet.desired;
        for id in &decision.scale_in {
            provider.terminate(id, true).await?;
            desired = desired.saturating_sub(1);
        }
        if desired != decision.desired {
            provider.set_desired(decision.desired).await?;
        }
    }
    Ok(Turn {
        now,
        fleet,
        changes,
        acted: changes && !dry_run,
        decision,
    })
}

/// Completes the termination hook of warm-pool instances paused on it. A failure is logged and
/// left for the next turn: the hook's own timeout ends the pause anyway, so it never stops a
/// scaling decision.
async fn release_pool_terminations<P: Provider>(provider: &mut P, fleet: &FleetView) {
    for id in &fleet.pool_terminations {
        match provider.release_pool_termination(id).await {
            Ok(()) => {
                tracing::info!(instance = %id, "warm-pool instance released from the termination hook (it never served)")
            }
            Err(e) => {
                tracing::warn!(instance = %id, error = %e, "cannot release a warm-pool instance from the termination hook; retrying next turn")
            }
        }
    }
}

/// Brings the fleet's cordons to the decision's: lifts every other one, writes the wanted ones
/// with their starts (or renews them before they lapse). A failure is logged and left for the
/// next turn: a cordon only steers new clients, and one nobody renews lapses by itself.
async fn reconcile_cordon<P: Provider>(
    provider: &mut P,
    fleet: &FleetView,
    decision: &Decision,
    now: i64,
) {
    for m in &fleet.members {
        let result = if decision.cordon.contains(&m.id) {
            if !cordon::needs_renewal(m.cordoned_until, now) {
                continue;
            }
            let until = now + cordon::HOLD;
            let since = decision.cordoned_since.get(&m.id).copied().unwrap_or(now);
            let r = provider.cordon(&m.id, until, since).await;
            if r.is_ok() && m.cordoned_until.is_none_or(|u| u <= now) {
                tracing::debug!(instance = %m.id, connections = ?m.connections, until, "cordoned: no new clients until scale-in or demand needs it");
            }
            r
        } else if m.cordoned_until.is_some() {
            let r = provider.uncordon(&m.id).await;
            if r.is_ok() {
                tracing::debug!(instance = %m.id, "cordon lifted");
            }
            r
        } else {
            continue;
        };
        if let Err(e) = result {
            tracing::warn!(instance = %m.id, error = %e, "cannot change the cordon; retrying next turn");
        }
    }
}

/// Clamps the decision to the group's bounds, removing no more instances than they allow.
fn bound(decision: &mut Decision, fleet: &FleetView) {
    let bounded = decision
        .desired
        .clamp(fleet.min_size, fleet.max_size.max(fleet.min_size));
    if bounded == decision.desired {
        return;
    }
    decision.reason = format!(
        "{} (bounded by the group's min {} / max {}: {bounded})",
        decision.reason, fleet.min_size, fleet.max_size
    );
    let removable = fleet.desired.saturating_sub(bounded) as usize;
    decision.scale_in.truncate(removable);
    decision.desired = bounded;
}

/// What a failed turn leads to: a transient error (throttling, an unreachable endpoint, a lease
/// lost to another loop) is retried after an exponential backoff; any other ends the loop,
/// since retrying a missing permission or group only repeats the error.
#[derive(Debug, Clone)]
pub struct ErrorPolicy {
    /// The longest wait between retries.
    pub max_backoff: Duration,
    failures: u32,
}

impl ErrorPolicy {
    pub fn new(max_backoff: Duration) -> Self {
        Self {
            max_backoff,
            failures: 0,
        }
    }

    /// After a turn that worked: the next failure starts the backoff afresh.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// After a failed turn: how long to wait before the next, or `None` to stop.
    pub fn failed(&mut self, e: &ProviderError) -> Option<Duration> {
        if !e.transient() {
            return None;
        }
        let wait = backoff(self.failures, self.max_backoff);
        self.failures = self.failures.saturating_add(1);
        Some(wait)
    }
}

/// Exponential backoff for a loop that keeps failing: 1 s, 2 s, 4 s ... capped at `max`.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    Duration::from_secs(1u64 << failures.min(16)).min(max)
}

/// Settings of a control loop.
#[derive(Debug, Clone)]
pub struct LoopOptions {
    /// Time between turns.
    pub interval: Duration,
    /// Decide and report, never act (and never claim the lease).
    pub dry_run: bool,
    /// The longest wait after repeated transient failures.
    pub max_backoff: Duration,
}

/// What one step of the loop came to.
#[derive(Debug, Clone)]
pub enum Step {
    /// The turn ran (and acted, unless a dry run or nothing changes).
    Turned(Box<Turn>),
    /// Another loop holds the lease: this one changed nothing (the holder, in words).
    StandBy(String),
    /// The turn failed with a transient error; the next step retries.
    Failed(ProviderError),
}

/// A control loop: a strategy, its options and its error policy.
pub struct Controller<S> {
    pub strategy: S,
    pub opts: LoopOptions,
    errors: ErrorPolicy,
}

impl<S: Strategy> Controller<S> {
    pub fn new(strategy: S, opts: LoopOptions) -> Self {
        let errors = ErrorPolicy::new(opts.max_backoff);
        Self {
            strategy,
            opts,
            errors,
        }
    }

    /// How long a claim lasts: three turns and a margin, so one slow turn does not lose it.
    pub fn lease_ttl(&self) -> Duration {
        self.opts.interval * 3 + Duration::from_secs(10)
    }

    /// One step at `now`: claims the right to act (unless a dry run), runs a turn, and applies
    /// the error policy. Returns what happened and when the next step is due; `Err` only for an
    /// error the policy says ends the loop.
    pub async fn step<P: Provider>(
        &mut self,
        p: &mut P,
        now: i64,
    ) -> Result<(Step, Duration), ProviderError> {
        let result = self.claimed_turn(p, now).await;
        match result {
            Ok(step) => {
                self.errors.succeeded();
                Ok((step, self.opts.interval))
            }
            Err(e) => match self.errors.failed(&e) {
                Some(wait) => {
                    tracing::warn!(error = %e, retry_in = ?wait, "turn failed; backing off");
                    Ok((Step::Failed(e), wait))
                }
                None => Err(e),
            },
        }
    }

    async fn claimed_turn<P: Provider>(
        &mut self,
        p: &mut P,
        now: i64,
    ) -> Result<Step, ProviderError> {
        if !self.opts.dry_run
            && let Claim::HeldBy(other) = p.claim(now, self.lease_ttl()).await?
        {
            return Ok(Step::StandBy(other));
        }
        let t = turn(p, &mut self.strategy, now, self.opts.dry_run).await?;
        Ok(Step::Turned(Box::new(t)))
    }

    /// Steps on the wall clock until `stop` is cancelled (after the step in progress: a turn's
    /// calls are never cut off half-way), after one step when `once`, or until an error the
    /// policy says is permanent; then releases the lease so a standby takes over at once.
    /// `report` sees every step.
    pub async fn run<P: Provider>(
        &mut self,
        p: &mut P,
        once: bool,
        stop: &CancellationToken,
        mut report: impl FnMut(&Step),
    ) -> Result<(), ProviderError> {
        let result = loop {
            let (step, wait) = match self.step(p, epoch()).await {
                Ok(s) => s,
                Err(e) => break Err(e),
            };
            report(&step);
            if once {
                break match step {
                    Step::Failed(e) => Err(e),
                    _ => Ok(()),
                };
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => break Ok(()),
            }
        };
        if !self.opts.dry_run
            && let Err(e) = p.release().await
        {
            tracing::warn!(error = %e, "could not release the lease; it expires on its own");
        }
        result
    }
}

/// Unix seconds on the wall clock.
pub fn epoch() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{ErrorKind, Member};

    #[test]
    fn backoff_grows_and_caps() {
        let max = Duration::from_secs(60);
        assert_eq!(backoff(0, max).as_secs(), 1);
        assert_eq!(backoff(3, max).as_secs(), 8);
        assert_eq!(backoff(40, max), max);
    }

    fn error(kind: ErrorKind) -> ProviderError {
        ProviderError {
            action: "autoscaling:SetDesiredCapacity".into(),
            kind,
            message: "test".into(),
        }
    }

    #[test]
    fn the_error_policy_retries_transient_errors_with_backoff_and_stops_on_others() {
        let mut p = ErrorPolicy::new(Duration::from_secs(4));
        let throttled = error(ErrorKind::Throttled);
        let waits: Vec<_> = (0..4).filter_map(|_| p.failed(&throttled)).collect();
        assert_eq!(waits, [1, 2, 4, 4].map(Duration::from_secs));
        p.succeeded();
        assert_eq!(p.failed(&throttled), Some(Duration::from_secs(1)));
        assert_eq!(p.failed(&error(ErrorKind::Denied)), None);
        assert_eq!(p.failed(&error(ErrorKind::NotFound)), None);
    }

    /// A fleet in memory: records the calls the loop makes, fails `observe` on demand.
    struct Recorder {
        view: FleetView,
        calls: Vec<String>,
        fail_observe: Option<ErrorKind>,
        claim: Claim,
    }

    impl Recorder {
        fn new(desired: u32, min: u32, max: u32) -> Self {
            let members = (0..desired)
                .map(|i| Member {
                    id: format!("i-{i}"),
                    state: "InService".into(),
                    lifecycle: Some(Lifecycle::InService),
                    healthy: true,
                    protected: false,
                    launched_at: 0,
                    connections: Some(10 * i as u64),
                    address: None,
                    cordoned_until: None,
                    cordoned_since: None,
                })
                .collect();
            Self {
                view: FleetView {
                    name: "g".into(),
                    desired,
                    min_size: min,
                    max_size: max,
                    members,
                    warm_pool: None,
                    warm_instances: 0,
                    pool_terminations: Vec::new(),
                },
                calls: Vec::new(),
                fail_observe: None,
                claim: Claim::Held,
            }
        }
    }

    impl Provider for Recorder {
        async fn observe(&mut self) -> Result<FleetView, ProviderError> {
            match &self.fail_observe {
                Some(kind) => Err(error(kind.clone())),
                None => Ok(self.view.clone()),
            }
        }
        async fn set_desired(&mut self, desired: u32) -> Result<(), ProviderError> {
            self.calls.push(format!("set_desired {desired}"));
            Ok(())
        }
        async fn terminate(&mut self, id: &str, decrement: bool) -> Result<(), ProviderError> {
            self.calls.push(format!("terminate {id} {decrement}"));
            Ok(())
        }
        async fn claim(&mut self, _: i64, _: Duration) -> Result<Claim, ProviderError> {
            self.calls.push("claim".into());
            Ok(self.claim.clone())
        }
        async fn release(&mut self) -> Result<(), ProviderError> {
            self.calls.push("release".into());
            Ok(())
        }
        async fn release_pool_termination(&mut self, id: &str) -> Result<(), ProviderError> {
            self.calls.push(format!("release_pool_termination {id}"));
            Ok(())
        }
        async fn cordon(&mut self, id: &str, until: i64, since: i64) -> Result<(), ProviderError> {
            self.calls
                .push(format!("cordon {id} {until} since {since}"));
            Ok(())
        }
        async fn uncordon(&mut self, id: &str) -> Result<(), ProviderError> {
            self.calls.push(format!("uncordon {id}"));
            Err(error(ErrorKind::Throttled))
        }
    }

    /// Wants `0` cordoned and the desired capacity raised by `1`; i-2's cordon began at 400.
    struct Cordons(&'static [&'static str], u32);

    impl Strategy for Cordons {
        fn decide(&mut self, obs: &Observation) -> Decision {
            Decision {
                desired: obs.desired + self.1,
                cordon: self.0.iter().map(|s| s.to_string()).collect(),
                cordoned_since: [("i-2".to_string(), 400)].into(),
                ..Decision::default()
            }
        }
    }

    /// Each acting turn brings the tags to the decision: writes the wanted cordons with their
    /// starts (now for one the decision gives none), or renews them once less than RENEW_BELOW
    /// is left, lifts every other, and goes on past a failed
    /// lift (retried next turn), on a scaling turn too, before its scaling calls; a dry run
    /// cordons nothing.
    #[tokio::test]
    async fn a_turn_writes_renews_and_lifts_cordons() {
        let now = 1_000;
        let tagged = |fresh: i64, stale: i64| {
            let mut f = Recorder::new(3, 1, 5);
            f.view.members[1].cordoned_until = Some(now + fresh);
            f.view.members[2].cordoned_until = Some(now + stale);
            f
        };
        let mut fleet = tagged(cordon::HOLD - 10, 100);
        turn(&mut fleet, &mut Cordons(&["i-1"], 0), now, false)
            .await
            .expect("turn");
        assert_eq!(
            fleet.calls,
            ["uncordon i-2"],
            "i-1's cordon holds long enough"
        );
        let mut fleet = tagged(100, 0);
        turn(&mut fleet, &mut Cordons(&["i-1"], 0), now, false)
            .await
            .expect("turn");
        assert_eq!(
            fleet.calls,
            [
                format!("cordon i-1 {} since {now}", now + cordon::HOLD),
                "uncordon i-2".into()
            ]
        );
        let mut fleet = tagged(100, 100);
        turn(&mut fleet, &mut Cordons(&["i-0"], 0), now, false)
            .await
            .expect("turn");
        assert_eq!(
            fleet.calls,
            [
                format!("cordon i-0 {} since {now}", now + cordon::HOLD),
                "uncordon i-1".into(),
                "uncordon i-2".into()
            ]
        );
        let mut fleet = tagged(100, 100);
        turn(&mut fleet, &mut Cordons(&["i-0"], 0), now, true)
            .await
            .expect("turn");
        assert!(fleet.calls.is_empty(), "a dry run: {:?}", fleet.calls);
        let mut fleet = tagged(100, 100);
        turn(&mut fleet, &mut Cordons(&["i-0", "i-2"], 1), now, false)
            .await
            .expect("turn");
        assert_eq!(
            fleet.calls,
            [
                format!("cordon i-0 {} since {now}", now + cordon::HOLD),
                "uncordon i-1".into(),
                format!("cordon i-2 {} since 400", now + cordon::HOLD),
                "set_desired 4".into(),
            ],
            "the cordons first: a failed scaling call must not hold up a lift"
        );
    }

    /// Always wants `desired`, draining `victims`.
    struct Wants(u32, Vec<&'static str>);

    impl Strategy for Wants {
        fn decide(&mut self, _: &Observation) -> Decision {
            Decision {
                desired: self.0,
                scale_in: self.1.iter().map(|s| s.to_string()).collect(),
                reason: "wanted".into(),
                ..Decision::default()
            }
        }
    }

    fn controller(s: Wants, dry_run: bool) -> Controller<Wants> {
        Controller::new(
            s,
            LoopOptions {
                interval: Duration::from_secs(10),
                dry_run,
                max_backoff: Duration::from_secs(60),
            },
        )
    }

    #[tokio::test]
    async fn a_turn_is_bounded_by_the_group_and_drains_no_more_than_the_bounds_allow() {
        let mut fleet = Recorder::new(3, 2, 5);
        let mut c = controller(Wants(1, vec!["i-0", "i-1"]), false);
        let (step, _) = c.step(&mut fleet, 0).await.expect("step");
        let Step::Turned(t) = step else {
            panic!("{step:?}")
        };
        assert_eq!(t.decision.desired, 2, "{}", t.decision.reason);
        assert!(t.decision.reason.contains("bounded by the group's min 2"));
        assert_eq!(fleet.calls, ["claim", "terminate i-0 true"]);

        let mut fleet = Recorder::new(3, 1, 4);
        let mut c = controller(Wants(9, vec![]), false);
        c.step(&mut fleet, 0).await.expect("step");
        assert_eq!(fleet.calls, ["claim", "set_desired 4"]);
    }

    /// Warm-pool instances paused on the termination hook are let go on every acting turn,
    /// whatever the decision, and before it acts; a dry run leaves them.
    #[tokio::test]
    async fn a_turn_releases_pool_terminations_and_a_dry_run_does_not() {
        let mut fleet = Recorder::new(3, 1, 5);
        fleet.view.pool_terminations = vec!["i-w1".into(), "i-w2".into()];
        let mut c = controller(Wants(3, vec![]), false);
        c.step(&mut fleet, 0).await.expect("step");
        assert_eq!(
            fleet.calls,
            [
                "claim",
                "release_pool_termination i-w1",
                "release_pool_termination i-w2"
            ]
        );
        fleet.calls.clear();
        let mut c = controller(Wants(2, vec!["i-0"]), false);
        c.step(&mut fleet, 0).await.expect("step");
        assert_eq!(
            fleet.calls,
            [
                "claim",
                "release_pool_termination i-w1",
                "release_pool_termination i-w2",
                "terminate i-0 true"
            ]
        );
        fleet.calls.clear();
        let mut c = controller(Wants(3, vec![]), true);
        c.step(&mut fleet, 0).await.expect("step");
        assert!(fleet.calls.is_empty(), "{:?}", fleet.calls);
    }

    #[tokio::test]
    async fn a_dry_run_neither_claims_nor_acts_and_a_standby_changes_nothing() {
        let mut fleet = Recorder::new(3, 1, 5);
        let mut c = controller(Wants(5, vec![]), true);
        let (step, _) = c.step(&mut fleet, 0).await.expect("step");
        assert!(
            matches!(&step, Step::Turned(t) if t.changes && !t.acted),
            "{step:?}"
        );
        assert!(fleet.calls.is_empty(), "{:?}", fleet.calls);

        let mut fleet = Recorder::new(3, 1, 5);
        fleet.claim = Claim::HeldBy("other".into());
        let mut c = controller(Wants(5, vec![]), false);
        let (step, _) = c.step(&mut fleet, 0).await.expect("step");
        assert!(
            matches!(&step, Step::StandBy(o) if o == "other"),
            "{step:?}"
        );
        assert_eq!(fleet.calls, ["claim"]);
    }

    #[tokio::test]
    async fn a_step_backs_off_on_transient_errors_and_ends_on_permanent_ones() {
        let mut fleet = Recorder::new(3, 1, 5);
        fleet.fail_observe = Some(ErrorKind::Unreachable);
        let mut c = controller(Wants(3, vec![]), false);
        let mut waits = Vec::new();
        for _ in 0..3 {
            let (step, wait) = c.step(&mut fleet, 0).await.expect("transient");
            assert!(matches!(step, Step::Failed(_)), "{step:?}");
            waits.push(wait.as_secs());
        }
        assert_eq!(waits, [1, 2, 4]);
        fleet.fail_observe = None;
        let (_, wait) = c.step(&mut fleet, 0).await.expect("recovered");
        assert_eq!(wait, Duration::from_secs(10), "back to the interval");
        fleet.fail_observe = Some(ErrorKind::Denied);
        assert!(c.step(&mut fleet, 0).await.is_err());
    }

    #[tokio::test]
    async fn run_stops_when_cancelled_and_releases_the_lease() {
        let mut fleet = Recorder::new(2, 1, 5);
        let mut c = controller(Wants(2, vec![]), false);
        let stop = CancellationToken::new();
        let mut steps = 0;
        c.run(&mut fleet, false, &stop, |_| {
            steps += 1;
            stop.cancel();
        })
        .await
        .expect("run");
        assert_eq!(steps, 1);
        assert_eq!(fleet.calls, ["claim", "release"]);

        // A permanent error ends the loop, and the lease is released all the same.
        let mut fleet = Recorder::new(2, 1, 5);
        fleet.fail_observe = Some(ErrorKind::Denied);
        let err = c
            .run(&mut fleet, false, &CancellationToken::new(), |_| {})
            .await
            .expect_err("denied");
        assert_eq!(err.kind, ErrorKind::Denied);
        assert_eq!(fleet.calls, ["claim", "release"]);
    }
}
