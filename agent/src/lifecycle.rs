//! Scale-in drain. The agent polls the instance's target lifecycle state (IMDS) for as long as it
//! runs. When it says the instance leaves service (terminated, or returned to the warm pool), the
//! agent reports 503 at once, tells the service to drain, heartbeats the lifecycle hook while
//! connections fall, then completes the lifecycle action with CONTINUE. When the instance comes
//! back to `InService` (a return from a `Running` warm pool), /health is healthy again.
//!
//! Behind an ALB, AWS deregisters the instance and waits out the deregistration delay before the
//! hook becomes active (`Terminating:Wait` / `Warmed:Pending:Wait`); the target state reads
//! `Terminated` (or `Warmed:*`) from the start. Lifecycle calls made before the hook is active
//! fail, so every heartbeat and the completion are retried with backoff until they succeed, for
//! at most `drain.hook_heartbeat_timeout` without a success (AWS has applied the hook's default
//! result by then).

use crate::config::{AgentConfig, DrainConfig, DrainMethod};
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
/// scale-in target, and leaves the draining state when the instance is back in service.
pub async fn watch(cfg: AgentConfig, status: Shared) {
    let imds = crate::imds::Imds::new(cfg.identity.imds_endpoint.as_deref());
    let mut logged_error = false;
    let mut served = false;
    let mut drain: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        match imds.target_lifecycle_state().await {
            Ok(raw) => {
                logged_error = false;
                let target = Target::parse(&raw, served);
                if target.is_scale_in() && drain.is_none() {
                    tracing::info!(state = %raw, ?target, "instance leaves service: draining");
                    let (cfg, status) = (cfg.clone(), status.clone());
                    drain = Some(tokio::spawn(async move { run_drain(&cfg, &status).await }));
                } else if target == Target::InService {
                    served = true;
                    if let Some(task) = drain.take() {
                        back_in_service(&cfg, &status, task).await;
                    }
                }
            }
            Err(e) if !logged_error => {
                tracing::warn!(error = %e, "cannot read the target lifecycle state; will keep trying");
                logged_error = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(cfg.drain.poll_interval).await;
    }
}

/// The instance returned to service (from a `Running` warm pool): stop any drain still running
/// and report healthy again (the sampler then applies the cap and the listener check).
async fn back_in_service(cfg: &AgentConfig, status: &Shared, task: tokio::task::JoinHandle<()>) {
    if !task.is_finished() {
        tracing::warn!("back in service while the drain was still running: drain abandoned");
        task.abort();
    }
    if let DrainMethod::Systemd = cfg.drain.method
        && let Some(unit) = cfg.drain.unit.as_deref()
        && let Err(e) = systemctl("start", unit).await
    {
        tracing::error!(error = %e, "cannot restart the service after the warm-pool return");
    }
    let mut st = lock(status);
    st.health = HealthState::Ok.next(
        st.connections,
        st.listening,
        cfg.health.cap,
        cfg.health.hysteresis,
    );
    tracing::info!(health = ?st.health, "instance is in service again: drain state left");
}

/// One drain, start to finish: 503, tell the service, wait with heartbeats, complete. Errors are
/// logged (the node stays out of service); the watcher keeps running either way.
async fn run_drain(cfg: &AgentConfig, status: &Shared) {
    lock(status).health = HealthState::Draining;
    let started = Instant::now();
    let mut told = tell_service(&cfg.drain).await;
    if let Err(e) = &told {
        tracing::error!(error = %e, "cannot tell the service to drain; retrying while waiting");
    }
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
        if conns < cfg.drain.threshold {
            tracing::info!(conns, "drained below the threshold");
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

async fn systemctl(verb: &str, unit: &str) -> Result<(), String> {
    let out = tokio::process::Command::new("systemctl")
        .args([verb, "--no-block", unit])
        .output()
        .await
        .map_err(|e| format!("systemctl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "systemctl {verb} {unit}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
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
        }
        DrainMethod::Signal => {
            let f = d
                .pid_file
                .as_ref()
                .ok_or("drain.method = \"signal\" needs drain.pid_file")?;
            let pid: i32 = std::fs::read_to_string(f)
                .map_err(|e| format!("read {}: {e}", f.display()))?
                .trim()
                .parse()
                .map_err(|_| format!("{} does not hold a PID", f.display()))?;
            // SAFETY: kill(2) with a PID from the service's own pid file.
            if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                return Err(format!(
                    "kill -TERM {pid}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        DrainMethod::Systemd => {
            let unit = d
                .unit
                .as_deref()
                .ok_or("drain.method = \"systemd\" needs drain.unit")?;
            systemctl("stop", unit).await?;
        }
    }
    tracing::info!(method = ?d.method, "asked the service to drain");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Target::{self, *};

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
