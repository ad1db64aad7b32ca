//! `connscale-agent`: exact per-port connection counts, CloudWatch publishing, and the
//! cap-aware health endpoint the load balancer checks.
//!
//! Three independent loops share one [`Status`]: the sampler (a thread: counting never waits
//! for the network), the publisher (retries and backfills; never blocks sampling), and the
//! HTTP server. A fourth, optional loop follows the instance's lifecycle: it drains the node on scale-in
//! ([`lifecycle`]) and completes the launch hook of launches out of the warm pool ([`launch`]).
//! Beside it, a fifth reads the controller's cordon ([`cordon`]), which fails /health so the
//! node takes no new clients.

pub mod boot;
pub mod cli;
pub mod config;
pub mod cordon;
pub mod count;
pub mod health;
pub mod imds;
pub mod launch;
pub mod lifecycle;
pub mod publish;
pub mod server;

use config::AgentConfig;
use count::{Counter, Method};
use health::HealthState;
use publish::{Aggregator, BATCH, Buffer, Point, Sink};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// What the agent knows now; read by /health and /metrics.
#[derive(Debug, Clone)]
pub struct Status {
    pub connections: u64,
    /// Every counted port has a listener (the service is up).
    pub listening: bool,
    pub host_established: u64,
    pub method: Method,
    pub health: HealthState,
    /// The lifecycle target is `InService`: only then do samples count in the group's dimension.
    /// Unknown until the lifecycle watcher's first read (false, so a pool launch's first
    /// seconds stay out); true without the watcher or when IMDS cannot tell.
    pub in_service: bool,
    pub cap: u64,
    pub samples: u64,
    pub sample_errors: u64,
    pub buffered_points: usize,
    pub dropped_points: u64,
    pub published_points: u64,
    pub publish_errors: u64,
    pub sink: String,
    /// `drain.method = "close"`: whether this agent can close connections (checked at start).
    pub close_available: Option<bool>,
    /// The current or last drain.
    pub drain: lifecycle::DrainProgress,
    /// The controller's cordon tag as last read from IMDS (`None`: no tag, IMDS not answering,
    /// or no watcher); see [`Status::cordon_until`].
    pub cordon: Option<String>,
}

impl Status {
    /// The second until which the cordon holds at `now`, or `None` when the node is not
    /// cordoned (no tag, malformed, lapsed).
    pub fn cordon_until(&self, now: i64) -> Option<i64> {
        cordon::until(self.cordon.as_deref(), now)
    }
}

pub type Shared = Arc<Mutex<Status>>;

pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Locks the status; a poisoned lock (a panicked holder) still yields the data.
pub fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Status> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the sampler thread: counts every `sample_interval`, updates health, and sends each
/// completed period's statistic set to the publisher.
pub fn spawn_sampler(
    cfg: &AgentConfig,
    mut counter: Counter,
    status: Shared,
    points: mpsc::UnboundedSender<Point>,
) -> std::thread::JoinHandle<()> {
    let interval = cfg.sample_interval;
    let (cap, hysteresis) = (cfg.health.cap, cfg.health.hysteresis);
    let mut agg = Aggregator::new(cfg.cloudwatch.period.as_secs());
    std::thread::Builder::new()
        .name("sampler".into())
        .spawn(move || {
            let mut next = std::time::Instant::now();
            loop {
                match counter.sample() {
                    Ok(s) => {
                        let mut st = lock(&status);
                        let before = st.health;
                        let cordoned = st.cordon_until(now_secs()).is_some();
                        st.health = st.health.next(
                            s.connections,
                            s.listening,
                            cordoned,
                            cap,
                            hysteresis,
                        );
                        if st.health != before {
                            tracing::info!(connections = s.connections, listening = s.listening, cordoned, cap, from = ?before, to = ?st.health, "health changed");
                        }
                        st.connections = s.connections;
                        st.listening = s.listening;
                        st.host_established = s.host_established;
                        st.method = s.method;
                        st.samples += 1;
                        let in_service = st.in_service;
                        drop(st);
                        if let Some(p) = agg.add(now_secs(), s.connections, in_service)
                            && points.send(p).is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        lock(&status).sample_errors += 1;
                        tracing::warn!(error = %e, "sample failed");
                    }
                }
                next += interval;
                let now = std::time::Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        })
        .expect("spawn sampler thread")
}

/// Publishes buffered points in order, retrying with backoff; logs reachability changes once.
pub async fn publish_loop(
    sink: Sink,
    mut buffer: Buffer,
    mut points: mpsc::UnboundedReceiver<Point>,
    status: Shared,
    period: Duration,
) {
    let mut backoff = Duration::ZERO;
    let mut healthy = true;
    loop {
        let wait = if backoff.is_zero() {
            period.min(Duration::from_secs(5))
        } else {
            backoff
        };
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                p = points.recv() => match p {
                    Some(p) => {
                        buffer.push(p, now_secs());
                        let mut st = lock(&status);
                        st.buffered_points = buffer.len();
                        st.dropped_points = buffer.dropped;
                    }
                    None => return,
                },
                _ = &mut deadline => break,
            }
            if backoff.is_zero() {
                break;
            }
        }
        while !buffer.is_empty() {
            let batch = buffer.peek(BATCH);
            match sink.put(&batch).await {
                Ok(()) => {
                    buffer.confirm(batch.len());
                    backoff = Duration::ZERO;
                    let mut st = lock(&status);
                    st.published_points += batch.len() as u64;
                    if !healthy {
                        tracing::info!(
                            backlog = buffer.len(),
                            "publishing again; backfilling buffered points"
                        );
                        healthy = true;
                    }
                }
                Err(e) => {
                    lock(&status).publish_errors += 1;
                    if healthy {
                        tracing::warn!(error = %e, buffered = buffer.len(), "publish failed; keeping points and retrying with backoff");
                        healthy = false;
                    }
                    backoff = (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
                    break;
                }
            }
        }
        let mut st = lock(&status);
        st.buffered_points = buffer.len();
        st.dropped_points = buffer.dropped;
    }
}

/// Who this instance is, for the metric's dimensions: config first, then IMDSv2.
pub async fn resolve_identity(
    cfg: &AgentConfig,
) -> (Option<String>, Option<String>, Option<String>) {
    let imds = imds::Imds::new(cfg.identity.imds_endpoint.as_deref());
    let region = resolve_region(cfg).await;
    let instance = match &cfg.identity.instance_id {
        Some(i) => Some(i.clone()),
        None => imds.instance_id().await.ok(),
    };
    let group = match &cfg.identity.group {
        Some(g) => Some(g.clone()),
        None => imds.group().await.ok(),
    };
    (region, instance, group)
}

/// The region: `identity.region`, then AWS_REGION, then IMDSv2.
pub async fn resolve_region(cfg: &AgentConfig) -> Option<String> {
    match cfg
        .identity
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
    {
        Some(r) => Some(r),
        None => imds::Imds::new(cfg.identity.imds_endpoint.as_deref())
            .region()
            .await
            .ok(),
    }
}

/// Builds the sink the config asks for; "auto" publishes only when identity is complete.
pub async fn build_sink(cfg: &AgentConfig, stdout_default: bool) -> Result<Sink, String> {
    let mode = cfg.cloudwatch.mode.as_str();
    if mode == "off" {
        return Ok(if stdout_default {
            Sink::Stdout
        } else {
            Sink::None
        });
    }
    let (region, instance, group) = resolve_identity(cfg).await;
    match (region, instance, group) {
        (Some(region), Some(instance), Some(group)) => {
            let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new(region))
                .load()
                .await;
            Ok(Sink::CloudWatch {
                client: aws_sdk_cloudwatch::Client::new(&conf),
                metric: cfg.cloudwatch.metric.clone(),
                group,
                instance,
                high_resolution: cfg.cloudwatch.period < Duration::from_secs(60),
            })
        }
        missing if mode == "on" => Err(format!(
            "cloudwatch.mode = \"on\" but identity is incomplete (region {:?}, instance {:?}, group {:?}): set identity.region / identity.instance_id / identity.group (or AWS_REGION, CONNSCALE_INSTANCE_ID, CONNSCALE_GROUP), or run on EC2 with IMDS tags enabled",
            missing.0, missing.1, missing.2
        )),
        _ => {
            tracing::info!(
                "no AWS identity (not on EC2, nothing configured): publishing to {} only",
                if stdout_default {
                    "stdout and /metrics"
                } else {
                    "/metrics"
                }
            );
            Ok(if stdout_default {
                Sink::Stdout
            } else {
                Sink::None
            })
        }
    }
}

/// Runs the agent until SIGTERM / Ctrl-C.
pub async fn run(cfg: AgentConfig, stdout_sink: bool) -> anyhow::Result<()> {
    // No open-file check here. The agent holds no client connections, so its own RLIMIT_NOFILE
    // says nothing about reaching health.cap. The limit that matters is the listening service's,
    // and the agent cannot find that process without privileges its unit lacks: the socket's
    // inode maps to a PID only by reading the service's /proc/PID/fd, which needs
    // CAP_SYS_PTRACE across DynamicUser uids. The service checks its own limit (chat-node warns
    // when max_connections exceeds it).
    let counter = Counter::new(cfg.ports.clone(), cfg.netns.as_deref(), cfg.force_proc);
    let sink = build_sink(&cfg, stdout_sink)
        .await
        .map_err(anyhow::Error::msg)?;
    tracing::info!(ports = ?cfg.ports, method = counter.method().as_str(), sink = %sink.describe(), cap = cfg.health.cap, "agent starting");
    let watches_lifecycle = cfg.drain.enabled || cfg.launch.hook_name.is_some();
    let status: Shared = Arc::new(Mutex::new(Status {
        connections: 0,
        listening: false,
        host_established: 0,
        method: counter.method(),
        health: HealthState::NoListener,
        in_service: !watches_lifecycle,
        cap: cfg.health.cap,
        samples: 0,
        sample_errors: 0,
        buffered_points: 0,
        dropped_points: 0,
        published_points: 0,
        publish_errors: 0,
        sink: sink.describe(),
        close_available: None,
        drain: lifecycle::DrainProgress::default(),
        cordon: None,
    }));
    if cfg.drain.enabled && cfg.drain.method == config::DrainMethod::Close {
        // Said at start-up, not first at a scale-in: the fix (the drop-in) takes a restart.
        let ok = lifecycle::Closer::open(&cfg).is_some();
        if ok {
            tracing::info!(grace = ?cfg.drain.grace, window = ?cfg.drain.window, "drain.method = \"close\": the agent can close connections (CAP_NET_ADMIN, SOCK_DESTROY)");
        }
        lock(&status).close_available = Some(ok);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let _sampler = spawn_sampler(&cfg, counter, status.clone(), tx);
    let buffer = Buffer::new(
        cfg.cloudwatch.max_buffer_age.as_secs(),
        cfg.cloudwatch.spool_file.clone(),
    );
    tokio::spawn(publish_loop(
        sink,
        buffer,
        rx,
        status.clone(),
        cfg.cloudwatch.period,
    ));
    if watches_lifecycle {
        tokio::spawn(lifecycle::watch(cfg.clone(), status.clone()));
        // The same condition: a node that reads no lifecycle state from IMDS is never cordoned.
        tokio::spawn(cordon::watch(cfg.clone(), status.clone()));
    }
    let listener = tokio::net::TcpListener::bind(cfg.health.bind)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot bind health endpoint {} (health.bind): {e}",
                cfg.health.bind
            )
        })?;
    tracing::info!(addr = %listener.local_addr()?, "serving /health and /metrics");
    axum::serve(listener, server::router(status))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("agent stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = ctrl_c => {},
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
    }
}
