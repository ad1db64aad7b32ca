//! `connscale export terraform`: the policy file as the variables of `terraform/`.
//!
//! The exported names and types are checked against `terraform/variables.tf` by the test suite.

use connscale_common::policy::Policy;
use serde::Serialize;
use serde_json::Value;

const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// The terraform module's variables for a policy, typed: `plan`/`apply` build the group's
/// alarms and policies from the same struct the module is fed, so a renamed field fails to
/// compile instead of reading as zero. Field names are the module's variable names
/// (`terraform/variables.tf`, checked by controller/tests/terraform.rs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TerraformVars {
    pub min_size: u32,
    pub max_size: u32,
    pub node_cap: u32,
    pub metric_namespace: String,
    pub metric_name: String,
    /// Seconds between the agents' datapoints (at most 60).
    pub agent_publish_period: u64,
    pub scale_out_threshold: u32,
    /// Seconds per alarm period.
    pub scale_out_period: u64,
    pub scale_out_evaluation_periods: u32,
    pub scale_out_steps: Vec<StepVar>,
    /// Seconds.
    pub instance_warmup: u64,
    pub scale_in_threshold: u32,
    /// Seconds per alarm period.
    pub scale_in_period: u64,
    pub scale_in_evaluation_periods: u64,
    /// Instances the fallback alarm removes per scale-in: `scale_in.step`, at most
    /// [`FALLBACK_SCALE_IN_STEP`].
    pub scale_in_adjustment: u32,
    /// Seconds.
    pub scale_in_cooldown: u64,
    pub schedules: Vec<ScheduleVar>,
    pub warm_pool: Option<WarmPoolVar>,
    /// Seconds a victim waits for its clients to leave by themselves (`scale_in.drain_grace`).
    pub drain_grace: u64,
    pub drain_grace_until_below: u32,
    /// Seconds a victim may take in all ([`Policy::drain_timeout`]).
    pub drain_timeout: u64,
}

/// One scale-out step, with absolute bounds on the average.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepVar {
    pub lower: u32,
    pub upper: Option<u32>,
    pub adjustment: u32,
}

/// One schedule window as two recurring scheduled actions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleVar {
    pub name: String,
    pub start_recurrence: String,
    pub end_recurrence: String,
    pub time_zone: String,
    pub min_size: u32,
    pub desired_capacity: Option<u32>,
}

/// The warm pool in the module's (AWS's) terms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WarmPoolVar {
    pub min_size: u32,
    /// -1: AWS's "the group's max size".
    pub max_group_prepared_capacity: i64,
    pub pool_state: &'static str,
    pub reuse_on_scale_in: bool,
}

/// The most instances the fallback alarms remove at once. The engine removes up to
/// `scale_in.step` only while the rest would hold the demand at or below `max_after`; a
/// CloudWatch alarm and a simple scaling policy cannot check that, so the fallback removes one
/// node per cooldown, as the classic setup does.
pub const FALLBACK_SCALE_IN_STEP: u32 = 1;

/// The module's variables for a policy, or an error naming the key AWS cannot express.
pub fn vars(p: &Policy) -> Result<TerraformVars, String> {
    let interval = p.scale_out.interval.as_secs();
    if !(interval == 10 || interval == 30 || interval > 0 && interval.is_multiple_of(60)) {
        return Err(format!(
            "scale_out.interval = {interval}s: CloudWatch alarms take 10 s, 30 s or multiples of 60 s; use one of those to export"
        ));
    }
    let scale_out_steps = p
        .scale_out
        .steps
        .iter()
        .map(|s| StepVar {
            lower: s.lower,
            upper: s.upper,
            adjustment: s.add,
        })
        .collect();
    let schedules = p
        .schedules
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let end = end_cron(&s.cron, s.duration.as_secs() / 60)
                .map_err(|e| format!("schedule[{i}].cron ({}): {e}", s.name))?;
            Ok(ScheduleVar {
                name: s.name.clone(),
                start_recurrence: s.cron.clone(),
                end_recurrence: end,
                time_zone: s.timezone.clone(),
                min_size: s.min_size,
                desired_capacity: s.desired,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let warm_pool = p.warm_pool.as_ref().map(|w| WarmPoolVar {
        min_size: w.min_size,
        max_group_prepared_capacity: w.max_prepared.map(i64::from).unwrap_or(-1),
        pool_state: w.state.aws_name(),
        reuse_on_scale_in: w.reuse_on_scale_in,
    });
    Ok(TerraformVars {
        min_size: p.group.min_size,
        max_size: p.group.max_size,
        node_cap: p.group.node_cap,
        metric_namespace: p.metric.namespace.clone(),
        metric_name: p.metric.name.clone(),
        agent_publish_period: interval.min(60),
        scale_out_threshold: p.scale_out_threshold(),
        scale_out_period: interval,
        scale_out_evaluation_periods: p.scale_out.datapoints,
        scale_out_steps,
        instance_warmup: p.scale_out.warmup.as_secs(),
        scale_in_threshold: p.scale_in.threshold,
        scale_in_period: 60,
        scale_in_evaluation_periods: p.scale_in.sustain.as_secs().div_ceil(60).max(1),
        scale_in_adjustment: p.scale_in.step.min(FALLBACK_SCALE_IN_STEP),
        scale_in_cooldown: p.scale_in.cooldown.as_secs(),
        schedules,
        warm_pool,
        drain_grace: p.scale_in.drain_grace.as_secs(),
        drain_grace_until_below: p.scale_in.drain_grace_until_below,
        drain_timeout: p.drain_timeout().as_secs(),
    })
}

/// The tfvars object for a policy (the JSON of [`vars`]), or an error naming the key AWS
/// cannot express.
pub fn terraform_vars(p: &Policy) -> Result<Value, String> {
    serde_json::to_value(vars(p)?).map_err(|e| format!("cannot encode the variables: {e}"))
}

/// The cron at which a window that starts at `start` and lasts `minutes` ends. Needs a single
/// minute and hour; crossing midnight shifts the weekdays (and needs `*` day-of-month).
pub fn end_cron(start: &str, minutes: u64) -> Result<String, String> {
    let f: Vec<&str> = start.split_whitespace().collect();
    if f.len() != 5 {
        return Err("expected 5 fields".into());
    }
    let (m, h): (u64, u64) = match (f[0].parse(), f[1].parse()) {
        (Ok(m), Ok(h)) => (m, h),
        _ => {
            return Err(
                "minute and hour must be single numbers to compute the window's end".into(),
            );
        }
    };
    let total = h * 60 + m + minutes;
    let shift = total / 1_440;
    let (eh, em) = ((total % 1_440) / 60, total % 60);
    if shift == 0 {
        return Ok(format!("{em} {eh} {} {} {}", f[2], f[3], f[4]));
    }
    if f[2] != "*" {
        return Err("a window that crosses midnight needs day-of-month `*`".into());
    }
    let dow = if f[4] == "*" {
        "*".to_string()
    } else {
        shift_days(f[4], shift)?
    };
    Ok(format!("{em} {eh} * {} {dow}", f[3]))
}

fn shift_days(spec: &str, shift: u64) -> Result<String, String> {
    let day = |s: &str| -> Result<u64, String> {
        let up = s.to_ascii_uppercase();
        DAYS.iter()
            .position(|d| *d == up)
            .map(|i| i as u64)
            .or_else(|| s.parse::<u64>().ok().map(|n| n % 7))
            .ok_or(format!("day-of-week {s:?}"))
    };
    let mut out = Vec::new();
    for part in spec.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    out.push(DAYS[((d + shift) % 7) as usize]);
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => out.push(DAYS[((day(part)? + shift) % 7) as usize]),
        }
    }
    Ok(out.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_ends() {
        assert_eq!(
            end_cron("0 18 * * MON-FRI", 180).unwrap(),
            "0 21 * * MON-FRI"
        );
        assert_eq!(
            end_cron("30 22 * * FRI,SAT", 120).unwrap(),
            "30 0 * * SAT,SUN"
        );
        assert_eq!(end_cron("0 23 * * *", 120).unwrap(), "0 1 * * *");
        assert!(end_cron("*/5 18 * * *", 60).is_err());
        assert!(end_cron("0 23 1 * *", 120).is_err());
    }

    #[test]
    fn default_policy_exports() {
        let v = terraform_vars(&Policy::default_policy()).unwrap();
        assert_eq!(v["scale_out_threshold"], 25_000);
        assert_eq!(v["scale_out_steps"][2]["upper"], Value::Null);
        assert_eq!(v["warm_pool"]["pool_state"], "Stopped");
    }

    /// The engine may remove the whole surplus at once; the alarm, which cannot check what the
    /// rest would carry, removes one node.
    #[test]
    fn the_fallback_alarm_removes_one_node_whatever_the_step() {
        let mut p = Policy::default_policy();
        p.scale_in.step = 10;
        assert_eq!(terraform_vars(&p).unwrap()["scale_in_adjustment"], 1);
    }
}
