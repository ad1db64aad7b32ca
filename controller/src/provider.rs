//! The one interface to a fleet: what it looks like ([`FleetView`]) and what can be done to it
//! ([`Provider`]). AWS ([`crate::aws::AwsProvider`]) and the local fleet ([`crate::local`])
//! implement it; the control loop ([`crate::control`]) only talks to this trait.

use crate::engine::{InstanceView, Lifecycle, Observation};
use connscale_common::policy::WarmPool;
use serde::Serialize;
use std::fmt;

/// One instance of the fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    pub id: String,
    /// The provider's own lifecycle state (AWS: `InService`, `Terminating:Wait`, ...).
    pub state: String,
    /// What scaling makes of it; `None` for instances outside the group's capacity (warm pool,
    /// standby, detached).
    pub lifecycle: Option<Lifecycle>,
    pub healthy: bool,
    pub protected: bool,
    /// Unix seconds.
    pub launched_at: i64,
    /// Established connections on the service port(s); `None` when no recent datapoint exists.
    pub connections: Option<u64>,
    /// Where the instance serves (private IP, or a loopback port for the local fleet).
    pub address: Option<String>,
    /// The Unix second its cordon holds until ([`connscale_common::cordon`]), as last written;
    /// `None`: never cordoned, or the tag was removed.
    pub cordoned_until: Option<i64>,
    /// The Unix second that cordon began, as the tag says (`None` in a tag without one).
    pub cordoned_since: Option<i64>,
}

/// The fleet at one moment: bounds, desired capacity, instances and warm pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetView {
    pub name: String,
    pub desired: u32,
    pub min_size: u32,
    pub max_size: u32,
    pub members: Vec<Member>,
    pub warm_pool: Option<WarmPool>,
    /// Instances waiting in the warm pool.
    pub warm_instances: u32,
    /// Warm-pool instances paused on the termination hook (AWS `Warmed:Terminating:Wait`, when
    /// the pool shrinks or is refreshed). They never served; a stopped one runs no agent to
    /// complete the hook, so it would wait out the whole drain timeout.
    pub pool_terminations: Vec<String>,
}

pub use connscale_common::spread::Spread;

impl FleetView {
    /// The engine's view of the fleet at `now`.
    pub fn observation(&self, now: i64) -> Observation {
        Observation {
            now,
            desired: self.desired,
            min_size: self.min_size,
            instances: self
                .members
                .iter()
                .filter_map(|m| {
                    Some(InstanceView {
                        id: m.id.clone(),
                        lifecycle: m.lifecycle?,
                        connections: m.connections,
                        launched_at: m.launched_at,
                        // Only a cordon still in force: a lapsed one let clients back on.
                        cordoned_since: m
                            .cordoned_since
                            .filter(|_| m.cordoned_until.is_some_and(|u| u > now)),
                    })
                })
                .collect(),
        }
    }

    /// Min/avg/max connections over in-service instances with a count.
    pub fn spread(&self) -> Option<Spread> {
        let c: Vec<u64> = self
            .members
            .iter()
            .filter(|m| m.lifecycle == Some(Lifecycle::InService))
            .filter_map(|m| m.connections)
            .collect();
        Spread::of(&c)
    }
}

/// Why a provider call failed, in terms an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The credentials lack a permission: the IAM action is in [`ProviderError::action`].
    Denied,
    /// No credentials could be found at all.
    NoCredentials,
    /// The API throttled us: back off and retry.
    Throttled,
    /// The group or instance does not exist.
    NotFound,
    /// The API endpoint could not be reached.
    Unreachable,
    /// Another control loop took the lease: stand by and try again next turn.
    LeaseLost,
    Other,
}

/// A failed provider call: which API action, what kind of failure, and the service's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    /// The API (and IAM) action, e.g. `autoscaling:SetDesiredCapacity`.
    pub action: String,
    pub kind: ErrorKind,
    pub message: String,
}

impl ProviderError {
    pub fn other(action: &str, message: impl Into<String>) -> Self {
        Self {
            action: action.into(),
            kind: ErrorKind::Other,
            message: message.into(),
        }
    }

    /// Worth retrying after a pause (throttling, an unreachable endpoint).
    pub fn transient(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Throttled | ErrorKind::Unreachable | ErrorKind::LeaseLost
        )
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.action;
        match self.kind {
            ErrorKind::Denied => write!(
                f,
                "permission denied for {a}: grant the controller's role `{a}` (terraform/iam.tf has the controller policy): {}",
                self.message
            ),
            ErrorKind::NoCredentials => write!(
                f,
                "no AWS credentials for {a}: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run where an instance role is available ({})",
                self.message
            ),
            ErrorKind::Throttled => write!(f, "{a} throttled: {}", self.message),
            ErrorKind::LeaseLost => write!(f, "{}", self.message),
            ErrorKind::NotFound => write!(f, "{a}: {}", self.message),
            ErrorKind::Unreachable => write!(
                f,
                "{a}: endpoint unreachable (check AWS_REGION / AWS_ENDPOINT_URL and the network): {}",
                self.message
            ),
            ErrorKind::Other => write!(f, "{a} failed: {}", self.message),
        }
    }
}

impl std::error::Error for ProviderError {}

/// Whether this loop may act this turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This loop holds the right to act until the claim's TTL runs out.
    Held,
    /// Another loop holds it (who and until when, in words): stand by.
    HeldBy(String),
}

/// A fleet as the control loop sees it: observed, resized, and one instance removed at a time.
/// Every method is idempotent where the underlying API allows, so a restarted loop may repeat
/// its last action safely.
#[allow(async_fn_in_trait)]
pub trait Provider {
    /// The fleet with each instance's connection count.
    async fn observe(&mut self) -> Result<FleetView, ProviderError>;
    /// Sets the desired capacity (the provider launches or removes instances to match).
    async fn set_desired(&mut self, desired: u32) -> Result<(), ProviderError>;
    /// Drains (through the termination lifecycle hook) and terminates one chosen instance,
    /// lowering the desired capacity by one when `decrement`.
    async fn terminate(&mut self, id: &str, decrement: bool) -> Result<(), ProviderError>;
    /// Takes or renews this loop's right to act for `ttl` before a turn acts. A fleet that only
    /// one loop can drive (the local fleet, the simulator's) always grants it.
    async fn claim(
        &mut self,
        _now: i64,
        _ttl: std::time::Duration,
    ) -> Result<Claim, ProviderError> {
        Ok(Claim::Held)
    }
    /// Gives the right to act up when the loop ends, so a standby need not wait for the TTL.
    async fn release(&mut self) -> Result<(), ProviderError> {
        Ok(())
    }
    /// Lets one of [`FleetView::pool_terminations`] go on (it has no clients to drain). Fleets
    /// without a warm pool's termination hook have none.
    async fn release_pool_termination(&mut self, _id: &str) -> Result<(), ProviderError> {
        Ok(())
    }
    /// Cordons one instance until `until` (Unix seconds), recording that the cordon began at
    /// `since`: its agent fails the load balancer's health check, so it gets no new clients
    /// ([`connscale_common::cordon`]). Rewriting an existing cordon moves its end. Fleets
    /// without a balancer to steer ignore it.
    async fn cordon(&mut self, _id: &str, _until: i64, _since: i64) -> Result<(), ProviderError> {
        Ok(())
    }
    /// Lifts an instance's cordon (idempotent).
    async fn uncordon(&mut self, _id: &str) -> Result<(), ProviderError> {
        Ok(())
    }
}
