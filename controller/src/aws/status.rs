//! `connscale status` for an Auto Scaling group: the fleet view plus what only AWS knows
//! (alarms, scheduled actions, recent scaling activities, the control loop's lease).

use super::{AwsProvider, lease, plan, sdk_error};
use crate::provider::{FleetView, Provider, ProviderError, Spread};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct AlarmState {
    pub name: String,
    pub state: String,
    pub threshold: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scheduled {
    pub name: String,
    pub recurrence: String,
    pub time_zone: Option<String>,
    pub min_size: Option<i32>,
    pub desired: Option<i32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Activity {
    pub start: Option<i64>,
    pub status: String,
    pub description: String,
    pub cause: String,
}

/// Everything `status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    #[serde(flatten)]
    pub fleet: FleetView,
    pub spread: Option<Spread>,
    pub alarms: Vec<AlarmState>,
    pub schedules: Vec<Scheduled>,
    pub activities: Vec<Activity>,
    /// Set when the API cannot list activities (moto, or a missing permission).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activities_error: Option<String>,
    pub lease: Option<String>,
}

/// Reads the group's status.
pub async fn status(p: &mut AwsProvider) -> Result<Status, ProviderError> {
    let fleet = p.observe().await?;
    let group = p.group().to_string();
    let al =
        p.cw.describe_alarms()
            .set_alarm_names(Some(plan::alarm_names(&group).to_vec()))
            .send()
            .await
            .map_err(|e| sdk_error("cloudwatch:DescribeAlarms", e))?;
    let alarms = al
        .metric_alarms()
        .iter()
        .map(|a| AlarmState {
            name: a.alarm_name().unwrap_or_default().into(),
            state: a
                .state_value()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            threshold: a.threshold().unwrap_or(0.0),
        })
        .collect();
    let schedules = p
        .scheduled_actions()
        .await?
        .iter()
        .map(|s| Scheduled {
            name: s.scheduled_action_name().unwrap_or_default().into(),
            recurrence: s.recurrence().unwrap_or_default().into(),
            time_zone: s.time_zone().map(str::to_string),
            min_size: s.min_size(),
            desired: s.desired_capacity(),
        })
        .collect();
    let (activities, activities_error) = match activities(p, 10).await {
        Ok(a) => (a, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    // A missing lease table is worth showing, not failing the whole status for.
    let lease = match lease::read(p).await {
        Ok(l) => l.map(|l| l.describe()),
        Err(e) if e.kind == crate::provider::ErrorKind::NotFound => Some(format!(
            "no lease table {:?} (`connscale apply` or terraform creates it)",
            p.settings.lease_table
        )),
        Err(e) => return Err(e),
    };
    Ok(Status {
        spread: fleet.spread(),
        fleet,
        alarms,
        schedules,
        activities,
        activities_error,
        lease,
    })
}

/// The group's most recent scaling activities, newest first.
pub async fn activities(p: &AwsProvider, max: i32) -> Result<Vec<Activity>, ProviderError> {
    let out = p
        .asg
        .describe_scaling_activities()
        .auto_scaling_group_name(p.group())
        .max_records(max)
        .send()
        .await
        .map_err(|e| sdk_error("autoscaling:DescribeScalingActivities", e))?;
    Ok(out
        .activities()
        .iter()
        .map(|a| Activity {
            start: a.start_time().map(|t| t.secs()),
            status: a
                .status_code()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            description: a.description().unwrap_or_default().into(),
            cause: a.cause().unwrap_or_default().into(),
        })
        .collect())
}

/// The human rendering.
pub fn render(s: &Status) -> String {
    use std::fmt::Write;
    let f = &s.fleet;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "group {}: desired {} (min {}, max {}), {} instance(s)",
        f.name,
        f.desired,
        f.min_size,
        f.max_size,
        f.members.len()
    );
    let _ = writeln!(
        o,
        "  {:<21} {:<18} {:<9} {:>11}  {:<9}  cordoned until",
        "instance", "state", "health", "connections", "protected"
    );
    for m in &f.members {
        let cordon = m
            .cordoned_until
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map_or_else(
                || "-".to_string(),
                |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            );
        let _ = writeln!(
            o,
            "  {:<21} {:<18} {:<9} {:>11}  {:<9}  {cordon}",
            m.id,
            m.state,
            if m.healthy { "healthy" } else { "unhealthy" },
            m.connections
                .map(|c| c.to_string())
                .unwrap_or_else(|| "no data".into()),
            if m.protected { "yes" } else { "no" }
        );
    }
    match &s.spread {
        Some(sp) => {
            let _ = writeln!(
                o,
                "spread: min {} / avg {:.0} / max {}",
                sp.min, sp.avg, sp.max
            );
        }
        None => o.push_str("spread: no in-service instance has a recent datapoint\n"),
    }
    match &f.warm_pool {
        Some(w) => {
            let _ = writeln!(
                o,
                "warm pool: {} waiting, min {}, max prepared {}, {}",
                f.warm_instances,
                w.min_size,
                w.max_prepared
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "group max".into()),
                w.state.aws_name()
            );
        }
        None => o.push_str("warm pool: none\n"),
    }
    for a in &s.alarms {
        let _ = writeln!(
            o,
            "alarm {}: {} (threshold {})",
            a.name, a.state, a.threshold
        );
    }
    for sc in &s.schedules {
        let _ = writeln!(
            o,
            "schedule {}: {} {} min {:?} desired {:?}",
            sc.name,
            sc.recurrence,
            sc.time_zone.as_deref().unwrap_or("UTC"),
            sc.min_size,
            sc.desired
        );
    }
    if let Some(e) = &s.activities_error {
        let _ = writeln!(o, "recent actions: unavailable ({e})");
    }
    for a in &s.activities {
        let _ = writeln!(o, "action [{}] {}", a.status, a.description);
    }
    let _ = writeln!(
        o,
        "control loop lease: {}",
        s.lease.as_deref().unwrap_or("free")
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Lifecycle;
    use crate::provider::Member;

    /// The table names each member's cordon end, or "-" for none.
    #[test]
    fn the_table_shows_the_cordon() {
        let member = |id: &str, cordoned_until| Member {
            id: id.into(),
            state: "InService".into(),
            lifecycle: Some(Lifecycle::InService),
            healthy: true,
            protected: false,
            launched_at: 0,
            connections: Some(10),
            address: None,
            cordoned_until,
            cordoned_since: None,
        };
        let s = Status {
            fleet: FleetView {
                name: "chat".into(),
                desired: 2,
                min_size: 1,
                max_size: 4,
                members: vec![member("i-a", Some(1_796_120_999)), member("i-b", None)],
                warm_pool: None,
                warm_instances: 0,
                pool_terminations: Vec::new(),
            },
            spread: None,
            alarms: Vec::new(),
            schedules: Vec::new(),
            activities: Vec::new(),
            activities_error: None,
            lease: None,
        };
        let table = render(&s);
        let line = |id: &str| {
            table
                .lines()
                .find(|l| l.contains(id))
                .unwrap_or_default()
                .to_string()
        };
        assert!(line("i-a").ends_with("2026-12-01T10:29:59Z"), "{table}");
        assert!(line("i-b").ends_with(" -"), "{table}");
    }
}
