//! One turn of the control loop, for any [`Provider`]: observe, decide, act.
//!
//! Idempotent and restart-safe: everything it acts on is read from the fleet at each turn; the
//! engine's own memory only makes a fresh loop more cautious (no scale-in until the low average
//! has been seen for the whole `sustain` again).

use crate::engine::{Decision, Engine, EngineState};
use crate::provider::{FleetView, Provider, ProviderError};
use serde::Serialize;

/// What one turn saw and did.
#[derive(Debug, Clone, Serialize)]
pub struct Turn {
    pub now: i64,
    pub fleet: FleetView,
    pub decision: Decision,
    /// Whether the decision changes the fleet.
    pub changes: bool,
    /// Whether the changes were made (false in a dry run or when nothing changes).
    pub acted: bool,
}

/// Observes the fleet, evaluates the engine and (unless `dry_run`) acts: scale-in first
/// terminates the chosen least-connected instances with decrement (each drains through the
/// termination hook), then sets the desired capacity if it still differs. The decision is
/// clamped to the group's own bounds as well as the policy's.
pub async fn turn<P: Provider>(
    provider: &mut P,
    engine: &Engine,
    state: &mut EngineState,
    now: i64,
    dry_run: bool,
) -> Result<Turn, ProviderError> {
    let fleet = provider.observe().await?;
    let obs = fleet.observation(now);
    let mut decision = engine.evaluate(&obs, state);
    let bounded = decision
        .desired
        .clamp(fleet.min_size, fleet.max_size.max(fleet.min_size));
    if bounded != decision.desired {
        decision.reason = format!(
            "{} (bounded by the group's min {} / max {}: {bounded})",
            decision.reason, fleet.min_size, fleet.max_size
        );
        // Never remove more instances than the group's bounds allow.
        let removable = fleet.desired.saturating_sub(bounded) as usize;
        decision.scale_in.truncate(removable);
        decision.desired = bounded;
        decision.settle(fleet.desired);
    }
    let changes = decision.changes(&obs);
    if changes && !dry_run {
        let mut desired = fleet.desired;
        for id in &decision.scale_in {
            provider.terminate(id, true).await?;
            desired = desired.saturating_sub(1);
        }
        if desired != decision.desired {
            provider.set_desired(decision.desired).await?;
        }
    }
    Ok(Turn {
        now,
        fleet,
        changes,
        acted: changes && !dry_run,
        decision,
    })
}

/// Exponential backoff for a loop that keeps failing: 1 s, 2 s, 4 s ... capped at `max`.
pub fn backoff(failures: u32, max: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(1u64 << failures.min(16)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let max = std::time::Duration::from_secs(60);
        assert_eq!(backoff(0, max).as_secs(), 1);
        assert_eq!(backoff(3, max).as_secs(), 8);
        assert_eq!(backoff(40, max), max);
    }
}
