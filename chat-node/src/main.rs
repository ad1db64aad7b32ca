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
    tune_malloc();
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
/// workers and keep memory per idle client down.
///
/// By default glibc also grows an arena 128 KiB at a time, gives memory back to the kernel as
/// soon as 128 KiB are free at its top, and maps large blocks itself; a burst of connections then
/// pays for growing and shrinking the heap (mprotect, page faults) over and over. Growing 16 MiB
/// at a time (the step that matters: without it nothing changed), keeping up to 256 MiB and
/// mapping only blocks over 1 MiB: in ramps that each followed 10,000 clients arriving, holding
/// and leaving, the median accept rate went from 12,768 to 14,500 per second and server CPU per
/// connection from 81 to 67 µs, memory per client unchanged; in back-to-back ramps alone it
/// made no difference (BENCHMARKS.md). Free memory still goes back to the kernel, every 2 s,
/// from the library's `malloc_trim` loop rather than on every free. MALLOC_ARENA_MAX, or glibc.malloc tunables in
/// GLIBC_TUNABLES, win when set.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set = |param: libc::c_int, value: libc::c_int| {
            // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
            unsafe { libc::mallopt(param, value) };
        };
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            set(libc::M_ARENA_MAX, 2);
        }
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if !tunables.contains("glibc.malloc.") {
            set(libc::M_TOP_PAD, 16 << 20);
            set(libc::M_TRIM_THRESHOLD, 256 << 20);
            set(libc::M_MMAP_THRESHOLD, 1 << 20);
        }
    }
}
