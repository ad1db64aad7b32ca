//! `loadtest`: see `loadtest --help`. The work is in the library.

use clap::{Parser, Subcommand};
use connscale_common::telemetry::{self, LogFormat};
use loadtest::{capacity, chat, client, distribution, ramp};
use std::process::ExitCode;
use std::time::Duration;

/// Load for Socket.IO chat fleets, from one machine: hold connections, drive chat traffic and
/// check that nothing is lost. Exits non-zero when an SLO given on the command line is missed.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, max_term_width = 100)]
struct Cli {
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Open N connections at a rate over the targets (round robin) and hold them.
    Ramp {
        /// Target node(s), http://IP:PORT. Repeat for several.
        #[arg(long = "target", required_unless_present = "targets_from")]
        targets: Vec<String>,
        /// Read the targets from a URL or file instead: a JSON array, {"targets": [...]}, or
        /// one per line.
        #[arg(long, conflicts_with = "targets")]
        targets_from: Option<String>,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Connection attempts per second.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// How long to hold the connections, e.g. 30s.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        hold: Duration,
        /// Source addresses to spread over, e.g. 127.0.0.2-127.0.0.40 (each gives ~28k ports).
        #[arg(long, default_value = "")]
        source_ips: String,
        /// Fail (exit 1) unless at least this share of connections succeeded, e.g. 0.999.
        #[arg(long)]
        min_success: Option<f64>,
        /// Worker processes (each holds its share under the open-file limit; default: one per
        /// 15,000 connections). Source addresses are split between them.
        #[arg(long)]
        workers: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Ramp one node in steps until connects fail, the p99 latency passes the SLO, a message is
    /// lost or the node's agent reports 503; report the sustainable connections, a proposed
    /// node_cap and a whole policy scaled to it (paste into a file for `connscale --policy`).
    Capacity {
        /// The node, http://IP:PORT (one node, not the load balancer).
        #[arg(long)]
        target: String,
        /// The node's agent, http://IP:PORT: its /health turning 503 ends the ramp.
        #[arg(long)]
        agent: Option<String>,
        /// Latency SLO for chat messages, milliseconds (p99 of a 10-client probe after each step).
        #[arg(long)]
        slo_p99: f64,
        /// Connections added per step.
        #[arg(long, default_value_t = 1000)]
        step: usize,
        /// Stop here even if the node still copes (this process holds at most ~19,000).
        #[arg(long, default_value_t = 19_000)]
        max: usize,
        /// Connection attempts per second within a step.
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        /// How long the latency probe runs after each step.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        probe: Duration,
        /// Proposed cap = sustainable × this.
        #[arg(long, default_value_t = 0.9)]
        headroom: f64,
        #[arg(long, default_value = "")]
        source_ips: String,
        #[arg(long)]
        json: bool,
    },
    /// Connections per node as the agents report them (GET /health), with the spread.
    Distribution {
        /// Agents, http://IP:PORT. Repeat or comma-separate.
        #[arg(long = "agent", required = true, value_delimiter = ',')]
        agents: Vec<String>,
        /// Fail (exit 1) if the busiest node holds more than this × the average, or an agent
        /// does not answer.
        #[arg(long)]
        max_imbalance: Option<f64>,
        #[arg(long)]
        json: bool,
    },
    /// Clients in rooms send numbered messages; checks completeness and latency.
    Chat {
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        #[arg(long, default_value_t = 100)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        /// Messages per second across all clients.
        #[arg(long, default_value_t = 200.0)]
        send_rate: f64,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "")]
        source_ips: String,
        /// Fail (exit 1) if more messages than this are lost or duplicated.
        #[arg(long)]
        max_lost: Option<u64>,
        /// Fail (exit 1) if more deliveries than this are lost while their receiver was
        /// connected (a client that cannot keep up must be disconnected instead; 0 is right).
        #[arg(long)]
        max_lost_while_connected: Option<u64>,
        /// Fail (exit 1) if the p99 latency exceeds this many milliseconds.
        #[arg(long)]
        slo_p99: Option<f64>,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, "warn");
    connscale_common::limits::raise_nofile();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd) -> Result<ExitCode, String> {
    match cmd {
        Cmd::Ramp {
            targets,
            targets_from,
            connections,
            rate,
            hold,
            source_ips,
            min_success,
            workers,
            json,
        } => {
            let targets = match targets_from {
                Some(from) => loadtest::targets::load(&from).await?,
                None => targets,
            };
            let cfg = ramp::RampConfig {
                targets,
                connections,
                rate,
                hold,
                sources: client::parse_sources(&source_ips)?,
                connect_timeout: Duration::from_secs(10),
            };
            let workers = workers.unwrap_or_else(|| ramp::auto_workers(connections));
            let r = if workers > 1 {
                let exe = std::env::current_exe()
                    .map_err(|e| format!("cannot find this executable to start workers: {e}"))?;
                eprintln!("ramp: {connections} connections over {workers} worker processes...");
                ramp::run_workers(&exe, &cfg, workers).await?
            } else {
                let r = ramp::run(cfg, |a, c| {
                    if !json {
                        eprint!("\rattempted {a}  connected {c}   ")
                    }
                })
                .await?;
                if !json {
                    eprintln!();
                }
                r
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print!("{}", r.table());
            }
            let ok = min_success.is_none_or(|m| r.connected as f64 >= m * connections as f64);
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Capacity {
            target,
            agent,
            slo_p99,
            step,
            max,
            rate,
            probe,
            headroom,
            source_ips,
            json,
        } => {
            if !(0.0..=1.0).contains(&headroom) || headroom == 0.0 {
                return Err(format!("--headroom must be in (0, 1], got {headroom}"));
            }
            let cfg = capacity::CapacityConfig {
                target,
                agent,
                slo_p99_ms: slo_p99,
                step,
                max,
                rate,
                probe,
                sources: client::parse_sources(&source_ips)?,
                max_failure_ratio: 0.01,
                headroom,
            };
            let r = capacity::run(cfg, |s| {
                eprintln!(
                    "step: {} connections, {} failed, p99 {:.1} ms{}",
                    s.connections,
                    s.failed,
                    s.p99_ms,
                    s.health
                        .map(|h| format!(", health {h}"))
                        .unwrap_or_default()
                )
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print!("{}", r.table());
            }
            Ok(if r.sustainable > 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Distribution {
            agents,
            max_imbalance,
            json,
        } => {
            let r = distribution::run(&agents, Duration::from_secs(5)).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print!("{}", r.table());
            }
            let ok = max_imbalance.is_none_or(|m| {
                r.unreachable == 0 && r.spread.is_some_and(|s| s.max_over_avg <= m)
            });
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Chat {
            targets,
            clients,
            rooms,
            send_rate,
            duration,
            source_ips,
            max_lost,
            max_lost_while_connected,
            slo_p99,
            json,
        } => {
            let cfg = chat::ChatConfig {
                targets,
                clients,
                rooms,
                send_rate,
                duration,
                sources: client::parse_sources(&source_ips)?,
                stop_early: None,
            };
            eprintln!(
                "chat: {clients} clients in {rooms} rooms, {send_rate} msg/s for {duration:?}..."
            );
            let r = chat::run(cfg).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print!("{}", r.table());
            }
            let ok = max_lost.is_none_or(|m| r.lost + r.duplicated <= m)
                && max_lost_while_connected.is_none_or(|m| r.lost_while_connected <= m)
                && slo_p99.is_none_or(|s| r.latency_ms_p99 <= s);
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
