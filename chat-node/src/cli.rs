//! chat-node's command line (in the library so the man page and completions generator sees it).

use clap::Parser;
use connscale_common::telemetry::LogFormat;
use std::path::PathBuf;

/// A Socket.IO v5 chat server (socket.io-client 4.x works unchanged): rooms, cluster-wide
/// fan-out and online counts through Redis (an in-process broker when run alone), a
/// system-message API for web back ends, and a graceful drain on SIGTERM or POST /api/drain.
///
/// Config: TOML (--config, default /etc/connscale/chat-node.toml if present), overridden by
/// PORT, REDIS_URL, NODE_ID, CHAT_API_TOKEN, CHAT_MAX_CONNECTIONS, CHAT_BIND,
/// CHAT_DRAIN_WINDOW, CHAT_RATE_PER_SEC, CHAT_RATE_BURST, CHAT_PING_INTERVAL, CHAT_PING_TIMEOUT,
/// CHAT_CONNECT_TIMEOUT, CHAT_MAX_QUEUED_BYTES, CHAT_RECOVERY_MAX_LEN, then
/// by flags. See chat-node/chat-node.example.toml for every key.
///
/// Secrets as systemd credentials (LoadCredential=): $CREDENTIALS_DIRECTORY/api-token is the
/// api_token when none is configured; $CREDENTIALS_DIRECTORY/redis-auth-token is the Redis AUTH
/// password (set on the connection, not in the URL).
#[derive(Debug, Parser)]
#[command(name = "chat-node", version, max_term_width = 100)]
pub struct Cli {
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Port to listen on (overrides `port` and PORT).
    #[arg(long, short)]
    pub port: Option<u16>,
    /// Redis URL: redis://host:port, rediss://host:port (TLS), or
    /// redis+cluster://host:port,host:port (Redis Cluster, sharded pub/sub; rediss+cluster:// for
    /// TLS). Overrides `redis_url` and REDIS_URL.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Node name in /api/online (overrides `node_id` and NODE_ID).
    #[arg(long)]
    pub node_id: Option<String>,
    #[arg(long, value_enum, default_value_t = LogFormat::Human, env = "CONNSCALE_LOG_FORMAT")]
    pub log_format: LogFormat,
}
