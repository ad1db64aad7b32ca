//! `connscale demo`: the whole loop on this machine. A local fleet (Redis, chat-node + agent
//! pairs behind a round-robin balancer) is driven by loadtest traffic that rises, holds and
//! falls, while the policy engine scales it out and back in with drains. Ends with a summary
//! (peak instances, actions, rejected connections, messages lost/duplicated, whether the agents'
//! counts match the balancer's) and an SVG timeline. Every process it starts, it stops.

use crate::control;
use crate::engine::{Direction, Engine};
use crate::local::balancer::Balancer;
use crate::local::{DrainRecord, FleetSettings, LocalFleet, ScaleInCounts, Workload};
use crate::provider::Provider;
use crate::sim::plot::{Series, line_chart};
use connscale_common::policy::Policy;
use connscale_common::policy::{PoolState, WarmPool};
use loadtest::client::{self, Incoming};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const DEMO_POLICY: &str = include_str!("../../policies/demo.toml");

#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub duration: Duration,
    /// Peak idle connections (chat clients come on top).
    pub peak: usize,
    pub plot: Option<PathBuf>,
    pub quiet: bool,
    /// Run with a Running warm pool that reuses instances on scale-in.
    pub warm_pool: bool,
    /// What each instance serves (chat-node, or the reference Node.js Socket.IO server).
    pub workload: Workload,
}

/// One finished scale-in: what the agent reported, and how hard its reconnects hit the rest.
#[derive(Debug, Serialize)]
pub struct DrainDetail {
    #[serde(flatten)]
    pub record: DrainRecord,
    /// The most new connections any other node received in one second during the drain (and
    /// the 2 s after): reconnects, and new clients that arrived meanwhile.
    pub most_reconnects_per_node_second: usize,
}

#[derive(Debug, Serialize)]
pub struct Action {
    pub t: f64,
    pub direction: Direction,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct DemoReport {
    pub duration_s: f64,
    pub peak_demand: usize,
    pub node_cap: u32,
    pub min_size: u32,
    pub peak_instances: u32,
    pub final_instances: u32,
    pub scale_outs: usize,
    pub scale_ins: usize,
    pub actions: Vec<Action>,
    pub rejected_connections: usize,
    pub messages: loadtest::chat::ChatReport,
    /// Agents' per-node counts equal the balancer's live connections per node (at full load).
    pub counts_match: bool,
    pub counts_checked: Vec<(String, Option<u64>, usize)>,
    pub processes_left: usize,
    /// How the scale-ins ended: `scale_ins_completed_by_agent` equals `drains` and
    /// `lifecycle_timeouts` is 0 in a good run.
    #[serde(flatten)]
    pub lifecycle: ScaleInCounts,
    /// `chat-node` or `node` (the reference Socket.IO server, drained by the agent alone).
    pub workload: &'static str,
    /// Every finished scale-in, in order.
    pub drain_details: Vec<DrainDetail>,
    /// Idle clients whose connection was cut (by a drain), how many connected again, and how
    /// many were stopped by the falling demand before they could.
    pub cut_clients: usize,
    pub cut_clients_reconnected: usize,
    pub cut_clients_stopped: usize,
    /// Instances whose agent answered /health with `cordoned` (the controller's tag, read
    /// through the instance metadata stand-in) at some point.
    pub cordoned_instances: usize,
    /// Scale-in victims, and how many of them their agent had reported cordoned before the
    /// scale-in took them: the cordon emptied them first.
    pub scale_in_victims: usize,
    pub victims_cordoned_first: usize,
}

/// How long the demo may run past `--duration` to finish scale-in and the chat traffic.
const OVERTIME: Duration = Duration::from_secs(30);

fn shape(frac: f64) -> f64 {
    match frac {
        f if f < 0.30 => f / 0.30,
        f if f < 0.45 => 1.0,
        f if f < 0.70 => 1.0 - (f - 0.45) / 0.25,
        _ => 0.0,
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// A throwaway redis-server on a free port, killed on drop (and if we die).
struct Redis(std::process::Child, u16);

impl Redis {
    fn start() -> Result<Self, String> {
        let bin = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("redis-server")).find(|p| p.is_file())))
            .ok_or("redis-server not found; install it with: apt-get install -y redis-server (scripts/demo does)")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| e.to_string())?;
        let mut cmd = std::process::Command::new(bin);
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        connscale_common::limits::kill_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Self(child, port));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("redis-server did not start".into())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Idle connections that hold a place on a node, reconnecting when their node drains.
struct Holders {
    open: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    /// Connections cut under a holder; cut holders that connected again; cut holders stopped
    /// before they could.
    cut: Arc<[AtomicUsize; 3]>,
    stops: Vec<Arc<tokio::sync::Notify>>,
}

impl Holders {
    fn adjust(&mut self, want: usize, port: u16) {
        while self.stops.len() < want {
            let stop = Arc::new(tokio::sync::Notify::new());
            let (open, failed, s) = (self.open.clone(), self.failed.clone(), stop.clone());
            let cut = self.cut.clone();
            let i = self.stops.len();
            tokio::spawn(async move {
                let (addr, url) = match client::endpoint(&format!("http://127.0.0.1:{port}")) {
                    Ok(e) => e,
                    Err(_) => return,
                };
                let src = Some(std::net::IpAddr::from([127, 0, 1, (2 + i % 200) as u8]));
                let stopped = s.notified();
                tokio::pin!(stopped);
                let mut was_cut = false;
                let gave_up = |was_cut: bool| {
                    if was_cut {
                        cut[2].fetch_add(1, Ordering::Relaxed);
                    }
                };
                loop {
                    let ws = tokio::select! {
                        r = client::connect(addr, &url, src, Duration::from_secs(5)) => r,
                        _ = &mut stopped => return gave_up(was_cut),
                    };
                    let Ok(mut ws) = ws else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                            _ = &mut stopped => return gave_up(was_cut),
                        }
                    };
                    if std::mem::take(&mut was_cut) {
                        cut[1].fetch_add(1, Ordering::Relaxed);
                    }
                    open.fetch_add(1, Ordering::Relaxed);
                    let done = loop {
                        tokio::select! {
                            m = client::recv(&mut ws) => if matches!(m, Incoming::Closed) { break false },
                            _ = &mut stopped => break true,
                        }
                    };
                    open.fetch_sub(1, Ordering::Relaxed);
                    if done {
                        return;
                    }
                    cut[0].fetch_add(1, Ordering::Relaxed);
                    was_cut = true;
                }
            });
            self.stops.push(stop);
        }
        while self.stops.len() > want {
            if let Some(s) = self.stops.pop() {
                s.notify_one();
            }
        }
    }
}

/// Runs the demo. Must run on the thread that owns the runtime (`block_on`): processes are
/// started from here so that they die with it.
pub async fn run(cfg: DemoConfig) -> Result<DemoReport, String> {
    let mut policy = Policy::parse(DEMO_POLICY, "policies/demo.toml").map_err(|e| e.to_string())?;
    if cfg.warm_pool {
        policy.warm_pool = Some(WarmPool {
            min_size: 1,
            max_prepared: None,
            state: PoolState::Running,
            reuse_on_scale_in: true,
        });
    }
    let cap = policy.group.node_cap;
    let interval = policy.scale_out.interval;
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_default();
    let redis = Redis::start()?;
    let drain_window = Duration::from_secs(3);
    let mut fleet = LocalFleet::new(FleetSettings {
        bin_dir,
        workload: cfg.workload.clone(),
        redis_url: format!("redis://127.0.0.1:{}/", redis.1),
        cap: cap as u64,
        api_token: format!("demo-{}", std::process::id()),
        drain_window,
        grace: policy.scale_in.drain_grace,
        grace_until_below: policy.scale_in.drain_grace_until_below,
        min_size: policy.group.min_size,
        max_size: policy.group.max_size,
        // As the terraform module sets it: the drain fits inside the deregistration delay.
        deregistration_delay: drain_window + Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(30),
        warm_pool: policy.warm_pool.clone(),
    })
    .await?;
    // The same loop as `connscale run`: a transient failure backs off, others end the demo.
    let mut ctl = control::Controller::new(
        control::Autoscaler::new(Engine::new(policy.clone())),
        control::LoopOptions {
            interval,
            dry_run: false,
            max_backoff: Duration::from_secs(8),
        },
    );
    let balancer = Balancer::start()
        .await
        .map_err(|e| format!("cannot start the balancer: {e}"))?;
    let start = Instant::now();
    fleet
        .set_desired(policy.group.min_size)
        .await
        .map_err(|e| e.to_string())?;
    let mut all_pids = fleet.pids();
    // Wait for the first instances to serve.
    for _ in 0..100 {
        fleet.refresh().await;
        if !fleet.healthy_ports().is_empty() && fleet.healthy_ports().len() == fleet.instances.len()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    balancer.set_targets(fleet.healthy_ports());
    let say = |line: String| {
        if !cfg.quiet {
            eprintln!("{line}");
        }
    };
    say(format!(
        "connscale demo: {} s, up to {} connections + 40 chat clients, node cap {cap}, balancer on 127.0.0.1:{}",
        cfg.duration.as_secs(),
        cfg.peak,
        balancer.port
    ));
    // Chat clients join once the fleet has grown (two nodes with room), so they spread over
    // nodes that scale-in will later drain: their reconnects must recover every message. They keep talking until the
    // fleet is back at its minimum, so every drain happens mid-conversation.
    let chat_stop = Arc::new(tokio::sync::Notify::new());
    let chat_cfg = loadtest::chat::ChatConfig {
        targets: vec![format!("http://127.0.0.1:{}", balancer.port)],
        clients: 40,
        rooms: 4,
        send_rate: 20.0,
        duration: cfg.duration.mul_f64(0.70) + OVERTIME,
        sources: vec![],
        stop_early: Some(chat_stop.clone()),
    };
    let mut chat_stopped = false;
    let mut chat: Option<tokio::task::JoinHandle<Result<loadtest::chat::ChatReport, String>>> =
        None;
    let mut holders = Holders {
        open: Arc::default(),
        failed: Arc::default(),
        cut: Arc::default(),
        stops: Vec::new(),
    };
    let (mut peak_instances, mut peak_demand) = (fleet.capacity(), 0usize);
    let mut actions = Vec::new();
    let (mut timeline, mut markers) = (Vec::new(), Vec::new());
    let (mut counts_checked, mut counts_match) = (Vec::new(), false);
    let mut checked = false;
    let mut cordoned_seen = std::collections::BTreeSet::new();
    let (mut scale_in_victims, mut victims_cordoned_first) = (0, 0);
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    // Past `duration`, the demo waits (at most OVERTIME) for the fleet to reach its minimum and
    // for the chat clients to finish.
    while start.elapsed() < cfg.duration
        || (start.elapsed() < cfg.duration + OVERTIME
            && (chat.as_ref().is_some_and(|c| !c.is_finished())
                || fleet.capacity() > policy.group.min_size
                || fleet.instances.iter().any(|i| i.draining)))
    {
        let t = start.elapsed().as_secs_f64();
        let frac = t / cfg.duration.as_secs_f64();
        if !chat_stopped
            && frac >= 0.70
            && fleet.capacity() <= policy.group.min_size
            && fleet.instances.iter().all(|i| !i.draining)
        {
            chat_stop.notify_one();
            chat_stopped = true;
        }
        let want = (cfg.peak as f64 * shape(frac)).round() as usize;
        holders.adjust(want, balancer.port);
        // On two or more nodes with room, round robin spreads the chat clients, so the last
        // scale-ins must drain some of them (on one node, the node left holding every chat
        // client is never the least connected: nothing of theirs would be drained). A fleet
        // that never grows gets them anyway, later.
        let spread = fleet.healthy_ports().len() >= 2;
        if chat.is_none() && frac >= 0.30 && (spread || frac >= 0.45) {
            chat = Some(tokio::spawn(loadtest::chat::run(chat_cfg.clone())));
        }
        peak_demand = peak_demand.max(want);
        fleet.refresh().await;
        balancer.set_targets(fleet.healthy_ports());
        cordoned_seen.extend(
            fleet
                .instances
                .iter()
                .filter(|i| i.cordoned)
                .map(|i| i.id.clone()),
        );
        // At full load, once things settle, the agents' counts must equal the balancer's.
        if !checked && frac > 0.40 {
            let live = balancer.live();
            let pairs: Vec<(String, Option<u64>, usize)> = fleet
                .instances
                .iter()
                .filter(|i| !i.draining && !i.warmed)
                .map(|i| {
                    (
                        i.id.clone(),
                        i.connections,
                        live.get(&i.port).copied().unwrap_or(0),
                    )
                })
                .collect();
            let equal = |(_, a, b): &(String, Option<u64>, usize)| *a == Some(*b as u64);
            if pairs.iter().all(equal) || frac > 0.44 {
                counts_match = pairs.iter().all(equal);
                counts_checked = pairs;
                checked = true;
            }
        }
        let (step, next) = ctl
            .step(&mut fleet, control::epoch())
            .await
            .map_err(|e| e.to_string())?;
        match step {
            control::Step::Turned(turn) if turn.changes => {
                if let Direction::ScaleIn { victims, .. } = &turn.decision.direction {
                    scale_in_victims += victims.len();
                    victims_cordoned_first += victims
                        .iter()
                        .filter(|v| cordoned_seen.contains(*v))
                        .count();
                }
                let reason = turn.decision.reason;
                say(format!("[{t:5.1}s] {reason}"));
                actions.push(Action {
                    t,
                    direction: turn.decision.direction,
                    reason: reason.clone(),
                });
                markers.push((t, reason));
                all_pids.extend(fleet.pids());
            }
            control::Step::Failed(e) => {
                say(format!("[{t:5.1}s] turn failed, retrying in {next:?}: {e}"))
            }
            _ => {}
        }
        let desired = fleet.desired;
        let running = fleet.instances.iter().filter(|i| !i.warmed).count();
        peak_instances = peak_instances.max(running as u32);
        let serving = fleet
            .instances
            .iter()
            .filter(|i| i.serving && !i.draining)
            .count();
        timeline.push((
            t,
            want as f64,
            (serving as u64 * cap as u64) as f64,
            running as f64,
        ));
        say(format!(
            "[{t:5.1}s] demand {:>5} open {:>5} | desired {desired} | {}",
            want,
            holders.open.load(Ordering::Relaxed),
            fleet
                .instances
                .iter()
                .map(|i| format!(
                    "{} {:>7}{}",
                    i.id,
                    i.connections
                        .map_or_else(|| "no data".to_string(), |c| c.to_string()),
                    if i.warmed {
                        " in warm pool"
                    } else if i.draining {
                        " draining"
                    } else if !i.serving {
                        " starting"
                    } else if i.cordoned {
                        " cordoned"
                    } else if i.healthy {
                        ""
                    } else {
                        " FULL"
                    }
                ))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
        tokio::select! {
            _ = tokio::time::sleep(next) => {},
            _ = &mut ctrl_c => { say("interrupted: stopping everything".into()); break; }
        }
    }
    holders.adjust(0, balancer.port);
    let messages = match chat {
        Some(c) => match tokio::time::timeout(Duration::from_secs(30), c).await {
            Ok(Ok(Ok(r))) => r,
            _ => loadtest::chat::ChatReport::default(),
        },
        None => loadtest::chat::ChatReport::default(),
    };
    fleet.refresh().await;
    let final_instances = fleet.capacity();
    let lifecycle = fleet.counts;
    let drain_details: Vec<DrainDetail> = std::mem::take(&mut fleet.drain_records)
        .into_iter()
        .map(|record| DrainDetail {
            most_reconnects_per_node_second: balancer.most_opened_per_second(
                record.port,
                record.started,
                record.ended + Duration::from_secs(2),
            ),
            record,
        })
        .collect();
    all_pids.extend(fleet.pids());
    all_pids.push(redis.0.id());
    drop(fleet);
    drop(redis);
    tokio::time::sleep(Duration::from_millis(300)).await;
    all_pids.sort_unstable();
    all_pids.dedup();
    let processes_left = all_pids.iter().filter(|p| alive(**p)).count();
    if let Some(path) = &cfg.plot {
        let series = [
            Series {
                name: "demand (idle conns)",
                points: timeline.iter().map(|p| (p.0, p.1)).collect(),
                dashed: false,
            },
            Series {
                name: "capacity (serving × cap)",
                points: timeline.iter().map(|p| (p.0, p.2)).collect(),
                dashed: true,
            },
        ];
        let svg = line_chart(
            "connscale demo: demand, capacity and scaling actions (ticks)",
            "connections",
            ("seconds", 1.0),
            &series,
            &markers,
        );
        std::fs::write(path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let scale_outs = actions
        .iter()
        .filter(|a| matches!(a.direction, Direction::ScaleOut { .. }))
        .count();
    let scale_ins = actions
        .iter()
        .filter(|a| matches!(a.direction, Direction::ScaleIn { .. }))
        .count();
    Ok(DemoReport {
        duration_s: start.elapsed().as_secs_f64(),
        peak_demand,
        node_cap: cap,
        min_size: policy.group.min_size,
        peak_instances,
        final_instances,
        scale_outs,
        scale_ins,
        actions,
        rejected_connections: balancer.rejected() + holders.failed.load(Ordering::Relaxed),
        messages,
        counts_match,
        counts_checked,
        processes_left,
        lifecycle,
        workload: match cfg.workload {
            Workload::ChatNode => "chat-node",
            Workload::Node { .. } => "node",
        },
        drain_details,
        cut_clients: holders.cut[0].load(Ordering::Relaxed),
        cut_clients_reconnected: holders.cut[1].load(Ordering::Relaxed),
        cut_clients_stopped: holders.cut[2].load(Ordering::Relaxed),
        cordoned_instances: cordoned_seen.len(),
        scale_in_victims,
        victims_cordoned_first,
    })
}
