//! `connscale-agent`: see `connscale-agent --help`. The work is in the library.

use clap::Parser;
use connscale_agent::cli::{Cli, Command};
use connscale_agent::{boot, config, count::Counter};
use connscale_common::telemetry;
use std::path::PathBuf;
use std::process::ExitCode;

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
