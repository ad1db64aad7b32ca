//! The local fleet (the embedded default provider): chat-node + agent process pairs on this
//! machine, one pair per "instance", behind a round-robin [`balancer`].
//!
//! Instances use ports from 21000 up, below the kernel's ephemeral range, so no client socket
//! on 127.0.0.x can take a service port (the agent counts by local port). Processes are started
//! with a parent-death signal and killed on drop, so none outlives the controller.

pub mod balancer;
mod provider;

use crate::engine::{InstanceView, Lifecycle, Observation};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One chat-node + agent pair.
pub struct Instance {
    pub id: String,
    pub port: u16,
    pub health_port: u16,
    chat: Child,
    agent: Child,
    pub launched_at: i64,
    pub draining: bool,
    pub serving: bool,
    /// The agent's count from its last /health answer; `None` when it did not answer with one.
    pub connections: Option<u64>,
    pub healthy: bool,
}

impl Drop for Instance {
    fn drop(&mut self) {
        for c in [&mut self.chat, &mut self.agent] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Settings for the processes the fleet starts.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub bin_dir: PathBuf,
    pub redis_url: String,
    pub cap: u64,
    pub api_token: String,
    pub drain_window: Duration,
    /// Group bounds reported to the control loop.
    pub min_size: u32,
    pub max_size: u32,
}

pub struct LocalFleet {
    pub settings: FleetSettings,
    pub instances: Vec<Instance>,
    /// The desired capacity the control loop last set.
    pub desired: u32,
    next: u32,
    http: reqwest::Client,
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
    pub fn new(settings: FleetSettings) -> Self {
        Self {
            settings,
            instances: Vec::new(),
            desired: 0,
            next: 0,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Starts one pair; returns its id.
    pub fn launch(&mut self, now: i64) -> Result<String, String> {
        let s = &self.settings;
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
        let bin = |name: &str| {
            let p = s.bin_dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(format!(
                    "{name} not found next to connscale ({}); build it: cargo build --release --bins",
                    p.display()
                ))
            }
        };
        let mut chat = Command::new(bin("chat-node")?);
        chat.args([
            "--port",
            &port.to_string(),
            "--node-id",
            &id,
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
        let mut agent = Command::new(bin("connscale-agent")?);
        agent
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                &format!("127.0.0.1:{hport}"),
                "--cap",
                &s.cap.to_string(),
                "--quiet",
            ])
            .env("CONNSCALE_AGENT_CLOUDWATCH", "off")
            .env("CONNSCALE_IMDS_ENDPOINT", "http://127.0.0.1:9");
        let chat = spawn(chat).map_err(|e| format!("cannot start chat-node: {e}"))?;
        let agent = spawn(agent).map_err(|e| format!("cannot start connscale-agent: {e}"))?;
        self.instances.push(Instance {
            id: id.clone(),
            port,
            health_port: hport,
            chat,
            agent,
            launched_at: now,
            draining: false,
            serving: false,
            connections: None,
            healthy: false,
        });
        Ok(id)
    }

    /// Reads every agent's /health; forgets drained instances whose chat-node has exited.
    pub async fn refresh(&mut self) {
        let mut gone = Vec::new();
        for (i, inst) in self.instances.iter_mut().enumerate() {
            if inst.draining && matches!(inst.chat.try_wait(), Ok(Some(_))) {
                gone.push(i);
                continue;
            }
            let url = format!("http://127.0.0.1:{}/health", inst.health_port);
            match self.http.get(&url).send().await {
                Ok(r) => {
                    inst.healthy = r.status().is_success();
                    inst.connections = r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| v["connections"].as_u64());
                    // Serving once chat-node accepts connections too.
                    inst.serving = inst.serving
                        || std::net::TcpStream::connect(("127.0.0.1", inst.port)).is_ok();
                }
                Err(_) => {
                    inst.healthy = false;
                    inst.connections = None;
                }
            }
        }
        for i in gone.into_iter().rev() {
            self.instances.remove(i);
        }
    }

    /// Asks an instance's chat-node to drain (it disconnects clients over its drain window and
    /// exits); the balancer stops sending it new clients at once.
    pub async fn drain(&mut self, id: &str) {
        let Some(inst) = self.instances.iter_mut().find(|i| i.id == id) else {
            return;
        };
        inst.draining = true;
        let url = format!("http://127.0.0.1:{}/api/drain", inst.port);
        let _ = self
            .http
            .post(&url)
            .bearer_auth(&self.settings.api_token)
            .send()
            .await;
    }

    /// Ports the balancer may send new clients to.
    pub fn healthy_ports(&self) -> Vec<u16> {
        self.instances
            .iter()
            .filter(|i| i.serving && i.healthy && !i.draining)
            .map(|i| i.port)
            .collect()
    }

    /// Instances that count toward capacity (launching or serving, not draining).
    pub fn capacity(&self) -> u32 {
        self.instances.iter().filter(|i| !i.draining).count() as u32
    }

    /// The engine's view of the fleet.
    pub fn observation(&self, now: i64, desired: u32) -> Observation {
        Observation {
            now,
            desired,
            instances: self
                .instances
                .iter()
                .map(|i| InstanceView {
                    id: i.id.clone(),
                    lifecycle: if i.draining {
                        Lifecycle::Draining
                    } else if i.serving {
                        Lifecycle::InService
                    } else {
                        Lifecycle::Pending
                    },
                    connections: i.connections,
                    launched_at: i.launched_at,
                })
                .collect(),
        }
    }

    /// PIDs of every process the fleet started (for leak checks).
    pub fn pids(&self) -> Vec<u32> {
        self.instances
            .iter()
            .flat_map(|i| [i.chat.id(), i.agent.id()])
            .collect()
    }
}
