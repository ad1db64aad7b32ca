//! Demand traces: `timestamp,value` CSV, scaled to connections, interpolated linearly.
//!
//! Real exports (CloudWatch, NAB) repeat timestamps, list rows out of order and have gaps: the
//! reader sorts the rows, merges repeats (their mean) and bridges gaps linearly, and says what it
//! did ([`Repairs`]); a row it cannot read is still refused with its line number.

use std::path::Path;

/// A demand series in connections, at Unix-second timestamps (strictly increasing).
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub name: String,
    pub points: Vec<(i64, f64)>,
}

/// Why a trace could not be read; names the line.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read trace {0}: {1}")]
    Read(String, std::io::Error),
    #[error(
        "trace {file} line {line}: {message} (expected `timestamp,value` with timestamps like 2014-07-01 00:00:00 or Unix seconds)"
    )]
    Line {
        file: String,
        line: usize,
        message: String,
    },
    #[error("trace {0} has fewer than two points")]
    TooShort(String),
}

fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim().trim_matches('"');
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M:%SZ",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc().timestamp());
        }
    }
    None
}

/// What reading a trace took beyond parsing: the caller prints [`Repairs::warning`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Repairs {
    /// Rows whose timestamp came before the previous row's (the rows were sorted).
    pub out_of_order: usize,
    /// Rows merged into another with the same timestamp (the value is their mean).
    pub merged: usize,
    /// Intervals longer than [`GAP_FACTOR`] × the median step, bridged linearly.
    pub gaps: usize,
    /// The longest such interval, seconds.
    pub longest_gap_s: i64,
}

/// An interval this many times the median step is a gap.
pub const GAP_FACTOR: i64 = 3;

impl Repairs {
    /// One warning line naming the file and each repair with its count, or `None` when the
    /// file needed none.
    pub fn warning(&self, file: &str) -> Option<String> {
        let mut did = Vec::new();
        if self.out_of_order > 0 {
            did.push(format!("sorted {} out-of-order rows", self.out_of_order));
        }
        if self.merged > 0 {
            did.push(format!(
                "merged {} rows with repeated timestamps (mean value)",
                self.merged
            ));
        }
        if self.gaps > 0 {
            did.push(format!(
                "bridged {} gaps linearly (longest {})",
                self.gaps,
                humantime::format_duration(std::time::Duration::from_secs(
                    self.longest_gap_s.max(0) as u64
                ))
            ));
        }
        (!did.is_empty()).then(|| format!("warning: trace {file}: {}", did.join(", ")))
    }
}

impl Trace {
    pub fn load(path: &Path) -> Result<Self, TraceError> {
        Self::load_repaired(path).map(|(t, _)| t)
    }

    /// Loads `path`, with what reading it took.
    pub fn load_repaired(path: &Path) -> Result<(Self, Repairs), TraceError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TraceError::Read(file.clone(), e))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::parse_repaired(&text, &file, &name)
    }

    pub fn parse(text: &str, file: &str, name: &str) -> Result<Self, TraceError> {
        Self::parse_repaired(text, file, name).map(|(t, _)| t)
    }

    /// Parses every row (refusing, with its line number, one it cannot read), then sorts,
    /// merges repeated timestamps and measures the gaps.
    pub fn parse_repaired(
        text: &str,
        file: &str,
        name: &str,
    ) -> Result<(Self, Repairs), TraceError> {
        let mut rows: Vec<(i64, f64)> = Vec::new();
        let mut repairs = Repairs::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || (i == 0 && line.to_ascii_lowercase().starts_with("timestamp")) {
                continue;
            }
            let err = |message: String| TraceError::Line {
                file: file.to_string(),
                line: i + 1,
                message,
            };
            let (ts, val) = line
                .split_once(',')
                .ok_or_else(|| err(format!("no comma in {line:?}")))?;
            let t = parse_time(ts).ok_or_else(|| err(format!("bad timestamp {ts:?}")))?;
            let v: f64 = val
                .trim()
                .parse()
                .map_err(|_| err(format!("bad value {val:?}")))?;
            if !v.is_finite() || v < 0.0 {
                return Err(err(format!(
                    "value {v} is not a finite non-negative number"
                )));
            }
            if rows.last().is_some_and(|&(last, _)| t < last) {
                repairs.out_of_order += 1;
            }
            rows.push((t, v));
        }
        rows.sort_by_key(|r| r.0);
        let points = merge_repeats(rows, &mut repairs);
        if points.len() < 2 {
            return Err(TraceError::TooShort(file.to_string()));
        }
        measure_gaps(&points, &mut repairs);
        Ok((
            Self {
                name: name.to_string(),
                points,
            },
            repairs,
        ))
    }

    pub fn peak(&self) -> f64 {
        self.points.iter().map(|p| p.1).fold(0.0, f64::max)
    }

    /// Scales values so the peak equals `peak` connections, and compresses time by `time_scale`
    /// (2.0 = twice as fast), keeping the start time.
    pub fn scaled(&self, peak: f64, time_scale: f64) -> Self {
        let k = if self.peak() > 0.0 {
            peak / self.peak()
        } else {
            0.0
        };
        let t0 = self.points[0].0;
        Self {
            name: self.name.clone(),
            points: self
                .points
                .iter()
                .map(|&(t, v)| (t0 + ((t - t0) as f64 / time_scale).round() as i64, v * k))
                .collect(),
        }
    }

    pub fn start(&self) -> i64 {
        self.points[0].0
    }

    pub fn end(&self) -> i64 {
        self.points[self.points.len() - 1].0
    }

    fn index_at(&self, t: i64) -> usize {
        self.points.partition_point(|p| p.0 <= t).saturating_sub(1)
    }

    /// Demand at `t`, linear between points, flat outside.
    pub fn at(&self, t: i64) -> f64 {
        let i = self.index_at(t);
        let (t0, v0) = self.points[i];
        match self.points.get(i + 1) {
            Some(&(t1, v1)) if t > t0 => v0 + (v1 - v0) * (t - t0) as f64 / (t1 - t0) as f64,
            _ => v0,
        }
    }

    /// Maximum demand over `[a, b]` (exact for the piecewise-linear series).
    pub fn max_between(&self, a: i64, b: i64) -> f64 {
        let mut m = self.at(a).max(self.at(b));
        let mut i = self.index_at(a) + 1;
        while i < self.points.len() && self.points[i].0 <= b {
            m = m.max(self.points[i].1);
            i += 1;
        }
        m
    }
}

/// Sorted rows → strictly increasing points, each repeated timestamp's values averaged.
fn merge_repeats(rows: Vec<(i64, f64)>, repairs: &mut Repairs) -> Vec<(i64, f64)> {
    let mut points: Vec<(i64, f64)> = Vec::with_capacity(rows.len());
    let mut same = 1.0;
    for (t, v) in rows {
        match points.last_mut() {
            Some(last) if last.0 == t => {
                // Running mean of the rows at this timestamp.
                same += 1.0;
                last.1 += (v - last.1) / same;
                repairs.merged += 1;
            }
            _ => {
                same = 1.0;
                points.push((t, v));
            }
        }
    }
    points
}

/// Counts intervals longer than [`GAP_FACTOR`] × the median step ([`Trace::at`] bridges them
/// linearly).
fn measure_gaps(points: &[(i64, f64)], repairs: &mut Repairs) {
    let mut steps: Vec<i64> = points.windows(2).map(|w| w[1].0 - w[0].0).collect();
    steps.sort_unstable();
    let median = steps[steps.len() / 2];
    for w in points.windows(2) {
        let step = w[1].0 - w[0].0;
        if step > GAP_FACTOR * median {
            repairs.gaps += 1;
            repairs.longest_gap_s = repairs.longest_gap_s.max(step);
        }
    }
}

/// A deterministic generator (xorshift) for traces nobody tuned the policy on.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Two weeks of 5-minute points: `diurnal` (daily and weekly cycle with noise), `flash` (a quiet
/// base with sudden flash crowds), or anything else for a random walk with drift reversals.
pub fn synthetic(kind: &str, seed: u64) -> Trace {
    let mut rng = Rng(seed * 0x9E37_79B9 + 1);
    let step = 300;
    let n = 14 * 288; // two weeks of 5-minute points
    let mut spike = 0.0f64;
    let mut points = Vec::with_capacity(n);
    let mut walk = 1.0f64;
    for i in 0..n {
        let day = (i as f64 / 288.0) * std::f64::consts::TAU;
        let v = match kind {
            // Daily and weekly cycle with noise, evening peak.
            "diurnal" => {
                (1.2 + (day - 1.9).sin()) * (1.0 + 0.25 * (day / 7.0).sin()) + 0.15 * rng.next()
            }
            // A quiet base with sudden flash crowds that decay over about an hour.
            "flash" => {
                if rng.next() < 0.004 {
                    spike = 5.0 + 25.0 * rng.next();
                }
                spike *= 0.93;
                1.0 + spike + 0.3 * rng.next()
            }
            // A random walk with drift reversals (a product launch, then decline).
            _ => {
                walk =
                    (walk * (1.0 + 0.04 * (rng.next() - 0.5)) + 0.02 * (day / 3.0).sin()).max(0.05);
                walk
            }
        };
        points.push((1_700_000_000 + (i * step) as i64, v.max(0.0)));
    }
    Trace {
        name: format!("{kind}-{seed}"),
        points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nab_format_and_interpolates() {
        let t = Trace::parse(
            "timestamp,value\n2014-07-01 00:00:00,10\n2014-07-01 00:05:00,40\n",
            "f",
            "f",
        )
        .unwrap();
        assert_eq!(t.at(t.start() + 150), 25.0);
        assert_eq!(t.at(t.end() + 999), 40.0);
        let s = t.scaled(280_000.0, 2.0);
        assert_eq!(s.peak(), 280_000.0);
        assert_eq!(s.end() - s.start(), 150);
        assert_eq!(
            s.max_between(s.start(), s.start() + 10),
            70_000.0 + 210_000.0 * 10.0 / 150.0
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = Trace::parse(
            "timestamp,value\n2014-07-01 00:00:00,1\nyesterday,2\n",
            "x.csv",
            "x",
        )
        .unwrap_err();
        assert!(e.to_string().contains("x.csv line 3"), "{e}");
        // One point left after merging the repeat: too short.
        assert!(Trace::parse("1,5\n1,6\n", "y", "y").is_err());
    }

    #[test]
    fn messy_exports_are_sorted_merged_and_bridged_and_said_so() {
        let text = "timestamp,value\n\
            2014-07-01 00:10:00,30\n\
            2014-07-01 00:00:00,10\n\
            2014-07-01 00:05:00,20\n\
            2014-07-01 00:05:00,40\n\
            2014-07-01 00:15:00,50\n\
            2014-07-01 01:15:00,80\n\
            2014-07-01 01:20:00,90\n";
        let (t, r) = Trace::parse_repaired(text, "m.csv", "m").expect("accepted");
        assert_eq!(t.points.len(), 6);
        assert!(
            t.points.windows(2).all(|w| w[0].0 < w[1].0),
            "{:?}",
            t.points
        );
        assert_eq!(t.points[1].1, 30.0, "the repeat's mean");
        assert_eq!(
            r,
            Repairs {
                out_of_order: 1,
                merged: 1,
                gaps: 1,
                longest_gap_s: 3600
            }
        );
        let w = r.warning("m.csv").expect("a warning");
        assert!(
            w.contains("m.csv")
                && w.contains("sorted 1 out-of-order")
                && w.contains("merged 1")
                && w.contains("bridged 1 gaps linearly (longest 1h)"),
            "{w}"
        );
        assert!(!w.contains('\n'), "one line: {w}");
        // The gap is bridged linearly.
        assert_eq!(t.at(t.points[3].0 + 1800), 65.0);
        let (_, clean) = Trace::parse_repaired("0,1\n60,2\n120,3\n", "c", "c").expect("clean");
        assert_eq!(clean.warning("c"), None);
    }
}
