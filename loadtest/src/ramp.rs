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
