//! `connscale-agent`: see `connscale-agent --help`. The work is in the library.

use clap::Parser;
use connscale_agent::{boot, config, count::Counter};
use connscale_common::telemetry::{self, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

/// Counts established TCP connections on the service port(s) with netlink SOCK_DIAG, publishes
/// them to CloudWatch as `TCPconnections` statistic sets, and serves /health (503 at the cap,
/// while nothing listens on a counted port, and while draining) and /metrics.
///
/// Without a subcommand it runs the agent. Config: TOML at /etc/connscale/agent.toml (or
/// --config), overridden by environment variables (CONNSCALE_AGENT_PORTS, CONNSCALE_AGENT_CAP,
/// CONNSCALE_AGENT_BIND, CONNSCALE_AGENT_CLOUDWATCH=auto|on|off, CONNSCALE_AGENT_PERIOD,
/// CONNSCALE_AGENT_SPOOL, CONNSCALE_INSTANCE_ID, CONNSCALE_GROUP, AWS_REGION), then by flags.
/// Without AWS identity the agent publishes to stdout and /metrics only. With drain.drain_token
/// unset, the systemd credential api-token ($CREDENTIALS_DIRECTORY/api-token) is the drain token.
#[derive(Debug, Parser)]
#[command(
    name = "connscale-agent",
    version,
    max_term_width = 100,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (default /etc/connscale/agent.toml if present).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = LogFormat::Human, env = "CONNSCALE_LOG_FORMAT", global = true)]
    log_format: LogFormat,
    #[command(flatten)]
    run: RunArgs,
}

/// The first-boot one-shots (the agent itself runs without a subcommand).
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Completes a lifecycle action of this instance (CompleteLifecycleAction), e.g. the launch
    /// hook once the services are up: `complete-lifecycle --hook connscale-launch`. Instance and
    /// group come from the config or IMDS, as for the agent. Calls fail until the hook is active
    /// and are retried with backoff up to --timeout. Exit 0 once completed, 1 with the reason.
    CompleteLifecycle(boot::CompleteArgs),
    /// Reads SSM SecureString parameters (GetParameter with decryption, default credential
    /// chain: the instance role on EC2) and writes each to DIR/NAME, mode 0600 in a 0700
    /// directory, atomically; transient errors are retried up to --timeout. Values are never
    /// printed. The units then load them with LoadCredential=NAME:DIR/NAME.
    FetchCredentials(boot::FetchArgs),
}

/// Flags of the agent itself.
#[derive(Debug, clap::Args)]
struct RunArgs {
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
    if let Some(cmd) = &cli.command {
        return one_shot(cmd, &cfg);
    }
    if !cli.run.ports.is_empty() {
        cfg.ports = cli.run.ports.clone();
    }
    if let Some(b) = cli.run.bind {
        cfg.health.bind = b;
    }
    if let Some(c) = cli.run.cap {
        cfg.health.cap = c;
    }
    if let Some(ns) = &cli.run.netns {
        cfg.netns = Some(if ns.chars().all(|c| c.is_ascii_digit()) {
            PathBuf::from(format!("/proc/{ns}/ns/net"))
        } else {
            PathBuf::from(ns)
        });
    }
    if cli.run.once {
        let mut counter = Counter::new(cfg.ports.clone(), cfg.netns.as_deref(), cfg.force_proc);
        return match counter.sample() {
            Ok(s) if cli.run.json => {
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
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(connscale_agent::run(cfg, !cli.run.quiet)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("connscale-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| eprintln!("connscale-agent: cannot start runtime: {e}"))
        .ok()
}

/// Runs a subcommand to its end.
fn one_shot(cmd: &Command, cfg: &config::AgentConfig) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let (what, result) = match cmd {
        Command::CompleteLifecycle(a) => (
            "complete-lifecycle",
            rt.block_on(boot::complete_lifecycle(cfg, a)),
        ),
        Command::FetchCredentials(a) => (
            "fetch-credentials",
            rt.block_on(boot::fetch_credentials(cfg, a)),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("connscale-agent {what}: {e}");
            ExitCode::FAILURE
        }
    }
}
