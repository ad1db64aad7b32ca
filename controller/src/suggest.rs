//! `connscale schedule suggest`: pre-warm schedules from the recurring peaks of a demand history.
//!
//! Demand is bucketed by (weekday, hour) in the chosen time zone; each bucket's 90th percentile
//! of nodes needed (at the scale-out threshold) is compared with the typical bucket. Runs of
//! peak hours become windows, and windows that recur on several weekdays at the same hours merge
//! into one cron entry.

use crate::sim::trace::Trace;
use chrono::{Datelike, TimeZone, Timelike};
use chrono_tz::Tz;
use connscale_common::policy::{Policy, Schedule};
use std::collections::BTreeMap;
use std::time::Duration;

const DAYS: [&str; 7] = ["MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];

/// Suggested schedules; empty when nothing recurs. Needs at least two weeks of history.
pub fn suggest(history: &Trace, policy: &Policy, tz: Tz) -> Result<Vec<Schedule>, String> {
    let span_days = (history.end() - history.start()) as f64 / 86_400.0;
    if span_days < 14.0 {
        return Err(format!(
            "history covers {span_days:.1} days; at least 14 are needed to see weekly recurrence"
        ));
    }
    let threshold = policy.scale_out_threshold() as f64;
    let mut buckets: BTreeMap<(usize, u32), Vec<u32>> = BTreeMap::new();
    for &(t, v) in &history.points {
        let local = tz
            .timestamp_opt(t, 0)
            .single()
            .ok_or("timestamp outside the time zone's range")?;
        let key = (
            local.weekday().num_days_from_monday() as usize,
            local.hour(),
        );
        buckets
            .entry(key)
            .or_default()
            .push((v / threshold).ceil() as u32);
    }
    let p90 = |v: &mut Vec<u32>| {
        v.sort_unstable();
        v[((v.len() - 1) as f64 * 0.9).round() as usize]
    };
    let need: BTreeMap<(usize, u32), u32> = buckets.iter_mut().map(|(k, v)| (*k, p90(v))).collect();
    let mut all: Vec<u32> = need.values().copied().collect();
    all.sort_unstable();
    let typical = all.get(all.len() / 2).copied().unwrap_or(0);
    let floor = policy.group.min_size;
    let peak_at = (typical as f64 * 1.5).ceil().max((floor + 2) as f64) as u32;

    // Per weekday, runs of peak hours → (start hour, hours, nodes).
    let mut windows: BTreeMap<(u32, u32, u32), Vec<usize>> = BTreeMap::new();
    for day in 0..7 {
        let mut h = 0;
        while h < 24 {
            if need.get(&(day, h)).copied().unwrap_or(0) < peak_at {
                h += 1;
                continue;
            }
            let start = h;
            let mut nodes = 0;
            while h < 24 && need.get(&(day, h)).copied().unwrap_or(0) >= peak_at {
                nodes = nodes.max(need[&(day, h)]);
                h += 1;
            }
            windows
                .entry((start, h - start, nodes.min(policy.group.max_size)))
                .or_default()
                .push(day);
        }
    }
    Ok(windows
        .into_iter()
        .map(|((start, hours, nodes), days)| Schedule {
            name: format!(
                "peak-{start:02}h-{}",
                days.iter()
                    .map(|d| DAYS[*d].to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join("-")
            ),
            cron: format!(
                "0 {start} * * {}",
                days.iter().map(|d| DAYS[*d]).collect::<Vec<_>>().join(",")
            ),
            timezone: tz.name().to_string(),
            duration: Duration::from_secs(hours as u64 * 3_600),
            min_size: nodes.max(floor),
            desired: None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_weekday_evening_peaks() {
        // Three weeks, hourly: 2 nodes' worth, 8 nodes' worth on weekdays 18:00-21:00 UTC.
        let start = 1_700_438_400; // Monday 2023-11-20 00:00 UTC
        let points = (0..21 * 24)
            .map(|h| {
                let t = start + h * 3_600;
                let (day, hour) = ((h / 24) % 7, h % 24);
                let v = if day < 5 && (18..21).contains(&hour) {
                    190_000.0
                } else {
                    40_000.0
                };
                (t, v)
            })
            .collect();
        let trace = Trace {
            name: "t".into(),
            points,
        };
        let s = suggest(&trace, &Policy::default_policy(), chrono_tz::UTC).unwrap();
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].cron, "0 18 * * MON,TUE,WED,THU,FRI");
        assert_eq!(s[0].duration, Duration::from_secs(3 * 3_600));
        assert_eq!(s[0].min_size, 8);
        let mut p = Policy::default_policy();
        p.schedules = s;
        assert!(p.validate().is_empty(), "suggestions must validate");
    }

    #[test]
    fn refuses_short_histories() {
        let trace = Trace {
            name: "t".into(),
            points: vec![(0, 1.0), (86_400, 2.0)],
        };
        assert!(
            suggest(&trace, &Policy::default_policy(), chrono_tz::UTC)
                .unwrap_err()
                .contains("14")
        );
    }
}
