//! A growing set of held Socket.IO connections over targets (round robin) and source
//! addresses: what `ramp` and `capacity` open, hold and release.

use crate::client::{self, Incoming};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts over every attempt the pool made.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub attempted: usize,
    pub connected: usize,
    /// Failed attempts by cause (`refused`, `timeout`, `http_503`, ...).
    pub failures: BTreeMap<String, usize>,
    /// Successful connections per target.
    pub per_target: BTreeMap<String, usize>,
}

impl Stats {
    pub fn failed(&self) -> usize {
        self.failures.values().sum()
    }
}

/// Held connections; dropping the pool (or [`Pool::close`]) releases them.
pub struct Pool {
    targets: Vec<(String, SocketAddr, String)>,
    sources: Vec<IpAddr>,
    timeout: Duration,
    next: usize,
    open: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stats: Arc<Mutex<Stats>>,
}

impl Pool {
    /// A pool over `targets` (http://IP:PORT), binding `sources` in turn when given.
    pub fn new(
        targets: &[String],
        sources: Vec<IpAddr>,
        timeout: Duration,
    ) -> Result<Self, String> {
        if targets.is_empty() {
            return Err("give at least one --target".into());
        }
        let targets = targets
            .iter()
            .map(|t| client::endpoint(t).map(|(a, u)| (t.clone(), a, u)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            targets,
            sources,
            timeout,
            next: 0,
            open: Arc::default(),
            release: Arc::default(),
            tasks: Vec::new(),
            stats: Arc::default(),
        })
    }

    /// Connections open right now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Attempts `n` more connections at `rate` per second and returns once every attempt has
    /// connected or failed; `progress` is called about once a second with the running stats.
    pub async fn grow(&mut self, n: usize, rate: f64, progress: impl Fn(&Stats)) {
        let start = Instant::now();
        let gap = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let goal = self.stats().attempted + n;
        let mut last_progress = Instant::now();
        for i in 0..n {
            let due = start + gap.mul_f64(i as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            let k = self.next;
            self.next += 1;
            let (target, addr, url) = self.targets[k % self.targets.len()].clone();
            let src = (!self.sources.is_empty()).then(|| self.sources[k % self.sources.len()]);
            let (stats, open, release, timeout) = (
                self.stats.clone(),
                self.open.clone(),
                self.release.clone(),
                self.timeout,
            );
            self.tasks.push(tokio::spawn(async move {
                let r = client::connect(addr, &url, src, timeout).await;
                {
                    let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                    s.attempted += 1;
                    match &r {
                        Ok(_) => {
                            s.connected += 1;
                            *s.per_target.entry(target).or_default() += 1;
                        }
                        Err(f) => *s.failures.entry(f.label()).or_default() += 1,
                    }
                }
                let Ok(mut ws) = r else { return };
                open.fetch_add(1, Ordering::Relaxed);
                let released = release.notified();
                tokio::pin!(released);
                loop {
                    tokio::select! {
                        m = client::recv(&mut ws) => if matches!(m, Incoming::Closed) { break },
                        _ = &mut released => break,
                    }
                }
                open.fetch_sub(1, Ordering::Relaxed);
            }));
            if last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                progress(&self.stats());
            }
        }
        let deadline = Instant::now() + self.timeout + Duration::from_secs(1);
        while self.stats().attempted < goal && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.tasks.retain(|t| !t.is_finished());
    }

    /// Closes every connection and waits (briefly) for them to go.
    pub async fn close(mut self) {
        self.release.notify_waiters();
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
