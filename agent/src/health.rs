//! The capacity-aware health state the ALB target group checks.

use serde::Serialize;

/// What /health reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Below the cap: 200.
    Ok,
    /// Nothing listens on (one of) the counted port(s): the service is down or not installed
    /// yet, so the load balancer must not send clients here. 503.
    NoListener,
    /// Reached the cap; 503 until connections fall below the hysteresis band.
    Full,
    /// Scale-in drain in progress: 503 for good.
    Draining,
}

impl HealthState {
    pub fn is_healthy(self) -> bool {
        self == Self::Ok
    }

    /// The next state for a new count and listener check. Pure, so the transitions are tested
    /// without sockets.
    pub fn next(self, connections: u64, listening: bool, cap: u64, hysteresis: f64) -> Self {
        let resume_below = (cap as f64 * (1.0 - hysteresis)).floor() as u64;
        match self {
            Self::Draining => Self::Draining,
            _ if !listening => Self::NoListener,
            Self::Ok | Self::NoListener if connections >= cap => Self::Full,
            Self::NoListener => Self::Ok,
            Self::Full if connections < resume_below => Self::Ok,
            s => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HealthState::*;

    #[test]
    fn full_at_cap_and_back_below_the_band() {
        let seq = [
            (9_999, Ok),
            (10_000, Full),
            (9_800, Full),
            (9_501, Full),
            (9_499, Ok),
            (9_999, Ok),
        ];
        let mut s = Ok;
        for (c, want) in seq {
            s = s.next(c, true, 10_000, 0.05);
            assert_eq!(s, want, "at {c}");
        }
        assert_eq!(Draining.next(0, true, 10_000, 0.05), Draining);
    }

    #[test]
    fn no_listener_until_the_service_listens() {
        assert_eq!(Ok.next(5, false, 100, 0.05), NoListener);
        assert_eq!(Full.next(150, false, 100, 0.05), NoListener);
        assert_eq!(NoListener.next(5, true, 100, 0.05), Ok);
        assert_eq!(NoListener.next(100, true, 100, 0.05), Full);
        assert_eq!(
            Draining.next(0, false, 100, 0.05),
            Draining,
            "draining wins"
        );
        assert!(!NoListener.is_healthy());
        assert_eq!(
            serde_json::to_string(&NoListener).unwrap_or_default(),
            "\"no_listener\""
        );
    }
}
