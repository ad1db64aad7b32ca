//! `loadtest ramp`: open N connections at a rate over targets and source addresses, hold them.

use crate::pool::Pool;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
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

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
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
    let mut pool = Pool::new(&cfg.targets, cfg.sources.clone(), cfg.connect_timeout)?;
    let start = Instant::now();
    pool.grow(cfg.connections, cfg.rate, |s| {
        progress(s.attempted, s.connected)
    })
    .await;
    let ramp_seconds = start.elapsed().as_secs_f64();
    tokio::time::sleep(cfg.hold).await;
    let held_at_end = pool.open();
    let s = pool.stats();
    pool.close().await;
    Ok(RampReport {
        attempted: s.attempted,
        connected: s.connected,
        failures: s.failures,
        connect_rate: s.connected as f64 / ramp_seconds.max(1e-9),
        ramp_seconds,
        per_target: s.per_target,
        held_at_end,
    })
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

/// Connections one worker process holds at most (the open-file limit here is 20,000).
pub const PER_WORKER: usize = 15_000;

/// Workers needed for `connections` when none are asked for.
pub fn auto_workers(connections: usize) -> usize {
    connections.div_ceil(PER_WORKER).max(1)
}

/// Runs the ramp over `workers` processes of `exe` (`loadtest ramp --json` each, spawned from
/// the calling thread and killed if it dies), splitting connections, rate and source addresses
/// between them, and merges their reports.
pub async fn run_workers(
    exe: &std::path::Path,
    cfg: &RampConfig,
    workers: usize,
) -> Result<RampReport, String> {
    let workers = workers.max(1);
    let mut children = Vec::new();
    for k in 0..workers {
        let n = cfg.connections / workers + usize::from(k < cfg.connections % workers);
        let sources: Vec<String> = if cfg.sources.len() >= workers {
            cfg.sources
                .iter()
                .skip(k)
                .step_by(workers)
                .map(|s| s.to_string())
                .collect()
        } else {
            cfg.sources.iter().map(|s| s.to_string()).collect()
        };
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("ramp");
        for t in &cfg.targets {
            cmd.args(["--target", t]);
        }
        cmd.args([
            "--connections",
            &n.to_string(),
            "--rate",
            &(cfg.rate / workers as f64).to_string(),
            "--hold",
            &format!("{}ms", cfg.hold.as_millis()),
            "--source-ips",
            &sources.join(","),
            "--workers",
            "1",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
        connscale_common::limits::kill_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start worker {}: {e}", exe.display()))?;
        children.push(tokio::task::spawn_blocking(move || {
            child.wait_with_output()
        }));
    }
    let mut merged = RampReport::default();
    for (k, c) in children.into_iter().enumerate() {
        let out = c
            .await
            .map_err(|e| format!("worker {k}: {e}"))?
            .map_err(|e| format!("worker {k}: {e}"))?;
        let r: RampReport = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("worker {k} exited with {} and no report ({e})", out.status))?;
        merged.attempted += r.attempted;
        merged.connected += r.connected;
        merged.held_at_end += r.held_at_end;
        merged.ramp_seconds = merged.ramp_seconds.max(r.ramp_seconds);
        for (cause, n) in r.failures {
            *merged.failures.entry(cause).or_default() += n;
        }
        for (t, n) in r.per_target {
            *merged.per_target.entry(t).or_default() += n;
        }
    }
    merged.connect_rate = merged.connected as f64 / merged.ramp_seconds.max(1e-9);
    Ok(merged)
}
