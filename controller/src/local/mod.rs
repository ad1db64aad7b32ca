//! The local fleet (the embedded default provider): service + agent process pairs on this
//! machine, one pair per "instance", behind a round-robin [`balancer`]. The service is chat-node
//! or an unmodified Node.js Socket.IO server ([`Workload`]). AWS's side is played
//! by the [`stand_in`]: each agent reads its identity and target lifecycle state from its own
//! IMDS endpoint and completes scale-in through the Auto Scaling API, exactly as on EC2, so a
//! local scale-in runs the agent's production drain.
//!
//! Instances use ports from 21000 up, below the kernel's ephemeral range, so no client socket
//! on 127.0.0.x can take a service port (the agent counts by local port). Processes are started
//! with a parent-death signal and killed on drop, so none outlives the controller.

pub mod balancer;
mod provider;
pub mod stand_in;

use connscale_common::policy::{PoolState, WarmPool};
use stand_in::{Hook, StandIn};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One service + agent pair.
pub struct Instance {
    pub id: String,
    pub port: u16,
    pub health_port: u16,
    service: Option<Child>,
    agent: Option<Child>,
    pub launched_at: i64,
    pub draining: bool,
    pub serving: bool,
    /// The agent's count from its last /health answer; `None` when it did not answer with one.
    pub connections: Option<u64>,
    pub healthy: bool,
    /// Its agent's last /health said `cordoned`: the controller's tag keeps it out of the
    /// balancer.
    pub cordoned: bool,
    /// Waiting in the warm pool (returned by a scale-in that reuses instances).
    pub warmed: bool,
    /// When the current scale-in began.
    drain_started: Option<std::time::Instant>,
}

impl Instance {
    fn stop_service(&mut self) {
        stop(&mut self.service);
    }

    fn stop_all(&mut self) {
        stop(&mut self.service);
        stop(&mut self.agent);
    }
}

fn stop(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// What each local instance serves, and so how its agent drains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// chat-node, which drains itself when the agent POSTs its `/api/drain` (method `http`).
    ChatNode,
    /// An unmodified Node.js Socket.IO server: `node <server>` with `PORT` and `REDIS_URL`, which
    /// knows nothing of draining; its agent closes the connections itself (method `close`).
    Node { server: PathBuf },
}

/// Settings for the processes the fleet starts.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub bin_dir: PathBuf,
    pub workload: Workload,
    pub redis_url: String,
    pub cap: u64,
    pub api_token: String,
    pub drain_window: Duration,
    /// The agent's drain grace: a victim's clients may leave by themselves this long, until
    /// fewer than `grace_until_below` remain (the policy's `scale_in.drain_grace` and
    /// `drain_grace_until_below`, as the terraform module sets them).
    pub grace: Duration,
    pub grace_until_below: u32,
    /// Group bounds reported to the control loop.
    pub min_size: u32,
    pub max_size: u32,
    /// The load balancer's deregistration delay: lifecycle calls fail until it has passed.
    pub deregistration_delay: Duration,
    /// The drain hook's heartbeat timeout; past it the hook's default result (CONTINUE) applies.
    pub heartbeat_timeout: Duration,
    /// Scale-in returns instances here when the pool reuses them.
    pub warm_pool: Option<WarmPool>,
}

/// The group name and drain hook the local fleet's agents see, as on AWS.
pub const GROUP: &str = "local";
pub const DRAIN_HOOK: &str = "connscale-drain";

/// How scale-ins ended, for the demo's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScaleInCounts {
    /// Scale-ins started (instances handed to their drain hook).
    pub drains: usize,
    /// Scale-ins whose lifecycle action the instance's own agent completed.
    #[serde(rename = "scale_ins_completed_by_agent")]
    pub completed_by_agent: usize,
    /// Scale-ins whose hook timed out (the default result applied).
    pub lifecycle_timeouts: usize,
    /// Instances that went back to the warm pool, and that left it again.
    pub warm_pool_returns: usize,
    pub warm_pool_launches: usize,
}

/// One finished scale-in, as its agent reported it on /metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DrainRecord {
    pub instance: String,
    /// The instance's service port (the balancer's target).
    #[serde(skip)]
    pub port: u16,
    /// When the scale-in began and ended.
    #[serde(skip)]
    pub started: std::time::Instant,
    #[serde(skip)]
    pub ended: std::time::Instant,
    /// Connections open when the agent began closing them (`close` only).
    pub connections_at_start: Option<u64>,
    /// Connections the agent closed itself (`close` only; 0 for chat-node's own drain).
    pub closed_by_agent: u64,
    /// From the scale-in to the completed hook, seconds.
    pub duration_s: f64,
}

pub struct LocalFleet {
    pub settings: FleetSettings,
    pub instances: Vec<Instance>,
    /// The desired capacity the control loop last set.
    pub desired: u32,
    pub counts: ScaleInCounts,
    /// Every finished scale-in, in order.
    pub drain_records: Vec<DrainRecord>,
    pub stand_in: StandIn,
    /// Agents' config files (they hold the drain token): removed on drop.
    work_dir: PathBuf,
    next: u32,
    http: reqwest::Client,
}

impl Drop for LocalFleet {
    fn drop(&mut self) {
        self.instances.clear();
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

/// Writes a file only this user can read (agents' configs carry the drain token).
fn write_private(path: &std::path::Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Spawns a child that the kernel kills if this process dies. Call from the main thread only:
/// the signal follows the thread that forked.
fn spawn(mut cmd: Command) -> std::io::Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    connscale_common::limits::kill_with_parent(&mut cmd);
    cmd.spawn()
}

fn free(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

impl LocalFleet {
    /// Starts the fleet's AWS stand-in; instances come with [`LocalFleet::launch`].
    pub async fn new(settings: FleetSettings) -> Result<Self, String> {
        let stand_in = StandIn::start(GROUP, DRAIN_HOOK, settings.heartbeat_timeout)
            .await
            .map_err(|e| format!("cannot start the local AWS stand-in: {e}"))?;
        let work_dir = std::env::temp_dir().join(format!("connscale-local-{}", std::process::id()));
        std::fs::create_dir_all(&work_dir)
            .map_err(|e| format!("cannot create {}: {e}", work_dir.display()))?;
        Ok(Self {
            settings,
            instances: Vec::new(),
            desired: 0,
            counts: ScaleInCounts::default(),
            drain_records: Vec::new(),
            stand_in,
            work_dir,
            next: 0,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
        })
    }

    /// Brings one instance into service: from the warm pool when it holds one, else a new
    /// pair. Returns its id.
    pub fn launch(&mut self, now: i64) -> Result<String, String> {
        if let Some(i) = self.instances.iter().position(|i| i.warmed) {
            return self.leave_pool(i, now);
        }
        self.launch_new(now, "InService")
    }

    /// Tops the warm pool up to its minimum, as AWS does: new instances launch, finish
    /// starting and wait (a Running pool keeps their processes up).
    pub fn fill_pool(&mut self, now: i64) -> Result<(), String> {
        let Some(pool) = self.settings.warm_pool.clone() else {
            return Ok(());
        };
        while self.warm_instances() < pool.min_size {
            let state = format!("Warmed:{}", pool.state.aws_name());
            let id = self.launch_new(now, &state)?;
            if let Some(inst) = self.instances.iter_mut().find(|i| i.id == id) {
                if pool.state != PoolState::Running {
                    inst.stop_all();
                }
                inst.warmed = true;
            }
        }
        Ok(())
    }

    fn launch_new(&mut self, now: i64, target_state: &str) -> Result<String, String> {
        let (mut port, mut hport) = (0, 0);
        for _ in 0..500 {
            self.next += 1;
            let (p, h) = (21_000 + self.next as u16 * 2, 21_001 + self.next as u16 * 2);
            if free(p) && free(h) {
                (port, hport) = (p, h);
                break;
            }
        }
        if port == 0 {
            return Err("no free ports in 21000-22000 for a local instance".into());
        }
        let id = format!("i-{:04}", self.next);
        self.stand_in.set_state(&id, target_state);
        let service = spawn(self.service_command(&id, port)?)
            .map_err(|e| format!("cannot start the service: {e}"))?;
        let agent = spawn(self.agent_command(&id, port, hport)?)
            .map_err(|e| format!("cannot start connscale-agent: {e}"))?;
        self.instances.push(Instance {
            id: id.clone(),
            port,
            health_port: hport,
            service: Some(service),
            agent: Some(agent),
            launched_at: now,
            draining: false,
            serving: false,
            connections: None,
            healthy: false,
            cordoned: false,
            warmed: false,
            drain_started: None,
        });
        Ok(id)
    }

    /// A warm-pool instance goes back into service: its target state reads `InService` again
    /// (an agent that waited in a Running pool leaves its draining state) and its processes
    /// start.
    fn leave_pool(&mut self, i: usize, now: i64) -> Result<String, String> {
        let (id, port, hport) = {
            let inst = &self.instances[i];
            (inst.id.clone(), inst.port, inst.health_port)
        };
        self.stand_in.set_state(&id, "InService");
        let service = match self.instances[i].service.take() {
            Some(c) => c,
            None => spawn(self.service_command(&id, port)?)
                .map_err(|e| format!("cannot start the service: {e}"))?,
        };
        let agent = match self.instances[i].agent.take() {
            Some(a) => a,
            None => spawn(self.agent_command(&id, port, hport)?)
                .map_err(|e| format!("cannot start connscale-agent: {e}"))?,
        };
        let inst = &mut self.instances[i];
        inst.service = Some(service);
        inst.agent = Some(agent);
        (inst.warmed, inst.serving, inst.healthy, inst.launched_at) = (false, false, false, now);
        self.counts.warm_pool_launches += 1;
        Ok(id)
    }

    fn bin(&self, name: &str) -> Result<PathBuf, String> {
        let p = self.settings.bin_dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "{name} not found next to connscale ({}); build it: cargo build --release --bins",
                p.display()
            ))
        }
    }

    fn service_command(&self, id: &str, port: u16) -> Result<Command, String> {
        let s = &self.settings;
        if let Workload::Node { server } = &s.workload {
            let mut node = Command::new("node");
            node.arg(server)
                .env("PORT", port.to_string())
                .env("REDIS_URL", s.redis_url.trim_end_matches('/'));
            return Ok(node);
        }
        let mut chat = Command::new(self.bin("chat-node")?);
        chat.args([
            "--port",
            &port.to_string(),
            "--node-id",
            id,
            "--redis-url",
            &s.redis_url,
        ])
        .env("CHAT_API_TOKEN", &s.api_token)
        .env("CHAT_MAX_CONNECTIONS", (s.cap + s.cap / 5).to_string())
        .env(
            "CHAT_DRAIN_WINDOW",
            format!("{}ms", s.drain_window.as_millis()),
        )
        .env("CHAT_RATE_PER_SEC", "200")
        .env("CHAT_RATE_BURST", "400");
        Ok(chat)
    }

    /// The agent's `[drain]` method lines, after the grace: chat-node drains itself when told;
    /// any other service has its connections closed by the agent over the drain window (within
    /// the deregistration delay, as the terraform module sizes it).
    fn drain_method(&self, port: u16) -> String {
        let s = &self.settings;
        let grace = format!(
            "grace = \"{}ms\"\ngrace_until_below = {}\n",
            s.grace.as_millis(),
            s.grace_until_below
        );
        match s.workload {
            Workload::ChatNode => format!(
                "method = \"http\"\n{grace}drain_url = \"http://127.0.0.1:{port}/api/drain\"\ndrain_token = \"{}\"\n",
                s.api_token
            ),
            Workload::Node { .. } => format!(
                "method = \"close\"\n{grace}window = \"{}ms\"\n",
                s.drain_window.as_millis()
            ),
        }
    }

    /// The agent as on EC2: identity and lifecycle state from its IMDS endpoint, drain through
    /// chat-node's drain endpoint and the Auto Scaling lifecycle calls.
    fn agent_command(&self, id: &str, port: u16, hport: u16) -> Result<Command, String> {
        let s = &self.settings;
        let config = format!(
            "ports = [{port}]\n\
             [health]\nbind = \"127.0.0.1:{hport}\"\ncap = {cap}\n\
             [cloudwatch]\nmode = \"off\"\n\
             [identity]\nimds_endpoint = \"{imds}\"\n\
             [drain]\nenabled = true\n{method}\
             threshold = 1\ntimeout = \"{timeout}ms\"\nheartbeat_interval = \"1s\"\n\
             poll_interval = \"1s\"\nhook_heartbeat_timeout = \"{hook}s\"\n\
             hook_name = \"{DRAIN_HOOK}\"\n",
            hook = s.heartbeat_timeout.as_secs(),
            cap = s.cap,
            imds = self.stand_in.imds_url(id),
            method = self.drain_method(port),
            timeout = (s.grace + s.deregistration_delay + s.drain_window * 3).as_millis(),
        );
        let path = self.work_dir.join(format!("agent-{id}.toml"));
        write_private(&path, &config)?;
        let mut agent = Command::new(self.bin("connscale-agent")?);
        agent
            .arg("--config")
            .arg(&path)
            .arg("--quiet")
            .env(
                "AWS_ENDPOINT_URL_AUTO_SCALING",
                self.stand_in.autoscaling_url(),
            )
            .env("AWS_ACCESS_KEY_ID", "local")
            .env("AWS_SECRET_ACCESS_KEY", "local")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_REGION")
            .env_remove("AWS_ENDPOINT_URL");
        for var in [
            "CONNSCALE_AGENT_CLOUDWATCH",
            "CONNSCALE_IMDS_ENDPOINT",
            "CONNSCALE_GROUP",
        ] {
            agent.env_remove(var);
        }
        Ok(agent)
    }

    /// Reads every agent's /health; ends scale-ins whose hook the agent completed or that
    /// timed out.
    pub async fn refresh(&mut self) {
        self.record_drains().await;
        self.finish_scale_ins();
        for inst in self.instances.iter_mut().filter(|i| !i.warmed) {
            let url = format!("http://127.0.0.1:{}/health", inst.health_port);
            match self.http.get(&url).send().await {
                Ok(r) => {
                    inst.healthy = r.status().is_success();
                    let body = r.json::<serde_json::Value>().await.ok();
                    let body = body.as_ref();
                    inst.connections = body.and_then(|v| v["connections"].as_u64());
                    inst.cordoned = body.is_some_and(|v| v["state"] == "cordoned");
                    // Serving once the service accepts connections too.
                    inst.serving = inst.serving
                        || std::net::TcpStream::connect(("127.0.0.1", inst.port)).is_ok();
                }
                Err(_) => {
                    inst.healthy = false;
                    inst.connections = None;
                    inst.cordoned = false;
                }
            }
        }
    }

    /// Reads what the agent of each scale-in that just ended reports about its drain (before
    /// the instance goes).
    async fn record_drains(&mut self) {
        for inst in self.instances.iter_mut().filter(|i| i.draining) {
            let Some(started) = inst.drain_started else {
                continue;
            };
            if !matches!(
                self.stand_in.hook(&inst.id),
                Some(Hook::Completed { .. } | Hook::TimedOut)
            ) {
                continue;
            }
            inst.drain_started = None;
            let url = format!("http://127.0.0.1:{}/metrics", inst.health_port);
            let metrics = match self.http.get(&url).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            let gauge = |name: &str| {
                metrics.lines().find_map(|l| {
                    l.strip_prefix(name)?
                        .strip_prefix(' ')?
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
            };
            self.drain_records.push(DrainRecord {
                instance: inst.id.clone(),
                port: inst.port,
                started,
                ended: std::time::Instant::now(),
                connections_at_start: gauge("connscale_drain_open_at_close_start")
                    .map(|v| v as u64),
                closed_by_agent: gauge("connscale_drain_closed_total").unwrap_or(0.0) as u64,
                duration_s: started.elapsed().as_secs_f64(),
            });
        }
    }

    /// A completed or timed-out hook lets the instance go: to the warm pool when the scale-in
    /// returns it there, else away.
    fn finish_scale_ins(&mut self) {
        let mut gone = Vec::new();
        for (i, inst) in self.instances.iter_mut().enumerate() {
            if !inst.draining {
                continue;
            }
            match self.stand_in.hook(&inst.id) {
                Some(Hook::Completed { .. }) => self.counts.completed_by_agent += 1,
                Some(Hook::TimedOut) => {
                    tracing::warn!(instance = %inst.id, "drain hook timed out: the default result (CONTINUE) applies");
                    self.counts.lifecycle_timeouts += 1;
                }
                _ => continue,
            }
            match self
                .settings
                .warm_pool
                .as_ref()
                .filter(|p| p.reuse_on_scale_in)
            {
                Some(pool) => {
                    // A Running pool keeps the instance (and its agent) up; the service drained.
                    inst.stop_service();
                    if pool.state != PoolState::Running {
                        inst.stop_all();
                    }
                    (inst.warmed, inst.draining, inst.serving) = (true, false, false);
                    (inst.healthy, inst.connections, inst.cordoned) = (false, None, false);
                    self.counts.warm_pool_returns += 1;
                }
                None => gone.push(i),
            }
        }
        for i in gone.into_iter().rev() {
            let inst = self.instances.remove(i);
            self.stand_in.forget(&inst.id);
        }
    }

    /// Scales an instance in as AWS does behind a load balancer: the balancer stops sending it
    /// clients at once, its target lifecycle state reads `Terminated` (or the warm pool's state
    /// for a reuse-on-scale-in return), and its hook becomes active after the deregistration
    /// delay. Its own agent drains the service and completes the hook.
    pub async fn drain(&mut self, id: &str) {
        let Some(inst) = self.instances.iter_mut().find(|i| i.id == id) else {
            return;
        };
        inst.draining = true;
        inst.drain_started = Some(std::time::Instant::now());
        self.counts.drains += 1;
        let target = match self
            .settings
            .warm_pool
            .as_ref()
            .filter(|p| p.reuse_on_scale_in)
        {
            Some(p) => format!("Warmed:{}", p.state.aws_name()),
            None => "Terminated".into(),
        };
        self.stand_in
            .begin_scale_in(id, &target, self.settings.deregistration_delay);
    }

    /// Ports the balancer may send new clients to.
    pub fn healthy_ports(&self) -> Vec<u16> {
        self.instances
            .iter()
            .filter(|i| i.serving && i.healthy && !i.draining && !i.warmed)
            .map(|i| i.port)
            .collect()
    }

    /// Instances that count toward capacity (launching or serving, not draining or pooled).
    pub fn capacity(&self) -> u32 {
        self.instances
            .iter()
            .filter(|i| !i.draining && !i.warmed)
            .count() as u32
    }

    /// Instances waiting in the warm pool.
    pub fn warm_instances(&self) -> u32 {
        self.instances.iter().filter(|i| i.warmed).count() as u32
    }

    /// PIDs of every process the fleet started (for leak checks).
    pub fn pids(&self) -> Vec<u32> {
        self.instances
            .iter()
            .flat_map(|i| [&i.service, &i.agent])
            .filter_map(|c| c.as_ref().map(Child::id))
            .collect()
    }
}
