//! Demand traces: `timestamp,value` CSV, scaled to connections, interpolated linearly.

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

impl Trace {
    pub fn load(path: &Path) -> Result<Self, TraceError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TraceError::Read(file.clone(), e))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::parse(&text, &file, &name)
    }

    pub fn parse(text: &str, file: &str, name: &str) -> Result<Self, TraceError> {
        let mut points: Vec<(i64, f64)> = Vec::new();
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
            if let Some(&(last, _)) = points.last()
                && t <= last
            {
                return Err(err("timestamps must increase".into()));
            }
            points.push((t, v));
        }
        if points.len() < 2 {
            return Err(TraceError::TooShort(file.to_string()));
        }
        Ok(Self {
            name: name.to_string(),
            points,
        })
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
        assert!(Trace::parse("1,5\n1,6\n", "y", "y").is_err());
    }
}
