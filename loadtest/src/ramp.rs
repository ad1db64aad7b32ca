//! `loadtest ramp`: open N connections at a rate over targets and source addresses, hold them.

use crate::client::{self, Failure, Incoming};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RampConfig {
    pub targets: Vec<String>,
    pub connections: usize,
    /// Connection attempts per second.
    pub rate: f64,
    pub hold: Duration,
    pub sources: Vec<IpAddr>,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RampReport {
    pub attempted: usize,
    pub connected: usize,
    pub failures: BTreeMap<String, usize>,
    /// Successful connections per second over the ramp.
    pub connect_rate: f64,
    pub ramp_seconds: f64,
    /// Connections per target when the hold began.
    pub per_target: BTreeMap<String, usize>,
    /// Connections still open at the end of the hold.
    pub held_at_end: usize,
}

/// Runs the ramp; `progress` is called about once a second with (attempted, connected).
pub async fn run(cfg: RampConfig, progress: impl Fn(usize, usize)) -> Result<RampReport, String> {
    let eps: Vec<_> = cfg
        .targets
        .iter()
        .map(|t| client::endpoint(t))
        .collect::<Result<_, _>>()?;
    if eps.is_empty() {
        return Err("give at least one --target".into());
    }
    let state = Arc::new(Mutex::new(RampReport::default()));
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(cfg.connections);
    let gap = Duration::from_secs_f64(1.0 / cfg.rate.max(0.001));
    let mut last_progress = Instant::now();
    for i in 0..cfg.connections {
        let due = start + gap.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let (addr, url) = eps[i % eps.len()].clone();
        let target = cfg.targets[i % eps.len()].clone();
        let src = (!cfg.sources.is_empty()).then(|| cfg.sources[i % cfg.sources.len()]);
        let (shared, open, release, timeout) = (
            state.clone(),
            open.clone(),
            release.clone(),
            cfg.connect_timeout,
        );
        tasks.push(tokio::spawn(async move {
            let r = client::connect(addr, &url, src, timeout).await;
            {
                let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                s.attempted += 1;
                match &r {
                    Ok(_) => {
                        s.connected += 1;
                        *s.per_target.entry(target).or_default() += 1;
                    }
                    Err(f) => *s.failures.entry(label(f)).or_default() += 1,
                }
            }
            let Ok(mut ws) = r else { return };
            open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let released = release.notified();
            tokio::pin!(released);
            loop {
                tokio::select! {
                    m = client::recv(&mut ws) => if matches!(m, Incoming::Closed) { break },
                    _ = &mut released => break,
                }
            }
            open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }));
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            let s = state.lock().unwrap_or_else(|e| e.into_inner());
            progress(s.attempted, s.connected);
        }
    }
    // Wait for the last attempts to finish.
    let deadline = Instant::now() + cfg.connect_timeout + Duration::from_secs(1);
    while state.lock().map(|s| s.attempted).unwrap_or(0) < cfg.connections
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ramp_seconds = start.elapsed().as_secs_f64();
    tokio::time::sleep(cfg.hold).await;
    let held_at_end = open.load(std::sync::atomic::Ordering::Relaxed);
    release.notify_waiters();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let mut r = state.lock().unwrap_or_else(|e| e.into_inner()).clone();
    r.ramp_seconds = ramp_seconds;
    r.connect_rate = r.connected as f64 / ramp_seconds.max(1e-9);
    r.held_at_end = held_at_end;
    Ok(r)
}

fn label(f: &Failure) -> String {
    match f {
        Failure::Http(code) => format!("http_{code}"),
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| other.to_string()),
    }
}

impl RampReport {
    pub fn table(&self) -> String {
        let mut s = format!(
            "connections  attempted {}  connected {}  held at end {}\nconnect rate {:.0}/s over {:.1}s\n",
            self.attempted, self.connected, self.held_at_end, self.connect_rate, self.ramp_seconds
        );
        for (cause, n) in &self.failures {
            s.push_str(&format!("failed       {cause}: {n}\n"));
        }
        for (t, n) in &self.per_target {
            s.push_str(&format!("target       {t}: {n}\n"));
        }
        s
    }
}
