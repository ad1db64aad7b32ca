//! Scale-in drain. The agent polls the instance's target lifecycle state (IMDS) for as long as it
//! runs. When it says the instance leaves service (terminated, or returned to the warm pool), the
//! agent reports 503 at once, drains the service (`http`: tells it to; `close`: closes the
//! connections itself, spread over a window, see [`Closer`]), heartbeats the lifecycle hook
//! while connections fall, then completes the lifecycle action with CONTINUE. When the instance
//! comes back to `InService` (a return from a `Running` warm pool), /health is healthy again.
//!
//! Behind an ALB, AWS deregisters the instance and waits out the deregistration delay before the
//! hook becomes active (`Terminating:Wait` / `Warmed:Pending:Wait`); the target state reads
//! `Terminated` (or `Warmed:*`) from the start. Lifecycle calls made before the hook is active
//! fail, so every heartbeat and the completion are retried with backoff until they succeed, for
//! at most `drain.hook_heartbeat_timeout` without a success (AWS has applied the hook's default
//! result by then).

use crate::config::{AgentConfig, DrainConfig, DrainMethod};
use crate::count::NetlinkCounter;
use crate::health::HealthState;
use crate::{Shared, lock};
use std::time::{Duration, Instant};

/// What a target lifecycle state means for this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Serving behind the load balancer.
    InService,
    /// Being terminated: `Terminating:*`, `Terminated`, and `Warmed:Terminated`/`Warmed:Terminating*`
    /// (a pool instance's termination hook is completed just the same).
    Terminating,
    /// Scale-in with reuse: a serving instance goes back to the warm pool (`Warmed:Stopped`,
    /// `Warmed:Running`, `Warmed:Hibernated`, `Warmed:Pending*`), paused by the terminating hook.
    WarmedReturn,
    /// Launching (`Pending*`), or in / entering the warm pool without having served since the
    /// agent started (a pool launch reads `Warmed:*` too, and has no clients to drain).
    Pending,
    /// Anything else (`Standby`, `Detached`, a value AWS adds later): nothing to do.
    Other(String),
}

impl Target {
    /// Interprets `state`; `served` says whether this agent has seen the instance `InService`,
    /// which is what tells a warm-pool return from a launch into the pool.
    pub fn parse(state: &str, served: bool) -> Self {
        let state = state.trim();
        match state {
            "InService" => Self::InService,
            "Terminated" => Self::Terminating,
            s if s.starts_with("Terminating") => Self::Terminating,
            s if s.starts_with("Warmed:Terminat") => Self::Terminating,
            "Warmed:Stopped" | "Warmed:Running" | "Warmed:Hibernated" if served => {
                Self::WarmedReturn
            }
            s if s.starts_with("Warmed:Pending") && served => Self::WarmedReturn,
            s if s.starts_with("Warmed:") || s.starts_with("Pending") => Self::Pending,
            s => Self::Other(s.to_string()),
        }
    }

    /// Whether the node must drain.
    pub fn is_scale_in(&self) -> bool {
        matches!(self, Self::Terminating | Self::WarmedReturn)
    }
}

/// Polls IMDS every `drain.poll_interval` for the agent's whole life: starts a drain on a
/// scale-in target (with `drain.enabled`), leaves the draining state when the instance is back
/// in service, and has [`launch`](crate::launch) complete the launch hook of a launch out of the
/// warm pool (with `launch.hook_name`).
pub async fn watch(cfg: AgentConfig, status: Shared) {
    let imds = crate::imds::Imds::new(cfg.identity.imds_endpoint.as_deref());
    let mut logged_error = false;
    let mut served = false;
    let mut previous: Option<String> = None;
    let mut drain: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        match imds.target_lifecycle_state().await {
            Ok(raw) => {
                logged_error = false;
                // Clients on the port mean the instance has served, even when this agent
                // (restarted mid-return) never saw it InService: a pool launch has none.
                let has_served = served || lock(&status).connections > 0;
                let target = Target::parse(&raw, has_served);
                lock(&status).in_service = target == Target::InService;
                if target.is_scale_in() && drain.is_none() && cfg.drain.enabled {
                    tracing::info!(state = %raw, ?target, "instance leaves service: draining");
                    let (cfg, status) = (cfg.clone(), status.clone());
                    drain = Some(tokio::spawn(async move { run_drain(&cfg, &status).await }));
                } else if target == Target::InService {
                    served = true;
                    if previous.as_deref().map(str::trim) != Some("InService") {
                        let arrival = crate::launch::Arrival::after(previous.as_deref());
                        crate::launch::on_in_service(&cfg, &status, arrival);
                    }
                    if let Some(task) = drain.take() {
                        back_in_service(&cfg, &status, task).await;
                    }
                }
                previous = Some(raw);
            }
            Err(e) => {
                if previous.is_none() {
                    // Not in a group (or no IMDS): count in the group as without the watcher.
                    lock(&status).in_service = true;
                }
                if !logged_error {
                    tracing::warn!(error = %e, "cannot read the target lifecycle state; will keep trying");
                    logged_error = true;
                }
            }
        }
        tokio::time::sleep(cfg.drain.poll_interval).await;
    }
}

/// The instance returned to service (from a `Running` warm pool): stop any drain still running
/// and report healthy again (the sampler then applies the cap, the listener check and the
/// cordon).
async fn back_in_service(cfg: &AgentConfig, status: &Shared, task: tokio::task::JoinHandle<()>) {
    if !task.is_finished() {
        tracing::warn!("back in service while the drain was still running: drain abandoned");
        task.abort();
    }
    let mut st = lock(status);
    let cordoned = st.cordon_until(crate::now_secs()).is_some();
    st.health = HealthState::Ok.next(
        st.connections,
        st.listening,
        cordoned,
        cfg.health.cap,
        cfg.health.hysteresis,
    );
    tracing::info!(health = ?st.health, "instance is in service again: drain state left");
}

/// One drain, start to finish: 503, drain the service, wait with heartbeats, complete. Errors
/// are logged (the node stays out of service); the watcher keeps running either way.
async fn run_drain(cfg: &AgentConfig, status: &Shared) {
    let mut closer = match cfg.drain.method {
        DrainMethod::Close => Closer::open(cfg),
        DrainMethod::Http => None,
    };
    {
        let mut st = lock(status);
        st.health = HealthState::Draining;
        st.drain = DrainProgress::default();
    }
    let started = Instant::now();
    let mut grace = Grace::new(&cfg.drain);
    // Nothing asked of the service yet: the grace comes first.
    let mut told: Result<(), String> = Ok(());
    let hook = match Hook::connect(cfg, &cfg.drain.hook_name).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot complete the lifecycle action");
            return;
        }
    };
    let mut calls = Retry::new(
        cfg.drain.hook_heartbeat_timeout,
        cfg.drain.heartbeat_interval,
    );
    loop {
        let conns = lock(status).connections;
        if grace.ends(started.elapsed(), conns) {
            told = tell_service(&cfg.drain).await;
            if let Err(e) = &told {
                tracing::error!(error = %e, "cannot tell the service to drain; retrying while waiting");
            }
        }
        if let (Some(c), Some(into)) = (closer.as_mut(), grace.over_for(started.elapsed())) {
            let open = c.tick(into, status);
            if open == Some(0) {
                tracing::info!(closed = c.closed, "every connection closed");
                break;
            }
        }
        // The closer ends the drain itself, with nothing left open; waiting ends below the
        // threshold (the last few go with the instance).
        let drained = match closer {
            Some(_) => conns == 0,
            None => conns < cfg.drain.threshold,
        };
        if drained {
            tracing::info!(conns, "drained");
            break;
        }
        if started.elapsed() >= cfg.drain.timeout {
            tracing::warn!(conns, "drain timeout reached; completing anyway");
            break;
        }
        if told.is_err() && calls.due() {
            told = tell_service(&cfg.drain).await;
        }
        if calls.due() {
            match hook.heartbeat().await {
                Ok(()) => calls.succeeded(),
                Err(e) => {
                    if !calls.failed(&e) {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    lock(status).drain.seconds = started.elapsed().as_secs_f64();
    match hook
        .complete_until(LifecycleResult::Continue, &mut calls)
        .await
    {
        Ok(()) => {
            tracing::info!(instance = %hook.instance, group = %hook.group, hook = %hook.name, "lifecycle action completed with CONTINUE")
        }
        Err(e) => tracing::error!(error = %e, "lifecycle action not completed"),
    }
}

/// The start of a drain in which clients may leave by themselves: it lasts `drain.grace`, or
/// until fewer than `drain.grace_until_below` connections remain, whichever comes first.
struct Grace {
    limit: Duration,
    until_below: u64,
    /// When (since the drain began) it ended.
    ended_at: Option<Duration>,
}

impl Grace {
    fn new(d: &DrainConfig) -> Self {
        Self {
            limit: d.grace,
            until_below: d.grace_until_below,
            ended_at: None,
        }
    }

    /// True once, at the turn on which the grace ends (`since` the drain began, `conns` open).
    fn ends(&mut self, since: Duration, conns: u64) -> bool {
        if self.ended_at.is_some() || (since < self.limit && conns >= self.until_below) {
            return false;
        }
        tracing::info!(conns, after = ?since, "grace over");
        self.ended_at = Some(since);
        true
    }

    /// How long ago the grace ended, or `None` while it lasts.
    fn over_for(&self, since: Duration) -> Option<Duration> {
        self.ended_at.map(|at| since.saturating_sub(at))
    }
}

/// What the current (or last) drain did, for /metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrainProgress {
    /// Connections open when the agent began closing them (`close`, after the grace).
    pub open_at_start: Option<u64>,
    /// Connections the agent closed itself.
    pub closed: u64,
    /// From the scale-in signal to the end of the drain (0 while it runs).
    pub seconds: f64,
}

/// The `close` drain: once `drain.grace` has passed, the established connections still open on
/// the service ports are reset with SOCK_DESTROY on a schedule ([`allowed_open`]) that falls
/// evenly to none at the end of `drain.window`, so the clients reconnect elsewhere a few at a
/// time instead of all at once.
pub struct Closer {
    nl: NetlinkCounter,
    ports: Vec<u16>,
    window: Duration,
    open_at_start: Option<usize>,
    pub closed: u64,
}

impl Closer {
    /// A closer in the counted namespace, or `None` (logged, with the fix) when this agent
    /// cannot destroy sockets: the drain then only waits for clients to leave.
    pub fn open(cfg: &AgentConfig) -> Option<Self> {
        let nl = match cfg.netns.as_deref() {
            Some(ns) => NetlinkCounter::in_namespace(ns),
            None => NetlinkCounter::new(),
        };
        let mut nl = match nl {
            Ok(nl) => nl,
            Err(e) => {
                tracing::error!(error = %e, "drain.method = \"close\": no netlink socket; waiting for clients to leave instead");
                return None;
            }
        };
        if let Err(why) = nl.destroy_available() {
            tracing::error!(%why, "drain.method = \"close\" cannot close connections; waiting for clients to leave instead");
            return None;
        }
        Some(Self {
            nl,
            ports: cfg.ports.clone(),
            window: cfg.drain.window,
            open_at_start: None,
            closed: 0,
        })
    }

    /// Closes what the schedule says should be closed `into` the window (the grace is over);
    /// returns how many connections remain open (`None` when listing failed).
    fn tick(&mut self, into: Duration, status: &Shared) -> Option<usize> {
        let mut socks = Vec::new();
        for &port in &self.ports {
            match self.nl.established(port) {
                Ok(s) => socks.extend(s),
                Err(e) => {
                    tracing::warn!(error = %e, port, "cannot list the connections to close");
                    return None;
                }
            }
        }
        let initial = *self.open_at_start.get_or_insert_with(|| {
            tracing::info!(open = socks.len(), window = ?self.window, "closing the remaining connections over the window");
            socks.len()
        });
        let excess = socks
            .len()
            .saturating_sub(allowed_open(initial, into, self.window));
        let mut left = socks.len();
        for s in socks.iter().take(excess) {
            match self.nl.destroy(s) {
                Ok(()) => {
                    self.closed += 1;
                    left -= 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => left -= 1,
                Err(e) => {
                    tracing::warn!(error = %e, peer = %s.peer(), "cannot close a connection");
                    break;
                }
            }
        }
        let mut st = lock(status);
        st.drain.open_at_start = Some(initial as u64);
        st.drain.closed = self.closed;
        Some(left)
    }
}

/// How many of the `initial` connections may still be open `into` the closing window: a line
/// from all of them at its start to none at its end (rounded down, so closing never lags the
/// line by a whole connection).
pub fn allowed_open(initial: usize, into: Duration, window: Duration) -> usize {
    if into >= window {
        return 0;
    }
    let left = 1.0 - into.as_secs_f64() / window.as_secs_f64();
    (initial as f64 * left).floor() as usize
}

/// The result of a lifecycle action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum LifecycleResult {
    Continue,
    Abandon,
}

impl LifecycleResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Continue => "CONTINUE",
            Self::Abandon => "ABANDON",
        }
    }
}

/// Backoff for lifecycle calls that fail until the hook is active: 1 s doubling up to `cap`,
/// given up after `budget` without a success.
#[derive(Debug)]
pub struct Retry {
    budget: Duration,
    cap: Duration,
    last_ok: Instant,
    next: Instant,
    backoff: Duration,
    failing_logged: bool,
}

impl Retry {
    pub fn new(budget: Duration, cap: Duration) -> Self {
        let now = Instant::now();
        Self {
            budget,
            cap: cap.max(Duration::from_secs(1)),
            last_ok: now,
            next: now,
            backoff: Duration::ZERO,
            failing_logged: false,
        }
    }

    /// Whether a call is due now.
    pub fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// How long until the next call is due.
    pub fn wait(&self) -> Duration {
        self.next.saturating_duration_since(Instant::now())
    }

    /// A call succeeded: the next regular one is `cap` away.
    pub fn succeeded(&mut self) {
        if self.failing_logged {
            tracing::info!("lifecycle hook calls succeed now");
        }
        self.last_ok = Instant::now();
        self.next = self.last_ok + self.cap;
        self.backoff = Duration::ZERO;
        self.failing_logged = false;
    }

    /// A call failed: schedules the retry and returns true, or logs the giving up and returns
    /// false once `budget` has passed without a success.
    pub fn failed(&mut self, error: &str) -> bool {
        if self.last_ok.elapsed() >= self.budget {
            tracing::error!(%error, budget = ?self.budget, "giving up on the lifecycle hook: no call succeeded within the bound (drain.hook_heartbeat_timeout while draining; AWS applies the hook's default result)");
            return false;
        }
        self.backoff = (self.backoff * 2).clamp(Duration::from_secs(1), self.cap);
        self.next = Instant::now() + self.backoff;
        if !self.failing_logged {
            tracing::info!(%error, retry_in = ?self.backoff, "lifecycle hook call failed; retrying with backoff (expected until the hook is active, e.g. during the ALB deregistration delay)");
            self.failing_logged = true;
        }
        true
    }
}

/// One lifecycle hook of this instance, with the Auto Scaling client to call it.
pub struct Hook {
    client: aws_sdk_autoscaling::Client,
    pub group: String,
    pub instance: String,
    pub name: String,
}

impl Hook {
    /// Resolves identity (config, then IMDS) and builds the client with the default chain.
    pub async fn connect(cfg: &AgentConfig, name: &str) -> Result<Self, String> {
        let (region, instance, group) = crate::resolve_identity(cfg).await;
        let (Some(instance), Some(group)) = (instance, group) else {
            return Err(format!(
                "lifecycle hook {name} needs the instance id and the group: set identity.instance_id and identity.group (or CONNSCALE_INSTANCE_ID / CONNSCALE_GROUP), or run on EC2 with instance metadata tags enabled"
            ));
        };
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r));
        }
        Ok(Self {
            client: aws_sdk_autoscaling::Client::new(&loader.load().await),
            group,
            instance,
            name: name.to_string(),
        })
    }

    pub async fn heartbeat(&self) -> Result<(), String> {
        self.client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(&self.group)
            .lifecycle_hook_name(&self.name)
            .instance_id(&self.instance)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "RecordLifecycleActionHeartbeat (needs autoscaling:RecordLifecycleActionHeartbeat): {}",
                    aws_sdk_autoscaling::error::DisplayErrorContext(e)
                )
            })
    }

    pub async fn complete(&self, result: LifecycleResult) -> Result<(), String> {
        self.client
            .complete_lifecycle_action()
            .auto_scaling_group_name(&self.group)
            .lifecycle_hook_name(&self.name)
            .instance_id(&self.instance)
            .lifecycle_action_result(result.as_str())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "CompleteLifecycleAction (needs autoscaling:CompleteLifecycleAction): {}",
                    aws_sdk_autoscaling::error::DisplayErrorContext(e)
                )
            })
    }

    /// Completes now, retrying failures with `retry`'s backoff until one succeeds or its budget
    /// ends (a failed completion is never dropped while AWS still waits for it).
    pub async fn complete_until(
        &self,
        result: LifecycleResult,
        retry: &mut Retry,
    ) -> Result<(), String> {
        loop {
            match self.complete(result).await {
                Ok(()) => return Ok(()),
                Err(e) if retry.failed(&e) => tokio::time::sleep(retry.wait()).await,
                Err(e) => return Err(e),
            }
        }
    }
}

async fn tell_service(d: &DrainConfig) -> Result<(), String> {
    match d.method {
        DrainMethod::Http => {
            let url = d
                .drain_url
                .as_deref()
                .ok_or("drain.method = \"http\" needs drain.drain_url")?;
            let mut req = reqwest::Client::new().post(url);
            if let Some(t) = &d.drain_token {
                req = req.bearer_auth(t.expose());
            }
            let r = req.send().await.map_err(|e| format!("POST {url}: {e}"))?;
            if !r.status().is_success() {
                return Err(format!("POST {url} returned {}", r.status()));
            }
            tracing::info!(url, "asked the service to drain");
        }
        // Nothing to tell: the closer does the work, and the failing /health turns new
        // connections away.
        DrainMethod::Close => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Target::{self, *};
    use super::allowed_open;
    use proptest::prelude::*;
    use std::time::Duration;

    proptest! {
        /// The schedule falls from all to none, never rises, and never closes more than an even
        /// share (plus one for rounding) in any second of the window.
        #[test]
        fn closing_is_spread_evenly_over_the_window(initial in 0usize..50_000, window in 1u64..600) {
            let w = Duration::from_secs(window);
            prop_assert_eq!(allowed_open(initial, Duration::ZERO, w), initial);
            prop_assert_eq!(allowed_open(initial, w, w), 0);
            let share = (initial as f64 / window as f64).ceil() as usize + 1;
            let mut last = initial;
            for ms in (0..=window * 1000).step_by(250) {
                let now = allowed_open(initial, Duration::from_millis(ms), w);
                prop_assert!(now <= last);
                let a_second_ago = allowed_open(initial, Duration::from_millis(ms.saturating_sub(1000)), w);
                prop_assert!(a_second_ago - now <= share, "{} closed in the second before {}ms", a_second_ago - now, ms);
                last = now;
            }
        }
    }

    #[test]
    fn target_states_are_interpreted() {
        let cases: &[(&str, bool, Target)] = &[
            ("InService", false, InService),
            ("InService", true, InService),
            ("Terminated", false, Terminating),
            ("Terminating:Wait", true, Terminating),
            ("Terminating:Proceed", false, Terminating),
            ("Warmed:Terminated", false, Terminating),
            ("Warmed:Stopped", true, WarmedReturn),
            ("Warmed:Running", true, WarmedReturn),
            ("Warmed:Hibernated", true, WarmedReturn),
            ("Warmed:Pending:Wait", true, WarmedReturn),
            ("Warmed:Pending", true, WarmedReturn),
            // A launch into the pool, never in service: nothing to drain.
            ("Warmed:Stopped", false, Pending),
            ("Warmed:Running", false, Pending),
            ("Warmed:Pending:Wait", false, Pending),
            ("Pending", false, Pending),
            ("Pending:Wait", true, Pending),
            (" InService\n", false, InService),
            ("Standby", true, Other("Standby".into())),
            ("", true, Other(String::new())),
        ];
        for (raw, served, want) in cases {
            assert_eq!(
                &Target::parse(raw, *served),
                want,
                "{raw:?} served={served}"
            );
        }
        assert!(Terminating.is_scale_in() && WarmedReturn.is_scale_in());
        assert!(!InService.is_scale_in() && !Pending.is_scale_in());
    }
}
