//! `chat-node`: see `chat-node --help`. The work is in the library.

use clap::Parser;
use connscale_common::telemetry::{self, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

/// A Socket.IO v5 chat server (socket.io-client 4.x works unchanged): rooms, cluster-wide
/// fan-out and online counts through Redis (an in-process broker when run alone), a
/// system-message API for web back ends, and a graceful drain on SIGTERM or POST /api/drain.
///
/// Config: TOML (--config, default /etc/connscale/chat-node.toml if present), overridden by
/// PORT, REDIS_URL, NODE_ID, CHAT_API_TOKEN, CHAT_MAX_CONNECTIONS, CHAT_BIND,
/// CHAT_DRAIN_WINDOW, CHAT_RATE_PER_SEC, CHAT_RATE_BURST, CHAT_PING_INTERVAL, CHAT_PING_TIMEOUT,
/// CHAT_MAX_QUEUED_BYTES, then
/// by flags. See chat-node/chat-node.example.toml for every key.
#[derive(Debug, Parser)]
#[command(name = "chat-node", version, max_term_width = 100)]
struct Cli {
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Port to listen on (overrides `port` and PORT).
    #[arg(long, short)]
    port: Option<u16>,
    /// Redis URL: redis://host:port, rediss://host:port (TLS), or
    /// redis+cluster://host:port,host:port (Redis Cluster, sharded pub/sub; rediss+cluster:// for
    /// TLS). Overrides `redis_url` and REDIS_URL.
    #[arg(long)]
    redis_url: Option<String>,
    /// Node name in /api/online (overrides `node_id` and NODE_ID).
    #[arg(long)]
    node_id: Option<String>,
    #[arg(long, value_enum, default_value_t = LogFormat::Human, env = "CONNSCALE_LOG_FORMAT")]
    log_format: LogFormat,
}

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
