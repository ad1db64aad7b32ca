//! The agent's command line (clap), in the library so that connscale-docgen can render its man
//! page and shell completions from it, as for the other packaged commands.

use crate::boot;
use clap::Parser;
use connscale_common::telemetry::LogFormat;
use std::path::PathBuf;

/// Counts established TCP connections on the service port(s) with netlink SOCK_DIAG, publishes
/// them to CloudWatch as `TCPconnections` statistic sets, and serves /health (503 at the cap,
/// while nothing listens on a counted port, while the controller's cordon tag holds, and while
/// draining) and /metrics.
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
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Config file (default /etc/connscale/agent.toml if present).
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = LogFormat::Human, env = "CONNSCALE_LOG_FORMAT", global = true)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub run: RunArgs,
}

/// The first-boot one-shots (the agent itself runs without a subcommand).
#[derive(Debug, clap::Subcommand)]
pub enum Command {
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
pub struct RunArgs {
    /// Service port(s) to count (repeatable; overrides `ports`).
    #[arg(long = "port", short)]
    pub ports: Vec<u16>,
    /// Health endpoint bind address (overrides `health.bind`).
    #[arg(long)]
    pub bind: Option<std::net::SocketAddr>,
    /// Connection cap at which /health turns 503 (overrides `health.cap`).
    #[arg(long)]
    pub cap: Option<u64>,
    /// Count inside another network namespace: a PID or a netns path.
    #[arg(long)]
    pub netns: Option<String>,
    /// Take one sample, print it, exit.
    #[arg(long)]
    pub once: bool,
    /// With --once: print JSON.
    #[arg(long)]
    pub json: bool,
    /// Do not print points to stdout when there is no CloudWatch sink.
    #[arg(long)]
    pub quiet: bool,
}
