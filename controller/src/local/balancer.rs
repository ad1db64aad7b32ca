//! A TCP load balancer for the local fleet, doing what the ALB does: new connections go round
//! robin to healthy targets (the agent's /health says 200); existing ones stay where they are.
//! It counts live connections per target, so the demo can check the agents' counts against it,
//! and new connections per target and second, to see how hard a drain's reconnects hit a node.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

struct State {
    targets: Vec<u16>,
    live: BTreeMap<u16, usize>,
    /// New connections per (target, whole seconds since the balancer started).
    opened: BTreeMap<(u16, u64), usize>,
    rejected: usize,
    started: std::time::Instant,
}

/// Handle to a running balancer (stops when the runtime does).
#[derive(Clone)]
pub struct Balancer {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl Balancer {
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State {
            targets: Vec::new(),
            live: BTreeMap::new(),
            opened: BTreeMap::new(),
            rejected: 0,
            started: std::time::Instant::now(),
        }));
        let rr = Arc::new(AtomicUsize::new(0));
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let targets = st.lock().map(|s| s.targets.clone()).unwrap_or_default();
                let start = rr.fetch_add(1, Ordering::Relaxed);
                let st = st.clone();
                tokio::spawn(async move {
                    for k in 0..targets.len() {
                        let t = targets[(start + k) % targets.len()];
                        if let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", t)).await {
                            if let Ok(mut s) = st.lock() {
                                *s.live.entry(t).or_default() += 1;
                                let second = s.started.elapsed().as_secs();
                                *s.opened.entry((t, second)).or_default() += 1;
                            }
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                            if let Ok(mut s) = st.lock() {
                                *s.live.entry(t).or_default() -= 1;
                            }
                            return;
                        }
                    }
                    if let Ok(mut s) = st.lock() {
                        s.rejected += 1;
                    }
                });
            }
        });
        Ok(Self { port, state })
    }

    /// Replaces the healthy target list.
    pub fn set_targets(&self, ports: Vec<u16>) {
        if let Ok(mut s) = self.state.lock() {
            s.targets = ports;
        }
    }

    /// Live connections per target port.
    pub fn live(&self) -> BTreeMap<u16, usize> {
        self.state
            .lock()
            .map(|s| s.live.clone())
            .unwrap_or_default()
    }

    /// The most new connections any target other than `except` received in one second between
    /// `from` and `to`.
    pub fn most_opened_per_second(
        &self,
        except: u16,
        from: std::time::Instant,
        to: std::time::Instant,
    ) -> usize {
        let Ok(s) = self.state.lock() else { return 0 };
        let sec = |t: std::time::Instant| t.saturating_duration_since(s.started).as_secs();
        let (a, b) = (sec(from), sec(to));
        s.opened
            .iter()
            .filter(|((t, second), _)| *t != except && (a..=b).contains(second))
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0)
    }

    /// Connections refused because no target was healthy.
    pub fn rejected(&self) -> usize {
        self.state.lock().map(|s| s.rejected).unwrap_or(0)
    }
}
