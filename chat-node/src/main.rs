//! `chat-node`: see `chat-node --help`. The work is in the library.

use chat_node::cli::Cli;
use clap::Parser;
use connscale_common::telemetry;
use std::process::ExitCode;

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    telemetry::init(cli.log_format, "info");
    let mut cfg = match chat_node::config::load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chat-node: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(p) = cli.port {
        cfg.port = p;
    }
    if cli.redis_url.is_some() {
        cfg.redis_url = cli.redis_url;
    }
    if cli.node_id.is_some() {
        cfg.node_id = cli.node_id;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chat-node: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(chat_node::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates its own arena; a connection's allocations then spread
/// over several arenas whose free space the others cannot reuse. Two arenas serve the two runtime
/// workers and keep memory per idle client down. MALLOC_ARENA_MAX, when set, still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
