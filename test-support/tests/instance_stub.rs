//! The IMDSv2 / lifecycle stub behaves as EC2 and Auto Scaling do for the AWS SDK's own clients:
//! the SDK's IMDS credential and region providers work against it, lifecycle calls fail until
//! the instance waits on the hook (then are recorded), and other Auto Scaling calls reach moto.

use aws_config::imds;
use aws_credential_types::provider::ProvideCredentials;
use connscale_test_support::{InstanceIdentity, InstanceStub, LifecycleAction, MotoServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_reads_identity_and_credentials_and_lifecycle_calls_are_recorded() {
    let moto = MotoServer::start();
    let stub = InstanceStub::start(InstanceIdentity::default(), &moto.endpoint());
    let id = stub.identity();

    let client = imds::Client::builder()
        .endpoint(stub.imds_endpoint())
        .expect("IMDS endpoint")
        .build();
    assert_eq!(
        client
            .get("/latest/meta-data/instance-id")
            .await
            .map(String::from)
            .ok(),
        Some(id.instance_id.clone())
    );
    stub.set_target_lifecycle_state("Terminated");
    assert_eq!(
        client
            .get("/latest/meta-data/autoscaling/target-lifecycle-state")
            .await
            .map(String::from)
            .ok()
            .as_deref(),
        Some("Terminated")
    );
    let creds = imds::credentials::ImdsCredentialsProvider::builder()
        .imds_client(client.clone())
        .build()
        .provide_credentials()
        .await
        .expect("the SDK's IMDS credential provider reads the role's credentials");
    assert_eq!(creds.access_key_id(), "testing");
    let region = imds::region::ImdsRegionProvider::builder()
        .imds_client(client.clone())
        .build()
        .region()
        .await;
    assert_eq!(
        region.as_ref().map(|r| r.as_ref()),
        Some(id.region.as_str())
    );

    // Without a token, as on EC2 with IMDSv2 required: 401.
    let bare = reqwest::get(format!(
        "{}/latest/meta-data/instance-id",
        stub.imds_endpoint()
    ))
    .await
    .expect("GET without token");
    assert_eq!(bare.status(), 401);

    let cfg = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(stub.autoscaling_endpoint())
        .region(aws_config::Region::new(id.region.clone()))
        .credentials_provider(creds)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .load()
        .await;
    let asg = aws_sdk_autoscaling::Client::new(&cfg);
    let complete = || {
        asg.complete_lifecycle_action()
            .auto_scaling_group_name(&id.group)
            .lifecycle_hook_name("drain")
            .instance_id(&id.instance_id)
            .lifecycle_action_result("CONTINUE")
            .send()
    };
    let early = complete().await.expect_err("no hook is active yet");
    let text = format!("{}", aws_sdk_autoscaling::error::DisplayErrorContext(early));
    assert!(text.contains("No active Lifecycle Action"), "{text}");
    stub.await_hook(Some("drain"));
    asg.record_lifecycle_action_heartbeat()
        .auto_scaling_group_name(&id.group)
        .lifecycle_hook_name("drain")
        .instance_id(&id.instance_id)
        .send()
        .await
        .expect("heartbeat while the hook waits");
    complete().await.expect("completion while the hook waits");
    assert_eq!(stub.waiting_hook(), None, "completion ends the wait");
    let calls = stub.lifecycle_calls();
    let seen: Vec<_> = calls.iter().map(|c| (c.action, c.accepted)).collect();
    assert_eq!(
        seen,
        [
            (LifecycleAction::Complete, false),
            (LifecycleAction::Heartbeat, true),
            (LifecycleAction::Complete, true)
        ]
    );
    assert_eq!(calls[2].result.as_deref(), Some("CONTINUE"));

    // Everything else is moto's: an empty account has no groups.
    let groups = asg
        .describe_auto_scaling_groups()
        .send()
        .await
        .expect("DescribeAutoScalingGroups passes through to moto");
    assert!(groups.auto_scaling_groups().is_empty());
}
