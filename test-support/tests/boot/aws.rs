//! moto as the AWS account the instances live in: the groups (one instance each), the SecureString
//! parameters, the lease table, and the reads the asserts make (metrics, the lease item).

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

/// The lease table as terraform/lease.tf makes it: on-demand, keyed by the string `key`.
pub async fn create_lease_table(moto: &MotoServer, name: &str, key: &str) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let ddb = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
    ddb.create_table()
        .table_name(name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(key)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute definition"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(key)
                .key_type(KeyType::Hash)
                .build()
                .expect("key schema"),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("moto DynamoDB CreateTable");
}

/// The lease item as the table has it (a strongly consistent read): attribute → value as text
/// (`S` and `N` attributes); `None` when there is no item (a released lease).
pub async fn lease_item(
    moto: &MotoServer,
    table: &str,
    key: &str,
    group: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let ddb = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
    let out = ddb
        .get_item()
        .table_name(table)
        .key(key, AttributeValue::S(group.into()))
        .consistent_read(true)
        .send()
        .await
        .expect("moto DynamoDB GetItem");
    out.item().map(|item| {
        item.iter()
            .map(|(k, v)| {
                let text = match v {
                    AttributeValue::S(s) | AttributeValue::N(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                (k.clone(), text)
            })
            .collect()
    })
}

/// The latest datapoint of `namespace/metric` for this group and instance, if any reached moto.
pub async fn latest_datapoint(
    moto: &MotoServer,
    namespace: &str,
    metric: &str,
    group: &Group,
) -> Option<(f64, f64)> {
    let dims = [
        ("AutoScalingGroupName", group.name.as_str()),
        ("InstanceId", group.instance_id.as_str()),
    ];
    metric_max(moto, namespace, metric, &dims).await
}

/// The maximum and the number of `namespace/metric` datapoints with exactly these dimensions in
/// the last ten minutes (and the next ten: a heartbeat is published ahead, up to the lease's
/// expiry), if any reached moto.
pub async fn metric_max(
    moto: &MotoServer,
    namespace: &str,
    metric: &str,
    dims: &[(&str, &str)],
) -> Option<(f64, f64)> {
    use aws_sdk_cloudwatch::primitives::DateTime;
    use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
    let cw = aws_sdk_cloudwatch::Client::new(&moto.sdk_config().await);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
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
        .end_time(DateTime::from_secs(now + 600))
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
