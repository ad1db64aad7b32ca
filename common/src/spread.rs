//! How evenly connections are spread over nodes: what `connscale status`, `loadtest
//! distribution` and the demo report.

use serde::Serialize;

/// Connections across nodes: min, average, max, and how far the extremes stray from the average.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub nodes: usize,
    pub min: u64,
    pub avg: f64,
    pub max: u64,
    /// max ÷ average (1.0 = perfectly even).
    pub max_over_avg: f64,
    /// Standard deviation ÷ average (coefficient of variation).
    pub cv: f64,
}

impl Spread {
    /// The spread of `counts`, or None when there are none.
    pub fn of(counts: &[u64]) -> Option<Self> {
        let n = counts.len();
        let min = *counts.iter().min()?;
        let max = *counts.iter().max()?;
        let avg = counts.iter().sum::<u64>() as f64 / n as f64;
        let var = counts
            .iter()
            .map(|c| (*c as f64 - avg).powi(2))
            .sum::<f64>()
            / n as f64;
        let ratio = |x: f64| if avg > 0.0 { x / avg } else { 1.0 };
        Some(Self {
            nodes: n,
            min,
            avg,
            max,
            max_over_avg: ratio(max as f64),
            cv: if avg > 0.0 { var.sqrt() / avg } else { 0.0 },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_and_uneven() {
        assert_eq!(Spread::of(&[]), None);
        let even = Spread::of(&[10, 10, 10]).unwrap();
        assert_eq!(
            (even.min, even.max, even.max_over_avg, even.cv),
            (10, 10, 1.0, 0.0)
        );
        let s = Spread::of(&[0, 10, 20]).unwrap();
        assert_eq!((s.min, s.avg, s.max), (0, 10.0, 20));
        assert!((s.max_over_avg - 2.0).abs() < 1e-9);
        assert!((s.cv - (200.0f64 / 3.0).sqrt() / 10.0).abs() < 1e-9);
        let idle = Spread::of(&[0, 0]).unwrap();
        assert_eq!((idle.max_over_avg, idle.cv), (1.0, 0.0));
    }
}
