//! The controller's heartbeat: while a loop holds the lease it publishes `ControllerHeartbeat`,
//! and the fallback alarms ([`super::plan`]) act only while that metric is missing, so exactly
//! one of the two scales the group at any time.

use super::AwsProvider;
use std::time::Duration;

/// Resolution of the heartbeat's datapoints: the shortest alarm period the module allows.
const HEARTBEAT_STEP: i64 = 10;

/// Timestamps of the heartbeat datapoints one turn publishes: every `HEARTBEAT_STEP` from `now`
/// (rounded down) to the lease's expiry. The heartbeat says "a controller holds the lease until
/// then", so each alarm period up to the expiry sees it however long the turns are apart, and
/// the alarms take over when the lease would have expired.
pub fn timestamps(now: i64, ttl: Duration) -> Vec<i64> {
    let start = now - now.rem_euclid(HEARTBEAT_STEP);
    let end = now + ttl.as_secs() as i64;
    (0..)
        .map(|i| start + i * HEARTBEAT_STEP)
        .take_while(|t| *t < end)
        .collect()
}

/// Publishes `ControllerHeartbeat` {AutoScalingGroupName} = 1 (high resolution) until the lease
/// expires; see [`super::plan::HEARTBEAT_METRIC`].
pub async fn publish(
    p: &AwsProvider,
    now: i64,
    ttl: Duration,
) -> Result<(), crate::provider::ProviderError> {
    use aws_sdk_cloudwatch::primitives::DateTime;
    use aws_sdk_cloudwatch::types::{Dimension, MetricDatum};
    let data = timestamps(now, ttl)
        .into_iter()
        .map(|t| {
            MetricDatum::builder()
                .metric_name(super::plan::HEARTBEAT_METRIC)
                .dimensions(
                    Dimension::builder()
                        .name(connscale_common::metric::DIM_GROUP)
                        .value(p.group())
                        .build(),
                )
                .timestamp(DateTime::from_secs(t))
                .value(1.0)
                .storage_resolution(1)
                .build()
        })
        .collect();
    p.cw.put_metric_data()
        .namespace(&p.settings.metric.namespace)
        .set_metric_data(Some(data))
        .send()
        .await
        .map_err(|e| super::sdk_error("cloudwatch:PutMetricData", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_covers_every_period_until_the_lease_expires() {
        let ts = timestamps(1_000_007, Duration::from_secs(40));
        assert_eq!(
            ts,
            vec![1_000_000, 1_000_010, 1_000_020, 1_000_030, 1_000_040]
        );
        assert!(ts.iter().all(|t| t % 10 == 0));
        assert_eq!(timestamps(60, Duration::from_secs(10)), vec![60]);
    }
}
