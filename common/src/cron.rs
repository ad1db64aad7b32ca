//! Five-field Unix cron expressions (as AWS scheduled actions use them), evaluated in a time zone.
//!
//! `minute hour day-of-month month day-of-week`, with `*`, lists, ranges, `/step`, and names
//! (`JAN`–`DEC`, `SUN`–`SAT`; 0 and 7 are Sunday). As in Vixie cron, when both day fields are
//! restricted a day matches if either does.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    doms: u64,
    months: u64,
    dows: u64,
    dom_restricted: bool,
    dow_restricted: bool,
}

/// What is wrong with a cron expression, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad cron expression {expr:?}: {reason} (expected 5 fields: minute hour day-of-month month day-of-week, e.g. \"0 18 * * MON-FRI\")"
)]
pub struct CronError {
    pub expr: String,
    pub reason: String,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn field(
    spec: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    name_base: u32,
    what: &str,
) -> Result<(u64, bool), String> {
    let value = |s: &str| -> Result<u32, String> {
        let up = s.to_ascii_uppercase();
        if let Some(i) = names.iter().position(|n| *n == up) {
            return Ok(i as u32 + name_base);
        }
        s.parse::<u32>().map_err(|_| {
            format!(
                "{what} {s:?} is not a number{}",
                if names.is_empty() { "" } else { " or name" }
            )
        })
    };
    let mut bits = 0u64;
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .map_err(|_| format!("{what} step {s:?} is not a number"))?,
            ),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("{what} step must be at least 1"));
        }
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if part.contains('/') { hi } else { v })
        };
        if a < lo || b > hi || a > b {
            return Err(format!("{what} {range:?} is outside {lo}-{hi}"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, spec != "*"))
}

impl std::str::FromStr for Cron {
    type Err = CronError;

    fn from_str(expr: &str) -> Result<Self, CronError> {
        let err = |reason: String| CronError {
            expr: expr.to_string(),
            reason,
        };
        let f: Vec<&str> = expr.split_whitespace().collect();
        if f.len() != 5 {
            return Err(err(format!("has {} fields", f.len())));
        }
        let (minutes, _) = field(f[0], 0, 59, &[], 0, "minute").map_err(err)?;
        let (hours, _) = field(f[1], 0, 23, &[], 0, "hour").map_err(err)?;
        let (doms, dom_restricted) = field(f[2], 1, 31, &[], 0, "day-of-month").map_err(err)?;
        let (months, _) = field(f[3], 1, 12, &MONTHS, 1, "month").map_err(err)?;
        let (mut dows, dow_restricted) = field(f[4], 0, 7, &DAYS, 0, "day-of-week").map_err(err)?;
        if dows & (1 << 7) != 0 {
            dows |= 1;
        }
        Ok(Self {
            minutes,
            hours,
            doms,
            months,
            dows,
            dom_restricted,
            dow_restricted,
        })
    }
}

impl Cron {
    fn day_matches(&self, d: NaiveDate) -> bool {
        if self.months & (1 << d.month()) == 0 {
            return false;
        }
        let dom = self.doms & (1 << d.day()) != 0;
        let dow = self.dows & (1 << d.weekday().num_days_from_sunday()) != 0;
        match (self.dom_restricted, self.dow_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    /// The first firing strictly after `after`, in `tz`; `None` if none within ~5 years
    /// (e.g. `0 0 31 2 *`). Local times that do not exist (DST gaps) are skipped.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&tz).naive_local();
        let start = local.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let mut day = start.date();
        for _ in 0..(366 * 5) {
            if self.day_matches(day) {
                for h in 0..24u32 {
                    if self.hours & (1 << h) == 0 {
                        continue;
                    }
                    for m in 0..60u32 {
                        if self.minutes & (1 << m) == 0 {
                            continue;
                        }
                        let t = NaiveDateTime::new(day, chrono::NaiveTime::from_hms_opt(h, m, 0)?);
                        if t < start {
                            continue;
                        }
                        if let Some(utc) = tz.from_local_datetime(&t).earliest() {
                            return Some(utc.with_timezone(&Utc));
                        }
                    }
                }
            }
            day = day.succ_opt()?;
        }
        None
    }
}

/// Parses an IANA time zone name with an error that says what was expected.
pub fn parse_tz(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("unknown time zone {name:?} (use an IANA name such as \"UTC\", \"Europe/Paris\", \"America/New_York\")"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn weekday_evenings_in_paris() {
        let c: Cron = "0 18 * * MON-FRI".parse().expect("cron");
        let tz = parse_tz("Europe/Paris").expect("tz");
        // Saturday 2026-11-21 → Monday 2026-11-23 18:00 CET = 17:00 UTC.
        assert_eq!(
            c.next_after(utc("2026-11-21T12:00:00Z"), tz),
            Some(utc("2026-11-23T17:00:00Z"))
        );
    }

    #[test]
    fn steps_lists_and_sunday_as_seven() {
        let c: Cron = "*/15 9,17 * * 7".parse().expect("cron");
        let t = c.next_after(utc("2026-11-22T09:16:00Z"), chrono_tz::UTC);
        assert_eq!(t, Some(utc("2026-11-22T09:30:00Z")));
    }

    #[test]
    fn rejects_bad_expressions_with_reasons() {
        for (bad, why) in [
            ("* * *", "fields"),
            ("61 * * * *", "minute"),
            ("0 0 * FOO *", "month"),
            ("*/0 * * * *", "step"),
        ] {
            let e = bad.parse::<Cron>().expect_err(bad).to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(parse_tz("Mars/Olympus").is_err());
    }

    #[test]
    fn impossible_dates_never_fire() {
        let c: Cron = "0 0 31 2 *".parse().expect("cron");
        assert_eq!(
            c.next_after(utc("2026-01-01T00:00:00Z"), chrono_tz::UTC),
            None
        );
    }
}
