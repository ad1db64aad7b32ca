//! The three targets connscale's policy must meet on every trace, against the whole classic
//! setup (`classic`, warm pool included) and the oracle: issue 20's acceptance, one place.

use super::Report;
use serde::Serialize;

/// Rejected connection-minutes may be at most this share of classic's.
pub const REJECTED_MAX: f64 = 0.10;
/// Instance-hours may be at most this multiple of the oracle's (and at most classic's).
pub const HOURS_VS_ORACLE_MAX: f64 = 1.2;

/// How connscale did on one trace, as ratios to the baselines (∞ when the baseline is 0 and
/// connscale is not).
#[derive(Debug, Clone, Serialize)]
pub struct Targets {
    pub trace: String,
    /// connscale's rejected connection-minutes ÷ classic's: target ≤ [`REJECTED_MAX`].
    pub rejected: f64,
    /// connscale's instance-hours ÷ classic's: target ≤ 1.
    pub hours_vs_classic: f64,
    /// connscale's instance-hours ÷ the oracle's: target ≤ [`HOURS_VS_ORACLE_MAX`].
    pub hours_vs_oracle: f64,
    /// connscale's forced reconnects ÷ classic's: target ≤ 1.
    pub reconnects: f64,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else if a <= 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

impl Targets {
    /// The ratios of a report that compared connscale with `classic` and `oracle`.
    pub fn of(r: &Report) -> Option<Self> {
        let (cs, cl, or) = (
            r.policies.get("connscale")?,
            r.policies.get("classic")?,
            r.policies.get("oracle")?,
        );
        Some(Self {
            trace: r.trace.clone(),
            rejected: ratio(
                cs.rejected_connection_minutes,
                cl.rejected_connection_minutes,
            ),
            hours_vs_classic: ratio(cs.instance_hours, cl.instance_hours),
            hours_vs_oracle: ratio(cs.instance_hours, or.instance_hours),
            reconnects: ratio(cs.forced_reconnects, cl.forced_reconnects),
        })
    }

    pub fn rejected_met(&self) -> bool {
        self.rejected <= REJECTED_MAX
    }

    pub fn hours_met(&self) -> bool {
        self.hours_vs_classic <= 1.0 && self.hours_vs_oracle <= HOURS_VS_ORACLE_MAX
    }

    pub fn reconnects_met(&self) -> bool {
        self.reconnects <= 1.0
    }

    pub fn all_met(&self) -> bool {
        self.rejected_met() && self.hours_met() && self.reconnects_met()
    }
}

/// A markdown table, one row per trace with each target met or not and its ratios, then the
/// worst trace for each target.
pub fn summary_table(rows: &[Targets]) -> String {
    let mark = |ok: bool| if ok { "met" } else { "**missed**" };
    let mut s = String::from(
        "| trace | rejected ÷ classic (≤ 0.10) | inst-h ÷ classic (≤ 1) | inst-h ÷ oracle (≤ 1.2) | reconnects ÷ classic (≤ 1) | all |\n|---|---:|---:|---:|---:|---|\n",
    );
    for t in rows {
        s.push_str(&format!(
            "| {} | {:.3} {} | {:.2} {} | {:.2} {} | {:.2} {} | {} |\n",
            t.trace,
            t.rejected,
            mark(t.rejected_met()),
            t.hours_vs_classic,
            mark(t.hours_vs_classic <= 1.0),
            t.hours_vs_oracle,
            mark(t.hours_vs_oracle <= HOURS_VS_ORACLE_MAX),
            t.reconnects,
            mark(t.reconnects_met()),
            mark(t.all_met()),
        ));
    }
    let met = rows.iter().filter(|t| t.all_met()).count();
    s.push_str(&format!(
        "\nevery target met on {met} of {} traces\n",
        rows.len()
    ));
    let worst = |name: &str, key: fn(&Targets) -> f64| {
        rows.iter()
            .max_by(|a, b| key(a).total_cmp(&key(b)))
            .map(|t| format!("worst {name}: {} ({:.3})\n", t.trace, key(t)))
            .unwrap_or_default()
    };
    s.push_str(&worst("rejected ÷ classic", |t| t.rejected));
    s.push_str(&worst("inst-h ÷ classic", |t| t.hours_vs_classic));
    s.push_str(&worst("inst-h ÷ oracle", |t| t.hours_vs_oracle));
    s.push_str(&worst("reconnects ÷ classic", |t| t.reconnects));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rejected: f64, hc: f64, ho: f64, rc: f64) -> Targets {
        Targets {
            trace: format!("t{rejected}"),
            rejected,
            hours_vs_classic: hc,
            hours_vs_oracle: ho,
            reconnects: rc,
        }
    }

    #[test]
    fn each_target_is_judged_on_its_own_bound() {
        assert!(t(0.10, 1.0, 1.2, 1.0).all_met());
        assert!(!t(0.11, 1.0, 1.2, 1.0).rejected_met());
        assert!(!t(0.0, 1.01, 1.0, 1.0).hours_met());
        assert!(!t(0.0, 1.0, 1.21, 1.0).hours_met());
        assert!(!t(0.0, 1.0, 1.0, 1.01).reconnects_met());
        assert_eq!(ratio(0.0, 0.0), 0.0);
        assert_eq!(ratio(5.0, 0.0), f64::INFINITY);
    }

    #[test]
    fn the_table_names_the_worst_trace_per_target() {
        let s = summary_table(&[t(0.05, 0.9, 1.1, 0.5), t(0.5, 0.8, 1.0, 2.0)]);
        assert!(s.contains("every target met on 1 of 2 traces"), "{s}");
        assert!(s.contains("worst rejected ÷ classic: t0.5 (0.500)"), "{s}");
        assert!(s.contains("worst inst-h ÷ classic: t0.05 (0.900)"), "{s}");
        assert!(
            s.contains("worst reconnects ÷ classic: t0.5 (2.000)"),
            "{s}"
        );
    }
}
