//! moto as the AWS account the instance lives in: the group (with one instance), the SecureString
//! parameters, and the reads the asserts make (metrics, the lease tag).

use connscale_test_support::MotoServer;

/// The Auto Scaling group moto made, with its one instance.
pub struct Group {
    pub name: String,
    pub instance_id: String,
}

/// Creates a launch configuration and a group of exactly one instance (min = max = 1, so the
/// controller's loop has nothing to scale and only holds its lease). A launch configuration, as
/// in controller/tests/aws.rs, rather than a launch template: it is made with the Auto Scaling
/// client, and the tests need no EC2 SDK crate (the largest crate in the build).
pub async fn create_group(moto: &MotoServer, name: &str) -> Group {
    let cfg = moto.sdk_config().await;
    let asg = aws_sdk_autoscaling::Client::new(&cfg);
    asg.create_launch_configuration()
        .launch_configuration_name(name)
        .image_id("ami-12c6146b")
        .instance_type("t3.micro")
        .send()
        .await
        .expect("moto CreateLaunchConfiguration");
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_configuration_name(name)
        .min_size(1)
        .max_size(1)
        .desired_capacity(1)
        .availability_zones("us-east-1a")
        .send()
        .await
        .expect("moto CreateAutoScalingGroup");
    let groups = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .expect("moto DescribeAutoScalingGroups");
    let instance_id = groups
        .auto_scaling_groups()
        .first()
        .and_then(|g| g.instances().first())
        .and_then(|i| i.instance_id())
        .expect("moto launched the group's instance")
        .to_string();
    Group {
        name: name.to_string(),
        instance_id,
    }
}

/// Stores a SecureString parameter (moto's default KMS key), over SSM's JSON protocol: the
/// test needs no SSM SDK of its own for one call.
pub async fn put_secure_string(moto: &MotoServer, name: &str, value: &str) {
    let body = serde_json::json!({
        "Name": name, "Value": value, "Type": "SecureString", "Overwrite": true,
    });
    let r = reqwest::Client::new()
        .post(format!("{}/", moto.endpoint()))
        .header("Content-Type", "application/x-amz-json-1.1")
        .header("X-Amz-Target", "AmazonSSM.PutParameter")
        // moto picks the service from the credential scope; it does not check signatures.
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ssm/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body(body.to_string())
        .send()
        .await
        .expect("moto SSM PutParameter");
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert!(
        status.is_success(),
        "moto SSM PutParameter {name}: {status} {text}"
    );
}

/// The latest datapoint of `namespace/metric` for this group and instance, if any reached moto.
pub async fn latest_datapoint(
    moto: &MotoServer,
    namespace: &str,
    metric: &str,
    group: &Group,
) -> Option<(f64, f64)> {
    use aws_sdk_cloudwatch::primitives::DateTime;
    use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
    let cw = aws_sdk_cloudwatch::Client::new(&moto.sdk_config().await);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let dims = [
        ("AutoScalingGroupName", group.name.as_str()),
        ("InstanceId", group.instance_id.as_str()),
    ];
    let metric = Metric::builder()
        .namespace(namespace)
        .metric_name(metric)
        .set_dimensions(Some(
            dims.iter()
                .map(|(k, v)| Dimension::builder().name(*k).value(*v).build())
                .collect(),
        ))
        .build();
    let r = cw
        .get_metric_data()
        .start_time(DateTime::from_secs(now - 600))
        .end_time(DateTime::from_secs(now + 60))
        .metric_data_queries(
            MetricDataQuery::builder()
                .id("m")
                .metric_stat(
                    MetricStat::builder()
                        .metric(metric)
                        .period(1)
                        .stat("Maximum")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .ok()?;
    let res = r.metric_data_results().first()?;
    let max = res
        .values()
        .iter()
        .copied()
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))?;
    Some((max, res.values().len() as f64))
}
