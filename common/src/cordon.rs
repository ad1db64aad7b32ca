//! The cordon: the controller's word to one node's agent that the load balancer should send it
//! no new clients, so it empties before scale-in picks it.
//!
//! The controller writes an EC2 instance tag ([`TAG`]) whose value is the Unix second until
//! which the cordon holds, then the Unix second the cordon began (`"1796121299 1796117699"`),
//! and rewrites it before it lapses while it still wants the cordon. The start lets a
//! restarted controller know how long a node has been emptying (`scale_in.cordon_wait`); the
//! agent reads only the first field, so a value without a start (an older controller's) holds
//! the same.
//! The agent reads the tag from instance metadata (tags in IMDS, which the terraform module
//! enables) and fails `/health` while the cordon holds. A cordon nobody renews lapses by
//! itself, so a controller that dies or loses its lease never leaves a node out of the
//! balancer for long.

/// The instance tag key (IMDS serves it at `tags/instance/connscale-cordon`; a key with `/`
/// could not be served there).
pub const TAG: &str = "connscale-cordon";

/// How long one written cordon holds, seconds: several control turns, so a slow turn or one
/// failed write does not lift it, and a minute or two of clock skew between the controller and
/// the node neither.
pub const HOLD: i64 = 300;

/// The controller rewrites the tag once less than this many seconds of it remain.
pub const RENEW_BELOW: i64 = 180;

/// The tag's value for a cordon that holds until `until` and began at `since` (Unix seconds).
pub fn value(until: i64, since: i64) -> String {
    format!("{until} {since}")
}

/// The Unix second a tag value holds until; 0 (long lapsed) unless its first field is a
/// number, so a malformed tag never takes a node out of the balancer, and the controller
/// removes it.
pub fn until(value: &str) -> i64 {
    parse(value).unwrap_or(0)
}

/// The Unix second a tag value holds until, `None` when its first field is not a number (a
/// malformed tag, which holds nothing).
pub fn parse(value: &str) -> Option<i64> {
    field(value, 0)
}

/// The Unix second the cordon began, from a tag value's second field; `None` when it has none
/// (an older controller wrote it), it is not a positive number, or the value holds no cordon.
pub fn since(value: &str) -> Option<i64> {
    parse(value)?;
    field(value, 1).filter(|&s| s > 0)
}

fn field(value: &str, n: usize) -> Option<i64> {
    value.split_whitespace().nth(n)?.parse().ok()
}

/// Whether a cordon that holds `until` (`None`: none written) must be rewritten at `now` to
/// keep holding.
pub fn needs_renewal(until: Option<i64>, now: i64) -> bool {
    until.is_none_or(|until| until.saturating_sub(now) < RENEW_BELOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cordon_holds_until_its_second_and_a_bad_value_never_holds() {
        assert_eq!(until(&value(1_000, 700)), 1_000);
        for bad in ["", "soon", "-", "1e9", "  ", "soon 1000"] {
            assert!(until(bad) <= 0, "{bad:?}");
        }
        assert_eq!(
            until(" 1000\n"),
            1_000,
            "an older controller's value, without a start"
        );
        assert_eq!(
            until("1000 garbage"),
            1_000,
            "a bad start never lifts the cordon"
        );
        assert_eq!(parse("soon 1000"), None);
        assert_eq!(parse(&value(1_000, 700)), Some(1_000));
    }

    #[test]
    fn the_start_survives_the_tag_and_a_bad_start_is_none() {
        assert_eq!(since(&value(1_000, 700)), Some(700));
        for none in ["1000", "1000 soon", "1000 -5", "1000 0", "", "x 700"] {
            assert_eq!(since(none), None, "{none:?}");
        }
    }

    #[test]
    fn the_controller_renews_before_the_cordon_lapses() {
        assert!(!needs_renewal(Some(1_000 + HOLD), 1_000));
        assert!(!needs_renewal(Some(1_000 + RENEW_BELOW), 1_000));
        assert!(needs_renewal(Some(1_000 + RENEW_BELOW - 1), 1_000));
        assert!(needs_renewal(Some(until("garbage")), 1_000));
        assert!(needs_renewal(None, 1_000));
        assert!(
            needs_renewal(Some(i64::MIN), 1_000),
            "no overflow: a lapsed cordon"
        );
        const { assert!(RENEW_BELOW < HOLD) };
    }
}
