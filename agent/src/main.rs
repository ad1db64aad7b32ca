//! `connscale-agent`: see `connscale-agent --help`. The work is in the library.

use clap::Parser;
use connscale_agent::{config, count::Counter};
use connscale_common::telemetry::{self, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

/// Counts established TCP connections on the service port(s) with netlink SOCK_DIAG, publishes
/// them to CloudWatch as `TCPconnections` statistic sets, and serves /health (503 at the cap,
/// while nothing listens on a counted port, and while draining) and /metrics.
///
/// Config: TOML at /etc/connscale/agent.toml (or --config), overridden by environment
/// variables (CONNSCALE_AGENT_PORTS, CONNSCALE_AGENT_CAP, CONNSCALE_AGENT_BIND,
/// CONNSCALE_AGENT_CLOUDWATCH=auto|on|off, CONNSCALE_AGENT_PERIOD, CONNSCALE_AGENT_SPOOL,
/// CONNSCALE_INSTANCE_ID, CONNSCALE_GROUP, AWS_REGION), then by flags.
/// Without AWS identity the agent publishes to stdout and /metrics only.
#[derive(Debug, Parser)]
#[command(name = "connscale-agent", version, max_term_width = 100)]
struct Cli {
    /// Config file (default /etc/connscale/agent.toml if present).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Service port(s) to count (repeatable; overrides `ports`).
    #[arg(long = "port", short)]
    ports: Vec<u16>,
    /// Health endpoint bind address (overrides `health.bind`).
    #[arg(long)]
    bind: Option<std::net::SocketAddr>,
    /// Connection cap at which /health turns 503 (overrides `health.cap`).
    #[arg(long)]
    cap: Option<u64>,
    /// Count inside another network namespace: a PID or a netns path.
    #[arg(long)]
    netns: Option<String>,
    /// Take one sample, print it, exit.
    #[arg(long)]
    once: bool,
    /// With --once: print JSON.
    #[arg(long)]
    json: bool,
    /// Do not print points to stdout when there is no CloudWatch sink.
    #[arg(long)]
    quiet: bool,
    #[arg(long, value_enum, default_value_t = LogFormat::Human, env = "CONNSCALE_LOG_FORMAT")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, "info");
    let mut cfg = match config::load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("connscale-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !cli.ports.is_empty() {
        cfg.ports = cli.ports.clone();
    }
    if let Some(b) = cli.bind {
        cfg.health.bind = b;
    }
    if let Some(c) = cli.cap {
        cfg.health.cap = c;
    }
    if let Some(ns) = &cli.netns {
        cfg.netns = Some(if ns.chars().all(|c| c.is_ascii_digit()) {
            PathBuf::from(format!("/proc/{ns}/ns/net"))
        } else {
            PathBuf::from(ns)
        });
    }
    if cli.once {
        let mut counter = Counter::new(cfg.ports.clone(), cfg.netns.as_deref(), cfg.force_proc);
        return match counter.sample() {
            Ok(s) if cli.json => {
                println!("{}", serde_json::to_string(&s).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Ok(s) => {
                println!(
                    "{} established on port(s) {:?} ({}){}; host-wide {}",
                    s.connections,
                    cfg.ports,
                    s.method.as_str(),
                    if s.listening { "" } else { ", no listener" },
                    s.host_established
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("connscale-agent: cannot count connections: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("connscale-agent: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(connscale_agent::run(cfg, !cli.quiet)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("connscale-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
