//! The identity of the scaling metric: its name, namespace and dimensions.
//!
//! The agent publishes it, the controller reads it, and `connscale export terraform` writes it into
//! the alarms: all three import these constants, so they cannot drift apart.

use serde::{Deserialize, Serialize};

/// Default CloudWatch metric name for established TCP connections on the service port(s).
pub const DEFAULT_METRIC_NAME: &str = "TCPconnections";
/// Default CloudWatch namespace.
pub const DEFAULT_NAMESPACE: &str = "connscale";
/// Dimension naming the Auto Scaling group (present on every datapoint).
pub const DIM_GROUP: &str = "AutoScalingGroupName";
/// Dimension naming the instance (present on the per-instance datapoint only).
pub const DIM_INSTANCE: &str = "InstanceId";

/// Which metric to publish or read; configurable, defaults from the constants above.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricId {
    pub namespace: String,
    pub name: String,
}

impl Default for MetricId {
    fn default() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.to_string(),
            name: DEFAULT_METRIC_NAME.to_string(),
        }
    }
}

/// The dimension sets a sample is published under: per instance always, and per group (so that
/// alarms can use the group average directly) only while the instance is in service: a warm-pool
/// instance's zero, or a leaving one's falling count, is not the group's load, and would pull the
/// average the fallback alarms read toward a scale-in.
pub fn dimension_sets<'a>(
    group: &'a str,
    instance: &'a str,
    in_service: bool,
) -> Vec<Vec<(&'static str, &'a str)>> {
    let mut sets = vec![vec![(DIM_GROUP, group), (DIM_INSTANCE, instance)]];
    if in_service {
        sets.push(vec![(DIM_GROUP, group)]);
    }
    sets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_set_is_a_subset_of_instance_set() {
        let sets = dimension_sets("g", "i-1", true);
        let [per_instance, per_group] = [&sets[0], &sets[1]];
        assert!(per_group.iter().all(|d| per_instance.contains(d)));
        assert_eq!(per_instance.len(), 2);
        assert_eq!(
            dimension_sets("g", "i-1", false),
            std::slice::from_ref(per_instance)
        );
    }
}
