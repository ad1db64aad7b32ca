//! The policy file: the single source of truth for how a group scales.
//!
//! The controller's engine reads it, `connscale export terraform` turns it into tfvars,
//! `loadtest capacity` proposes its cap and thresholds, and `connscale validate` checks it.
//! Errors carry the key, the line and the fix.

use crate::cron::{Cron, parse_tz};
use crate::metric::MetricId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// The documented default policy (per-node cap 28,000), used when `--policy` is omitted.
pub const DEFAULT_POLICY_TOML: &str = include_str!("../../policies/default.toml");

/// How a group scales. See `policies/default.toml` for every key, documented.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub group: Group,
    pub scale_out: ScaleOut,
    pub scale_in: ScaleIn,
    #[serde(default, rename = "schedule", skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<Schedule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_pool: Option<WarmPool>,
    #[serde(default)]
    pub metric: MetricId,
}

/// Group bounds and the per-node connection cap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub min_size: u32,
    pub max_size: u32,
    /// Established connections one node holds within its SLO (`loadtest capacity` finds it).
    pub node_cap: u32,
}

/// When and how fast to add nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleOut {
    /// How often the engine evaluates (and the metric resolution it asks for).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Consecutive breaching evaluations before a step acts.
    pub datapoints: u32,
    /// A new node counts toward capacity but not toward the average for this long.
    #[serde(with = "humantime_serde")]
    pub warmup: Duration,
    /// How far ahead demand is projected from its recent trend (about one launch time); 0 = off.
    #[serde(with = "humantime_serde", default)]
    pub lookahead: Duration,
    /// Average connections per in-service node → nodes to add. `[lower, upper)`; the last step has
    /// no upper bound.
    pub steps: Vec<Step>,
}

/// One scale-out step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub lower: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<u32>,
    pub add: u32,
}

/// When and how slowly to remove nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleIn {
    /// Average connections per node at or below which scale-in is considered.
    pub threshold: u32,
    /// The average must stay at or below `threshold` this long.
    #[serde(with = "humantime_serde")]
    pub sustain: Duration,
    /// Nodes removed per action.
    pub step: u32,
    /// Quiet time after any scaling action before the next scale-in.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// The remaining nodes' average after removal may not exceed this (default: 95 % of the
    /// first scale-out step), so a scale-in never triggers a scale-out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_after: Option<u32>,
    /// The remaining nodes must also hold the highest demand of this last stretch at or below
    /// `max_after` (default 0 s: only the current demand counts). Demand that was there a few
    /// minutes ago tends to come back: removing a node it would need again costs its clients a
    /// forced reconnect now and the group a launch later.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Duration::is_zero"
    )]
    pub peak_window: Duration,
    /// A node holding fewer clients than this (default 0: none) may go without waiting out
    /// `peak_window`, as long as the rest hold the current and projected demand at or below
    /// `max_after`: removing it cuts few clients, and if the surge returns a launch (from the
    /// warm pool, in about a minute) serves it. After a spike the cordon and the falling demand
    /// empty the surplus nodes within minutes; this lets them go then instead of billing them
    /// for the rest of the window.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub empty_below: u32,
    /// How long a victim, already out of the load balancer, waits for its clients to leave by
    /// themselves before the rest are moved (default 0 s: all are moved at once, each a forced
    /// reconnect). The agent's `drain.grace`; terraform's `drain_grace`. The victim is billed
    /// meanwhile, so this trades instance-hours for fewer cut connections.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Duration::is_zero"
    )]
    pub drain_grace: Duration,
    /// The grace ends early once fewer than this many clients remain on the victim (default
    /// 0: it runs its full length): waiting for the last few costs more than moving them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub drain_grace_until_below: u32,
    /// With a drain grace, a scale-in takes only nodes the controller's cordon has emptied
    /// below `drain_grace_until_below`, or that have been cordoned this long (default twice
    /// `drain_grace`); the agent's grace then follows. A cordoned node is still in service and
    /// counts as capacity; its cordon lifts once the others would pass 95 % of their caps, or
    /// on a scale-out. Ignored without a drain grace. See [`Policy::cordon_wait`].
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub cordon_wait: Option<Duration>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What a drain needs after its grace: the service's own drain (chat-node's window) or the
/// agent's closing window, and the lifecycle calls.
pub const DRAIN_AFTER_GRACE: Duration = Duration::from_secs(270);

/// The longest `scale_in.drain_grace`: with the agent's closing window and the margins it must
/// fit the ALB's deregistration delay (at most 3,600 s; terraform's `drain_timeout` ≤ 3,000 s).
pub const MAX_DRAIN_GRACE: Duration = Duration::from_secs(2_700);

/// A known peak: raise the group's floor ahead of time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub name: String,
    /// Five-field cron for the window's start, in `timezone`.
    pub cron: String,
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    pub min_size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<u32>,
}

fn utc() -> String {
    "UTC".into()
}

/// Pre-initialised instances that start faster than a cold launch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmPool {
    pub min_size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prepared: Option<u32>,
    pub state: PoolState,
    #[serde(default)]
    pub reuse_on_scale_in: bool,
}

/// The state warm-pool instances wait in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolState {
    Stopped,
    Running,
    Hibernated,
}

impl PoolState {
    /// The AWS API's spelling.
    pub fn aws_name(self) -> &'static str {
        match self {
            Self::Stopped => "Stopped",
            Self::Running => "Running",
            Self::Hibernated => "Hibernated",
        }
    }
}

/// One problem in a policy file: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
    pub fix: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(
                f,
                "line {l}: `{}`: {} (fix: {})",
                self.key, self.message, self.fix
            ),
            None => write!(f, "`{}`: {} (fix: {})", self.key, self.message, self.fix),
        }
    }
}

/// Why a policy file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("policy {path}: {message}")]
    Parse { path: String, message: String },
    #[error("policy {path} is invalid:\n{}", issues.iter().map(|i| format!("  {path}:{i}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: String, issues: Vec<Issue> },
}

impl Policy {
    /// How long a scale-in victim may take in all (the lifecycle hook's heartbeat timeout, and
    /// terraform's `drain_timeout`): its grace, then [`DRAIN_AFTER_GRACE`].
    pub fn drain_timeout(&self) -> Duration {
        self.scale_in.drain_grace + DRAIN_AFTER_GRACE
    }

    /// The shipped default policy.
    pub fn default_policy() -> Self {
        Self::parse(DEFAULT_POLICY_TOML, "<default policy>")
            .expect("the shipped default policy is valid")
    }

    /// Reads and validates a policy file; `None` means the default policy.
    pub fn load(path: Option<&Path>) -> Result<Self, PolicyError> {
        match path {
            None => Ok(Self::default_policy()),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| PolicyError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                Self::parse(&text, &p.display().to_string())
            }
        }
    }

    /// Parses and validates policy text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, PolicyError> {
        let policy: Self = toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut issues = policy.validate();
        if issues.is_empty() {
            return Ok(policy);
        }
        let lines = key_lines(text);
        for i in &mut issues {
            i.line = lookup_line(&lines, &i.key);
        }
        Err(PolicyError::Invalid {
            path: origin.to_string(),
            issues,
        })
    }

    /// The scale-out threshold: the first step's lower bound.
    pub fn scale_out_threshold(&self) -> u32 {
        self.scale_out
            .steps
            .first()
            .map(|s| s.lower)
            .unwrap_or(self.group.node_cap)
    }

    /// The ceiling on the remaining nodes' average after a scale-in.
    pub fn scale_in_max_after(&self) -> u32 {
        self.scale_in
            .max_after
            .unwrap_or((self.scale_out_threshold() as f64 * 0.95) as u32)
    }

    /// How long a cordoned node may take to empty before a scale-in takes it anyway:
    /// `scale_in.cordon_wait`, or twice `drain_grace`.
    pub fn cordon_wait(&self) -> Duration {
        self.scale_in
            .cordon_wait
            .unwrap_or(self.scale_in.drain_grace * 2)
    }

    /// The step for an average, if any.
    pub fn step_for(&self, avg: f64) -> Option<&Step> {
        self.scale_out
            .steps
            .iter()
            .find(|s| avg >= s.lower as f64 && s.upper.is_none_or(|u| avg < u as f64))
    }

    /// Every problem in the policy (empty = valid). Lines are filled in by [`Policy::parse`].
    pub fn validate(&self) -> Vec<Issue> {
        let mut out = Vec::new();
        let mut issue = |key: String, message: String, fix: String| {
            out.push(Issue {
                key,
                line: None,
                message,
                fix,
            })
        };
        let g = &self.group;
        if g.min_size > g.max_size {
            issue(
                "group.min_size".into(),
                format!(
                    "min_size {} is greater than max_size {}",
                    g.min_size, g.max_size
                ),
                format!("lower min_size to at most {} or raise max_size", g.max_size),
            );
        }
        if g.max_size == 0 {
            issue(
                "group.max_size".into(),
                "max_size is 0".into(),
                "set max_size to at least 1".into(),
            );
        }
        if g.node_cap == 0 {
            issue(
                "group.node_cap".into(),
                "node_cap is 0".into(),
                "measure it with `loadtest capacity`".into(),
            );
        }
        let so = &self.scale_out;
        if so.interval.is_zero() {
            issue(
                "scale_out.interval".into(),
                "interval is 0".into(),
                "use e.g. \"10s\"".into(),
            );
        }
        // The loop renews a cordon once less than RENEW_BELOW of it is left: a longer turn
        // would let it lapse between turns and the node flip in and out of the balancer.
        if so.interval.as_secs() as i64 >= crate::cordon::RENEW_BELOW {
            issue(
                "scale_out.interval".into(),
                format!(
                    "interval {} is too long for the control loop (it renews the cordon every {} s)",
                    humantime::format_duration(so.interval),
                    crate::cordon::RENEW_BELOW
                ),
                "use at most \"2m\"; \"10s\" matches the agents' metric resolution".into(),
            );
        }
        if so.datapoints == 0 {
            issue(
                "scale_out.datapoints".into(),
                "datapoints is 0".into(),
                "use 1 or more".into(),
            );
        }
        if so.steps.is_empty() {
            issue(
                "scale_out.steps".into(),
                "no scale-out steps".into(),
                "add at least one [[scale_out.steps]]".into(),
            );
        }
        for (i, s) in so.steps.iter().enumerate() {
            let key = |f: &str| format!("scale_out.steps[{i}].{f}");
            if s.add == 0 {
                issue(
                    key("add"),
                    "a step that adds 0 nodes".into(),
                    "set add to 1 or more".into(),
                );
            }
            if let Some(u) = s.upper
                && u <= s.lower
            {
                issue(
                    key("upper"),
                    format!("upper {u} is not above lower {}", s.lower),
                    format!("set upper above {}", s.lower),
                );
            }
            if s.lower >= g.node_cap {
                issue(
                    key("lower"),
                    format!(
                        "step starts at {} but nodes are full at node_cap {}: it can never act in time",
                        s.lower, g.node_cap
                    ),
                    format!("set lower below {}", g.node_cap),
                );
            }
            match (so.steps.get(i + 1), s.upper) {
                (Some(next), Some(u)) if next.lower > u => issue(
                    format!("scale_out.steps[{}].lower", i + 1),
                    format!("gap: averages in [{u}, {}) match no step", next.lower),
                    format!("set it to {u}"),
                ),
                (Some(next), Some(u)) if next.lower < u => issue(
                    format!("scale_out.steps[{}].lower", i + 1),
                    format!("overlap: averages in [{}, {u}) match two steps", next.lower),
                    format!("set it to {u}"),
                ),
                (Some(_), None) => issue(
                    key("upper"),
                    "only the last step may be open-ended".into(),
                    "give it an upper bound equal to the next step's lower".into(),
                ),
                (None, Some(u)) => issue(
                    key("upper"),
                    format!("gap: averages at or above {u} match no step"),
                    "remove upper from the last step".into(),
                ),
                _ => {}
            }
        }
        let si = &self.scale_in;
        let out_at = self.scale_out_threshold();
        if si.step == 0 {
            issue(
                "scale_in.step".into(),
                "step is 0".into(),
                "set step to 1".into(),
            );
        }
        if si.peak_window > Duration::from_secs(86_400) {
            issue(
                "scale_in.peak_window".into(),
                format!(
                    "peak_window {} is over a day: the group would hold a day's peak",
                    humantime::format_duration(si.peak_window)
                ),
                "set it to a day or less, e.g. \"20m\"".into(),
            );
        }
        if si.empty_below > self.group.node_cap {
            issue(
                "scale_in.empty_below".into(),
                format!(
                    "empty_below {} is above group.node_cap {}: every node would count as empty, and peak_window would never hold one",
                    si.empty_below, self.group.node_cap
                ),
                "set it to a few percent of the cap, e.g. 1000, or 0 to turn it off".into(),
            );
        }
        if !si.drain_grace.is_zero()
            && si.drain_grace_until_below > 0
            && si.empty_below > si.drain_grace_until_below
        {
            // A scale-in takes only nodes the cordon emptied below drain_grace_until_below: a
            // larger "empty" would let one cordoned for cordon_wait skip the window instead.
            issue(
                "scale_in.empty_below".into(),
                format!(
                    "empty_below {} is above drain_grace_until_below {}: a node is not empty while its drain would still wait",
                    si.empty_below, si.drain_grace_until_below
                ),
                format!("set it to {} or less", si.drain_grace_until_below),
            );
        }
        if si
            .cordon_wait
            .is_some_and(|w| w > Duration::from_secs(86_400))
        {
            issue(
                "scale_in.cordon_wait".into(),
                format!(
                    "cordon_wait {} is over a day: a node whose clients stay would be billed that long",
                    humantime::format_duration(self.cordon_wait())
                ),
                "set it to a day or less, e.g. \"1h\"".into(),
            );
        }
        if si.drain_grace > MAX_DRAIN_GRACE {
            issue(
                "scale_in.drain_grace".into(),
                format!(
                    "drain_grace {} is longer than a scale-in drain can last behind an ALB",
                    humantime::format_duration(si.drain_grace)
                ),
                format!(
                    "set it to {} or less, e.g. \"30m\"",
                    humantime::format_duration(MAX_DRAIN_GRACE)
                ),
            );
        }
        let flap_limit = (out_at as f64 * 0.9) as u32;
        if si.threshold >= flap_limit {
            issue(
                "scale_in.threshold".into(),
                format!(
                    "threshold {} is within 10 % of the scale-out threshold {out_at}: the group would flap",
                    si.threshold
                ),
                format!("set it below {flap_limit}"),
            );
        }
        if let Some(m) = si.max_after
            && m >= out_at
        {
            issue(
                "scale_in.max_after".into(),
                format!(
                    "max_after {m} is at or above the scale-out threshold {out_at}: every scale-in would trigger a scale-out"
                ),
                format!("set it below {out_at}"),
            );
        }
        for (i, s) in self.schedules.iter().enumerate() {
            let key = |f: &str| format!("schedule[{i}].{f}");
            if let Err(e) = s.cron.parse::<Cron>() {
                issue(
                    key("cron"),
                    e.reason.clone(),
                    "use 5 fields, e.g. \"0 18 * * MON-FRI\"".into(),
                );
            }
            if let Err(e) = parse_tz(&s.timezone) {
                issue(
                    key("timezone"),
                    e,
                    "use an IANA name such as \"Europe/Paris\"".into(),
                );
            }
            if s.min_size > g.max_size {
                issue(
                    key("min_size"),
                    format!("{} is above group.max_size {}", s.min_size, g.max_size),
                    format!("set it to at most {}", g.max_size),
                );
            }
            if let Some(d) = s.desired
                && (d < s.min_size || d > g.max_size)
            {
                issue(
                    key("desired"),
                    format!("{d} is outside [{}, {}]", s.min_size, g.max_size),
                    "set desired between min_size and group.max_size".into(),
                );
            }
            if s.duration.is_zero() {
                issue(
                    key("duration"),
                    "duration is 0".into(),
                    "use e.g. \"3h\"".into(),
                );
            }
        }
        if let Some(w) = &self.warm_pool
            && let Some(m) = w.max_prepared
            && m < w.min_size
        {
            issue(
                "warm_pool.max_prepared".into(),
                format!(
                    "max_prepared {m} is below warm_pool.min_size {}",
                    w.min_size
                ),
                format!("set it to at least {}", w.min_size),
            );
        }
        out
    }

    /// The policy as TOML (what `loadtest capacity` proposes and tests round-trip).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// Maps dotted key paths (`scale_out.steps[1].lower`, `schedule[0].cron`) to 1-based lines.
fn key_lines(text: &str) -> HashMap<String, usize> {
    let mut map = HashMap::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut prefix = String::new();
    // Inside a multi-line inline array of tables: (array key path, next index).
    let mut inline: Option<(String, usize)> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        let lno = n + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            let name = name.trim().to_string();
            let idx = counts.entry(name.clone()).or_insert(0);
            prefix = format!("{name}[{idx}]");
            *idx += 1;
            map.insert(prefix.clone(), lno);
            map.entry(name).or_insert(lno);
            inline = None;
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            prefix = name.trim().to_string();
            map.insert(prefix.clone(), lno);
            inline = None;
            continue;
        }
        let join = |p: &str, k: &str| {
            if p.is_empty() {
                k.to_string()
            } else {
                format!("{p}.{k}")
            }
        };
        if let Some((arr, idx)) = inline.as_mut() {
            if line.contains('{') {
                let item = format!("{arr}[{idx}]");
                *idx += 1;
                map.insert(item.clone(), lno);
                for kv in line
                    .trim_matches(|c| c == '{' || c == '}' || c == ',')
                    .split(',')
                {
                    if let Some((k, _)) = kv.split_once('=') {
                        map.insert(join(&item, k.trim()), lno);
                    }
                }
            }
            if line.starts_with(']') {
                inline = None;
            }
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let key = join(&prefix, k.trim());
            map.insert(key.clone(), lno);
            let v = v.trim();
            if v.starts_with('[') && !v.contains(']') {
                inline = Some((key, 0));
            }
        }
    }
    map
}

/// The line of `key`, or of its nearest ancestor in the file.
fn lookup_line(lines: &HashMap<String, usize>, key: &str) -> Option<usize> {
    let mut k = key.to_string();
    loop {
        if let Some(l) = lines.get(&k) {
            return Some(*l);
        }
        let cut = k.rfind(['.', '['])?;
        k.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_is_valid_and_documented() {
        let p = Policy::default_policy();
        assert_eq!(p.group.node_cap, 28_000);
        assert!(p.validate().is_empty());
        assert!(
            DEFAULT_POLICY_TOML
                .lines()
                .filter(|l| l.trim_start().starts_with('#'))
                .count()
                > 10
        );
    }

    #[test]
    fn round_trips_through_toml() {
        let p = Policy::default_policy();
        assert_eq!(Policy::parse(&p.to_toml(), "x").expect("round trip"), p);
    }

    fn errors(text: &str) -> String {
        Policy::parse(text, "p.toml")
            .expect_err("should be rejected")
            .to_string()
    }

    fn with(replace: &str, by: &str) -> String {
        assert!(DEFAULT_POLICY_TOML.contains(replace), "{replace}");
        DEFAULT_POLICY_TOML.replacen(replace, by, 1)
    }

    fn line_of(text: &str, needle: &str) -> usize {
        text.lines()
            .position(|l| l.contains(needle))
            .expect("needle")
            + 1
    }

    #[test]
    fn rejects_min_above_max_with_key_line_and_fix() {
        let t = with("min_size = 2", "min_size = 50");
        let e = errors(&t);
        assert!(
            e.contains(&format!("p.toml:line {}", line_of(&t, "min_size = 50"))),
            "{e}"
        );
        assert!(e.contains("group.min_size") && e.contains("fix:"), "{e}");
    }

    #[test]
    fn rejects_gaps_and_overlaps_between_steps() {
        let t = with("lower = 26500", "lower = 26800");
        let e = errors(&t);
        assert!(
            e.contains("gap") && e.contains("scale_out.steps[1].lower"),
            "{e}"
        );
        assert!(
            e.contains(&format!("line {}", line_of(&t, "lower = 26800"))),
            "{e}"
        );
        let e = errors(&with("lower = 26500", "lower = 26000"));
        assert!(e.contains("overlap"), "{e}");
    }

    #[test]
    fn rejects_steps_above_the_cap_and_flapping_scale_in() {
        let e = errors(&with("node_cap = 28000", "node_cap = 26000"));
        assert!(e.contains("never act in time"), "{e}");
        let e = errors(&with("threshold = 22000", "threshold = 23000"));
        assert!(
            e.contains("flap") && e.contains("scale_in.threshold"),
            "{e}"
        );
    }

    #[test]
    fn drain_grace_is_optional_and_fits_a_deregistration_delay() {
        let t = with("drain_grace = \"30m\"\n", "");
        let t = t.replace("drain_grace_until_below = 2000\n", "");
        let p = Policy::parse(&t, "p.toml").expect("valid without them");
        assert!(p.scale_in.drain_grace.is_zero());
        assert_eq!(p.scale_in.drain_grace_until_below, 0);
        let e = errors(&with("drain_grace = \"30m\"", "drain_grace = \"50m\""));
        assert!(
            e.contains("scale_in.drain_grace") && e.contains("fix:"),
            "{e}"
        );
    }

    #[test]
    fn peak_window_is_optional_and_at_most_a_day() {
        let t = with("peak_window = \"15m\"\n", "");
        let p = Policy::parse(&t, "p.toml").expect("optional");
        assert!(p.scale_in.peak_window.is_zero());
        let e = errors(&with("peak_window = \"15m\"", "peak_window = \"2d\""));
        assert!(
            e.contains("scale_in.peak_window") && e.contains("fix:"),
            "{e}"
        );
    }

    #[test]
    fn empty_below_is_optional_and_at_most_the_cap() {
        let p = Policy::parse(&with("empty_below = 1000\n", ""), "p.toml").expect("optional");
        assert_eq!(p.scale_in.empty_below, 0);
        assert_eq!(Policy::default_policy().scale_in.empty_below, 1_000);
        let e = errors(&with("empty_below = 1000", "empty_below = 28001"));
        assert!(
            e.contains("scale_in.empty_below") && e.contains("28001") && e.contains("fix:"),
            "{e}"
        );
        let e = errors(&with("empty_below = 1000", "empty_below = 2001"));
        assert!(
            e.contains("drain_grace_until_below 2000") && e.contains("2000 or less"),
            "{e}"
        );
        let t = with("empty_below = 1000", "empty_below = 2001").replacen(
            "drain_grace = \"30m\"",
            "drain_grace = \"0s\"",
            1,
        );
        Policy::parse(&t, "p.toml").expect("without a grace, any count up to the cap");
    }

    #[test]
    fn cordon_wait_is_optional_twice_the_grace_and_at_most_a_day() {
        let t = with("cordon_wait = \"1h\"\n", "");
        let p = Policy::parse(&t, "p.toml").expect("optional");
        assert_eq!(p.cordon_wait(), p.scale_in.drain_grace * 2);
        assert_eq!(
            Policy::default_policy().cordon_wait(),
            Duration::from_secs(3_600)
        );
        let e = errors(&with("cordon_wait = \"1h\"", "cordon_wait = \"2d\""));
        assert!(
            e.contains("scale_in.cordon_wait") && e.contains("fix:"),
            "{e}"
        );
    }

    #[test]
    fn rejects_bad_cron_and_time_zone() {
        let t = format!(
            "{DEFAULT_POLICY_TOML}\n[[schedule]]\nname = \"x\"\ncron = \"0 25 * * *\"\ntimezone = \"Moon/Base\"\nduration = \"1h\"\nmin_size = 3\n"
        );
        let e = errors(&t);
        assert!(e.contains("schedule[0].cron") && e.contains("hour"), "{e}");
        assert!(
            e.contains("schedule[0].timezone") && e.contains("Moon/Base"),
            "{e}"
        );
        assert!(
            e.contains(&format!("line {}", line_of(&t, "Moon/Base"))),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_types_name_the_line() {
        let e = errors(&with("min_size = 2", "min_sise = 2"));
        assert!(e.contains("min_sise") && e.contains("line"), "{e}");
        let e = errors(&with("interval = \"10s\"", "interval = \"5m\""));
        assert!(e.contains("scale_out.interval") && e.contains("2m"), "{e}");
        let e = errors(&with("interval = \"10s\"", "interval = \"ten seconds\""));
        assert!(e.contains("interval") || e.contains("line"), "{e}");
    }

    #[test]
    fn steps_cover_every_average() {
        let p = Policy::default_policy();
        assert!(p.step_for((p.scale_out_threshold() - 1) as f64).is_none());
        for avg in [p.scale_out_threshold() as f64, 27_000.0, 1e9] {
            assert!(p.step_for(avg).is_some(), "{avg}");
        }
    }
}
