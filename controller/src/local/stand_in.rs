//! What AWS is to an instance, for the local fleet: each instance's own IMDSv2 endpoint
//! (token, instance id, region, group tag, target lifecycle state) and the Auto Scaling
//! endpoint that takes the agents' `RecordLifecycleActionHeartbeat` and
//! `CompleteLifecycleAction`, through the same SDK calls they make on AWS.
//!
//! Scale-in plays AWS's order behind a load balancer: the instance is deregistered first and the
//! target lifecycle state already reads its target (`Terminated`, or `Warmed:*` for a warm-pool
//! return) while the deregistration delay runs; lifecycle calls made then fail as they do on AWS
//! ("No active Lifecycle Action found"). Then the hook is active (`Terminating:Wait` or
//! `Warmed:Pending:Wait`) until the agent completes it, or until the heartbeat timeout passes
//! and the hook's default result applies.
//!
//! One HTTP server serves every instance: instance `i-0001`'s IMDS endpoint is
//! `http://127.0.0.1:PORT/i-0001`, and the Auto Scaling endpoint is `http://127.0.0.1:PORT`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Form, Router};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The region the stand-in reports; agents get it from IMDS as on EC2.
pub const REGION: &str = "us-east-1";

/// Where a scale-in stands, as AWS's lifecycle hook sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Deregistered, the delay is running; the hook is not active yet.
    Deregistering { until: Instant },
    /// The hook is active: waiting for the agent until `deadline` (heartbeats extend it).
    Waiting { deadline: Instant },
    /// The agent completed it (`true`: CONTINUE).
    Completed { proceed: bool },
    /// The heartbeat timeout passed: the hook's default result applies.
    TimedOut,
}

/// One instance's metadata and, during a scale-in, its hook.
#[derive(Debug, Clone)]
struct Meta {
    target_state: String,
    /// The lifecycle state while the hook is active (`Terminating:Wait`, `Warmed:Pending:Wait`).
    wait_state: String,
    hook: Option<Hook>,
    heartbeats: u32,
    /// Its `connscale-cordon` tag, as the controller last wrote it.
    cordon: Option<String>,
}

#[derive(Debug)]
struct Inner {
    group: String,
    hook_name: String,
    heartbeat_timeout: Duration,
    instances: HashMap<String, Meta>,
    token: String,
}

impl Inner {
    /// Moves hooks along the clock: delays that have passed activate their hook, deadlines
    /// that have passed time it out.
    fn tick(&mut self, now: Instant) {
        let timeout = self.heartbeat_timeout;
        for m in self.instances.values_mut() {
            m.hook = match m.hook {
                Some(Hook::Deregistering { until }) if now >= until => Some(Hook::Waiting {
                    deadline: now + timeout,
                }),
                Some(Hook::Waiting { deadline }) if now >= deadline => Some(Hook::TimedOut),
                h => h,
            };
        }
    }

    /// A lifecycle call for `id`: `Err` with AWS's message unless its hook is active.
    fn active(&mut self, group: &str, hook: &str, id: &str) -> Result<&mut Meta, String> {
        self.tick(Instant::now());
        let no_action = || format!("No active Lifecycle Action found with instance ID {id}");
        if group != self.group || hook != self.hook_name {
            return Err(no_action());
        }
        match self.instances.get_mut(id) {
            Some(m) if matches!(m.hook, Some(Hook::Waiting { .. })) => Ok(m),
            _ => Err(no_action()),
        }
    }
}

/// Handle to the running stand-in; clones share it.
#[derive(Clone)]
pub struct StandIn {
    pub port: u16,
    inner: Arc<Mutex<Inner>>,
}

impl StandIn {
    /// Serves on a free loopback port for as long as the runtime runs.
    pub async fn start(
        group: &str,
        hook_name: &str,
        heartbeat_timeout: Duration,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let inner = Arc::new(Mutex::new(Inner {
            group: group.into(),
            hook_name: hook_name.into(),
            heartbeat_timeout,
            instances: HashMap::new(),
            token: format!("local-token-{}", std::process::id()),
        }));
        let app = Router::new()
            .route("/", post(autoscaling))
            .route("/{id}/latest/api/token", put(token))
            .route("/{id}/latest/meta-data/{*path}", get(metadata))
            .with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { port, inner })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Auto Scaling endpoint (`AWS_ENDPOINT_URL_AUTO_SCALING` for the agents).
    pub fn autoscaling_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Instance `id`'s IMDS endpoint (the agent's `identity.imds_endpoint`).
    pub fn imds_url(&self, id: &str) -> String {
        format!("http://127.0.0.1:{}/{id}", self.port)
    }

    /// Records a launching (or pool-leaving) instance's target state.
    pub fn set_state(&self, id: &str, target_state: &str) {
        let mut g = self.lock();
        let m = g.instances.entry(id.to_string()).or_insert(Meta {
            target_state: String::new(),
            wait_state: String::new(),
            hook: None,
            heartbeats: 0,
            cordon: None,
        });
        m.target_state = target_state.into();
        m.hook = None;
    }

    /// Starts a scale-in of `id` towards `target` (`Terminated` or a `Warmed:*` state): the
    /// target state reads it at once, the hook becomes active after `delay`.
    pub fn begin_scale_in(&self, id: &str, target: &str, delay: Duration) {
        let wait_state = if target.starts_with("Warmed") {
            "Warmed:Pending:Wait"
        } else {
            "Terminating:Wait"
        };
        self.set_state(id, target);
        if let Some(m) = self.lock().instances.get_mut(id) {
            m.wait_state = wait_state.into();
            m.hook = Some(Hook::Deregistering {
                until: Instant::now() + delay,
            });
        }
    }

    /// Where `id`'s scale-in hook stands now (`None`: no scale-in).
    pub fn hook(&self, id: &str) -> Option<Hook> {
        let mut g = self.lock();
        g.tick(Instant::now());
        g.instances.get(id).and_then(|m| m.hook)
    }

    /// Heartbeats the agent of `id` has sent.
    pub fn heartbeats(&self, id: &str) -> u32 {
        self.lock().instances.get(id).map_or(0, |m| m.heartbeats)
    }

    /// The lifecycle state AWS would list for `id` (`None` when it has no scale-in hook).
    pub fn wait_state(&self, id: &str) -> Option<String> {
        let mut g = self.lock();
        g.tick(Instant::now());
        let m = g.instances.get(id)?;
        matches!(m.hook, Some(Hook::Waiting { .. })).then(|| m.wait_state.clone())
    }

    /// Writes (`Some`) or removes `id`'s cordon tag, as CreateTags / DeleteTags do on EC2.
    pub fn set_cordon(&self, id: &str, value: Option<String>) {
        if let Some(m) = self.lock().instances.get_mut(id) {
            m.cordon = value;
        }
    }

    /// `id`'s cordon tag, if it has one.
    pub fn cordon(&self, id: &str) -> Option<String> {
        self.lock().instances.get(id).and_then(|m| m.cordon.clone())
    }

    /// Forgets an instance that has left.
    pub fn forget(&self, id: &str) {
        self.lock().instances.remove(id);
    }
}

async fn token(State(s): State<Arc<Mutex<Inner>>>, headers: HeaderMap) -> Response {
    if !headers.contains_key("x-aws-ec2-metadata-token-ttl-seconds") {
        return (StatusCode::BAD_REQUEST, "missing token TTL").into_response();
    }
    let t = s.lock().unwrap_or_else(|e| e.into_inner()).token.clone();
    t.into_response()
}

async fn metadata(
    State(s): State<Arc<Mutex<Inner>>>,
    Path((id, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let g = s.lock().unwrap_or_else(|e| e.into_inner());
    // IMDSv2 only, as the launch template requires.
    let token = headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok());
    if token != Some(g.token.as_str()) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Some(m) = g.instances.get(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match path.as_str() {
        "instance-id" => id.clone().into_response(),
        "placement/region" => REGION.into_response(),
        "tags/instance/aws:autoscaling:groupName" => g.group.clone().into_response(),
        p if p == format!("tags/instance/{}", connscale_common::cordon::TAG) => match &m.cordon {
            Some(v) => v.clone().into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        },
        "autoscaling/target-lifecycle-state" => m.target_state.clone().into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The two Auto Scaling actions moto lacks, in the AWS query protocol.
async fn autoscaling(
    State(s): State<Arc<Mutex<Inner>>>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let field = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
    let action = field("Action");
    let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
    let (group, hook, id) = (
        field("AutoScalingGroupName"),
        field("LifecycleHookName"),
        field("InstanceId"),
    );
    let timeout = g.heartbeat_timeout;
    let m = match action {
        "RecordLifecycleActionHeartbeat" | "CompleteLifecycleAction" => {
            match g.active(group, hook, id) {
                Ok(m) => m,
                Err(msg) => return query_error("ValidationError", &msg),
            }
        }
        other => {
            return query_error(
                "InvalidAction",
                &format!("the local fleet's Auto Scaling stand-in does not serve {other:?}"),
            );
        }
    };
    if action == "RecordLifecycleActionHeartbeat" {
        m.heartbeats += 1;
        m.hook = Some(Hook::Waiting {
            deadline: Instant::now() + timeout,
        });
    } else {
        let result = field("LifecycleActionResult");
        if result != "CONTINUE" && result != "ABANDON" {
            return query_error(
                "ValidationError",
                &format!("LifecycleActionResult {result:?} must be CONTINUE or ABANDON"),
            );
        }
        m.hook = Some(Hook::Completed {
            proceed: result == "CONTINUE",
        });
    }
    let body = format!(
        "<{action}Response xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\"><{action}Result/><ResponseMetadata><RequestId>local</RequestId></ResponseMetadata></{action}Response>"
    );
    ([("content-type", "text/xml")], body).into_response()
}

fn query_error(code: &str, message: &str) -> Response {
    let body = format!(
        "<ErrorResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>local</RequestId></ErrorResponse>"
    );
    (
        StatusCode::BAD_REQUEST,
        [("content-type", "text/xml")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner() -> Inner {
        Inner {
            group: "local".into(),
            hook_name: "connscale-drain".into(),
            heartbeat_timeout: Duration::from_secs(10),
            instances: HashMap::new(),
            token: "t".into(),
        }
    }

    /// The cordon tag the local provider writes is what the instance's agent reads from its
    /// IMDS, as on EC2: the value while set, 404 once removed.
    #[tokio::test]
    async fn imds_serves_the_cordon_tag_while_it_is_set() {
        let s = StandIn::start("local", "connscale-drain", Duration::from_secs(10))
            .await
            .expect("stand-in");
        s.set_state("i-1", "InService");
        let http = reqwest::Client::new();
        let get = || async {
            let base = s.imds_url("i-1");
            let token = http
                .put(format!("{base}/latest/api/token"))
                .header("x-aws-ec2-metadata-token-ttl-seconds", "60")
                .send()
                .await
                .expect("token")
                .text()
                .await
                .expect("token body");
            let r = http
                .get(format!(
                    "{base}/latest/meta-data/tags/instance/{}",
                    connscale_common::cordon::TAG
                ))
                .header("x-aws-ec2-metadata-token", token)
                .send()
                .await
                .expect("get");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        };
        assert_eq!(get().await.0, 404);
        s.set_cordon("i-1", Some("1796120999".into()));
        assert_eq!(get().await, (200, "1796120999".into()));
        assert_eq!(s.cordon("i-1").as_deref(), Some("1796120999"));
        s.set_cordon("i-1", None);
        assert_eq!(get().await.0, 404);
    }

    #[test]
    fn hooks_activate_after_the_delay_and_time_out_after_the_heartbeat_timeout() {
        let mut g = inner();
        let t0 = Instant::now();
        g.instances.insert(
            "i-1".into(),
            Meta {
                target_state: "Terminated".into(),
                wait_state: "Terminating:Wait".into(),
                hook: Some(Hook::Deregistering {
                    until: t0 + Duration::from_secs(2),
                }),
                heartbeats: 0,
                cordon: None,
            },
        );
        g.tick(t0 + Duration::from_secs(1));
        assert!(matches!(
            g.instances["i-1"].hook,
            Some(Hook::Deregistering { .. })
        ));
        g.tick(t0 + Duration::from_secs(2));
        assert!(matches!(
            g.instances["i-1"].hook,
            Some(Hook::Waiting { .. })
        ));
        g.tick(t0 + Duration::from_secs(13));
        assert_eq!(g.instances["i-1"].hook, Some(Hook::TimedOut));
    }

    #[test]
    fn lifecycle_calls_need_an_active_hook_of_this_group_and_name() {
        let mut g = inner();
        g.instances.insert(
            "i-1".into(),
            Meta {
                target_state: "Terminated".into(),
                wait_state: "Terminating:Wait".into(),
                hook: Some(Hook::Deregistering {
                    until: Instant::now() + Duration::from_secs(60),
                }),
                heartbeats: 0,
                cordon: None,
            },
        );
        assert!(g.active("local", "connscale-drain", "i-1").is_err());
        g.instances.get_mut("i-1").unwrap().hook = Some(Hook::Waiting {
            deadline: Instant::now() + Duration::from_secs(60),
        });
        assert!(g.active("local", "connscale-drain", "i-1").is_ok());
        assert!(g.active("other", "connscale-drain", "i-1").is_err());
        assert!(g.active("local", "other-hook", "i-1").is_err());
        assert!(g.active("local", "connscale-drain", "i-2").is_err());
    }
}
