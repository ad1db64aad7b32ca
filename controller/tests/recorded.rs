//! Calls the moto emulator does not implement (CompleteLifecycleAction answers 500 there,
//! DescribeScalingActivities is missing) and AWS behaviour moto does not emulate (IAM denials,
//! throttling), tested against responses recorded from the AWS Auto Scaling query API (the
//! shapes in its API reference), served by a stub HTTP endpoint in this test. The stub also
//! records each request, so the test checks what the controller sent.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use connscale::aws::{AwsProvider, AwsSettings, status};
use connscale::provider::{ErrorKind, Provider};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

const NS: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";

fn complete_ok() -> String {
    format!(
        r#"<CompleteLifecycleActionResponse xmlns="{NS}">
  <CompleteLifecycleActionResult/>
  <ResponseMetadata><RequestId>7c6e177f-f082-11e1-ac58-3714bEXAMPLE</RequestId></ResponseMetadata>
</CompleteLifecycleActionResponse>"#
    )
}

fn activities() -> String {
    format!(
        r#"<DescribeScalingActivitiesResponse xmlns="{NS}">
  <DescribeScalingActivitiesResult>
    <Activities>
      <member>
        <StatusCode>Successful</StatusCode>
        <Progress>100</Progress>
        <ActivityId>f9f2d65b-f1f2-43e7-b46d-d86756459699</ActivityId>
        <StartTime>2026-11-20T17:32:07.882Z</StartTime>
        <AutoScalingGroupName>chat</AutoScalingGroupName>
        <Cause>At 2026-11-20T17:31:30Z an instance was taken out of service in response to a user request, shrinking the capacity from 3 to 2.</Cause>
        <Details>{{}}</Details>
        <Description>Terminating EC2 instance: i-0c3bd5f4cd18a0b8b</Description>
        <EndTime>2026-11-20T17:33:08Z</EndTime>
      </member>
    </Activities>
  </DescribeScalingActivitiesResult>
  <ResponseMetadata><RequestId>0f4c5b2a-EXAMPLE</RequestId></ResponseMetadata>
</DescribeScalingActivitiesResponse>"#
    )
}

/// One page of DescribeWarmPool (the API reference's shape): the first names a second.
fn warm_pool(page: u32) -> String {
    let member = |id: &str, state: &str| {
        format!(
            "<member><InstanceId>{id}</InstanceId><InstanceType>c7g.large</InstanceType><AvailabilityZone>us-east-1a</AvailabilityZone><LifecycleState>{state}</LifecycleState><HealthStatus>Healthy</HealthStatus><ProtectedFromScaleIn>false</ProtectedFromScaleIn></member>"
        )
    };
    let (instances, next) = if page == 1 {
        (
            member("i-0aaa000000000001", "Warmed:Stopped")
                + &member("i-0aaa000000000002", "Warmed:Terminating:Wait"),
            "<NextToken>page-2</NextToken>",
        )
    } else {
        (
            member("i-0aaa000000000003", "Warmed:Terminating:Wait")
                + &member("i-0aaa000000000004", "Warmed:Pending:Wait"),
            "",
        )
    };
    format!(
        r#"<DescribeWarmPoolResponse xmlns="{NS}">
  <DescribeWarmPoolResult>
    <WarmPoolConfiguration>
      <MaxGroupPreparedCapacity>6</MaxGroupPreparedCapacity>
      <MinSize>0</MinSize>
      <PoolState>Stopped</PoolState>
      <InstanceReusePolicy><ReuseOnScaleIn>true</ReuseOnScaleIn></InstanceReusePolicy>
    </WarmPoolConfiguration>
    <Instances>{instances}</Instances>
    {next}
  </DescribeWarmPoolResult>
  <ResponseMetadata><RequestId>5d2b6f4e-EXAMPLE</RequestId></ResponseMetadata>
</DescribeWarmPoolResponse>"#
    )
}

fn error(code: &str, message: &str) -> String {
    format!(
        r#"<ErrorResponse xmlns="{NS}">
  <Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>
  <RequestId>3a1b2c3d-EXAMPLE</RequestId>
</ErrorResponse>"#
    )
}

type Requests = Arc<Mutex<Vec<BTreeMap<String, String>>>>;

async fn answer(State(seen): State<Requests>, body: String) -> impl IntoResponse {
    let form: BTreeMap<String, String> = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3A", ":").replace("%20", " ")))
        .collect();
    let action = form.get("Action").cloned().unwrap_or_default();
    let next_page = form.contains_key("NextToken");
    seen.lock().expect("requests").push(form);
    let (status, body) = match action.as_str() {
        "CompleteLifecycleAction" => (StatusCode::OK, complete_ok()),
        "DescribeScalingActivities" => (StatusCode::OK, activities()),
        "DescribeWarmPool" => {
            let page = if next_page { 2 } else { 1 };
            (StatusCode::OK, warm_pool(page))
        }
        "SetDesiredCapacity" => (
            StatusCode::FORBIDDEN,
            error(
                "AccessDenied",
                "User: arn:aws:sts::123456789012:assumed-role/ops/x is not authorized to perform: autoscaling:SetDesiredCapacity on resource: arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:*:autoScalingGroupName/chat",
            ),
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            error("Throttling", "Rate exceeded"),
        ),
    };
    (status, [("content-type", "text/xml")], body)
}

/// The CompleteLifecycleAction requests among `seen`: (group, hook, instance, result).
fn completions(seen: &[BTreeMap<String, String>]) -> Vec<(&str, &str, &str, &str)> {
    seen.iter()
        .filter(|f| f["Action"] == "CompleteLifecycleAction")
        .map(|f| {
            (
                f["AutoScalingGroupName"].as_str(),
                f["LifecycleHookName"].as_str(),
                f["InstanceId"].as_str(),
                f["LifecycleActionResult"].as_str(),
            )
        })
        .collect()
}

async fn stub() -> (String, Requests, tokio::task::JoinHandle<()>) {
    let seen: Requests = Arc::default();
    let app = Router::new()
        .route("/", axum::routing::post(answer))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen, task)
}

async fn provider(endpoint: &str) -> AwsProvider {
    use aws_sdk_cloudwatch::config::{Credentials, Region};
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "stub"))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .load()
        .await;
    AwsProvider::with_config(
        AwsSettings {
            group: "chat".into(),
            region: Some("us-east-1".into()),
            endpoint: Some(endpoint.into()),
            metric: Default::default(),
            metric_period: 60,
            max_attempts: 1,
            lease_table: "connscale-lease".into(),
        },
        &conf,
    )
}

#[tokio::test]
async fn complete_lifecycle_action_sends_continue_for_the_group_hook_and_instance() {
    let (url, seen, task) = stub().await;
    let mut p = provider(&url).await;
    p.complete_lifecycle("i-0c3bd5f4cd18a0b8b", "connscale-drain", true)
        .await
        .expect("recorded success");
    p.complete_lifecycle("i-0c3bd5f4cd18a0b8b", "connscale-drain", false)
        .await
        .expect("recorded success");
    let seen = seen.lock().expect("requests").clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        completions(&seen),
        vec![
            ("chat", "connscale-drain", "i-0c3bd5f4cd18a0b8b", "CONTINUE"),
            ("chat", "connscale-drain", "i-0c3bd5f4cd18a0b8b", "ABANDON"),
        ]
    );
    task.abort();
}

/// A stopped pool instance being terminated (the pool shrinks or is refreshed) pauses on the
/// termination hook with no agent running to complete it: the controller reads those from every
/// page of the warm pool and lets them go on with CONTINUE on the drain hook.
#[tokio::test]
async fn pool_instances_paused_on_the_termination_hook_are_read_and_released() {
    let (url, seen, task) = stub().await;
    let mut p = provider(&url).await;
    let (pool, waiting, terminating) = p.describe_warm_pool().await.expect("recorded pages");
    let pool = pool.expect("a pool");
    assert_eq!((pool.min_size, pool.max_prepared), (0, Some(6)));
    assert!(pool.reuse_on_scale_in);
    assert_eq!(waiting, 4);
    assert_eq!(terminating, ["i-0aaa000000000002", "i-0aaa000000000003"]);
    for id in &terminating {
        p.release_pool_termination(id)
            .await
            .expect("recorded success");
    }
    let seen = seen.lock().expect("requests").clone();
    let pages: Vec<Option<&str>> = seen
        .iter()
        .filter(|f| f["Action"] == "DescribeWarmPool")
        .map(|f| f.get("NextToken").map(String::as_str))
        .collect();
    assert_eq!(pages, [None, Some("page-2")]);
    assert_eq!(
        completions(&seen),
        [
            ("chat", "connscale-drain", "i-0aaa000000000002", "CONTINUE"),
            ("chat", "connscale-drain", "i-0aaa000000000003", "CONTINUE"),
        ]
    );
    task.abort();
}

#[tokio::test]
async fn scaling_activities_are_read_for_status() {
    let (url, seen, task) = stub().await;
    let p = provider(&url).await;
    let a = status::activities(&p, 10)
        .await
        .expect("recorded activities");
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].status, "Successful");
    assert_eq!(
        a[0].description,
        "Terminating EC2 instance: i-0c3bd5f4cd18a0b8b"
    );
    assert!(a[0].cause.contains("shrinking the capacity from 3 to 2"));
    assert_eq!(a[0].start, Some(1_795_195_927));
    assert_eq!(seen.lock().expect("requests")[0]["MaxRecords"], "10");
    task.abort();
}

#[tokio::test]
async fn a_denied_call_names_the_iam_action_and_throttling_is_transient() {
    let (url, _seen, task) = stub().await;
    let mut p = provider(&url).await;
    let e = p.set_desired(3).await.expect_err("recorded AccessDenied");
    assert_eq!(e.kind, ErrorKind::Denied);
    assert!(!e.transient());
    let text = e.to_string();
    assert!(
        text.contains("grant the controller's role `autoscaling:SetDesiredCapacity`")
            && text.contains("terraform/iam.tf"),
        "{text}"
    );
    // Anything else gets the recorded Throttling answer.
    let e = p
        .set_protection(&["i-1".into()], true)
        .await
        .expect_err("recorded Throttling");
    assert_eq!(e.kind, ErrorKind::Throttled, "{e}");
    assert!(e.transient());
    assert!(
        e.to_string().contains("autoscaling:SetInstanceProtection"),
        "{e}"
    );
    task.abort();
}

#[tokio::test]
async fn an_unreachable_endpoint_is_transient_and_says_where_to_look() {
    // A port nothing listens on (bound, then closed).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut p = provider(&format!("http://127.0.0.1:{port}")).await;
    let e = p.observe().await.expect_err("nothing listens");
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
    assert!(e.transient());
    assert!(e.to_string().contains("AWS_ENDPOINT_URL"), "{e}");
}
