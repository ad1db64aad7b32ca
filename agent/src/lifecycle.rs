//! Scale-in drain: when the instance's target lifecycle state says it is being terminated, tell
//! the service to drain, report 503, wait for connections to fall (sending lifecycle heartbeats),
//! then complete the lifecycle action with CONTINUE.

use crate::config::AgentConfig;
use crate::health::HealthState;
use crate::{Shared, lock};
use std::time::{Duration, Instant};

/// Whether a target lifecycle state means "this instance is going away".
pub fn is_terminating(state: &str) -> bool {
    state == "Terminated" || state.starts_with("Terminating")
}

/// Polls IMDS every few seconds; drains once when termination starts.
pub async fn watch(cfg: AgentConfig, status: Shared) {
    let imds = crate::imds::Imds::new(cfg.identity.imds_endpoint.as_deref());
    let mut logged_error = false;
    loop {
        match imds.target_lifecycle_state().await {
            Ok(state) if is_terminating(&state) => {
                tracing::info!(%state, "instance is terminating: draining");
                if let Err(e) = drain(&cfg, &status).await {
                    tracing::error!(error = %e, "drain failed");
                }
                return;
            }
            Ok(_) => logged_error = false,
            Err(e) if !logged_error => {
                tracing::warn!(error = %e, "cannot read the target lifecycle state; will keep trying");
                logged_error = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Runs the drain and completes the lifecycle action.
pub async fn drain(cfg: &AgentConfig, status: &Shared) -> Result<(), String> {
    lock(status).health = HealthState::Draining;
    tell_service(cfg).await?;
    let (region, instance, group) = crate::resolve_identity(cfg).await;
    let (Some(instance), Some(group)) = (instance, group) else {
        return Err("drain needs identity.instance_id and identity.group (or IMDS) to complete the lifecycle action".into());
    };
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r));
    }
    let asg = aws_sdk_autoscaling::Client::new(&loader.load().await);
    let started = Instant::now();
    let mut last_beat = Instant::now();
    loop {
        let conns = lock(status).connections;
        if conns < cfg.drain.threshold {
            tracing::info!(conns, "drained below threshold");
            break;
        }
        if started.elapsed() >= cfg.drain.timeout {
            tracing::warn!(conns, "drain timeout reached; completing anyway");
            break;
        }
        if last_beat.elapsed() >= cfg.drain.heartbeat_interval {
            last_beat = Instant::now();
            let r = asg
                .record_lifecycle_action_heartbeat()
                .auto_scaling_group_name(&group)
                .lifecycle_hook_name(&cfg.drain.hook_name)
                .instance_id(&instance)
                .send()
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %aws_sdk_autoscaling::error::DisplayErrorContext(e), "lifecycle heartbeat failed (needs autoscaling:RecordLifecycleActionHeartbeat)");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    asg.complete_lifecycle_action()
        .auto_scaling_group_name(&group)
        .lifecycle_hook_name(&cfg.drain.hook_name)
        .instance_id(&instance)
        .lifecycle_action_result("CONTINUE")
        .send()
        .await
        .map_err(|e| {
            format!(
                "CompleteLifecycleAction failed (needs autoscaling:CompleteLifecycleAction): {}",
                aws_sdk_autoscaling::error::DisplayErrorContext(e)
            )
        })?;
    tracing::info!(%instance, %group, "lifecycle action completed with CONTINUE");
    Ok(())
}

async fn tell_service(cfg: &AgentConfig) -> Result<(), String> {
    let d = &cfg.drain;
    match d.method.as_str() {
        "http" => {
            let url = d
                .drain_url
                .as_deref()
                .ok_or("drain.method = \"http\" needs drain.drain_url")?;
            let mut req = reqwest::Client::new().post(url);
            if let Some(t) = &d.drain_token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.map_err(|e| format!("POST {url}: {e}"))?;
            if !r.status().is_success() {
                return Err(format!("POST {url} returned {}", r.status()));
            }
        }
        "signal" => {
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
        _ => {
            let unit = d
                .unit
                .as_deref()
                .ok_or("drain.method = \"systemd\" needs drain.unit")?;
            let out = tokio::process::Command::new("systemctl")
                .args(["stop", "--no-block", unit])
                .output()
                .await
                .map_err(|e| format!("systemctl: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "systemctl stop {unit}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    }
    tracing::info!(method = %d.method, "asked the service to drain");
    Ok(())
}
