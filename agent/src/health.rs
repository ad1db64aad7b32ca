//! The capacity-aware health state the ALB target group checks.

use serde::Serialize;

/// What /health reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Below the cap: 200.
    Ok,
    /// Reached the cap; 503 until connections fall below the hysteresis band.
    Full,
    /// Scale-in drain in progress: 503 for good.
    Draining,
}

impl HealthState {
    pub fn is_healthy(self) -> bool {
        self == Self::Ok
    }

    /// The next state for a new count. Pure, so the transitions are tested without sockets.
    pub fn next(self, connections: u64, cap: u64, hysteresis: f64) -> Self {
        let resume_below = (cap as f64 * (1.0 - hysteresis)).floor() as u64;
        match self {
            Self::Draining => Self::Draining,
            Self::Ok if connections >= cap => Self::Full,
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
            s = s.next(c, 10_000, 0.05);
            assert_eq!(s, want, "at {c}");
        }
        assert_eq!(Draining.next(0, 10_000, 0.05), Draining);
    }
}
