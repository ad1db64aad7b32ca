//! A throwaway Redis Cluster: a few masters, optionally one replica each, persistence off.

use crate::process::{ServerProcess, find_tool, free_port, wait_for_port};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const INSTALL: &str = "apt-get install -y redis-server redis-tools (or run scripts/test)";

/// A running cluster of `redis-server --cluster-enabled yes` processes, its slots spread over
/// every master by `redis-cli --cluster create`; stopped on drop. With replicas, a master can
/// be killed ([`kill`](Self::kill)) and its replica's promotion awaited
/// ([`wait_promoted`](Self::wait_promoted)).
#[derive(Debug)]
pub struct RedisCluster {
    cli: PathBuf,
    /// Every server's port, masters first (in the order `--cluster create` was given them).
    ports: Vec<u16>,
    /// The process on each port; None once killed.
    nodes: BTreeMap<u16, Option<ServerProcess>>,
    _dir: tempfile::TempDir,
}

/// One master as `CLUSTER NODES` lists it: its port and the slot ranges it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    pub port: u16,
    pub slots: Vec<(u16, u16)>,
}

impl Master {
    pub fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&slot))
    }
}

impl RedisCluster {
    /// Starts `masters` (≥ 3, as `redis-cli --cluster create` wants) servers and joins them;
    /// returns once every node reports `cluster_state:ok`.
    pub fn start(masters: usize) -> Self {
        Self::try_start(masters, 0).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`start`](Self::start) with `replicas` replicas per master (`--cluster-replicas`);
    /// returns once every node is ok and every replica's link to its master is up (a replica
    /// that has not synced cannot take over).
    pub fn start_with_replicas(masters: usize, replicas: usize) -> Self {
        Self::try_start(masters, replicas).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start(masters: usize, replicas: usize) -> Result<Self, String> {
        let server = find_tool("redis-server", &[PathBuf::from("/usr/bin")], INSTALL)
            .map_err(|e| e.to_string())?;
        let cli = find_tool("redis-cli", &[PathBuf::from("/usr/bin")], INSTALL)
            .map_err(|e| e.to_string())?;
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let mut c = Self {
            cli,
            ports: Vec::new(),
            nodes: BTreeMap::new(),
            _dir: dir,
        };
        for _ in 0..masters * (1 + replicas) {
            let (port, p) = c.spawn_node(&server)?;
            c.ports.push(port);
            c.nodes.insert(port, Some(p));
        }
        let out = Command::new(&c.cli)
            .arg("--cluster")
            .arg("create")
            .args(c.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .map_err(|e| format!("cannot run redis-cli: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        c.wait_ok(Duration::from_secs(20))?;
        if replicas > 0 {
            c.wait_replicas_synced(Duration::from_secs(20))?;
        }
        Ok(c)
    }

    /// One cluster-enabled server on a free port (its bus, port + 10000, free too).
    fn spawn_node(&self, server: &PathBuf) -> Result<(u16, ServerProcess), String> {
        let port = loop {
            let p = free_port();
            if p < 55535 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
                break p;
            }
        };
        let mut cmd = Command::new(server);
        cmd.current_dir(self._dir.path())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-node-timeout", "2000"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"]);
        let p = ServerProcess::spawn("redis-cluster-node", cmd)
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if !wait_for_port(addr, Duration::from_secs(10)) {
            return Err(format!("redis-server did not listen on {addr} within 10 s"));
        }
        Ok((port, p))
    }

    /// `redis-cli -p PORT ARGS...`'s output ("" if it could not run).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        Command::new(&self.cli)
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Waits until every live node reports `cluster_state:ok`.
    fn wait_ok(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        for p in self.live_ports() {
            loop {
                let info = self.cli(p, &["cluster", "info"]);
                if info.contains("cluster_state:ok") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "cluster node {p} not ok within {timeout:?}: {info}"
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    fn wait_replicas_synced(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lagging: Vec<u16> = self
                .live_ports()
                .into_iter()
                .filter(|p| {
                    let info = self.cli(*p, &["info", "replication"]);
                    info.contains("role:slave") && !info.contains("master_link_status:up")
                })
                .collect();
            if lagging.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "replicas {lagging:?} not synced within {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every port the cluster started with (killed nodes included).
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Ports of the nodes not killed.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|(_, p)| p.is_some())
            .map(|(port, _)| *port)
            .collect()
    }

    /// The masters serving slots now, as a live node sees them (failed ones left out).
    pub fn masters(&self) -> Vec<Master> {
        let Some(seen_by) = self.live_ports().first().copied() else {
            return Vec::new();
        };
        parse_masters(&self.cli(seen_by, &["cluster", "nodes"]))
    }

    /// The slot of a key (or channel): `CLUSTER KEYSLOT`, so hash tags count as Redis counts them.
    pub fn slot(&self, key: &str) -> Option<u16> {
        let port = *self.live_ports().first()?;
        self.cli(port, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .ok()
    }

    /// The port of the master serving `key` now.
    pub fn master_of(&self, key: &str) -> Option<u16> {
        let slot = self.slot(key)?;
        self.masters()
            .into_iter()
            .find(|m| m.serves(slot))
            .map(|m| m.port)
    }

    /// Kills the server on `port` abruptly (SIGKILL), as a crashed master would be.
    pub fn kill(&mut self, port: u16) {
        if let Some(p) = self.nodes.get_mut(&port).and_then(Option::take) {
            p.signal(libc::SIGKILL);
            drop(p);
        }
    }

    /// After [`kill`](Self::kill)ing master `port`: waits until another node serves every slot
    /// it served and every live node reports `cluster_state:ok`; returns the new master's port
    /// and how long the wait took.
    pub fn wait_promoted(
        &self,
        killed: &Master,
        timeout: Duration,
    ) -> Result<(u16, Duration), String> {
        let start = Instant::now();
        loop {
            let promoted = self
                .masters()
                .into_iter()
                .find(|m| m.port != killed.port && m.slots == killed.slots)
                .map(|m| m.port);
            let ok = self.live_ports().iter().all(|p| {
                self.cli(*p, &["cluster", "info"])
                    .contains("cluster_state:ok")
            });
            if let (Some(port), true) = (promoted, ok) {
                return Ok((port, start.elapsed()));
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "no replica took over {killed:?} within {timeout:?}: {:?}",
                    self.masters()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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

/// The masters with slots in a `CLUSTER NODES` reply, failed ones left out. A line is
/// `id ip:port@bus flags master-id ping pong epoch state slot...`.
fn parse_masters(nodes: &str) -> Vec<Master> {
    nodes
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = f.get(2)?;
            if !flags.contains("master") || flags.contains("fail") {
                return None;
            }
            let port = f
                .get(1)?
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let slots: Vec<(u16, u16)> = f
                .iter()
                .skip(8)
                .filter_map(|s| match s.split_once('-') {
                    Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            (!slots.is_empty()).then_some(Master { port, slots })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_name_masters_and_their_slots() {
        let text = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:7001@17001 master,fail - 0 0 2 connected
c 127.0.0.1:7002@17002 master - 0 0 3 connected 5461-10922 16000
d 127.0.0.1:7003@17003 slave c 0 0 3 connected
";
        assert_eq!(
            parse_masters(text),
            vec![
                Master {
                    port: 7000,
                    slots: vec![(0, 5460)]
                },
                Master {
                    port: 7002,
                    slots: vec![(5461, 10922), (16000, 16000)]
                },
            ]
        );
    }
}
