//! The control loop's lease: one item per group in a DynamoDB table, taken and renewed with
//! conditional writes, so at most one loop holds it at any moment, and a fencing token that every
//! scaling call checks first.
//!
//! Why DynamoDB and not a tag on the group: tags have no compare-and-set and their reads are
//! eventually consistent, so two loops could both believe they hold a tag lease. A conditional
//! `UpdateItem` is decided by the table itself: of any number of loops that try to take a free
//! lease at once, exactly one succeeds.
//!
//! The item: `group` (key), `holder`, `expires` (Unix seconds) and `token`, a number that grows
//! by one each time the lease changes hands. A loop acts only after [`fence`] has renewed the
//! lease under the condition "still mine, same token, not expired", so a loop that paused past
//! its TTL (and lost the lease to another) fails that check instead of scaling beside the new
//! holder.

use super::{AwsProvider, sdk_error};
use crate::provider::{ErrorKind, ProviderError};
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType,
};
use std::collections::HashMap;
use std::time::Duration;

/// The table's default name (`--lease-table`, `CONNSCALE_LEASE_TABLE`); terraform creates it.
pub const DEFAULT_TABLE: &str = "connscale-lease";
/// The table's partition key: the group's name.
const KEY: &str = "group";

/// Who holds the lease, until when (Unix seconds), and its fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub expires: i64,
    pub token: u64,
}

impl Lease {
    /// For `status`: `<holder> until <expires-unix> (token N)`.
    pub fn describe(&self) -> String {
        format!(
            "{} until {} (token {})",
            self.holder, self.expires, self.token
        )
    }

    fn from_item(item: &HashMap<String, AttributeValue>) -> Option<Self> {
        let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
        let n = |k: &str| item.get(k).and_then(|v| v.as_n().ok()?.parse::<i64>().ok());
        Some(Self {
            holder: s("holder")?,
            expires: n("expires")?,
            token: n("token").unwrap_or(0).max(0) as u64,
        })
    }
}

/// What a loop that holds the lease must prove before each scaling call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub holder: String,
    pub token: u64,
    pub ttl: Duration,
}

/// A name for this loop: host, process and a random suffix.
pub fn holder_name() -> String {
    let host = hostname().unwrap_or_else(|| "host".into());
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}:{}:{nonce:08x}", std::process::id())
}

/// The host's name from gethostname(2). Not from /proc/sys/kernel/hostname: the packaged unit's
/// `ProcSubset=pid` hides /proc/sys, and every holder was then named `host`.
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf, which we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

fn table(p: &AwsProvider) -> &str {
    &p.settings.lease_table
}

fn key(p: &AwsProvider) -> AttributeValue {
    AttributeValue::S(p.group().to_string())
}

fn num(n: i64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

/// Maps a DynamoDB error; a missing table becomes NotFound with the fix.
fn ddb_error<E, R>(
    p: &AwsProvider,
    action: &str,
    e: aws_sdk_dynamodb::error::SdkError<E, R>,
) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    if e.code() == Some("ResourceNotFoundException") {
        return ProviderError {
            action: action.into(),
            kind: ErrorKind::NotFound,
            message: format!(
                "the lease table {:?} does not exist: create it with the terraform module (terraform/lease.tf) or `connscale apply`, or name another with --lease-table",
                table(p)
            ),
        };
    }
    sdk_error(action, e)
}

fn conditional_failed<E: ProvideErrorMetadata, R>(
    e: &aws_sdk_dynamodb::error::SdkError<E, R>,
) -> bool {
    e.code() == Some("ConditionalCheckFailedException")
}

/// The lease as the table has it (a strongly consistent read).
pub async fn read(p: &AwsProvider) -> Result<Option<Lease>, ProviderError> {
    let out = p
        .ddb
        .get_item()
        .table_name(table(p))
        .key(KEY, key(p))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| ddb_error(p, "dynamodb:GetItem", e))?;
    Ok(out.item().and_then(Lease::from_item))
}

/// Takes or renews the lease for `ttl`; `Ok(Err(current))` when another loop holds it.
///
/// Renewing keeps the token; taking a free or expired lease adds one to it. Both are single
/// conditional writes, so of loops racing for a free lease exactly one wins.
pub async fn acquire(
    p: &AwsProvider,
    holder: &str,
    now: i64,
    ttl: Duration,
) -> Result<Result<Lease, Lease>, ProviderError> {
    let expires = now + ttl.as_secs() as i64;
    let renewed = p
        .ddb
        .update_item()
        .table_name(table(p))
        .key(KEY, key(p))
        .update_expression("SET expires = :exp")
        .condition_expression("holder = :me AND expires > :now")
        .expression_attribute_values(":me", AttributeValue::S(holder.into()))
        .expression_attribute_values(":now", num(now))
        .expression_attribute_values(":exp", num(expires))
        .return_values(ReturnValue::AllNew)
        .send()
        .await;
    match renewed {
        Ok(out) => return held(p, out.attributes()),
        Err(e) if conditional_failed(&e) => {}
        Err(e) => return Err(ddb_error(p, "dynamodb:UpdateItem", e)),
    }
    let taken = p
        .ddb
        .update_item()
        .table_name(table(p))
        .key(KEY, key(p))
        .update_expression("SET holder = :me, expires = :exp ADD #token :one")
        .condition_expression("attribute_not_exists(holder) OR expires <= :now")
        .expression_attribute_names("#token", "token")
        .expression_attribute_values(":me", AttributeValue::S(holder.into()))
        .expression_attribute_values(":now", num(now))
        .expression_attribute_values(":exp", num(expires))
        .expression_attribute_values(":one", num(1))
        .return_values(ReturnValue::AllNew)
        .send()
        .await;
    match taken {
        Ok(out) => held(p, out.attributes()),
        Err(e) if conditional_failed(&e) => match read(p).await? {
            Some(current) => Ok(Err(current)),
            // Released between our write and this read: the next turn takes it.
            None => Ok(Err(Lease {
                holder: "(released just now)".into(),
                expires: now,
                token: 0,
            })),
        },
        Err(e) => Err(ddb_error(p, "dynamodb:UpdateItem", e)),
    }
}

fn held(
    p: &AwsProvider,
    item: Option<&HashMap<String, AttributeValue>>,
) -> Result<Result<Lease, Lease>, ProviderError> {
    item.and_then(Lease::from_item).map(Ok).ok_or_else(|| {
        ProviderError::other(
            "dynamodb:UpdateItem",
            format!(
                "the lease item in {:?} came back without holder/expires",
                table(p)
            ),
        )
    })
}

/// Proves the lease is still ours with the same token (and extends it by the fence's TTL)
/// right before a scaling call; [`ErrorKind::LeaseLost`] when another loop has taken it.
pub async fn fence(p: &AwsProvider, f: &Fence, now: i64) -> Result<(), ProviderError> {
    let r = p
        .ddb
        .update_item()
        .table_name(table(p))
        .key(KEY, key(p))
        .update_expression("SET expires = :exp")
        .condition_expression("holder = :me AND #token = :token AND expires > :now")
        .expression_attribute_names("#token", "token")
        .expression_attribute_values(":me", AttributeValue::S(f.holder.clone()))
        .expression_attribute_values(":token", num(f.token as i64))
        .expression_attribute_values(":now", num(now))
        .expression_attribute_values(":exp", num(now + f.ttl.as_secs() as i64))
        .send()
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if conditional_failed(&e) => Err(ProviderError {
            action: "dynamodb:UpdateItem".into(),
            kind: ErrorKind::LeaseLost,
            message: format!(
                "lease on {} (token {}) is no longer ours: another loop holds it; not acting",
                p.group(),
                f.token
            ),
        }),
        Err(e) => Err(ddb_error(p, "dynamodb:UpdateItem", e)),
    }
}

/// Gives the lease up (only if still ours), so a successor need not wait for the TTL.
pub async fn release(p: &AwsProvider, holder: &str) -> Result<(), ProviderError> {
    let r = p
        .ddb
        .delete_item()
        .table_name(table(p))
        .key(KEY, key(p))
        .condition_expression("holder = :me")
        .expression_attribute_values(":me", AttributeValue::S(holder.into()))
        .send()
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if conditional_failed(&e) => Ok(()),
        Err(e) => Err(ddb_error(p, "dynamodb:DeleteItem", e)),
    }
}

/// Whether the lease table exists.
pub async fn table_exists(p: &AwsProvider) -> Result<bool, ProviderError> {
    match p.ddb.describe_table().table_name(table(p)).send().await {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(false),
        Err(e) => Err(sdk_error("dynamodb:DescribeTable", e)),
    }
}

/// Creates the lease table (on-demand, keyed by group name) unless it exists; `true` when it
/// was created. `connscale apply` calls it for groups set up without terraform.
pub async fn ensure_table(p: &AwsProvider) -> Result<bool, ProviderError> {
    if table_exists(p).await? {
        return Ok(false);
    }
    let attr = AttributeDefinition::builder()
        .attribute_name(KEY)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(|e| ProviderError::other("dynamodb:CreateTable", e.to_string()))?;
    let key = KeySchemaElement::builder()
        .attribute_name(KEY)
        .key_type(KeyType::Hash)
        .build()
        .map_err(|e| ProviderError::other("dynamodb:CreateTable", e.to_string()))?;
    p.ddb
        .create_table()
        .table_name(table(p))
        .attribute_definitions(attr)
        .key_schema(key)
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .map_err(|e| sdk_error("dynamodb:CreateTable", e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_names_carry_the_hostname_and_pid() {
        let host = hostname().expect("gethostname");
        let name = holder_name();
        assert!(
            name.starts_with(&format!("{host}:{}:", std::process::id())),
            "{name}"
        );
    }

    #[test]
    fn lease_items_parse() {
        let mut item = HashMap::new();
        item.insert("group".into(), AttributeValue::S("chat".into()));
        item.insert("holder".into(), AttributeValue::S("h:1:a".into()));
        item.insert("expires".into(), num(1000));
        assert_eq!(
            Lease::from_item(&item),
            Some(Lease {
                holder: "h:1:a".into(),
                expires: 1000,
                token: 0
            })
        );
        item.insert("token".into(), num(7));
        assert_eq!(Lease::from_item(&item).map(|l| l.token), Some(7));
        item.remove("holder");
        assert_eq!(Lease::from_item(&item), None);
    }
}
