//! The capacity-aware health state the ALB target group checks.

use serde::Serialize;

/// What /health reports. One state at a time, the first that applies: draining, no listener,
/// full, cordoned, ok.
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
    /// Below the cap, but the controller's cordon holds ([`crate::cordon`]): 503, so the load
    /// balancer sends no new clients and the node empties before scale-in; the connections
    /// already open are left alone. Otherwise the same as `Ok` (reaching the cap makes it
    /// `Full`; the cordon lifted, it is `Ok`).
    Cordoned,
    /// Scale-in drain in progress: 503 for good.
    Draining,
}

impl HealthState {
    pub fn is_healthy(self) -> bool {
        self == Self::Ok
    }

    /// The next state for a new count, listener check and cordon (whether it holds now). Pure,
    /// so the transitions are tested without sockets.
    pub fn next(
        self,
        connections: u64,
        listening: bool,
        cordoned: bool,
        cap: u64,
        hysteresis: f64,
    ) -> Self {
        let resume_below = (cap as f64 * (1.0 - hysteresis)).floor() as u64;
        let below_cap = match self {
            Self::Draining => return Self::Draining,
            _ if !listening => return Self::NoListener,
            Self::Full => connections < resume_below,
            Self::Ok | Self::NoListener | Self::Cordoned => connections < cap,
        };
        match (below_cap, cordoned) {
            (false, _) => Self::Full,
            (true, true) => Self::Cordoned,
            (true, false) => Self::Ok,
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
            s = s.next(c, true, false, 10_000, 0.05);
            assert_eq!(s, want, "at {c}");
        }
        assert_eq!(Draining.next(0, true, false, 10_000, 0.05), Draining);
    }

    #[test]
    fn no_listener_until_the_service_listens() {
        assert_eq!(Ok.next(5, false, false, 100, 0.05), NoListener);
        assert_eq!(Full.next(150, false, false, 100, 0.05), NoListener);
        assert_eq!(NoListener.next(5, true, false, 100, 0.05), Ok);
        assert_eq!(NoListener.next(100, true, false, 100, 0.05), Full);
        assert_eq!(
            Draining.next(0, false, false, 100, 0.05),
            Draining,
            "draining wins"
        );
        assert!(!NoListener.is_healthy());
        assert_eq!(
            serde_json::to_string(&NoListener).unwrap_or_default(),
            "\"no_listener\""
        );
    }

    /// The cordon fails /health below the cap and lifts back to `Ok`; the cap's hysteresis
    /// carries through it, a drain and a missing listener win over it.
    #[test]
    fn cordoned_below_the_cap_until_the_cordon_lifts() {
        let (cap, h) = (100, 0.05);
        assert_eq!(Ok.next(5, true, true, cap, h), Cordoned);
        assert_eq!(Cordoned.next(5, true, true, cap, h), Cordoned);
        assert_eq!(Cordoned.next(5, true, false, cap, h), Ok, "lifted");
        assert_eq!(NoListener.next(5, true, true, cap, h), Cordoned);
        assert_eq!(Cordoned.next(99, true, false, cap, h), Ok);
        // The cap applies as without the cordon.
        assert_eq!(Cordoned.next(100, true, true, cap, h), Full);
        assert_eq!(Full.next(96, true, true, cap, h), Full, "inside the band");
        assert_eq!(
            Full.next(94, true, true, cap, h),
            Cordoned,
            "below the band"
        );
        assert_eq!(Full.next(94, true, false, cap, h), Ok);
        // Draining and no listener win.
        assert_eq!(Cordoned.next(5, false, true, cap, h), NoListener);
        assert_eq!(Draining.next(5, true, true, cap, h), Draining);
        assert_eq!(Draining.next(5, true, false, cap, h), Draining);
        assert!(!Cordoned.is_healthy());
        assert_eq!(
            serde_json::to_string(&Cordoned).unwrap_or_default(),
            "\"cordoned\""
        );
    }
}
