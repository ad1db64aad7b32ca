//! `loadtest distribution`: connections per node as each node's agent reports them (its
//! `/health` JSON), and how evenly the load balancer spread them.

use connscale_common::spread::Spread;
use serde::Serialize;
use std::time::Duration;

/// One agent's answer.
#[derive(Debug, Clone, Serialize)]
pub struct NodeCount {
    pub agent: String,
    pub connections: Option<u64>,
    pub cap: Option<u64>,
    /// The agent's health state (`ok`, `full`, `draining`), or `unreachable`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DistributionReport {
    pub nodes: Vec<NodeCount>,
    pub total: u64,
    /// Over the nodes that answered.
    pub spread: Option<Spread>,
    pub unreachable: usize,
}

/// Asks every agent (`http://IP:PORT`, with or without `/health`) for its count.
pub async fn run(agents: &[String], timeout: Duration) -> DistributionReport {
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .unwrap_or_default();
    let mut nodes = Vec::new();
    for a in agents {
        let url = if a.ends_with("/health") {
            a.clone()
        } else {
            format!("{}/health", a.trim_end_matches('/'))
        };
        // The body is JSON on 200 and on 503 (full, draining) alike.
        let answer = match http.get(&url).send().await {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        nodes.push(match answer {
            Ok(v) => NodeCount {
                agent: a.clone(),
                connections: v["connections"].as_u64(),
                cap: v["cap"].as_u64(),
                state: v["state"].as_str().unwrap_or("unknown").to_string(),
                error: v["connections"]
                    .as_u64()
                    .is_none()
                    .then(|| format!("no `connections` in {v}")),
            },
            Err(e) => NodeCount {
                agent: a.clone(),
                connections: None,
                cap: None,
                state: "unreachable".into(),
                error: Some(e),
            },
        });
    }
    let counts: Vec<u64> = nodes.iter().filter_map(|n| n.connections).collect();
    DistributionReport {
        total: counts.iter().sum(),
        spread: Spread::of(&counts),
        unreachable: nodes.len() - counts.len(),
        nodes,
    }
}

impl DistributionReport {
    pub fn table(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            let bar = match (n.connections, self.spread) {
                (Some(c), Some(sp)) if sp.max > 0 => "#".repeat((c * 40 / sp.max) as usize),
                _ => String::new(),
            };
            match n.connections {
                Some(c) => s.push_str(&format!(
                    "{:<28} {:>8} / {:<8} {:<9} {bar}\n",
                    n.agent,
                    c,
                    n.cap.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                    n.state
                )),
                None => s.push_str(&format!(
                    "{:<28} {:>8}   {}\n",
                    n.agent,
                    "?",
                    n.error.as_deref().unwrap_or("no answer")
                )),
            }
        }
        match &self.spread {
            Some(sp) => s.push_str(&format!(
                "total {}  nodes {}  min {} / avg {:.0} / max {}  max/avg {:.2}  cv {:.3}\n",
                self.total, sp.nodes, sp.min, sp.avg, sp.max, sp.max_over_avg, sp.cv
            )),
            None => s.push_str("no agent answered\n"),
        }
        s
    }
}
