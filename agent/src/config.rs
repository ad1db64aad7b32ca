//! The agent's configuration: TOML file (`/etc/connscale/agent.toml`) with env overrides.

use connscale_common::config::{ConfigError, EnvOverride, load};
use connscale_common::metric::MetricId;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_PATH: &str = "/etc/connscale/agent.toml";

/// The systemd credential (`LoadCredential=api-token:...`) read as `drain.drain_token` when that
/// key is unset.
pub const API_TOKEN_CREDENTIAL: &str = "api-token";

/// A secret value: `Debug` never shows it, so no log line or error can carry it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// Every key, with its default. See `agent/agent.example.toml` for the documented file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Local TCP ports whose established connections are counted.
    pub ports: Vec<u16>,
    #[serde(with = "humantime_serde")]
    pub sample_interval: Duration,
    /// Count inside this network namespace (`/proc/PID/ns/net` or `/run/netns/NAME`).
    pub netns: Option<PathBuf>,
    /// Use /proc/net/tcp even when netlink works (for comparison; inexact under churn).
    pub force_proc: bool,
    pub health: HealthConfig,
    pub cloudwatch: CloudWatchConfig,
    pub identity: IdentityConfig,
    pub drain: DrainConfig,
    pub launch: LaunchConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    pub bind: SocketAddr,
    /// Connections at which /health turns 503 (the node's tuned cap).
    pub cap: u64,
    /// /health stays 503 until connections fall below cap × (1 − hysteresis).
    pub hysteresis: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudWatchConfig {
    /// "auto" (publish when an AWS region is known), "on" or "off".
    pub mode: String,
    #[serde(flatten)]
    pub metric: MetricId,
    /// One statistic set per period: 60 s, or 1/5/10/30 s for high resolution.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Points older than this are dropped (counted) while CloudWatch is unreachable.
    #[serde(with = "humantime_serde")]
    pub max_buffer_age: Duration,
    /// Keeps unsent points across restarts (JSON lines); optional.
    pub spool_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Each is read from IMDSv2 when unset.
    pub instance_id: Option<String>,
    pub region: Option<String>,
    pub group: Option<String>,
    /// IMDS endpoint (tests point it at a local stand-in).
    pub imds_endpoint: Option<String>,
}

/// How the agent drains the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum DrainMethod {
    /// POST `drain_url` (with `drain_token` as a bearer token): the service drains itself
    /// (chat-node's `/api/drain`).
    Http,
    /// The agent closes the connections itself, needing nothing from the service: after
    /// `grace` it resets the remaining established connections on the port with SOCK_DESTROY,
    /// spread evenly over `window`, and clients reconnect through the load balancer. Needs
    /// CAP_NET_ADMIN (the unit's close-drain drop-in).
    Close,
}

impl TryFrom<String> for DrainMethod {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "http" => Ok(Self::Http),
            "close" => Ok(Self::Close),
            // Both needed privileges the shipped unit does not have (DynamicUser, no
            // capabilities): signalling another user's process, or stopping a unit over D-Bus.
            "signal" | "systemd" => Err(format!(
                "drain.method = {s:?} was removed: the agent's unit cannot signal or stop another service. Use \"close\" (the agent closes the connections itself, spread over drain.window) or \"http\" (POST drain_url; the service drains itself)"
            )),
            other => Err(format!(
                "drain.method = {other:?} is not a drain method: use \"http\" or \"close\""
            )),
        }
    }
}

/// The scale-in drain (`[drain]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainConfig {
    /// Watch the IMDS target lifecycle state and drain on every scale-in path.
    pub enabled: bool,
    pub method: DrainMethod,
    pub drain_url: Option<String>,
    /// Bearer token for `drain_url`; unset: `$CREDENTIALS_DIRECTORY/api-token` if present.
    pub drain_token: Option<Secret>,
    /// How long clients may leave by themselves (health failing, so the load balancer sends
    /// none) before the service is told to drain (`http`) or the agent closes any (`close`).
    /// Policy `scale_in.drain_grace`.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// The grace ends early once fewer connections than this remain (0: it runs its full
    /// length). Policy `scale_in.drain_grace_until_below`.
    pub grace_until_below: u64,
    /// `close`: the span over which the remaining connections are closed, evenly.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Complete the lifecycle action once connections fall below this...
    pub threshold: u64,
    /// ...or after this long.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    pub hook_name: String,
    /// The hook's heartbeat timeout: lifecycle calls that keep failing (the hook is not active
    /// yet during the ALB deregistration delay) are retried for this long since the last success.
    #[serde(with = "humantime_serde")]
    pub hook_heartbeat_timeout: Duration,
    /// How often the target lifecycle state, and the controller's cordon tag, are read from IMDS.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

/// Launches out of the warm pool (`[launch]`, see [`crate::launch`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LaunchConfig {
    /// The `EC2_INSTANCE_LAUNCHING` hook (terraform's `connscale-launch`). Unset: the agent
    /// completes no launch hook, and an instance leaving a warm pool waits out the hook.
    pub hook_name: Option<String>,
    /// How long a later launch may take for the service to listen and the hook to be completed:
    /// the hook's heartbeat timeout (terraform's `install_timeout`).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Where the boot whose launch hook was completed is recorded (in the unit's StateDirectory).
    pub marker_file: PathBuf,
}

impl Default for LaunchConfig {
    fn default() -> Self {
        Self {
            hook_name: None,
            timeout: Duration::from_secs(900),
            marker_file: PathBuf::from("/var/lib/connscale-agent/launched"),
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            ports: vec![3000],
            sample_interval: Duration::from_secs(1),
            netns: None,
            force_proc: false,
            health: HealthConfig::default(),
            cloudwatch: CloudWatchConfig::default(),
            identity: IdentityConfig::default(),
            drain: DrainConfig::default(),
            launch: LaunchConfig::default(),
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 9100)),
            cap: 28_000,
            hysteresis: 0.05,
        }
    }
}

impl Default for CloudWatchConfig {
    fn default() -> Self {
        Self {
            mode: "auto".into(),
            metric: MetricId::default(),
            period: Duration::from_secs(60),
            max_buffer_age: Duration::from_secs(24 * 3600),
            spool_file: None,
        }
    }
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            method: DrainMethod::Http,
            drain_url: Some("http://127.0.0.1:3000/api/drain".into()),
            drain_token: None,
            grace: Duration::from_secs(30),
            grace_until_below: 0,
            window: Duration::from_secs(120),
            threshold: 10,
            timeout: Duration::from_secs(300),
            heartbeat_interval: Duration::from_secs(60),
            hook_name: "connscale-drain".into(),
            hook_heartbeat_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_secs(5),
        }
    }
}

const OVERRIDES: &[EnvOverride] = &[
    EnvOverride {
        var: "CONNSCALE_AGENT_PORTS",
        key: "ports",
    },
    EnvOverride {
        var: "CONNSCALE_AGENT_CAP",
        key: "health.cap",
    },
    EnvOverride {
        var: "CONNSCALE_AGENT_BIND",
        key: "health.bind",
    },
    EnvOverride {
        var: "CONNSCALE_AGENT_CLOUDWATCH",
        key: "cloudwatch.mode",
    },
    EnvOverride {
        var: "CONNSCALE_AGENT_PERIOD",
        key: "cloudwatch.period",
    },
    EnvOverride {
        var: "CONNSCALE_AGENT_SPOOL",
        key: "cloudwatch.spool_file",
    },
    EnvOverride {
        var: "CONNSCALE_AGENT_NAMESPACE",
        key: "cloudwatch.namespace",
    },
    EnvOverride {
        var: "CONNSCALE_INSTANCE_ID",
        key: "identity.instance_id",
    },
    EnvOverride {
        var: "CONNSCALE_GROUP",
        key: "identity.group",
    },
    EnvOverride {
        var: "CONNSCALE_IMDS_ENDPOINT",
        key: "identity.imds_endpoint",
    },
];

/// Problems a parsed config can still have, each naming its key.
pub fn check(c: &AgentConfig) -> Result<(), String> {
    if c.ports.is_empty() {
        return Err(
            "`ports` is empty: list the service port(s) to count, e.g. ports = [3000]".into(),
        );
    }
    if !(0.0..1.0).contains(&c.health.hysteresis) {
        return Err(format!(
            "`health.hysteresis` = {} must be in [0, 1), e.g. 0.05",
            c.health.hysteresis
        ));
    }
    let p = c.cloudwatch.period.as_secs();
    if c.cloudwatch.period.subsec_nanos() != 0
        || !(p > 0 && p.is_multiple_of(60) || [1, 5, 10, 30].contains(&p))
    {
        return Err(format!(
            "`cloudwatch.period` = {:?} must be 1s, 5s, 10s, 30s or a multiple of 60s",
            c.cloudwatch.period
        ));
    }
    if !["auto", "on", "off"].contains(&c.cloudwatch.mode.as_str()) {
        return Err(format!(
            "`cloudwatch.mode` = {:?} must be \"auto\", \"on\" or \"off\"",
            c.cloudwatch.mode
        ));
    }
    if c.sample_interval.is_zero() {
        return Err("`sample_interval` must be above 0, e.g. \"1s\"".into());
    }
    if c.drain.poll_interval.is_zero() || c.drain.heartbeat_interval.is_zero() {
        return Err(
            "`drain.poll_interval` and `drain.heartbeat_interval` must be above 0, e.g. \"5s\""
                .into(),
        );
    }
    let d = &c.drain;
    if d.method == DrainMethod::Close && d.grace + d.window > d.timeout {
        return Err(format!(
            "`drain.grace` ({:?}) + `drain.window` ({:?}) exceed `drain.timeout` ({:?}): the lifecycle action would complete before every connection is closed; shorten them or raise drain.timeout",
            d.grace, d.window, d.timeout
        ));
    }
    if d.method == DrainMethod::Http && d.grace >= d.timeout {
        return Err(format!(
            "`drain.grace` ({:?}) is not below `drain.timeout` ({:?}): the lifecycle action would complete before the service is told to drain; shorten it or raise drain.timeout",
            d.grace, d.timeout
        ));
    }
    if d.method == DrainMethod::Close && d.window.is_zero() {
        return Err("`drain.window` must be above 0 for method = \"close\", e.g. \"120s\"".into());
    }
    Ok(())
}

/// Loads `path` (or the default path, which may be absent) with env overrides, then checks it.
pub fn load_config(path: Option<&Path>) -> Result<AgentConfig, String> {
    let mut c: AgentConfig =
        load(path, DEFAULT_PATH, OVERRIDES).map_err(|e: ConfigError| e.to_string())?;
    check(&c)?;
    let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    apply_credentials(&mut c, creds.as_deref())?;
    Ok(c)
}

/// Fills `drain.drain_token` from the systemd credential `api-token` in `dir` (systemd's
/// `$CREDENTIALS_DIRECTORY`) when the config leaves it unset; the content is trimmed.
pub fn apply_credentials(c: &mut AgentConfig, dir: Option<&Path>) -> Result<(), String> {
    let Some(dir) = dir else { return Ok(()) };
    if c.drain.drain_token.is_some() {
        return Ok(());
    }
    let path = dir.join(API_TOKEN_CREDENTIAL);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().is_empty() => Err(format!(
            "the credential {} is empty: put chat-node's API token in it, or remove it",
            path.display()
        )),
        Ok(text) => {
            c.drain.drain_token = Some(Secret::new(text.trim()));
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!(
            "cannot read the credential {}: {e}",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../agent.example.toml");
        let c: AgentConfig = toml::from_str(text).unwrap();
        check(&c).unwrap();
        assert_eq!(c.health.cap, 28_000);
    }

    #[test]
    fn drain_token_comes_from_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = AgentConfig::default();
        apply_credentials(&mut c, Some(dir.path())).unwrap();
        assert_eq!(c.drain.drain_token, None, "no credential, no token");
        std::fs::write(dir.path().join(API_TOKEN_CREDENTIAL), "  tok-123\n").unwrap();
        apply_credentials(&mut c, Some(dir.path())).unwrap();
        assert_eq!(c.drain.drain_token, Some(Secret::new("tok-123")));
        assert!(
            !format!("{c:?}").contains("tok-123"),
            "Debug shows the token"
        );
        // A token in the config wins.
        c.drain.drain_token = Some(Secret::new("from-config"));
        apply_credentials(&mut c, Some(dir.path())).unwrap();
        assert_eq!(c.drain.drain_token, Some(Secret::new("from-config")));
        std::fs::write(dir.path().join(API_TOKEN_CREDENTIAL), "\n").unwrap();
        let mut c = AgentConfig::default();
        let e = apply_credentials(&mut c, Some(dir.path())).unwrap_err();
        assert!(e.contains("api-token") && e.contains("empty"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = AgentConfig::default();
        c.cloudwatch.period = Duration::from_secs(7);
        assert!(check(&c).unwrap_err().contains("cloudwatch.period"));
        c = AgentConfig::default();
        c.health.hysteresis = 1.5;
        assert!(check(&c).unwrap_err().contains("health.hysteresis"));
        c = AgentConfig::default();
        c.drain.method = DrainMethod::Close;
        c.drain.grace = Duration::from_secs(200);
        let e = check(&c).unwrap_err();
        assert!(
            e.contains("drain.grace") && e.contains("drain.timeout"),
            "{e}"
        );
    }

    #[test]
    fn removed_drain_methods_say_what_to_use_instead() {
        for old in ["signal", "systemd"] {
            let e = toml::from_str::<AgentConfig>(&format!("[drain]\nmethod = \"{old}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("was removed") && e.contains("\"close\""), "{e}");
        }
        let e = toml::from_str::<AgentConfig>("[drain]\nmethod = \"kill\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"kill\"") && e.contains("\"http\" or \"close\""),
            "{e}"
        );
        let c: AgentConfig = toml::from_str("[drain]\nmethod = \"close\"\n").expect("close");
        assert_eq!(c.drain.method, DrainMethod::Close);
    }
}
