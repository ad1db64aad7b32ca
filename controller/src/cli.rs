//! The `connscale` command line: argument parsing and output only; the work is in the library.

use crate::aws::AwsSettings;
use crate::operate;
use crate::sim::{self, SimConfig, fleet::FleetModel, plot, trace::Trace};
use clap::{Args, Parser, Subcommand};
use connscale_common::policy::Policy;
use connscale_common::telemetry::{self, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

/// Scale real-time chat fleets on established TCP connections.
///
/// Policies are TOML files (see policies/default.toml, used when --policy is omitted).
/// Typical use: `connscale validate my.toml`, `connscale simulate --trace demand.csv
/// --compare classic,oracle`, `connscale demo` (a local fleet on this machine).
#[derive(Debug, Parser)]
#[command(
    name = "connscale",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Log line format on stderr (RUST_LOG sets the filter).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "CONNSCALE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a policy file: every problem with its key, line and fix. Exit 1 if invalid.
    Validate {
        /// The policy file (default: the shipped default policy).
        policy: Option<PathBuf>,
        /// Print the normalised policy as JSON when valid.
        #[arg(long)]
        json: bool,
    },
    /// Replay demand traces through a fleet model and compare connscale with baselines.
    ///
    /// Each trace is a `timestamp,value` CSV; values are scaled so the peak needs --peak-nodes
    /// nodes at the policy's node_cap. Reports rejected connection-minutes, minutes with a node
    /// at its cap, instance-hours, warm-pool hours, scaling actions and forced reconnects.
    Simulate(SimulateArgs),
    /// A group at a glance: desired/min/max, every instance with its connections, health and
    /// lifecycle state, the spread, warm pool, schedules, alarms, recent scaling activities and
    /// who holds the control loop's lease.
    Status {
        #[command(flatten)]
        aws: AwsArgs,
        /// Refresh every interval until Ctrl-C (e.g. --watch 10s; bare --watch = 10 s).
        #[arg(long, num_args = 0..=1, default_missing_value = "10s", value_parser = humantime::parse_duration)]
        watch: Option<std::time::Duration>,
        /// One JSON object per refresh.
        #[arg(long)]
        json: bool,
    },
    /// Show what `apply` would change so the group matches the policy: alarms, the step
    /// scale-out and simple scale-in policies, scheduled actions, warm pool, bounds and the drain
    /// lifecycle hook. Exit 0 when up to date, 2 when changes are pending.
    Plan(GroupArgs),
    /// Make the group's configuration match the policy (idempotent: a second apply changes
    /// nothing). Prints what it changed.
    Apply(GroupArgs),
    /// The control loop: every interval, read per-instance connections from CloudWatch, let
    /// the engine decide and act. Scale-in terminates the least-connected instances with
    /// decrement (each drains through the lifecycle hook) instead of AWS's termination order.
    ///
    /// Only one loop acts on a group: the lease is an item in a DynamoDB table
    /// (`--lease-table`), taken and renewed with conditional writes, released on Ctrl-C or
    /// SIGTERM (after the turn in progress), and taken over by another loop once it expires (3
    /// intervals + 10 s). Each scaling call first proves the lease is still held with the same
    /// fencing token, so a loop that lost it stands by instead of acting.
    Run {
        #[command(flatten)]
        aws: AwsArgs,
        #[command(flatten)]
        policy: PolicyArg,
        /// Decide and print, but change nothing (and take no lease).
        #[arg(long)]
        dry_run: bool,
        /// Run one turn and exit (for cron jobs and tests).
        #[arg(long)]
        once: bool,
        /// Time between turns (default: the policy's scale_out.interval).
        #[arg(long, value_parser = humantime::parse_duration)]
        interval: Option<std::time::Duration>,
        /// One JSON line per turn: the fleet seen, the decision and whether it acted.
        #[arg(long)]
        json: bool,
    },
    /// Pre-warm schedules.
    #[command(subcommand)]
    Schedule(ScheduleCmd),
    /// Export the policy for other tools.
    #[command(subcommand)]
    Export(ExportCmd),
    /// The whole loop on this machine: a local fleet (Redis, chat-node + agent pairs behind a
    /// round-robin balancer) scales itself out and back in under loadtest traffic; a live view,
    /// then a summary and an SVG timeline. Ctrl-C stops everything it started.
    Demo {
        /// How long the load lasts (rise 30 %, hold 15 %, fall 25 %, quiet 30 %). Chat traffic
        /// runs from 30 % (once two nodes have room; at 45 % regardless) until the fleet is back
        /// at its minimum; the demo waits up to 30 s past the duration for that.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Peak idle connections (the policy's node cap is 1,500; 40 chat clients come on top).
        #[arg(long, default_value_t = 4000)]
        peak: usize,
        /// Write the timeline here.
        #[arg(long, default_value = "connscale-demo.svg")]
        plot: PathBuf,
        /// Print the summary as JSON (the live view still goes to stderr).
        #[arg(long)]
        json: bool,
        /// Give the fleet a Running warm pool (one instance kept warm) that reuses instances
        /// on scale-in: scale-out takes instances from the pool first, and drained instances
        /// go back to it (target lifecycle state `Warmed:Running`, their agents stay up).
        #[arg(long)]
        warm_pool: bool,
        /// What each local instance serves. `chat-node` drains itself when its agent asks
        /// (drain.method = "http"). `node` runs the unmodified reference Node.js Socket.IO server
        /// (socket.io 4.8.4 + @socket.io/redis-adapter, installed by scripts/reference-server),
        /// which knows nothing of draining: its agent closes the connections itself, spread over
        /// the drain window (drain.method = "close"; needs CAP_NET_ADMIN, so run as root).
        #[arg(long, value_enum, default_value = "chat-node")]
        workload: WorkloadArg,
        /// The reference server's entry point, for --workload node.
        #[arg(
            long,
            env = "CONNSCALE_NODE_SERVER",
            default_value = "target/reference-server/server.js"
        )]
        node_server: PathBuf,
    },
}

/// `demo --workload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadArg {
    ChatNode,
    Node,
}

impl WorkloadArg {
    /// The fleet's workload, checking that the reference server can run.
    fn resolve(self, server: &std::path::Path) -> anyhow::Result<crate::local::Workload> {
        use crate::local::Workload;
        if self == Self::ChatNode {
            return Ok(Workload::ChatNode);
        }
        anyhow::ensure!(
            server.is_file(),
            "--workload node: the reference server {} is not installed: run scripts/reference-server (npm ci of socket.io 4.8.4 and @socket.io/redis-adapter into target/reference-server; scripts/demo --workload node does it), or pass --node-server",
            server.display()
        );
        let node = std::process::Command::new("node")
            .arg("--version")
            .output()
            .map_err(|e| anyhow::anyhow!("--workload node needs Node.js (`node` on PATH): {e}; Debian: apt-get install -y nodejs npm"))?;
        anyhow::ensure!(node.status.success(), "`node --version` failed");
        let server = std::fs::canonicalize(server)
            .map_err(|e| anyhow::anyhow!("--node-server {}: {e}", server.display()))?;
        Ok(Workload::Node { server })
    }
}

#[derive(Debug, Subcommand)]
pub enum ExportCmd {
    /// The policy as variables for the terraform/ module (alarms, step and simple scaling
    /// policies, schedules, warm pool). Writes JSON tfvars to --out, or stdout.
    Terraform {
        #[command(flatten)]
        policy: PolicyArg,
        /// Output file, e.g. terraform.tfvars.json (terraform loads *.auto.tfvars.json itself).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCmd {
    /// Derive [[schedule]] entries from the recurring peaks of a demand history (≥ 14 days of
    /// `timestamp,value` CSV, values in connections). Paste the output into the policy file.
    Suggest {
        /// The demand history, `timestamp,value` CSV (an export: rows are sorted, repeated
        /// timestamps merged and gaps bridged, with one warning line saying so).
        #[arg(long)]
        history: PathBuf,
        // Its scale-out threshold and bounds size the schedules.
        #[command(flatten)]
        policy: PolicyArg,
        /// IANA time zone the peaks recur in.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// Scale the history so its peak needs this many nodes at the cap (as `simulate` does).
        #[arg(long)]
        peak_nodes: Option<f64>,
        #[arg(long)]
        json: bool,
    },
}

/// The policy file a command reads (`--policy`, or CONNSCALE_POLICY).
#[derive(Debug, Args)]
pub struct PolicyArg {
    /// Policy file (default: the shipped default policy).
    #[arg(long = "policy", value_name = "FILE", env = "CONNSCALE_POLICY")]
    pub path: Option<PathBuf>,
}

impl PolicyArg {
    pub fn load(&self) -> anyhow::Result<Policy> {
        Ok(Policy::load(self.path.as_deref())?)
    }
}

/// What `plan` and `apply` act on: a group, its policy, and the output form.
#[derive(Debug, Args)]
pub struct GroupArgs {
    #[command(flatten)]
    aws: AwsArgs,
    #[command(flatten)]
    policy: PolicyArg,
    /// Print the changes as JSON.
    #[arg(long)]
    json: bool,
}

/// Which group, where, and how to read its metric.
#[derive(Debug, Args)]
pub struct AwsArgs {
    /// The Auto Scaling group's name.
    #[arg(long, env = "CONNSCALE_GROUP")]
    pub group: String,
    /// AWS region (default: AWS_REGION / the profile's region).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
    /// Another endpoint for every AWS API, e.g. a moto emulator (AWS_ENDPOINT_URL also works).
    #[arg(long, env = "CONNSCALE_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// CloudWatch period (s) for per-instance connections: 10 or 30 need the agent's
    /// high-resolution publishing. Default: the policy's interval if CloudWatch serves it, else 60.
    #[arg(long)]
    pub metric_period: Option<i32>,
    /// Attempts per API call; the SDK retries throttling with backoff in between.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// DynamoDB table holding the control loops' lease (one item per group; the terraform
    /// module and `connscale apply` create it).
    #[arg(long, env = "CONNSCALE_LEASE_TABLE", default_value = crate::aws::lease::DEFAULT_TABLE)]
    pub lease_table: String,
}

impl AwsArgs {
    fn settings(&self, policy: &Policy) -> anyhow::Result<AwsSettings> {
        let period = self
            .metric_period
            .unwrap_or_else(|| crate::operate::metric_period_for(policy.scale_out.interval));
        anyhow::ensure!(
            matches!(period, 1 | 5 | 10 | 30) || (period >= 60 && period % 60 == 0),
            "--metric-period {period} is not a CloudWatch period: use 1, 5, 10, 30 or a multiple of 60"
        );
        anyhow::ensure!(self.max_attempts >= 1, "--max-attempts must be at least 1");
        Ok(AwsSettings {
            group: self.group.clone(),
            region: self.region.clone(),
            endpoint: self.endpoint_url.clone(),
            metric: policy.metric.clone(),
            metric_period: period,
            max_attempts: self.max_attempts,
            lease_table: self.lease_table.clone(),
        })
    }
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Demand trace(s), `timestamp,value` CSV. Repeat for several. Rows are sorted, repeated
    /// timestamps merged (their mean) and gaps bridged linearly, with one warning line each.
    #[arg(long, required = true)]
    pub trace: Vec<PathBuf>,
    #[command(flatten)]
    pub policy: PolicyArg,
    /// Baselines to compare with, comma-separated: classic, target-tracking, static, oracle,
    /// classic-nopool, target-tracking-nopool. `classic` is DESIGN.md's whole classic setup,
    /// alarms, step scaling and the same warm pool as the policy under test (its `[warm_pool]`);
    /// `target-tracking` keeps that pool too; the `-nopool` variants keep none.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "classic,target-tracking,static,oracle"
    )]
    pub compare: Vec<String>,
    /// Scale each trace so its peak needs this many nodes at the cap.
    #[arg(long, default_value_t = 10.0)]
    pub peak_nodes: f64,
    /// Instead of each trace's table, one summary row per trace: the three targets against
    /// `classic` (warm pool included) and `oracle` (rejected ≤ 10 % of classic's, instance-hours
    /// ≤ classic's and ≤ 1.2 × oracle's, forced reconnects ≤ classic's), met or not, with the
    /// worst trace for each. Adds classic and oracle to --compare. With --json: the rows.
    #[arg(long)]
    pub summary: bool,
    /// Replay faster than real time (2 = a trace step lasts half as long).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Seconds from a cold launch to serving.
    #[arg(long, default_value_t = 180)]
    pub cold_launch: i64,
    /// Mean connection lifetime in seconds (that share of connections reconnects each second).
    #[arg(long, default_value_t = 1800.0)]
    pub mean_session: f64,
    /// Write an SVG plot (demand, capacity per policy, connscale's actions). With several traces,
    /// one file per trace: NAME-<trace>.svg.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print JSON (`policies.<name>.rejected_connection_minutes`, ...) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Parses arguments, runs the command, maps errors to one line on stderr and exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, "info");
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("connscale: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let apply = matches!(cli.command, Command::Apply(_));
    match cli.command {
        Command::Status { aws, watch, json } => {
            let settings = aws.settings(&Policy::default_policy())?;
            runtime()?.block_on(operate::status(settings, json, watch))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan(args) | Command::Apply(args) => {
            let policy = args.policy.load()?;
            let settings = args.aws.settings(&policy)?;
            let n =
                runtime()?.block_on(operate::plan_or_apply(settings, &policy, apply, args.json))?;
            Ok(if !apply && n > 0 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Run {
            aws,
            policy,
            dry_run,
            once,
            interval,
            json,
        } => {
            let policy = policy.load()?;
            let settings = aws.settings(&policy)?;
            let interval = interval.unwrap_or(policy.scale_out.interval);
            anyhow::ensure!(!interval.is_zero(), "--interval must be positive");
            let opts = operate::RunOptions {
                dry_run,
                once,
                interval,
                json,
                max_backoff: std::time::Duration::from_secs(120),
            };
            runtime()?.block_on(operate::run(settings, policy, opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { policy, json } => validate(policy, json),
        Command::Simulate(args) => simulate(args),
        Command::Demo {
            duration,
            peak,
            plot,
            json,
            warm_pool,
            workload,
            node_server,
        } => demo(
            crate::demo::DemoConfig {
                duration,
                peak,
                plot: Some(plot.clone()),
                quiet: false,
                warm_pool,
                workload: workload.resolve(&node_server)?,
            },
            plot,
            json,
        ),
        Command::Export(ExportCmd::Terraform { policy, out }) => {
            let p = policy.load()?;
            let vars = crate::export::terraform_vars(&p)
                .map_err(|e| anyhow::anyhow!("cannot export: {e}"))?;
            let text = serde_json::to_string_pretty(&vars)? + "\n";
            match out {
                Some(path) => {
                    std::fs::write(&path, text)
                        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                    eprintln!("wrote {}", path.display());
                }
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Schedule(ScheduleCmd::Suggest {
            history,
            policy,
            timezone,
            peak_nodes,
            json,
        }) => {
            let policy = policy.load()?;
            let tz = connscale_common::cron::parse_tz(&timezone).map_err(anyhow::Error::msg)?;
            let mut trace = load_trace(&history)?;
            if let Some(n) = peak_nodes {
                trace = trace.scaled(n * policy.group.node_cap as f64, 1.0);
            }
            let s = crate::suggest::suggest(&trace, &policy, tz).map_err(anyhow::Error::msg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else if s.is_empty() {
                println!("# no recurring peaks found in {}", history.display());
            } else {
                #[derive(serde::Serialize)]
                struct Doc<'a> {
                    schedule: &'a [connscale_common::policy::Schedule],
                }
                println!(
                    "# suggested from {} — paste into your policy file",
                    history.display()
                );
                println!("{}", toml::to_string_pretty(&Doc { schedule: &s })?);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn validate(path: Option<PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    match Policy::load(path.as_deref()) {
        Ok(p) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                let name = path
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "default policy".into());
                println!(
                    "{name}: valid (min {} max {} cap {}, scale out at {}, {} schedule(s))",
                    p.group.min_size,
                    p.group.max_size,
                    p.group.node_cap,
                    p.scale_out_threshold(),
                    p.schedules.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn simulate(a: SimulateArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        a.peak_nodes > 0.0,
        "--peak-nodes must be positive, got {}",
        a.peak_nodes
    );
    anyhow::ensure!(
        a.time_scale > 0.0,
        "--time-scale must be positive, got {}",
        a.time_scale
    );
    let policy = a.policy.load()?;
    let mut cfg = SimConfig {
        peak_nodes: a.peak_nodes,
        time_scale: a.time_scale,
        compare: a
            .compare
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        model: FleetModel {
            cold_launch: a.cold_launch,
            mean_session: a.mean_session,
            ..FleetModel::default()
        },
        policy,
    };
    if a.summary {
        for needed in ["classic", "oracle"] {
            if !cfg.compare.iter().any(|c| c == needed) {
                cfg.compare.push(needed.into());
            }
        }
    }
    let mut reports = Vec::new();
    for path in &a.trace {
        let trace = load_trace(path)?;
        if !a.json || a.summary {
            eprintln!(
                "simulating {} ({} points)...",
                path.display(),
                trace.points.len()
            );
        }
        let report = sim::simulate(&trace, &cfg).map_err(anyhow::Error::msg)?;
        if let Some(out) = &a.plot {
            let file = if a.trace.len() == 1 {
                out.clone()
            } else {
                let stem = out
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "plot".into());
                out.with_file_name(format!("{stem}-{}.svg", report.trace))
            };
            std::fs::write(
                &file,
                plot::report_svg(&report, cfg.policy.group.node_cap as f64),
            )
            .map_err(|e| anyhow::anyhow!("cannot write plot {}: {e}", file.display()))?;
        }
        if !a.json && !a.summary {
            println!("{}", report.table());
        }
        reports.push(report);
    }
    if a.summary {
        let rows: Vec<_> = reports
            .iter()
            .filter_map(sim::targets::Targets::of)
            .collect();
        if a.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            print!("{}", sim::targets::summary_table(&rows));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.json {
        let v = if reports.len() == 1 {
            serde_json::to_value(&reports[0])?
        } else {
            serde_json::to_value(&reports)?
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads a trace, warning on stderr (one line) about what reading it took.
fn load_trace(path: &std::path::Path) -> anyhow::Result<Trace> {
    let (trace, repairs) = Trace::load_repaired(path)?;
    if let Some(w) = repairs.warning(&path.display().to_string()) {
        eprintln!("{w}");
    }
    Ok(trace)
}

fn demo(cfg: crate::demo::DemoConfig, plot: PathBuf, json: bool) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    connscale_common::limits::raise_nofile();
    // block_on runs the demo on this (the main) thread, which starts every child process: their
    // parent-death signal then follows the whole process.
    let report = rt
        .block_on(crate::demo::run(cfg))
        .map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let m = &report.messages;
        println!(
            "\nsummary: peak {} instances (final {}, minimum {}), {} scale-outs, {} scale-ins, {} rejected connections\n\
             scale-ins completed by the agents' lifecycle calls: {} (lifecycle timeouts {}); warm pool: {} returned, {} launched from it\n\
             messages: sent {} delivered {}/{} lost {} duplicated {} ({} reconnects with recovery)\n\
             agents' counts match the balancer's: {}\nprocesses left running: {}\ntimeline: {}",
            report.peak_instances,
            report.final_instances,
            report.min_size,
            report.scale_outs,
            report.scale_ins,
            report.rejected_connections,
            report.lifecycle.completed_by_agent,
            report.lifecycle.lifecycle_timeouts,
            report.lifecycle.warm_pool_returns,
            report.lifecycle.warm_pool_launches,
            m.sent,
            m.delivered,
            m.expected_deliveries,
            m.lost,
            m.duplicated,
            m.reconnects,
            report.counts_match,
            report.processes_left,
            plot.display()
        );
        for d in &report.drain_details {
            let r = &d.record;
            println!(
                "drain {}: {} s, closed by the agent {} of {}; most reconnects on one node in a second: {}",
                r.instance,
                (r.duration_s * 10.0).round() / 10.0,
                r.closed_by_agent,
                r.connections_at_start
                    .map_or_else(|| "-".to_string(), |n| n.to_string()),
                d.most_reconnects_per_node_second
            );
        }
        println!(
            "idle clients cut by drains: {} ({} reconnected, {} stopped by the falling load first)",
            report.cut_clients, report.cut_clients_reconnected, report.cut_clients_stopped
        );
    }
    Ok(ExitCode::SUCCESS)
}
