//! chat-node's configuration: TOML file with env overrides (`PORT`, `REDIS_URL`, `NODE_ID`, ...).

use connscale_common::config::{EnvOverride, load};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// Every key with its default; see `chat-node/chat-node.example.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Address to listen on: a wildcard, so the agent's per-port count is exact.
    pub bind: IpAddr,
    pub port: u16,
    /// This node's name in /api/online and logs (default: hostname-port).
    pub node_id: Option<String>,
    /// redis://, rediss:// or redis+cluster:// (comma-separated seeds). None: in-process broker.
    pub redis_url: Option<String>,
    /// Bearer token for /api/broadcast and /api/drain. None: those endpoints answer 403.
    pub api_token: Option<String>,
    /// Hard cap: connections beyond it are refused (the ALB fails open, this does not).
    pub max_connections: usize,
    /// Largest accepted packet (websocket message or polling body), bytes.
    pub max_message_bytes: usize,
    /// Most bytes queued for one client; a client that falls further behind is disconnected.
    pub max_queued_bytes: usize,
    /// Most bytes of recoveries' replays queued across the node beyond their clients'
    /// `max_queued_bytes` (a client back from an overload may have missed more than that);
    /// past it, a replay counts in its client's bound.
    pub max_replay_bytes: usize,
    /// Per-connection rate limit: sustained packets per second, and burst.
    pub rate_per_sec: f64,
    pub rate_burst: f64,
    /// Allowed Origin headers; empty allows any.
    pub allowed_origins: Vec<String>,
    /// If set, clients must send `{ "token": ... }` in their CONNECT auth.
    pub auth_token: Option<String>,
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// An Engine.IO session that has not connected a Socket.IO namespace by then is closed
    /// (Socket.IO's `connectTimeout`).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Clients are disconnected spread over this window on drain.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
    /// A client that reconnects (to any node) within this window gets what it missed.
    #[serde(with = "humantime_serde")]
    pub recovery_window: Duration,
    /// Most messages kept per room for recovery.
    pub recovery_max_len: u64,
    /// Redis AUTH password: only from the `redis-auth-token` systemd credential (see
    /// [`apply_credentials`]), never from the file, so it is never in a world-readable config
    /// nor spliced into a URL.
    #[serde(skip)]
    pub redis_password: Option<String>,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::from([0, 0, 0, 0]),
            port: 3000,
            node_id: None,
            redis_url: None,
            api_token: None,
            max_connections: 30_000,
            max_message_bytes: 64 * 1024,
            max_queued_bytes: 1 << 20,
            max_replay_bytes: 256 << 20,
            rate_per_sec: 20.0,
            rate_burst: 40.0,
            allowed_origins: Vec::new(),
            auth_token: None,
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(45),
            drain_window: Duration::from_secs(30),
            recovery_window: Duration::from_secs(120),
            recovery_max_len: 10_000,
            redis_password: None,
        }
    }
}

const OVERRIDES: &[EnvOverride] = &[
    EnvOverride {
        var: "PORT",
        key: "port",
    },
    EnvOverride {
        var: "REDIS_URL",
        key: "redis_url",
    },
    EnvOverride {
        var: "NODE_ID",
        key: "node_id",
    },
    EnvOverride {
        var: "CHAT_API_TOKEN",
        key: "api_token",
    },
    EnvOverride {
        var: "CHAT_PING_INTERVAL",
        key: "ping_interval",
    },
    EnvOverride {
        var: "CHAT_PING_TIMEOUT",
        key: "ping_timeout",
    },
    EnvOverride {
        var: "CHAT_CONNECT_TIMEOUT",
        key: "connect_timeout",
    },
    EnvOverride {
        var: "CHAT_MAX_CONNECTIONS",
        key: "max_connections",
    },
    EnvOverride {
        var: "CHAT_BIND",
        key: "bind",
    },
    EnvOverride {
        var: "CHAT_DRAIN_WINDOW",
        key: "drain_window",
    },
    EnvOverride {
        var: "CHAT_RATE_PER_SEC",
        key: "rate_per_sec",
    },
    EnvOverride {
        var: "CHAT_RATE_BURST",
        key: "rate_burst",
    },
    EnvOverride {
        var: "CHAT_MAX_MESSAGE_BYTES",
        key: "max_message_bytes",
    },
    EnvOverride {
        var: "CHAT_MAX_QUEUED_BYTES",
        key: "max_queued_bytes",
    },
    EnvOverride {
        var: "CHAT_MAX_REPLAY_BYTES",
        key: "max_replay_bytes",
    },
    EnvOverride {
        var: "CHAT_RECOVERY_MAX_LEN",
        key: "recovery_max_len",
    },
];

/// Loads the file (default `/etc/connscale/chat-node.toml`, optional) with env overrides.
pub fn load_config(path: Option<&Path>) -> Result<ChatConfig, String> {
    let mut c: ChatConfig =
        load(path, "/etc/connscale/chat-node.toml", OVERRIDES).map_err(|e| e.to_string())?;
    if c.max_message_bytes < 1024 {
        return Err(format!(
            "`max_message_bytes` = {} is too small (at least 1024)",
            c.max_message_bytes
        ));
    }
    if c.max_queued_bytes < c.max_message_bytes {
        return Err(format!(
            "`max_queued_bytes` = {} is below `max_message_bytes` = {}: a client could not be \
             sent one full-size message (raise it to at least {})",
            c.max_queued_bytes, c.max_message_bytes, c.max_message_bytes
        ));
    }
    if c.ping_interval.is_zero() || c.ping_timeout.is_zero() || c.connect_timeout.is_zero() {
        return Err("`ping_interval`, `ping_timeout` and `connect_timeout` must be > 0".into());
    }
    if c.rate_per_sec <= 0.0 || c.rate_burst < 1.0 {
        return Err("`rate_per_sec` must be > 0 and `rate_burst` ≥ 1".into());
    }
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
    apply_credentials(&mut c, dir.as_deref())?;
    Ok(c)
}

/// The systemd credential holding `api_token` (used when the file and env leave it unset).
pub const API_TOKEN_CREDENTIAL: &str = "api-token";
/// The systemd credential holding the Redis AUTH password.
pub const REDIS_AUTH_CREDENTIAL: &str = "redis-auth-token";

/// Takes the secrets from systemd credentials (`LoadCredential=` puts them in
/// `$CREDENTIALS_DIRECTORY`, readable by this service only). A missing file is no error (a node
/// without secrets); an empty or unreadable one is.
pub fn apply_credentials(c: &mut ChatConfig, dir: Option<&Path>) -> Result<(), String> {
    let Some(dir) = dir else { return Ok(()) };
    if c.api_token.is_none() {
        c.api_token = read_credential(dir, API_TOKEN_CREDENTIAL)?;
    }
    if let Some(p) = read_credential(dir, REDIS_AUTH_CREDENTIAL)? {
        c.redis_password = Some(p);
    }
    Ok(())
}

/// One credential's value, without a trailing newline (files written by `echo` have one).
fn read_credential(dir: &Path, name: &str) -> Result<Option<String>, String> {
    let path = dir.join(name);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read credential {}: {e} (check the unit's LoadCredential={name}:...)",
                path.display()
            ));
        }
    };
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.is_empty() {
        return Err(format!(
            "credential {} is empty: the secret it comes from was not fetched (see \
             connscale-credentials.service)",
            path.display()
        ));
    }
    Ok(Some(value.to_string()))
}

impl ChatConfig {
    pub fn node_name(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_else(|_| "node".into());
            format!("{}-{}", host.trim(), self.port)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let c: ChatConfig = toml::from_str(include_str!("../chat-node.example.toml")).unwrap();
        assert_eq!(c.port, 3000);
        assert_eq!(c.max_message_bytes, 65_536);
    }

    #[test]
    fn bad_keys_are_named() {
        let dir = std::env::temp_dir().join(format!("chatcfg-{}", std::process::id()));
        std::fs::write(&dir, "prot = 1\n").unwrap();
        let e = load_config(Some(&dir)).unwrap_err();
        let _ = std::fs::remove_file(&dir);
        assert!(e.contains("prot") && e.contains("line 1"), "{e}");
    }
}

#[cfg(test)]
mod credential_tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    #[test]
    fn credentials_fill_the_api_token_and_the_redis_password() {
        let d = dir_with(&[
            ("api-token", "tok#1@x\n"),
            ("redis-auth-token", "p#ss@word"),
        ]);
        let mut c = ChatConfig::default();
        apply_credentials(&mut c, Some(d.path())).unwrap();
        assert_eq!(c.api_token.as_deref(), Some("tok#1@x"));
        assert_eq!(c.redis_password.as_deref(), Some("p#ss@word"));
    }

    #[test]
    fn a_configured_api_token_wins_and_missing_credentials_are_fine() {
        let d = dir_with(&[("api-token", "from-credential")]);
        let mut c = ChatConfig {
            api_token: Some("from-config".into()),
            ..ChatConfig::default()
        };
        apply_credentials(&mut c, Some(d.path())).unwrap();
        assert_eq!(c.api_token.as_deref(), Some("from-config"));
        assert_eq!(c.redis_password, None);
        let mut none = ChatConfig::default();
        apply_credentials(&mut none, None).unwrap();
        assert_eq!((none.api_token, none.redis_password), (None, None));
    }

    #[test]
    fn an_empty_credential_is_an_error_naming_it() {
        let d = dir_with(&[("redis-auth-token", "\n")]);
        let e = apply_credentials(&mut ChatConfig::default(), Some(d.path())).unwrap_err();
        assert!(e.contains("redis-auth-token") && e.contains("empty"), "{e}");
    }
}

#[cfg(test)]
mod env_tests {
    #[test]
    fn rate_env_override_applies() {
        // SAFETY: this test binary sets these variables before reading them, single-threaded here.
        unsafe {
            std::env::set_var("CHAT_RATE_PER_SEC", "1000");
            std::env::set_var("CHAT_RATE_BURST", "1000");
        }
        let c = super::load_config(None).unwrap();
        assert_eq!((c.rate_per_sec, c.rate_burst), (1000.0, 1000.0));
    }
}
