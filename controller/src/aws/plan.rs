//! `connscale plan` / `apply`: the group's scaling configuration as the policy wants it, as AWS
//! has it, the difference, and the calls that close it.
//!
//! The wanted configuration is built from [`crate::export::vars`] (typed), so `apply` and the
//! terraform module configure the same alarms, policies and schedules with the same names
//! (`<group>-scale-out`, `<group>-connections-high`, `<schedule>-start`, ...). Scaling policies
//! and alarms with other names are left alone; scheduled actions are owned by the policy
//! (`[[schedule]]`), so ones it does not list are deleted.

use super::{AwsProvider, sdk_error};
use crate::provider::ProviderError;
use aws_sdk_autoscaling::types::StepAdjustment;
use aws_sdk_cloudwatch::types::{
    ComparisonOperator, Dimension, Metric, MetricDataQuery, MetricStat, Statistic,
};
use connscale_common::metric::DIM_GROUP;
use connscale_common::policy::{Policy, WarmPool};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The termination lifecycle hook the agent drains in (terraform/fleet.tf names it the same).
pub const DRAIN_HOOK: &str = "connscale-drain";

/// The metric `connscale run` publishes while it holds the lease ({AutoScalingGroupName}, in the
/// policy's namespace). The alarms act only while it is missing, so exactly one actor scales.
pub const HEARTBEAT_METRIC: &str = "ControllerHeartbeat";
/// Metric-math ids of the alarms' queries (terraform/scaling.tf uses the same).
pub const CONNS_ID: &str = "conns";
pub const HEARTBEAT_ID: &str = "hb";
pub const FALLBACK_ID: &str = "fallback";

/// The alarm's expression: the group average while no controller heartbeat is seen in the
/// period, else `never`, a value on the never-breaching side of the threshold.
pub fn fallback_expression(never: f64) -> String {
    format!("IF(FILL({HEARTBEAT_ID}, 0) == 0, {CONNS_ID}, {never})")
}

/// The value the alarm sees while the controller runs: below zero for the scale-out alarm
/// (connections never are), above the threshold for the scale-in alarm.
pub fn never_breaching(comparison: &str, threshold: f64) -> f64 {
    if comparison.starts_with("Greater") {
        -1.0
    } else {
        threshold + 1.0
    }
}

/// One piece of the group's scaling configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Spec {
    GroupBounds {
        min_size: i32,
        max_size: i32,
    },
    StepPolicy {
        warmup: i32,
        /// (lower, upper, adjustment), bounds relative to the alarm threshold.
        steps: Vec<(Option<f64>, Option<f64>, i32)>,
    },
    SimplePolicy {
        adjustment: i32,
        cooldown: i32,
    },
    Alarm {
        namespace: String,
        metric: String,
        group: String,
        period: i32,
        evaluation_periods: i32,
        threshold: f64,
        comparison: String,
        treat_missing: String,
        /// The metric-math expression the alarm compares ([`fallback_expression`]).
        expression: String,
        /// The scaling policy (by name) the alarm triggers.
        policy: Option<String>,
    },
    ScheduledAction {
        recurrence: String,
        time_zone: String,
        min_size: Option<i32>,
        max_size: Option<i32>,
        desired: Option<i32>,
    },
    WarmPool(WarmPool),
    LifecycleHook {
        transition: String,
        default_result: String,
        heartbeat_timeout: i32,
    },
}

impl Spec {
    fn kind(&self) -> &'static str {
        match self {
            Spec::GroupBounds { .. } => "group",
            Spec::StepPolicy { .. } | Spec::SimplePolicy { .. } => "scaling-policy",
            Spec::Alarm { .. } => "alarm",
            Spec::ScheduledAction { .. } => "scheduled-action",
            Spec::WarmPool(_) => "warm-pool",
            Spec::LifecycleHook { .. } => "lifecycle-hook",
        }
    }
}

/// Resources by (kind, name).
pub type Config = BTreeMap<(String, String), Spec>;

fn insert(c: &mut Config, name: &str, spec: Spec) {
    c.insert((spec.kind().to_string(), name.to_string()), spec);
}

/// The configuration the policy wants for `group`.
pub fn wanted(policy: &Policy, group: &str) -> Result<Config, String> {
    let v = crate::export::vars(policy)?;
    let threshold = f64::from(v.scale_out_threshold);
    let mut c = Config::new();
    insert(
        &mut c,
        group,
        Spec::GroupBounds {
            min_size: policy.group.min_size as i32,
            max_size: policy.group.max_size as i32,
        },
    );
    let (out, inn) = (format!("{group}-scale-out"), format!("{group}-scale-in"));
    let steps = v
        .scale_out_steps
        .iter()
        .map(|s| {
            (
                Some(f64::from(s.lower) - threshold),
                s.upper.map(|u| f64::from(u) - threshold),
                s.adjustment as i32,
            )
        })
        .collect();
    insert(
        &mut c,
        &out,
        Spec::StepPolicy {
            warmup: v.instance_warmup as i32,
            steps,
        },
    );
    insert(
        &mut c,
        &inn,
        Spec::SimplePolicy {
            adjustment: -(v.scale_in_adjustment as i32),
            cooldown: v.scale_in_cooldown as i32,
        },
    );
    // (period, evaluation periods, threshold) of each alarm.
    let high = (
        v.scale_out_period,
        u64::from(v.scale_out_evaluation_periods),
        v.scale_out_threshold,
    );
    let low = (
        v.scale_in_period,
        v.scale_in_evaluation_periods,
        v.scale_in_threshold,
    );
    let alarm = |(period, evaluations, threshold): (u64, u64, u32),
                 cmp: &str,
                 missing: &str,
                 policy: &str| Spec::Alarm {
        expression: fallback_expression(never_breaching(cmp, f64::from(threshold))),
        namespace: v.metric_namespace.clone(),
        metric: v.metric_name.clone(),
        group: group.to_string(),
        period: period as i32,
        evaluation_periods: evaluations as i32,
        threshold: f64::from(threshold),
        comparison: cmp.into(),
        treat_missing: missing.into(),
        policy: Some(policy.into()),
    };
    insert(
        &mut c,
        &alarm_names(group)[0],
        alarm(high, "GreaterThanOrEqualToThreshold", "missing", &out),
    );
    insert(
        &mut c,
        &alarm_names(group)[1],
        alarm(low, "LessThanOrEqualToThreshold", "notBreaching", &inn),
    );
    for s in &v.schedules {
        let (name, tz) = (&s.name, s.time_zone.clone());
        insert(
            &mut c,
            &format!("{name}-start"),
            Spec::ScheduledAction {
                recurrence: s.start_recurrence.clone(),
                time_zone: tz.clone(),
                min_size: Some(s.min_size as i32),
                max_size: Some(policy.group.max_size as i32),
                desired: s.desired_capacity.map(|d| d as i32),
            },
        );
        insert(
            &mut c,
            &format!("{name}-end"),
            Spec::ScheduledAction {
                recurrence: s.end_recurrence.clone(),
                time_zone: tz,
                min_size: Some(policy.group.min_size as i32),
                max_size: Some(policy.group.max_size as i32),
                desired: None,
            },
        );
    }
    if let Some(w) = &policy.warm_pool {
        insert(&mut c, group, Spec::WarmPool(w.clone()));
    }
    insert(
        &mut c,
        DRAIN_HOOK,
        Spec::LifecycleHook {
            transition: "autoscaling:EC2_INSTANCE_TERMINATING".into(),
            default_result: "CONTINUE".into(),
            // The victim's grace and drain, as terraform's drain_timeout (export sets it so).
            heartbeat_timeout: v.drain_timeout as i32,
        },
    );
    Ok(c)
}

/// The group's two alarms: high (scale out) and low (scale in).
pub fn alarm_names(group: &str) -> [String; 2] {
    [
        format!("{group}-connections-high"),
        format!("{group}-connections-low"),
    ]
}

/// What a change does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Create,
    /// Field → (have, want).
    Update(BTreeMap<String, (Value, Value)>),
    Delete,
}

/// One difference between the policy and the group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub kind: String,
    pub name: String,
    pub op: Op,
    /// The wanted spec (absent for deletions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spec: Option<Spec>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.op {
            Op::Create => write!(f, "+ create {} {}", self.kind, self.name),
            Op::Delete => write!(f, "- delete {} {}", self.kind, self.name),
            Op::Update(fields) => {
                write!(f, "~ update {} {}", self.kind, self.name)?;
                for (k, (have, want)) in fields {
                    write!(f, "\n    {k}: {have} → {want}")?;
                }
                Ok(())
            }
        }
    }
}

/// Which observed resources the policy owns, so it may delete them when it no longer wants them.
fn owned(kind: &str) -> bool {
    matches!(kind, "scheduled-action" | "warm-pool")
}

/// The changes that turn `have` into `want`.
pub fn diff(want: &Config, have: &Config) -> Vec<Change> {
    let mut out = Vec::new();
    for ((kind, name), w) in want {
        let op = match have.get(&(kind.clone(), name.clone())) {
            None => Op::Create,
            Some(h) if h == w => continue,
            Some(h) => Op::Update(fields(h, w)),
        };
        out.push(Change {
            kind: kind.clone(),
            name: name.clone(),
            op,
            spec: Some(w.clone()),
        });
    }
    for (kind, name) in have.keys() {
        if owned(kind) && !want.contains_key(&(kind.clone(), name.clone())) {
            out.push(Change {
                kind: kind.clone(),
                name: name.clone(),
                op: Op::Delete,
                spec: None,
            });
        }
    }
    out
}

fn fields(have: &Spec, want: &Spec) -> BTreeMap<String, (Value, Value)> {
    let (h, w) = (
        serde_json::to_value(have).unwrap_or_default(),
        serde_json::to_value(want).unwrap_or_default(),
    );
    let mut out = BTreeMap::new();
    if let (Some(h), Some(w)) = (h.as_object(), w.as_object()) {
        for (k, wv) in w {
            let hv = h.get(k).cloned().unwrap_or(Value::Null);
            if &hv != wv {
                out.insert(k.clone(), (hv, wv.clone()));
            }
        }
    }
    out
}

/// The group's scaling configuration as AWS has it, and the policy ARNs by name.
pub async fn observed(
    p: &AwsProvider,
    want: &Config,
) -> Result<(Config, BTreeMap<String, String>), ProviderError> {
    let group = p.group().to_string();
    let mut c = Config::new();
    let g = p.describe_group().await?;
    insert(
        &mut c,
        &group,
        Spec::GroupBounds {
            min_size: g.min_size().unwrap_or(0),
            max_size: g.max_size().unwrap_or(0),
        },
    );
    let pols = p
        .asg
        .describe_policies()
        .auto_scaling_group_name(&group)
        .send()
        .await
        .map_err(|e| sdk_error("autoscaling:DescribePolicies", e))?;
    let mut arns = BTreeMap::new();
    for sp in pols.scaling_policies() {
        let Some(name) = sp.policy_name() else {
            continue;
        };
        if let Some(a) = sp.policy_arn() {
            arns.insert(name.to_string(), a.to_string());
        }
        let spec = match sp.policy_type() {
            Some("StepScaling") => Spec::StepPolicy {
                warmup: sp.estimated_instance_warmup().unwrap_or(0),
                steps: sp
                    .step_adjustments()
                    .iter()
                    .map(|s| {
                        (
                            s.metric_interval_lower_bound(),
                            s.metric_interval_upper_bound(),
                            s.scaling_adjustment().unwrap_or(0),
                        )
                    })
                    .collect(),
            },
            Some("SimpleScaling") | None => Spec::SimplePolicy {
                adjustment: sp.scaling_adjustment().unwrap_or(0),
                cooldown: sp.cooldown().unwrap_or(0),
            },
            Some(_) => continue,
        };
        insert(&mut c, name, spec);
    }
    let by_arn: BTreeMap<&String, &String> = arns.iter().map(|(n, a)| (a, n)).collect();
    let alarm_names: Vec<String> = want
        .keys()
        .filter(|(k, _)| k == "alarm")
        .map(|(_, n)| n.clone())
        .collect();
    if !alarm_names.is_empty() {
        let al =
            p.cw.describe_alarms()
                .set_alarm_names(Some(alarm_names))
                .send()
                .await
                .map_err(|e| sdk_error("cloudwatch:DescribeAlarms", e))?;
        for a in al.metric_alarms() {
            let Some(name) = a.alarm_name() else { continue };
            // A metric-math alarm keeps its metric in the `conns` query; an older single-metric
            // one at the top level (it then differs in `expression` and is replaced).
            let conns = a
                .metrics()
                .iter()
                .find(|q| q.id() == Some(CONNS_ID))
                .and_then(|q| q.metric_stat());
            let metric = conns.and_then(|m| m.metric());
            let dims = metric.map(|m| m.dimensions()).unwrap_or(a.dimensions());
            let dim = dims
                .iter()
                .find(|d| d.name() == Some(DIM_GROUP))
                .and_then(|d| d.value())
                .unwrap_or_default();
            let expression = a
                .metrics()
                .iter()
                .find(|q| q.return_data() != Some(false) && q.expression().is_some())
                .and_then(|q| q.expression())
                .unwrap_or_default();
            insert(
                &mut c,
                name,
                Spec::Alarm {
                    namespace: metric
                        .and_then(|m| m.namespace())
                        .or(a.namespace())
                        .unwrap_or_default()
                        .into(),
                    metric: metric
                        .and_then(|m| m.metric_name())
                        .or(a.metric_name())
                        .unwrap_or_default()
                        .into(),
                    group: dim.into(),
                    expression: expression.into(),
                    period: conns.and_then(|m| m.period()).or(a.period()).unwrap_or(0),
                    evaluation_periods: a.evaluation_periods().unwrap_or(0),
                    threshold: a.threshold().unwrap_or(0.0),
                    comparison: a
                        .comparison_operator()
                        .map(|c| c.as_str().to_string())
                        .unwrap_or_default(),
                    treat_missing: a.treat_missing_data().unwrap_or("missing").into(),
                    policy: a.alarm_actions().first().map(|arn| {
                        by_arn
                            .get(arn)
                            .map(|n| n.to_string())
                            .unwrap_or(arn.clone())
                    }),
                },
            );
        }
    }
    for s in p.scheduled_actions().await? {
        let Some(name) = s.scheduled_action_name() else {
            continue;
        };
        insert(
            &mut c,
            name,
            Spec::ScheduledAction {
                recurrence: s.recurrence().unwrap_or_default().into(),
                time_zone: s.time_zone().unwrap_or("UTC").into(),
                min_size: s.min_size(),
                max_size: s.max_size(),
                desired: s.desired_capacity().filter(|d| *d >= 0),
            },
        );
    }
    if let (Some(w), _, _) = p.describe_warm_pool().await? {
        insert(&mut c, &group, Spec::WarmPool(w));
    }
    let hooks = p
        .asg
        .describe_lifecycle_hooks()
        .auto_scaling_group_name(&group)
        .send()
        .await
        .map_err(|e| sdk_error("autoscaling:DescribeLifecycleHooks", e))?;
    for h in hooks.lifecycle_hooks() {
        let Some(name) = h.lifecycle_hook_name() else {
            continue;
        };
        insert(
            &mut c,
            name,
            Spec::LifecycleHook {
                transition: h.lifecycle_transition().unwrap_or_default().into(),
                default_result: h.default_result().unwrap_or("ABANDON").into(),
                heartbeat_timeout: h.heartbeat_timeout().unwrap_or(3600),
            },
        );
    }
    Ok((c, arns))
}

/// The changes `apply` would make.
pub async fn plan(p: &AwsProvider, policy: &Policy) -> Result<Vec<Change>, anyhow::Error> {
    let want = wanted(policy, p.group()).map_err(anyhow::Error::msg)?;
    let (have, _) = observed(p, &want).await?;
    Ok(diff(&want, &have))
}

/// Makes the group match the policy; returns what was changed (empty: nothing to do).
/// Scaling policies go first so the alarms can name their ARNs.
pub async fn apply(p: &mut AwsProvider, policy: &Policy) -> Result<Vec<Change>, anyhow::Error> {
    let changes = plan(p, policy).await?;
    let group = p.group().to_string();
    let rank = |c: &Change| match c.kind.as_str() {
        "group" => 0,
        "scaling-policy" => 1,
        "alarm" => 3,
        _ => 2,
    };
    let mut ordered = changes.clone();
    ordered.sort_by_key(rank);
    let mut arns = BTreeMap::new();
    for c in &ordered {
        if c.kind == "alarm" && arns.is_empty() {
            arns = observed(p, &Config::new()).await?.1;
        }
        match (&c.op, &c.spec) {
            (Op::Delete, _) => match c.kind.as_str() {
                "scheduled-action" => {
                    p.asg
                        .delete_scheduled_action()
                        .auto_scaling_group_name(&group)
                        .scheduled_action_name(&c.name)
                        .send()
                        .await
                        .map_err(|e| sdk_error("autoscaling:DeleteScheduledAction", e))?;
                }
                "warm-pool" => p.set_warm_pool(None).await?,
                _ => {}
            },
            (_, Some(spec)) => put(p, &group, &c.name, spec, &arns).await?,
            (_, None) => {}
        }
    }
    Ok(changes)
}

async fn put(
    p: &mut AwsProvider,
    group: &str,
    name: &str,
    spec: &Spec,
    arns: &BTreeMap<String, String>,
) -> Result<(), ProviderError> {
    match spec {
        Spec::GroupBounds { min_size, max_size } => {
            p.asg
                .update_auto_scaling_group()
                .auto_scaling_group_name(group)
                .min_size(*min_size)
                .max_size(*max_size)
                .send()
                .await
                .map_err(|e| sdk_error("autoscaling:UpdateAutoScalingGroup", e))?;
        }
        Spec::StepPolicy { warmup, steps } => {
            let mut req = p
                .asg
                .put_scaling_policy()
                .auto_scaling_group_name(group)
                .policy_name(name)
                .policy_type("StepScaling")
                .adjustment_type("ChangeInCapacity")
                .metric_aggregation_type("Average")
                .estimated_instance_warmup(*warmup);
            for (lo, hi, add) in steps {
                req = req.step_adjustments(
                    StepAdjustment::builder()
                        .set_metric_interval_lower_bound(*lo)
                        .set_metric_interval_upper_bound(*hi)
                        .scaling_adjustment(*add)
                        .build(),
                );
            }
            req.send()
                .await
                .map_err(|e| sdk_error("autoscaling:PutScalingPolicy", e))?;
        }
        Spec::SimplePolicy {
            adjustment,
            cooldown,
        } => {
            p.asg
                .put_scaling_policy()
                .auto_scaling_group_name(group)
                .policy_name(name)
                .policy_type("SimpleScaling")
                .adjustment_type("ChangeInCapacity")
                .scaling_adjustment(*adjustment)
                .cooldown(*cooldown)
                .send()
                .await
                .map_err(|e| sdk_error("autoscaling:PutScalingPolicy", e))?;
        }
        Spec::Alarm {
            namespace,
            metric,
            group: g,
            period,
            evaluation_periods,
            threshold,
            comparison,
            treat_missing,
            expression,
            policy,
        } => {
            let action = policy.as_ref().and_then(|n| arns.get(n)).ok_or_else(|| {
                ProviderError::other(
                    "cloudwatch:PutMetricAlarm",
                    format!("alarm {name}: scaling policy {policy:?} has no ARN yet"),
                )
            })?;
            let query = |id: &str, metric: &str, stat: Statistic| {
                MetricDataQuery::builder()
                    .id(id)
                    .return_data(false)
                    .metric_stat(
                        MetricStat::builder()
                            .metric(
                                Metric::builder()
                                    .namespace(namespace)
                                    .metric_name(metric)
                                    .dimensions(
                                        Dimension::builder().name(DIM_GROUP).value(g).build(),
                                    )
                                    .build(),
                            )
                            .period(*period)
                            .stat(stat.as_str())
                            .build(),
                    )
                    .build()
            };
            p.cw.put_metric_alarm()
                .alarm_name(name)
                .alarm_description(
                    "connscale fallback: average established connections per instance, \
                     acting only while the connscale controller's heartbeat is missing",
                )
                .metrics(query(CONNS_ID, metric, Statistic::Average))
                .metrics(query(HEARTBEAT_ID, HEARTBEAT_METRIC, Statistic::Sum))
                .metrics(
                    MetricDataQuery::builder()
                        .id(FALLBACK_ID)
                        .expression(expression)
                        .return_data(true)
                        .build(),
                )
                .evaluation_periods(*evaluation_periods)
                .datapoints_to_alarm(*evaluation_periods)
                .threshold(*threshold)
                .comparison_operator(ComparisonOperator::from(comparison.as_str()))
                .treat_missing_data(treat_missing)
                .alarm_actions(action)
                .send()
                .await
                .map_err(|e| sdk_error("cloudwatch:PutMetricAlarm", e))?;
        }
        Spec::ScheduledAction {
            recurrence,
            time_zone,
            min_size,
            max_size,
            desired,
        } => {
            p.asg
                .put_scheduled_update_group_action()
                .auto_scaling_group_name(group)
                .scheduled_action_name(name)
                .recurrence(recurrence)
                .time_zone(time_zone)
                .set_min_size(*min_size)
                .set_max_size(*max_size)
                .set_desired_capacity(*desired)
                .send()
                .await
                .map_err(|e| sdk_error("autoscaling:PutScheduledUpdateGroupAction", e))?;
        }
        Spec::WarmPool(w) => p.set_warm_pool(Some(w)).await?,
        Spec::LifecycleHook {
            transition,
            default_result,
            heartbeat_timeout,
        } => {
            p.asg
                .put_lifecycle_hook()
                .auto_scaling_group_name(group)
                .lifecycle_hook_name(name)
                .lifecycle_transition(transition)
                .default_result(default_result)
                .heartbeat_timeout(*heartbeat_timeout)
                .send()
                .await
                .map_err(|e| sdk_error("autoscaling:PutLifecycleHook", e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the alarm's expression yields at one period, read from its text exactly as
    /// CloudWatch would: `hb` is the heartbeat sum (None: no datapoint), `conns` the average.
    fn eval(expr: &str, hb: Option<f64>, conns: Option<f64>) -> Option<f64> {
        let never: f64 = expr
            .strip_prefix("IF(FILL(hb, 0) == 0, conns, ")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected expression {expr}"));
        if hb.unwrap_or(0.0) == 0.0 {
            conns
        } else {
            Some(never)
        }
    }

    #[test]
    fn exactly_one_actor_the_alarms_breach_only_without_a_heartbeat() {
        let c = wanted(&Policy::default_policy(), "chat").unwrap();
        for name in alarm_names("chat") {
            let Some(Spec::Alarm {
                threshold,
                comparison,
                expression,
                ..
            }) = c.get(&("alarm".into(), name.clone()))
            else {
                panic!("no alarm {name}");
            };
            let breaches = |v: f64| {
                if comparison.starts_with("Greater") {
                    v >= *threshold
                } else {
                    v <= *threshold
                }
            };
            for conns in [0.0, threshold - 1.0, *threshold, threshold + 1.0, 1e9] {
                // The controller runs (any heartbeat sum > 0): the alarm never breaches.
                for hb in [1.0, 3.0] {
                    let v = eval(expression, Some(hb), Some(conns)).expect("a value");
                    assert!(
                        !breaches(v),
                        "{name}: heartbeat {hb}, conns {conns}: {v} breaches"
                    );
                }
                // The controller is gone: the alarm sees the plain average, as the classic
                // alarm did.
                for hb in [None, Some(0.0)] {
                    assert_eq!(eval(expression, hb, Some(conns)), Some(conns), "{name}");
                }
            }
            // No data at all: the expression is missing too, and treat_missing decides.
            assert_eq!(eval(expression, None, None), None);
        }
    }

    #[test]
    fn default_policy_wants_the_terraform_names() {
        let c = wanted(&Policy::default_policy(), "chat").unwrap();
        for (k, n) in [
            ("group", "chat"),
            ("scaling-policy", "chat-scale-out"),
            ("scaling-policy", "chat-scale-in"),
            ("alarm", "chat-connections-high"),
            ("alarm", "chat-connections-low"),
            ("warm-pool", "chat"),
            ("lifecycle-hook", DRAIN_HOOK),
        ] {
            assert!(c.contains_key(&(k.into(), n.into())), "{k} {n}");
        }
        let Some(Spec::StepPolicy { steps, .. }) =
            c.get(&("scaling-policy".into(), "chat-scale-out".into()))
        else {
            panic!("no step policy");
        };
        assert_eq!(steps[0], (Some(0.0), Some(1500.0), 1));
        assert_eq!(steps[2], (Some(2500.0), None, 3));
    }

    #[test]
    fn diff_creates_updates_and_deletes_only_owned() {
        let want = wanted(&Policy::default_policy(), "chat").unwrap();
        assert_eq!(diff(&want, &want), vec![]);
        let mut have = want.clone();
        have.insert(
            ("scheduled-action".into(), "old-start".into()),
            Spec::ScheduledAction {
                recurrence: "0 1 * * *".into(),
                time_zone: "UTC".into(),
                min_size: None,
                max_size: None,
                desired: Some(3),
            },
        );
        have.insert(
            ("scaling-policy".into(), "someone-elses".into()),
            Spec::SimplePolicy {
                adjustment: 1,
                cooldown: 0,
            },
        );
        have.insert(
            ("group".into(), "chat".into()),
            Spec::GroupBounds {
                min_size: 1,
                max_size: 40,
            },
        );
        have.remove(&("alarm".into(), "chat-connections-low".into()));
        let d = diff(&want, &have);
        let ops: Vec<(String, String)> = d
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    format!("{:?}", c.op).chars().take(6).collect(),
                )
            })
            .collect();
        assert_eq!(
            ops,
            vec![
                ("chat-connections-low".into(), "Create".into()),
                ("chat".into(), "Update".into()),
                ("old-start".into(), "Delete".into()),
            ]
        );
        assert!(d[1].to_string().contains("min_size: 1 → 2"), "{}", d[1]);
    }
}
