//! A throwaway Redis Cluster: a few masters, no replicas, persistence off.

use crate::process::{ServerProcess, find_tool, free_port, wait_for_port};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const INSTALL: &str = "apt-get install -y redis-server redis-tools (or run scripts/test)";

/// A running cluster of `redis-server --cluster-enabled yes` processes, its slots spread over
/// every master by `redis-cli --cluster create`; stopped on drop.
#[derive(Debug)]
pub struct RedisCluster {
    ports: Vec<u16>,
    _nodes: Vec<ServerProcess>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts `masters` (≥ 3, as `redis-cli --cluster create` wants) servers and joins them;
    /// returns once every node reports `cluster_state:ok`.
    pub fn start(masters: usize) -> Self {
        Self::try_start(masters).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start(masters: usize) -> Result<Self, String> {
        let server = find_tool("redis-server", &[PathBuf::from("/usr/bin")], INSTALL)
            .map_err(|e| e.to_string())?;
        let cli = find_tool("redis-cli", &[PathBuf::from("/usr/bin")], INSTALL)
            .map_err(|e| e.to_string())?;
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let mut ports = Vec::new();
        let mut nodes = Vec::new();
        for _ in 0..masters {
            // The cluster bus listens on port + 10000: both must be free.
            let port = loop {
                let p = free_port();
                if std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
                    break p;
                }
            };
            let mut cmd = Command::new(&server);
            cmd.current_dir(dir.path())
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", "2000"])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"]);
            nodes.push(
                ServerProcess::spawn("redis-cluster-node", cmd)
                    .map_err(|e| format!("cannot start redis-server: {e}"))?,
            );
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if !wait_for_port(addr, Duration::from_secs(10)) {
                return Err(format!("redis-server did not listen on {addr} within 10 s"));
            }
            ports.push(port);
        }
        let out = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .map_err(|e| format!("cannot run redis-cli: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for p in &ports {
            loop {
                let info = Command::new(&cli)
                    .args(["-p", &p.to_string(), "cluster", "info"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("cluster node {p} not ok within 20 s: {info}"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(Self {
            ports,
            _nodes: nodes,
            _dir: dir,
        })
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...`: chat-node's form for a cluster.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }
}
