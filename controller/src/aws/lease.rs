//! The control loop's lease: a tag on the Auto Scaling group itself,
//! `connscale:lease = <holder> <expires-unix>`, so it needs no extra infrastructure and lives and
//! dies with the group. A loop acts only while it holds an unexpired lease; it renews every
//! evaluation and releases on exit, and a crashed holder's lease expires after its TTL.
//!
//! Tags have no compare-and-set, so taking a lease is write-then-verify: write ours, wait, read
//! back, and hold only if ours is still there. Two loops starting within the same second could
//! both write; the verify read after a pause makes the later writer the sole holder.

use super::{AwsProvider, sdk_error};
use crate::provider::ProviderError;
use aws_sdk_autoscaling::types::Tag;
use std::time::Duration;

/// The tag key.
pub const LEASE_TAG: &str = "connscale:lease";

/// Who holds the lease and until when (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub expires: i64,
}

impl Lease {
    pub fn parse(value: &str) -> Option<Self> {
        let (holder, exp) = value.rsplit_once(' ')?;
        Some(Self {
            holder: holder.to_string(),
            expires: exp.parse().ok()?,
        })
    }

    pub fn value(&self) -> String {
        format!("{} {}", self.holder, self.expires)
    }
}

/// Whether `holder` may take or renew the lease at `now`, given the current one.
pub fn may_take(current: Option<&Lease>, holder: &str, now: i64) -> bool {
    current.is_none_or(|l| l.holder == holder || l.expires <= now)
}

/// A name for this loop: host, process and a random suffix.
pub fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}:{}:{nonce:08x}", std::process::id())
}

/// The lease as the group's tags have it.
pub async fn read(p: &AwsProvider) -> Result<Option<Lease>, ProviderError> {
    let g = p.describe_group().await?;
    Ok(g.tags()
        .iter()
        .find(|t| t.key() == Some(LEASE_TAG))
        .and_then(|t| Lease::parse(t.value()?)))
}

async fn write(p: &AwsProvider, lease: &Lease) -> Result<(), ProviderError> {
    p.asg
        .create_or_update_tags()
        .tags(
            Tag::builder()
                .resource_id(p.group())
                .resource_type("auto-scaling-group")
                .key(LEASE_TAG)
                .value(lease.value())
                .propagate_at_launch(false)
                .build(),
        )
        .send()
        .await
        .map_err(|e| sdk_error("autoscaling:CreateOrUpdateTags", e))?;
    Ok(())
}

/// Takes or renews the lease for `ttl`; `Ok(Err(current))` when another loop holds it.
pub async fn acquire(
    p: &AwsProvider,
    holder: &str,
    now: i64,
    ttl: Duration,
    verify_after: Duration,
) -> Result<Result<Lease, Lease>, ProviderError> {
    let current = read(p).await?;
    if let Some(c) = current.as_ref().filter(|c| !may_take(Some(c), holder, now)) {
        return Ok(Err(c.clone()));
    }
    let renewing = current.as_ref().is_some_and(|c| c.holder == holder);
    let mine = Lease {
        holder: holder.to_string(),
        expires: now + ttl.as_secs() as i64,
    };
    write(p, &mine).await?;
    if !renewing {
        tokio::time::sleep(verify_after).await;
        match read(p).await? {
            Some(l) if l.holder == holder => {}
            Some(other) => return Ok(Err(other)),
            None => return Ok(Err(mine)),
        }
    }
    Ok(Ok(mine))
}

/// Gives the lease up (only if still ours), so a successor need not wait for the TTL.
pub async fn release(p: &AwsProvider, holder: &str) -> Result<(), ProviderError> {
    if read(p).await?.is_some_and(|l| l.holder == holder) {
        p.asg
            .delete_tags()
            .tags(
                Tag::builder()
                    .resource_id(p.group())
                    .resource_type("auto-scaling-group")
                    .key(LEASE_TAG)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_error("autoscaling:DeleteTags", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_rules() {
        let l = Lease::parse("host:12:abc 1000").unwrap();
        assert_eq!(l.holder, "host:12:abc");
        assert_eq!(Lease::parse(&l.value()), Some(l.clone()));
        assert!(may_take(None, "me", 0));
        assert!(may_take(Some(&l), "host:12:abc", 10));
        assert!(!may_take(Some(&l), "me", 999));
        assert!(may_take(Some(&l), "me", 1000));
        assert_eq!(Lease::parse("garbage"), None);
    }
}
