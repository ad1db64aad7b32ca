//! The AWS provider: an Auto Scaling group, its instances (EC2) and their connection counts
//! (CloudWatch GetMetricData on the agent's per-instance metric).
//!
//! [`plan`] compares the policy with the group's alarms, scaling policies, schedules, warm pool and
//! lifecycle hook; [`lease`] keeps two control loops from acting on one group at once.

pub mod ec2;
pub mod heartbeat;
pub mod lease;
pub mod plan;
pub mod status;

use crate::engine::Lifecycle;
use crate::provider::{Claim, ErrorKind, FleetView, Member, Provider, ProviderError};
use aws_sdk_autoscaling::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_autoscaling::types::{InstanceReusePolicy, WarmPoolState};
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat, ScanBy};
use connscale_common::metric::{DIM_GROUP, DIM_INSTANCE, MetricId};
use connscale_common::policy::{PoolState, WarmPool};
use std::collections::HashMap;

/// Where to find the group and how to reach AWS.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    pub group: String,
    pub region: Option<String>,
    /// An alternative endpoint (the moto emulator in tests); AWS_ENDPOINT_URL works as well.
    pub endpoint: Option<String>,
    pub metric: MetricId,
    /// CloudWatch period the per-instance counts are read at (10 s needs high-resolution
    /// publishing by the agent; 60 s works with the default).
    pub metric_period: i32,
    /// Attempts per API call (the SDK's standard retry with backoff handles throttling).
    pub max_attempts: u32,
    /// The DynamoDB table that holds the control loops' lease ([`lease`]).
    pub lease_table: String,
}

/// An Auto Scaling group as a [`Provider`].
#[derive(Debug, Clone)]
pub struct AwsProvider {
    pub settings: AwsSettings,
    pub asg: aws_sdk_autoscaling::Client,
    pub cw: aws_sdk_cloudwatch::Client,
    /// DescribeInstances only ([`ec2`]: a signed Query call, not the aws-sdk-ec2 crate).
    pub ec2: ec2::Ec2,
    pub ddb: aws_sdk_dynamodb::Client,
    /// Set while this loop holds the lease: every scaling call proves it first.
    pub fence: Option<lease::Fence>,
    /// This loop's name in the lease ([`lease::holder_name`]).
    pub holder: String,
}

/// Maps an SDK error to a [`ProviderError`] naming the IAM action.
pub fn sdk_error<E, R>(action: &str, e: SdkError<E, R>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let message = DisplayErrorContext(&e).to_string();
    let code = e.code().unwrap_or_default().to_string();
    let lower = message.to_ascii_lowercase();
    let kind = match &e {
        SdkError::ServiceError(_) => match code.as_str() {
            "AccessDenied"
            | "AccessDeniedException"
            | "UnauthorizedOperation"
            | "AuthFailure"
            | "InvalidClientTokenId"
            | "UnrecognizedClientException"
            | "ExpiredToken"
            | "SignatureDoesNotMatch" => ErrorKind::Denied,
            c if c.contains("Throttl") || c == "RequestLimitExceeded" => ErrorKind::Throttled,
            _ if lower.contains("rate exceeded") => ErrorKind::Throttled,
            _ => ErrorKind::Other,
        },
        _ if lower.contains("credential") => ErrorKind::NoCredentials,
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => ErrorKind::Unreachable,
        _ => ErrorKind::Other,
    };
    ProviderError {
        action: action.into(),
        kind,
        message,
    }
}

fn lifecycle_of(state: &str) -> Option<Lifecycle> {
    match state {
        "InService" => Some(Lifecycle::InService),
        s if s.starts_with("Pending") => Some(Lifecycle::Pending),
        s if s.starts_with("Terminating") => Some(Lifecycle::Draining),
        _ => None,
    }
}

/// The warm pool as the policy spells it, from the group's configuration.
fn warm_pool_of(c: &aws_sdk_autoscaling::types::WarmPoolConfiguration) -> Option<WarmPool> {
    Some(WarmPool {
        min_size: c.min_size().unwrap_or(0).max(0) as u32,
        max_prepared: c
            .max_group_prepared_capacity()
            .filter(|n| *n >= 0)
            .map(|n| n as u32),
        state: pool_state(c.pool_state()?.as_str())?,
        reuse_on_scale_in: c
            .instance_reuse_policy()
            .and_then(|r| r.reuse_on_scale_in())
            .unwrap_or(false),
    })
}

/// The policy's pool state from the API's spelling.
pub fn pool_state(aws: &str) -> Option<PoolState> {
    [
        PoolState::Stopped,
        PoolState::Running,
        PoolState::Hibernated,
    ]
    .into_iter()
    .find(|s| s.aws_name() == aws)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl AwsProvider {
    /// Loads credentials and region the standard way (env, profile, instance role).
    pub async fn connect(settings: AwsSettings) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).retry_config(
            aws_config::retry::RetryConfig::standard().with_max_attempts(settings.max_attempts),
        );
        if let Some(r) = &settings.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(e) = &settings.endpoint {
            loader = loader.endpoint_url(e);
        }
        Self::with_config(settings, &loader.load().await)
    }

    /// With an SDK configuration made elsewhere (credentials, retries and endpoint included).
    pub fn with_config(settings: AwsSettings, conf: &aws_config::SdkConfig) -> Self {
        Self {
            asg: aws_sdk_autoscaling::Client::new(conf),
            cw: aws_sdk_cloudwatch::Client::new(conf),
            ec2: ec2::Ec2::new(conf, settings.endpoint.as_deref()),
            ddb: aws_sdk_dynamodb::Client::new(conf),
            fence: None,
            holder: lease::holder_name(),
            settings,
        }
    }

    pub fn group(&self) -> &str {
        &self.settings.group
    }

    /// Before a scaling call: when this loop acts under a lease, prove it is still held.
    async fn fenced(&self) -> Result<(), ProviderError> {
        match &self.fence {
            Some(f) => lease::fence(self, f, now()).await,
            None => Ok(()),
        }
    }

    /// The group's description, or NotFound naming it.
    pub async fn describe_group(
        &self,
    ) -> Result<aws_sdk_autoscaling::types::AutoScalingGroup, ProviderError> {
        const A: &str = "autoscaling:DescribeAutoScalingGroups";
        let out = self
            .asg
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(self.group())
            .send()
            .await
            .map_err(|e| sdk_error(A, e))?;
        out.auto_scaling_groups()
            .first()
            .cloned()
            .ok_or_else(|| ProviderError {
                action: A.into(),
                kind: ErrorKind::NotFound,
                message: format!(
                    "Auto Scaling group {:?} not found in this account and region (check --group and AWS_REGION)",
                    self.group()
                ),
            })
    }

    /// The group's scheduled actions (what `plan` compares and `status` shows).
    pub async fn scheduled_actions(
        &self,
    ) -> Result<Vec<aws_sdk_autoscaling::types::ScheduledUpdateGroupAction>, ProviderError> {
        let out = self
            .asg
            .describe_scheduled_actions()
            .auto_scaling_group_name(self.group())
            .send()
            .await
            .map_err(|e| sdk_error("autoscaling:DescribeScheduledActions", e))?;
        Ok(out.scheduled_update_group_actions().to_vec())
    }

    /// The warm pool as the policy spells it, how many instances wait in it, and those of them
    /// paused on the termination hook (`Warmed:Terminating:Wait`).
    pub async fn describe_warm_pool(
        &self,
    ) -> Result<(Option<WarmPool>, u32, Vec<String>), ProviderError> {
        let mut pool = None;
        let (mut waiting, mut terminating) = (0u32, Vec::new());
        let mut token: Option<String> = None;
        // At most 50 instances a page.
        loop {
            let out = self
                .asg
                .describe_warm_pool()
                .auto_scaling_group_name(self.group())
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| sdk_error("autoscaling:DescribeWarmPool", e))?;
            if pool.is_none() {
                pool = out.warm_pool_configuration().and_then(warm_pool_of);
            }
            waiting += out.instances().len() as u32;
            terminating.extend(
                out.instances()
                    .iter()
                    .filter(|i| {
                        i.lifecycle_state().map(|s| s.as_str()) == Some("Warmed:Terminating:Wait")
                    })
                    .filter_map(|i| i.instance_id().map(str::to_string)),
            );
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok((pool, waiting, terminating)),
            }
        }
    }

    /// Launch times, private addresses and cordon tags of instances.
    async fn instance_details(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, ec2::Instance>, ProviderError> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(500) {
            let r = self
                .ec2
                .describe_instances(chunk.to_vec())
                .await
                .map_err(|e| sdk_error("ec2:DescribeInstances", e))?;
            for i in r {
                out.insert(i.id.clone(), i);
            }
        }
        Ok(out)
    }

    /// The latest per-instance connection count within the last few periods.
    pub async fn connections(&self, ids: &[String]) -> Result<HashMap<String, u64>, ProviderError> {
        let period = self.settings.metric_period.max(1);
        let end = now() + i64::from(period);
        let start = end - 6 * i64::from(period);
        // CloudWatch aligns periods to the epoch; moto to StartTime: align so both agree.
        let start = start - start.rem_euclid(i64::from(period));
        let mut out = HashMap::new();
        for chunk in ids.chunks(500) {
            let mut req = self
                .cw
                .get_metric_data()
                .start_time(DateTime::from_secs(start))
                .end_time(DateTime::from_secs(end))
                .scan_by(ScanBy::TimestampDescending);
            for (n, id) in chunk.iter().enumerate() {
                let metric = Metric::builder()
                    .namespace(&self.settings.metric.namespace)
                    .metric_name(&self.settings.metric.name)
                    .dimensions(
                        Dimension::builder()
                            .name(DIM_GROUP)
                            .value(self.group())
                            .build(),
                    )
                    .dimensions(Dimension::builder().name(DIM_INSTANCE).value(id).build())
                    .build();
                req = req.metric_data_queries(
                    MetricDataQuery::builder()
                        .id(format!("m{n}"))
                        .metric_stat(
                            MetricStat::builder()
                                .metric(metric)
                                .period(period)
                                .stat("Average")
                                .build(),
                        )
                        .build(),
                );
            }
            let r = req
                .send()
                .await
                .map_err(|e| sdk_error("cloudwatch:GetMetricData", e))?;
            for res in r.metric_data_results() {
                let Some(n) = res.id().and_then(|s| s[1..].parse::<usize>().ok()) else {
                    continue;
                };
                // Latest timestamp wins, whatever order the service returns.
                let latest = res
                    .timestamps()
                    .iter()
                    .zip(res.values())
                    .max_by_key(|(t, _)| t.secs());
                if let (Some(id), Some((_, v))) = (chunk.get(n), latest) {
                    out.insert(id.clone(), v.max(0.0).round() as u64);
                }
            }
        }
        Ok(out)
    }
}

impl Provider for AwsProvider {
    async fn observe(&mut self) -> Result<FleetView, ProviderError> {
        let g = self.describe_group().await?;
        let ids: Vec<String> = g
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        let details = self.instance_details(&ids).await?;
        let conns = self.connections(&ids).await?;
        let members = g
            .instances()
            .iter()
            .filter_map(|i| {
                let id = i.instance_id()?.to_string();
                let state = i
                    .lifecycle_state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default();
                let details = details.get(&id);
                Some(Member {
                    lifecycle: lifecycle_of(&state),
                    state,
                    healthy: i.health_status() == Some("Healthy"),
                    protected: i.protected_from_scale_in().unwrap_or(false),
                    launched_at: details.and_then(|d| d.launch_time).unwrap_or_else(now),
                    connections: conns.get(&id).copied(),
                    address: details.and_then(|d| d.private_ip.clone()),
                    cordoned_until: details
                        .and_then(|d| d.cordon.as_deref())
                        .map(connscale_common::cordon::until),
                    cordoned_since: details
                        .and_then(|d| d.cordon.as_deref())
                        .and_then(connscale_common::cordon::since),
                    id,
                })
            })
            .collect();
        let (warm_pool, warm_instances, pool_terminations) = match self.describe_warm_pool().await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(error = %e, "warm pool unreadable");
                (None, g.warm_pool_size().unwrap_or(0).max(0) as u32, vec![])
            }
        };
        Ok(FleetView {
            name: self.group().to_string(),
            desired: g.desired_capacity().unwrap_or(0).max(0) as u32,
            min_size: g.min_size().unwrap_or(0).max(0) as u32,
            max_size: g.max_size().unwrap_or(0).max(0) as u32,
            members,
            warm_pool,
            warm_instances,
            pool_terminations,
        })
    }

    async fn set_desired(&mut self, desired: u32) -> Result<(), ProviderError> {
        self.fenced().await?;
        self.asg
            .set_desired_capacity()
            .auto_scaling_group_name(self.group())
            .desired_capacity(desired as i32)
            .honor_cooldown(false)
            .send()
            .await
            .map_err(|e| sdk_error("autoscaling:SetDesiredCapacity", e))?;
        Ok(())
    }

    async fn terminate(&mut self, id: &str, decrement: bool) -> Result<(), ProviderError> {
        self.fenced().await?;
        self.asg
            .terminate_instance_in_auto_scaling_group()
            .instance_id(id)
            .should_decrement_desired_capacity(decrement)
            .send()
            .await
            .map_err(|e| sdk_error("autoscaling:TerminateInstanceInAutoScalingGroup", e))?;
        Ok(())
    }

    async fn release_pool_termination(&mut self, id: &str) -> Result<(), ProviderError> {
        self.complete_lifecycle(id, plan::DRAIN_HOOK, true).await
    }

    async fn cordon(&mut self, id: &str, until: i64, since: i64) -> Result<(), ProviderError> {
        use connscale_common::cordon;
        self.fenced().await?;
        self.ec2
            .create_tag(id, cordon::TAG, &cordon::value(until, since))
            .await
            .map_err(|e| sdk_error("ec2:CreateTags", e))
    }

    async fn uncordon(&mut self, id: &str) -> Result<(), ProviderError> {
        self.fenced().await?;
        self.ec2
            .delete_tag(id, connscale_common::cordon::TAG)
            .await
            .map_err(|e| sdk_error("ec2:DeleteTags", e))
    }

    async fn claim(&mut self, now: i64, ttl: std::time::Duration) -> Result<Claim, ProviderError> {
        self.fence = None;
        match lease::acquire(self, &self.holder, now, ttl).await? {
            Ok(held) => {
                self.fence = Some(lease::Fence {
                    holder: held.holder,
                    token: held.token,
                    ttl,
                });
                // Before acting: the alarms stand down while this heartbeat is present. A
                // failed publish fails the turn, so the loop never acts while they may act too.
                heartbeat::publish(self, now, ttl).await?;
                Ok(Claim::Held)
            }
            Err(other) => Ok(Claim::HeldBy(format!(
                "standing by: {} holds the lease on {} until {} (token {}, table {})",
                other.holder,
                self.group(),
                other.expires,
                other.token,
                self.settings.lease_table
            ))),
        }
    }

    async fn release(&mut self) -> Result<(), ProviderError> {
        self.fence = None;
        lease::release(self, &self.holder).await
    }
}

/// What the operators' commands (`apply`, tests) do to the group besides the loop's calls.
impl AwsProvider {
    /// Protects instances from (or exposes them to) the group's own scale-in.
    pub async fn set_protection(
        &mut self,
        ids: &[String],
        protect: bool,
    ) -> Result<(), ProviderError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.fenced().await?;
        self.asg
            .set_instance_protection()
            .auto_scaling_group_name(self.group())
            .set_instance_ids(Some(ids.to_vec()))
            .protected_from_scale_in(protect)
            .send()
            .await
            .map_err(|e| sdk_error("autoscaling:SetInstanceProtection", e))?;
        Ok(())
    }

    /// Creates, changes (`Some`) or deletes (`None`) the warm pool.
    pub async fn set_warm_pool(&mut self, pool: Option<&WarmPool>) -> Result<(), ProviderError> {
        self.fenced().await?;
        match pool {
            Some(w) => {
                self.asg
                    .put_warm_pool()
                    .auto_scaling_group_name(self.group())
                    .min_size(w.min_size as i32)
                    .max_group_prepared_capacity(w.max_prepared.map(|n| n as i32).unwrap_or(-1))
                    .pool_state(WarmPoolState::from(w.state.aws_name()))
                    .instance_reuse_policy(
                        InstanceReusePolicy::builder()
                            .reuse_on_scale_in(w.reuse_on_scale_in)
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| sdk_error("autoscaling:PutWarmPool", e))?;
            }
            None => {
                self.asg
                    .delete_warm_pool()
                    .auto_scaling_group_name(self.group())
                    .force_delete(true)
                    .send()
                    .await
                    .map_err(|e| sdk_error("autoscaling:DeleteWarmPool", e))?;
            }
        }
        Ok(())
    }

    /// Lets an instance paused in a lifecycle hook go on (`CONTINUE`) or abandon it.
    pub async fn complete_lifecycle(
        &mut self,
        id: &str,
        hook: &str,
        proceed: bool,
    ) -> Result<(), ProviderError> {
        self.fenced().await?;
        self.asg
            .complete_lifecycle_action()
            .auto_scaling_group_name(self.group())
            .lifecycle_hook_name(hook)
            .instance_id(id)
            .lifecycle_action_result(if proceed { "CONTINUE" } else { "ABANDON" })
            .send()
            .await
            .map_err(|e| sdk_error("autoscaling:CompleteLifecycleAction", e))?;
        Ok(())
    }
}
