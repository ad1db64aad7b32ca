//! The controller's EC2 calls, each one signed EC2 Query request: DescribeInstances (launch
//! time, private address and the cordon tag of the group's instances), CreateTags and
//! DeleteTags (the cordon, [`connscale_common::cordon`]).
//!
//! Why not the `aws-sdk-ec2` crate: it is the largest crate in the tree (88 MB of generated code
//! for 700+ operations, against 8 MB for all of Auto Scaling) and was the bulk of a fresh release
//! build (BENCHMARKS.md, "Build time"), for these three calls. The request here still runs through the
//! SDK's own runtime, with the same [`aws_config::SdkConfig`] as the other clients: its HTTP client
//! (TLS), credential chain and identity cache, SigV4 signer (`aws-runtime`, scope
//! `REGION/ec2/aws4_request`), standard retries (throttling codes, 5xx, transient I/O) and
//! timeouts. What it leaves out is what the generated client does for its other operations
//! (pagination: DescribeInstances by instance id is not paginated; FIPS and dual-stack endpoint
//! rules: set `AWS_ENDPOINT_URL_EC2` for those).
//!
//! The moto-backed tests (controller/tests/aws.rs) exercise it end to end; moto does not check
//! signatures, so a unit test below checks what the request carries.

use aws_runtime::auth::SigV4OperationSigningConfig;
use aws_runtime::auth::sigv4::{SCHEME_ID, SigV4AuthScheme};
use aws_runtime::retries::classifiers::AwsErrorCodeClassifier;
use aws_smithy_runtime::client::orchestrator::operation::Operation;
use aws_smithy_runtime::client::retries::classifiers::{
    HttpStatusCodeClassifier, TransientErrorClassifier,
};
use aws_smithy_runtime_api::client::auth::AuthSchemeOptionResolverParams;
use aws_smithy_runtime_api::client::auth::static_resolver::StaticAuthSchemeOptionResolver;
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse, OrchestratorError};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponentsBuilder;
use aws_smithy_runtime_api::client::runtime_plugin::StaticRuntimePlugin;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::Layer;
use aws_smithy_types::date_time::{DateTime, Format};
use aws_smithy_types::error::ErrorMetadata;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use aws_smithy_xml::decode::{Document, XmlDecodeError, try_data};
use aws_types::SigningName;
use aws_types::region::SigningRegion;

/// The EC2 Query API version (the one the SDK speaks).
const API_VERSION: &str = "2016-11-15";

/// What the controller reads of an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    /// Epoch seconds.
    pub launch_time: Option<i64>,
    pub private_ip: Option<String>,
    /// The value of its [`connscale_common::cordon::TAG`] tag, if it has one.
    pub cordon: Option<String>,
}

/// An EC2 error response (`<Response><Errors><Error><Code>…`), with the code and message the
/// SDK's errors carry, so [`super::sdk_error`] classifies it as it does the other services'.
#[derive(Debug)]
pub struct Ec2Error {
    meta: ErrorMetadata,
}

impl std::fmt::Display for Ec2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.meta.code().unwrap_or("unknown error"),
            self.meta.message().unwrap_or("(no message)")
        )
    }
}

impl std::error::Error for Ec2Error {}

impl ProvideErrorMetadata for Ec2Error {
    fn meta(&self) -> &ErrorMetadata {
        &self.meta
    }
}

/// One EC2 Query call: the form's parameters in, the response body's reading out.
type QueryOp<O> = Operation<Vec<(String, String)>, O, Ec2Error>;

/// The EC2 calls, built once from an SDK configuration.
#[derive(Debug, Clone)]
pub struct Ec2 {
    describe: Result<QueryOp<Vec<Instance>>, String>,
    /// CreateTags and DeleteTags, whose answer carries nothing but success.
    tag: Result<QueryOp<()>, String>,
}

impl Ec2 {
    /// `endpoint`: an explicit endpoint (the moto emulator); else `AWS_ENDPOINT_URL_EC2`, the
    /// config's endpoint URL (`AWS_ENDPOINT_URL`), or the region's public endpoint.
    pub fn new(conf: &aws_config::SdkConfig, endpoint: Option<&str>) -> Self {
        Self {
            describe: build(conf, endpoint, "DescribeInstances", parse_instances),
            tag: build(conf, endpoint, "CreateTags|DeleteTags", |_| Ok(())),
        }
    }

    /// The instances among `ids` that EC2 knows (at most 1,000 ids per call).
    pub async fn describe_instances(
        &self,
        ids: Vec<String>,
    ) -> Result<Vec<Instance>, SdkError<Ec2Error, HttpResponse>> {
        let mut form = params("DescribeInstances");
        for (n, id) in ids.iter().enumerate() {
            form.push((format!("InstanceId.{}", n + 1), id.clone()));
        }
        invoke(&self.describe, form).await
    }

    /// Sets tag `key` to `value` on instance `id` (CreateTags overwrites an existing value).
    pub async fn create_tag(
        &self,
        id: &str,
        key: &str,
        value: &str,
    ) -> Result<(), SdkError<Ec2Error, HttpResponse>> {
        let mut form = params("CreateTags");
        form.push(("ResourceId.1".into(), id.into()));
        form.push(("Tag.1.Key".into(), key.into()));
        form.push(("Tag.1.Value".into(), value.into()));
        invoke(&self.tag, form).await
    }

    /// Removes tag `key` from instance `id`, whatever its value (a missing tag is no error).
    pub async fn delete_tag(
        &self,
        id: &str,
        key: &str,
    ) -> Result<(), SdkError<Ec2Error, HttpResponse>> {
        let mut form = params("DeleteTags");
        form.push(("ResourceId.1".into(), id.into()));
        form.push(("Tag.1.Key".into(), key.into()));
        invoke(&self.tag, form).await
    }
}

/// `Action=…&Version=…`, the start of every call's form.
fn params(action: &str) -> Vec<(String, String)> {
    vec![
        ("Action".into(), action.into()),
        ("Version".into(), API_VERSION.into()),
    ]
}

async fn invoke<O: Send + Sync + std::fmt::Debug + 'static>(
    op: &Result<QueryOp<O>, String>,
    form: Vec<(String, String)>,
) -> Result<O, SdkError<Ec2Error, HttpResponse>> {
    match op {
        Ok(op) => op.invoke(form).await,
        Err(e) => Err(SdkError::construction_failure(e.clone())),
    }
}

fn endpoint_for(region: &str) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://ec2.{region}.{suffix}")
}

fn build<O: Send + Sync + std::fmt::Debug + 'static>(
    conf: &aws_config::SdkConfig,
    endpoint: Option<&str>,
    name: &'static str,
    read: fn(&[u8]) -> Result<O, XmlDecodeError>,
) -> Result<QueryOp<O>, String> {
    let region = conf
        .region()
        .cloned()
        .ok_or("no AWS region (set AWS_REGION or --region)")?;
    let credentials = conf
        .credentials_provider()
        .ok_or("no AWS credentials provider in the SDK config")?;
    let endpoint = endpoint
        .map(str::to_string)
        .or_else(|| std::env::var("AWS_ENDPOINT_URL_EC2").ok())
        .or_else(|| conf.endpoint_url().map(str::to_string))
        .unwrap_or_else(|| endpoint_for(region.as_ref()));

    // SigV4 for service `ec2` in the region, with the config's credentials and identity cache:
    // what the generated client's runtime plugins set up.
    let mut layer = Layer::new("ec2");
    layer.store_put(AuthSchemeOptionResolverParams::new(()));
    layer.store_put(SigV4OperationSigningConfig {
        region: Some(SigningRegion::from(region)),
        name: Some(SigningName::from_static("ec2")),
        ..Default::default()
    });
    let components = RuntimeComponentsBuilder::new("ec2")
        .with_auth_scheme_option_resolver(Some(StaticAuthSchemeOptionResolver::new(vec![
            SCHEME_ID,
        ])))
        .with_auth_scheme(SigV4AuthScheme::new())
        .with_identity_resolver(SCHEME_ID, credentials)
        .with_identity_cache(conf.identity_cache())
        .with_time_source(conf.time_source());
    let auth = StaticRuntimePlugin::new()
        .with_config(layer.freeze())
        .with_runtime_components(components);

    let mut op = Operation::builder()
        .service_name("ec2")
        .operation_name(name)
        .endpoint_url(&endpoint)
        .standard_retry(
            &conf
                .retry_config()
                .cloned()
                .unwrap_or_else(RetryConfig::standard),
        )
        .retry_classifier(AwsErrorCodeClassifier::<Ec2Error>::new())
        .retry_classifier(TransientErrorClassifier::<Ec2Error>::new())
        .retry_classifier(HttpStatusCodeClassifier::default())
        .timeout_config(
            conf.timeout_config()
                .cloned()
                .unwrap_or_else(TimeoutConfig::disabled),
        )
        .runtime_plugin(auth)
        .with_connection_poisoning();
    // The config's HTTP client if it names one; else the runtime's default HTTPS client (rustls,
    // as for the SDK clients: aws-smithy-runtime's default-https-client).
    if let Some(http) = conf.http_client() {
        op = op.http_client(http);
    }
    if let Some(sleep) = conf.sleep_impl() {
        op = op.sleep_impl(sleep);
    }
    if let Some(bv) = conf.behavior_version() {
        op = op.behavior_version(bv);
    }
    Ok(op
        .serializer(|form: Vec<(String, String)>| {
            let body = request_body(&form);
            let req = http::Request::builder()
                .method("POST")
                .uri("/")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(SdkBody::from(body))?;
            Ok(HttpRequest::try_from(req)?)
        })
        .deserializer(move |resp: &HttpResponse| {
            let body = resp.body().bytes().unwrap_or_default();
            if resp.status().is_success() {
                read(body).map_err(|e| {
                    OrchestratorError::other(format!("unreadable {name} response: {e}"))
                })
            } else {
                let meta = parse_error(body)
                    .unwrap_or_else(|_| ErrorMetadata::builder())
                    .build();
                let meta = match meta.code() {
                    Some(_) => meta,
                    // Not EC2's XML (a proxy, a stand-in): the status is all there is.
                    None => ErrorMetadata::builder()
                        .code(format!("HTTP {}", resp.status().as_u16()))
                        .message(
                            String::from_utf8_lossy(body)
                                .chars()
                                .take(200)
                                .collect::<String>(),
                        )
                        .build(),
                };
                Err(OrchestratorError::operation(Ec2Error { meta }))
            }
        })
        .build())
}

/// The Query protocol's form body (`Action=DescribeInstances&Version=…&InstanceId.1=…`).
fn request_body(form: &[(String, String)]) -> String {
    let mut body = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form {
        body.append_pair(k, v);
    }
    body.finish()
}

/// `<DescribeInstancesResponse><reservationSet><item><instancesSet><item>…`: each instance's
/// own `instanceId`, `launchTime` and `privateIpAddress` (not those nested deeper, such as a
/// network interface's).
fn parse_instances(body: &[u8]) -> Result<Vec<Instance>, XmlDecodeError> {
    let mut doc = Document::try_from(body)?;
    let mut root = doc.root_element()?;
    let mut out = Vec::new();
    while let Some(mut set) = root.next_tag() {
        if !set.start_el().matches("reservationSet") {
            continue;
        }
        while let Some(mut reservation) = set.next_tag() {
            while let Some(mut field) = reservation.next_tag() {
                if !field.start_el().matches("instancesSet") {
                    continue;
                }
                while let Some(mut item) = field.next_tag() {
                    let mut i = Instance::default();
                    while let Some(mut f) = item.next_tag() {
                        match f.start_el().local() {
                            "instanceId" => i.id = try_data(&mut f)?.trim().to_string(),
                            "launchTime" => {
                                let t = try_data(&mut f)?;
                                i.launch_time = Some(
                                    DateTime::from_str(t.trim(), Format::DateTime)
                                        .map_err(|e| {
                                            XmlDecodeError::custom(format!("launchTime {t:?}: {e}"))
                                        })?
                                        .secs(),
                                );
                            }
                            "privateIpAddress" => {
                                let ip = try_data(&mut f)?.trim().to_string();
                                i.private_ip = (!ip.is_empty()).then_some(ip);
                            }
                            "tagSet" => i.cordon = cordon_tag(&mut f)?,
                            _ => {}
                        }
                    }
                    if !i.id.is_empty() {
                        out.push(i);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `<tagSet><item><key>…</key><value>…</value></item>…`: the cordon tag's value.
fn cordon_tag(
    set: &mut aws_smithy_xml::decode::ScopedDecoder,
) -> Result<Option<String>, XmlDecodeError> {
    let mut found = None;
    while let Some(mut item) = set.next_tag() {
        let (mut key, mut value) = (String::new(), String::new());
        while let Some(mut f) = item.next_tag() {
            match f.start_el().local() {
                "key" => key = try_data(&mut f)?.to_string(),
                "value" => value = try_data(&mut f)?.to_string(),
                _ => {}
            }
        }
        if key == connscale_common::cordon::TAG {
            found = Some(value);
        }
    }
    Ok(found)
}

/// `<Response><Errors><Error><Code>…</Code><Message>…</Message>`.
fn parse_error(body: &[u8]) -> Result<aws_smithy_types::error::metadata::Builder, XmlDecodeError> {
    let mut doc = Document::try_from(body)?;
    let mut root = doc.root_element()?;
    let mut meta = ErrorMetadata::builder();
    while let Some(mut errors) = root.next_tag() {
        if !errors.start_el().matches("Errors") {
            continue;
        }
        while let Some(mut error) = errors.next_tag() {
            while let Some(mut f) = error.next_tag() {
                match f.start_el().local() {
                    "Code" => meta = meta.code(try_data(&mut f)?),
                    "Message" => meta = meta.message(try_data(&mut f)?),
                    _ => {}
                }
            }
        }
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_config::BehaviorVersion;
    use aws_credential_types::Credentials;
    use std::sync::{Arc, Mutex};

    const RESPONSE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>59dbff89-35bd-4eac-99ed-be587EXAMPLE</requestId>
  <reservationSet>
    <item>
      <reservationId>r-1234567890abcdef0</reservationId>
      <instancesSet>
        <item>
          <instanceId>i-1234567890abcdef0</instanceId>
          <instanceState><code>16</code><name>running</name></instanceState>
          <privateIpAddress>10.0.0.12</privateIpAddress>
          <launchTime>2026-12-01T10:20:30.000Z</launchTime>
          <tagSet>
            <item><key>aws:autoscaling:groupName</key><value>chat</value></item>
            <item><key>connscale-cordon</key><value>1796120999</value></item>
          </tagSet>
          <networkInterfaceSet>
            <item>
              <privateIpAddress>10.9.9.9</privateIpAddress>
              <tagSet><item><key>connscale-cordon</key><value>1</value></item></tagSet>
            </item>
          </networkInterfaceSet>
        </item>
        <item>
          <instanceId>i-0abcdef1234567890</instanceId>
          <launchTime>2026-12-01T10:25:00Z</launchTime>
        </item>
      </instancesSet>
    </item>
  </reservationSet>
</DescribeInstancesResponse>"#;

    #[test]
    fn reads_each_instances_own_fields() {
        let got = parse_instances(RESPONSE.as_bytes()).expect("parses");
        assert_eq!(
            got,
            vec![
                Instance {
                    id: "i-1234567890abcdef0".into(),
                    launch_time: Some(1_796_120_430),
                    private_ip: Some("10.0.0.12".into()),
                    cordon: Some("1796120999".into()),
                },
                Instance {
                    id: "i-0abcdef1234567890".into(),
                    launch_time: Some(1_796_120_700),
                    private_ip: None,
                    cordon: None,
                },
            ]
        );
    }

    #[test]
    fn reads_the_error_code_and_message() {
        let body = br#"<Response><Errors><Error><Code>UnauthorizedOperation</Code>
            <Message>You are not authorized to perform this operation.</Message></Error></Errors>
            <RequestID>abc</RequestID></Response>"#;
        let meta = parse_error(body).expect("parses").build();
        assert_eq!(meta.code(), Some("UnauthorizedOperation"));
        assert!(
            meta.message()
                .unwrap_or_default()
                .contains("not authorized")
        );
    }

    #[test]
    fn the_request_body_names_every_instance() {
        let mut form = params("DescribeInstances");
        form.push(("InstanceId.1".into(), "i-1".into()));
        form.push(("InstanceId.2".into(), "i-2".into()));
        assert_eq!(
            request_body(&form),
            "Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-1&InstanceId.2=i-2"
        );
    }

    #[test]
    fn public_endpoints_follow_the_partition() {
        assert_eq!(
            endpoint_for("eu-west-1"),
            "https://ec2.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            endpoint_for("cn-north-1"),
            "https://ec2.cn-north-1.amazonaws.com.cn"
        );
    }

    /// What a stand-in EC2 endpoint received.
    #[derive(Default)]
    struct Seen {
        authorization: String,
        amz_date: String,
        body: String,
    }

    async fn stand_in(status: u16, reply: &'static str) -> (String, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let s = s.clone();
                async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let mut seen = s.lock().unwrap_or_else(|e| e.into_inner());
                    seen.authorization = h("authorization");
                    seen.amz_date = h("x-amz-date");
                    seen.body = body;
                    (
                        axum::http::StatusCode::from_u16(status)
                            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
                        reply,
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    async fn conf(endpoint: &str) -> aws_config::SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_config::Region::new("eu-west-1"))
            .credentials_provider(Credentials::new("AKIDEXAMPLE", "secret", None, None, "t"))
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .load()
            .await
    }

    #[tokio::test]
    async fn the_call_is_signed_for_ec2_in_the_region() {
        let (url, seen) = stand_in(200, RESPONSE).await;
        let ec2 = Ec2::new(&conf(&url).await, None);
        let got = ec2
            .describe_instances(vec!["i-1234567890abcdef0".into()])
            .await
            .expect("described");
        assert_eq!(got.len(), 2);
        let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        let day = seen.amz_date.get(..8).unwrap_or_default().to_string();
        assert_eq!(day.len(), 8, "x-amz-date is set: {:?}", seen.amz_date);
        let scope = format!("Credential=AKIDEXAMPLE/{day}/eu-west-1/ec2/aws4_request");
        assert!(
            seen.authorization.starts_with("AWS4-HMAC-SHA256 ")
                && seen.authorization.contains(&scope)
                && seen.authorization.contains("SignedHeaders=")
                && seen.authorization.contains("Signature="),
            "{}",
            seen.authorization
        );
        assert_eq!(
            seen.body,
            "Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-1234567890abcdef0"
        );
    }

    #[tokio::test]
    async fn an_error_response_names_its_code_and_counts_as_denied() {
        let (url, _) = stand_in(
            403,
            "<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>no</Message>\
             </Error></Errors></Response>",
        )
        .await;
        let e = Ec2::new(&conf(&url).await, None)
            .describe_instances(vec!["i-1".into()])
            .await
            .expect_err("403");
        let e = super::super::sdk_error("ec2:DescribeInstances", e);
        assert_eq!(e.kind, crate::provider::ErrorKind::Denied, "{e}");
        assert!(e.message.contains("UnauthorizedOperation"), "{e}");
    }
}
