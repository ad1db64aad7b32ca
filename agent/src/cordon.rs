//! The controller's cordon ([`connscale_common::cordon`]): while the instance tag
//! `connscale-cordon` starts with a Unix second still to come, /health fails (state `cordoned`, 503)
//! so the load balancer sends the node no new clients and it empties before scale-in. The
//! connections already open are left alone: nothing is closed or drained.
//!
//! The agent reads the tag from instance metadata every `drain.poll_interval`, alongside the
//! lifecycle watcher (and only when that runs: without IMDS there is never a cordon). A missing
//! tag, a value that does not start with a Unix second, a second already past, and IMDS not answering all
//! mean no cordon: the agent fails towards serving, never towards leaving the balancer. The
//! sampler applies the cordon to the health state ([`crate::health::HealthState::next`]),
//! against the clock, so a cordon lapses at its second even between two reads.

use crate::config::AgentConfig;
use crate::{Shared, lock, now_secs};
use connscale_common::cordon;

/// The second until which a tag value read at `now` cordons the node, or `None` when it does
/// not (no tag, malformed, past).
pub fn until(value: Option<&str>, now: i64) -> Option<i64> {
    Some(cordon::until(value?)).filter(|&until| until > now)
}

/// Reads the tag for the agent's whole life and keeps the status's `cordon` at its value
/// (`None` when it cannot be read); logs when the cordon starts and ends.
pub async fn watch(cfg: AgentConfig, status: Shared) {
    let imds = crate::imds::Imds::new(cfg.identity.imds_endpoint.as_deref());
    let mut logged_error = false;
    // The cordon in force at the last read, and the last value ignored as malformed.
    let mut holding: Option<i64> = None;
    let mut ignored: Option<String> = None;
    loop {
        let value = match imds.cordon_tag().await {
            Ok(v) => {
                if logged_error {
                    tracing::info!("the cordon tag can be read again");
                    logged_error = false;
                }
                v
            }
            Err(e) => {
                if !logged_error {
                    tracing::warn!(error = %e, tag = cordon::TAG, "cannot read the cordon tag: not cordoned while it cannot be read; will keep trying");
                    logged_error = true;
                }
                None
            }
        };
        let now = now_secs();
        let current = until(value.as_deref(), now);
        match (holding, current) {
            (None, Some(until)) => {
                tracing::info!(
                    until,
                    "cordoned by the controller: /health fails so the load balancer sends no new clients; open connections stay"
                )
            }
            (Some(was), None) => {
                tracing::info!(until = was, value = ?value, "cordon over: /health follows the cap again")
            }
            (Some(was), Some(until)) if was != until => tracing::debug!(until, "cordon renewed"),
            _ => {}
        }
        let malformed = malformed(value.as_deref());
        if malformed != ignored.as_deref() {
            if let Some(v) = malformed {
                tracing::warn!(
                    value = v,
                    tag = cordon::TAG,
                    "the cordon tag is not a Unix second: ignored (not cordoned)"
                );
            }
            ignored = malformed.map(str::to_string);
        }
        holding = current;
        lock(&status).cordon = value;
        tokio::time::sleep(cfg.drain.poll_interval).await;
    }
}

/// The tag value, when it is there but holds no cordon because its first field is not a Unix
/// second (worth one warning); `None` for no tag or a well-formed one, past or not.
fn malformed(value: Option<&str>) -> Option<&str> {
    value.filter(|v| cordon::parse(v).is_none())
}

#[cfg(test)]
mod tests {

    #[test]
    fn only_a_value_without_a_unix_second_is_malformed() {
        for ok in [
            None,
            Some("1000"),
            Some("1000 700"),
            Some("-5"),
            Some("1000 soon"),
        ] {
            assert_eq!(malformed(ok), None, "{ok:?}");
        }
        for bad in ["soon", "", "soon 1000", "1e9"] {
            assert_eq!(malformed(Some(bad)), Some(bad), "{bad:?}");
        }
    }

    use super::{malformed, until};

    #[test]
    fn only_a_second_to_come_cordons() {
        assert_eq!(until(Some("1300"), 1_000), Some(1_300));
        assert_eq!(until(Some(" 1300\n"), 1_000), Some(1_300));
        assert_eq!(until(Some("1000"), 1_000), None, "lapsed at its second");
        assert_eq!(until(Some("999"), 1_000), None);
        assert_eq!(until(Some("soon"), 1_000), None);
        assert_eq!(until(Some(""), 1_000), None);
        assert_eq!(until(None, 1_000), None);
    }
}
