//! What an EC2 instance in an Auto Scaling group sees of AWS beyond moto: an IMDSv2 stand-in
//! and the two Auto Scaling lifecycle calls moto lacks.
//!
//! - **IMDSv2** (`imds_endpoint()`): a session token from `PUT /latest/api/token` (with the TTL
//!   header), then `GET /latest/meta-data/...` carrying it (401 without it, as on EC2). It serves
//!   the identity (instance-id, placement/region, the group's tag), the target lifecycle state and
//!   the further instance tags the test sets (e.g. the controller's cordon), and the instance
//!   role's credentials (`iam/security-credentials/ROLE`, moto's test keys) so the SDK's default
//!   credential chain works as on EC2.
//! - **Auto Scaling** (`autoscaling_endpoint()`): `RecordLifecycleActionHeartbeat` and
//!   `CompleteLifecycleAction` (AWS query protocol) are answered here and recorded; like AWS they
//!   fail with `ValidationError` unless the instance waits on that hook ([`InstanceStub::await_hook`]).
//!   Every other action is passed through to moto unchanged.
//!
//! Both listen on 127.0.0.1 (free ports) and run on their own thread, stopped on drop, so
//! synchronous and asynchronous tests can use them alike.

use crate::process::free_port;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// The Auto Scaling query API's XML namespace.
const ASG_XMLNS: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";

/// Who the stub says the instance is.
#[derive(Debug, Clone)]
pub struct InstanceIdentity {
    pub instance_id: String,
    pub region: String,
    pub group: String,
    /// The instance profile's role, whose credentials IMDS serves.
    pub role: String,
}

impl Default for InstanceIdentity {
    fn default() -> Self {
        Self {
            instance_id: "i-0123456789abcdef0".into(),
            region: "us-east-1".into(),
            group: "connscale-test".into(),
            role: "connscale-test-node".into(),
        }
    }
}

/// Which lifecycle call the instance made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleAction {
    Heartbeat,
    Complete,
}

/// One lifecycle call as the stub received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleCall {
    pub action: LifecycleAction,
    pub group: String,
    pub hook: String,
    pub instance_id: String,
    /// `CONTINUE` or `ABANDON` (completions only).
    pub result: Option<String>,
    /// Whether the stub accepted it (the instance was waiting on that hook).
    pub accepted: bool,
}

/// State shared between the test and the two servers.
#[derive(Debug)]
struct Shared {
    identity: InstanceIdentity,
    target_state: String,
    /// Instance tags beyond the group's (`tags/instance/KEY`).
    tags: BTreeMap<String, String>,
    /// The hook the instance is paused on (`Pending:Wait` / `Terminating:Wait`), if any.
    waiting_hook: Option<String>,
    tokens: Vec<String>,
    calls: Vec<LifecycleCall>,
    imds_requests: u64,
}

type Stub = Arc<Mutex<Shared>>;

fn lock(s: &Stub) -> MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// The IMDSv2 and lifecycle stand-ins, stopped on drop.
pub struct InstanceStub {
    shared: Stub,
    imds: SocketAddr,
    autoscaling: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for InstanceStub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceStub")
            .field("imds", &self.imds)
            .field("autoscaling", &self.autoscaling)
            .finish()
    }
}

impl InstanceStub {
    /// Starts both servers; Auto Scaling actions other than the two lifecycle calls go to
    /// `moto_endpoint` (e.g. [`MotoServer::endpoint`](crate::MotoServer::endpoint)).
    /// The target lifecycle state starts as `InService`.
    pub fn start(identity: InstanceIdentity, moto_endpoint: &str) -> Self {
        Self::try_start(identity, moto_endpoint).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start(identity: InstanceIdentity, moto_endpoint: &str) -> Result<Self, String> {
        let shared = Arc::new(Mutex::new(Shared {
            identity,
            target_state: "InService".into(),
            tags: BTreeMap::new(),
            waiting_hook: None,
            tokens: Vec::new(),
            calls: Vec::new(),
            imds_requests: 0,
        }));
        let bind = |what: &str| {
            let port = free_port();
            std::net::TcpListener::bind(("127.0.0.1", port))
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| format!("{what} stub cannot bind 127.0.0.1:{port}: {e}"))
        };
        let (imds_l, asg_l) = (bind("IMDS")?, bind("Auto Scaling")?);
        let imds = imds_l.local_addr().map_err(|e| e.to_string())?;
        let autoscaling = asg_l.local_addr().map_err(|e| e.to_string())?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let proxy = Proxy {
            moto: moto_endpoint.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        };
        let (s1, s2) = (shared.clone(), shared.clone());
        let thread = std::thread::Builder::new()
            .name("instance-stub".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return eprintln!("instance stub: no tokio runtime: {e}"),
                };
                rt.block_on(async move {
                    let (Ok(imds_l), Ok(asg_l)) = (
                        tokio::net::TcpListener::from_std(imds_l),
                        tokio::net::TcpListener::from_std(asg_l),
                    ) else {
                        return eprintln!("instance stub: cannot register listeners");
                    };
                    let imds = axum::serve(imds_l, imds_router(s1));
                    let asg = axum::serve(asg_l, asg_router(s2, proxy));
                    tokio::select! {
                        _ = imds => {}
                        _ = asg => {}
                        _ = stopped => {}
                    }
                });
            })
            .map_err(|e| format!("cannot start the instance stub thread: {e}"))?;
        Ok(Self {
            shared,
            imds,
            autoscaling,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`: for `AWS_EC2_METADATA_SERVICE_ENDPOINT` and `CONNSCALE_IMDS_ENDPOINT`.
    pub fn imds_endpoint(&self) -> String {
        format!("http://{}", self.imds)
    }

    /// `http://127.0.0.1:PORT`: for `AWS_ENDPOINT_URL_AUTO_SCALING`.
    pub fn autoscaling_endpoint(&self) -> String {
        format!("http://{}", self.autoscaling)
    }

    pub fn identity(&self) -> InstanceIdentity {
        lock(&self.shared).identity.clone()
    }

    /// What `autoscaling/target-lifecycle-state` answers from now on (`InService`, `Terminated`,
    /// `Warmed:Stopped`, ...).
    pub fn set_target_lifecycle_state(&self, state: &str) {
        lock(&self.shared).target_state = state.to_string();
    }

    /// Sets the instance tag `key` (`Some`: served at `tags/instance/KEY` and listed in
    /// `tags/instance` from now on) or removes it (`None`: 404, as IMDS answers for a tag the
    /// instance does not have). E.g. the controller's cordon:
    /// `set_instance_tag(connscale_common::cordon::TAG, Some("1700000300"))`. The group's tag
    /// (`aws:autoscaling:groupName`) comes from the identity.
    pub fn set_instance_tag(&self, key: &str, value: Option<&str>) {
        let mut st = lock(&self.shared);
        match value {
            Some(v) => st.tags.insert(key.to_string(), v.to_string()),
            None => st.tags.remove(key),
        };
    }

    /// The instance now waits on `hook` (as in `Pending:Wait` or `Terminating:Wait`): lifecycle
    /// calls naming it succeed until one completes it. `None`: no hook is active.
    pub fn await_hook(&self, hook: Option<&str>) {
        lock(&self.shared).waiting_hook = hook.map(str::to_string);
    }

    /// The hook still waiting for completion, if any.
    pub fn waiting_hook(&self) -> Option<String> {
        lock(&self.shared).waiting_hook.clone()
    }

    /// Every lifecycle call received so far, in order.
    pub fn lifecycle_calls(&self) -> Vec<LifecycleCall> {
        lock(&self.shared).calls.clone()
    }

    /// How many metadata GETs were answered (tokens excluded).
    pub fn imds_requests(&self) -> u64 {
        lock(&self.shared).imds_requests
    }
}

impl Drop for InstanceStub {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// --- IMDSv2 -----------------------------------------------------------------------------------

fn imds_router(s: Stub) -> Router {
    Router::new()
        .route("/latest/api/token", put(imds_token))
        .route("/latest/meta-data/{*path}", get(imds_get))
        .route("/latest/meta-data/", get(imds_root))
        .with_state(s)
}

/// Like EC2: the TTL header is required (1 to 21600 s); a GET, or a forwarded request, is refused.
async fn imds_token(State(s): State<Stub>, headers: HeaderMap) -> Response {
    if headers.contains_key("x-forwarded-for") {
        return StatusCode::FORBIDDEN.into_response();
    }
    let ttl = headers
        .get("x-aws-ec2-metadata-token-ttl-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    if !ttl.is_some_and(|t| (1..=21_600).contains(&t)) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let token = format!("stub-token-{:032x}", rand::random::<u128>());
    let mut st = lock(&s);
    st.tokens.push(token.clone());
    (
        [(
            "x-aws-ec2-metadata-token-ttl-seconds",
            ttl.unwrap_or(1).to_string(),
        )],
        token,
    )
        .into_response()
}

async fn imds_root(State(s): State<Stub>, headers: HeaderMap) -> Response {
    imds_answer(&s, &headers, "")
}

async fn imds_get(State(s): State<Stub>, Path(path): Path<String>, headers: HeaderMap) -> Response {
    imds_answer(&s, &headers, &path)
}

fn imds_answer(s: &Stub, headers: &HeaderMap, path: &str) -> Response {
    let mut st = lock(s);
    let token_ok = headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| st.tokens.iter().any(|k| k == t));
    if !token_ok {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    st.imds_requests += 1;
    let id = &st.identity;
    let body = match path.trim_end_matches('/') {
        "" => "autoscaling/\niam/\ninstance-id\nplacement/\ntags/".to_string(),
        "instance-id" => id.instance_id.clone(),
        "placement" => "availability-zone\nregion".into(),
        "placement/region" => id.region.clone(),
        "placement/availability-zone" => format!("{}a", id.region),
        "tags/instance" => std::iter::once("aws:autoscaling:groupName")
            .chain(st.tags.keys().map(String::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        "tags/instance/aws:autoscaling:groupName" => id.group.clone(),
        "autoscaling" => "target-lifecycle-state".into(),
        "autoscaling/target-lifecycle-state" => st.target_state.clone(),
        "iam" => "info\nsecurity-credentials/".into(),
        "iam/security-credentials" => id.role.clone(),
        p if p == format!("iam/security-credentials/{}", id.role) => credentials(),
        p => match p
            .strip_prefix("tags/instance/")
            .and_then(|k| st.tags.get(k))
        {
            Some(v) => v.clone(),
            None => return StatusCode::NOT_FOUND.into_response(),
        },
    };
    body.into_response()
}

/// The role's temporary credentials in IMDS's JSON shape; moto accepts its `testing` keys.
fn credentials() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let iso = |secs: u64| {
        chrono::DateTime::from_timestamp(secs as i64, 0)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default()
    };
    serde_json::json!({
        "Code": "Success",
        "LastUpdated": iso(now),
        "Type": "AWS-HMAC",
        "AccessKeyId": "testing",
        "SecretAccessKey": "testing",
        "Token": "testing",
        "Expiration": iso(now + 6 * 3600),
    })
    .to_string()
}

// --- Auto Scaling -----------------------------------------------------------------------------

/// Where the actions this stub does not answer go.
#[derive(Clone)]
struct Proxy {
    moto: String,
    http: reqwest::Client,
}

fn asg_router(s: Stub, proxy: Proxy) -> Router {
    Router::new()
        .route("/", post(asg_call))
        .with_state((s, proxy))
}

async fn asg_call(
    State((s, proxy)): State<(Stub, Proxy)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let action = match params.get("Action").map(String::as_str) {
        Some("RecordLifecycleActionHeartbeat") => LifecycleAction::Heartbeat,
        Some("CompleteLifecycleAction") => LifecycleAction::Complete,
        _ => return forward(&proxy, headers, body).await,
    };
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    let mut call = LifecycleCall {
        action,
        group: get("AutoScalingGroupName"),
        hook: get("LifecycleHookName"),
        instance_id: get("InstanceId"),
        result: params.get("LifecycleActionResult").cloned(),
        accepted: false,
    };
    let mut st = lock(&s);
    let name = match action {
        LifecycleAction::Heartbeat => "RecordLifecycleActionHeartbeat",
        LifecycleAction::Complete => "CompleteLifecycleAction",
    };
    let error = if call.group != st.identity.group {
        Some(format!("Group {} not found", call.group))
    } else if call.instance_id != st.identity.instance_id
        || st.waiting_hook.as_deref() != Some(call.hook.as_str())
    {
        // AWS's answer when the instance is not paused on that hook.
        Some(format!(
            "No active Lifecycle Action found with instance ID {}",
            call.instance_id
        ))
    } else if action == LifecycleAction::Complete
        && !matches!(call.result.as_deref(), Some("CONTINUE" | "ABANDON"))
    {
        Some(format!(
            "Invalid lifecycle action result: {:?}",
            call.result.as_deref().unwrap_or("")
        ))
    } else {
        None
    };
    call.accepted = error.is_none();
    if call.accepted && action == LifecycleAction::Complete {
        st.waiting_hook = None;
    }
    st.calls.push(call);
    drop(st);
    let request_id = format!("{:032x}", rand::random::<u128>());
    match error {
        None => xml(
            StatusCode::OK,
            format!(
                "<{name}Response xmlns=\"{ASG_XMLNS}\"><{name}Result/><ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></{name}Response>"
            ),
        ),
        Some(message) => xml(
            StatusCode::BAD_REQUEST,
            format!(
                "<ErrorResponse xmlns=\"{ASG_XMLNS}\"><Error><Type>Sender</Type><Code>ValidationError</Code><Message>{}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>",
                escape(&message)
            ),
        ),
    }
}

fn xml(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Passes a request to moto as it came (moto does not check signatures).
async fn forward(proxy: &Proxy, headers: HeaderMap, body: Bytes) -> Response {
    let mut req = proxy.http.post(format!("{}/", proxy.moto)).body(body);
    for (k, v) in &headers {
        if k != header::HOST && k != header::CONTENT_LENGTH {
            req = req.header(k, v);
        }
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status();
            let ctype = r.headers().get(header::CONTENT_TYPE).cloned();
            let bytes = r.bytes().await.unwrap_or_default();
            let mut resp = (status, bytes).into_response();
            if let Some(c) = ctype {
                resp.headers_mut().insert(header::CONTENT_TYPE, c);
            }
            resp
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!("instance stub: moto at {} unreachable: {e}", proxy.moto),
        )
            .into_response(),
    }
}
