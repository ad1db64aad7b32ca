//! Helpers shared by the agent's integration tests: the agent binary, held connections.
#![allow(dead_code)]

use connscale_test_support::{ServerProcess, free_port, wait_for_port};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The agent binary with a health endpoint on a free port.
pub struct Agent {
    pub process: ServerProcess,
    pub health: SocketAddr,
}

pub fn start_agent(args: &[&str], env: &[(&str, String)]) -> Agent {
    start_agent_under(&[], args, env)
}

/// The agent started through `wrapper` (e.g. `setpriv` with fewer capabilities), if any.
pub fn start_agent_under(wrapper: &[&str], args: &[&str], env: &[(&str, String)]) -> Agent {
    // Cargo's own path to this package's binary: `workspace_bin` looks next to the test
    // executable, which with a separate build dir (CARGO_BUILD_BUILD_DIR) is another tree's.
    let bin = env!("CARGO_BIN_EXE_connscale-agent");
    let health = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(["--bind", &health.to_string(), "--quiet"])
        .args(args);
    cmd.env("CONNSCALE_IMDS_ENDPOINT", "http://127.0.0.1:9"); // never the real IMDS
    for (k, v) in env {
        cmd.env(k, v);
    }
    let process = ServerProcess::spawn("agent", cmd).expect("spawn agent");
    assert!(
        wait_for_port(health, Duration::from_secs(20)),
        "agent health endpoint did not come up"
    );
    Agent { process, health }
}

impl Agent {
    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.health))
            .await
            .expect("GET agent");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// A Prometheus gauge/counter value from /metrics.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{name} "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(-1.0)
    }

    /// Polls until `pred` holds for /health's (status, connections), up to `secs` seconds.
    pub async fn wait_health(&self, secs: u64, pred: impl Fn(u16, u64) -> bool) -> (u16, u64) {
        let mut last = (0, 0);
        for _ in 0..secs * 10 {
            let (code, body) = self.get("/health").await;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            last = (code, v["connections"].as_u64().unwrap_or(u64::MAX));
            if pred(last.0, last.1) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("health never matched; last (status, connections) = {last:?}");
    }
}

/// A Python helper process from hold.py (killed on drop: its stdin closes with it).
pub struct Helper(pub Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn helper(args: &[&str]) -> Helper {
    helper_via(&[], args)
}

/// [`helper`] started through a launcher, e.g. `["unshare", "-n"]` (which execs python3, so the
/// helper's pid is the child's).
pub fn helper_via(launcher: &[&str], args: &[&str]) -> Helper {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hold.py");
    let (program, pre) = match launcher.split_first() {
        Some((p, rest)) => (*p, [rest, &["python3"]].concat()),
        None => ("python3", vec![]),
    };
    let mut child = Command::new(program)
        .args(pre)
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 (install python3)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("helper output");
    assert_eq!(line.trim(), "ready", "helper {args:?} failed");
    Helper(child)
}
