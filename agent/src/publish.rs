//! Statistic sets per period, a bounded buffer that survives outages (and, with a spool file,
//! restarts), and the sinks they are published to.

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit, StatisticSet};
use connscale_common::metric::{MetricId, dimension_sets};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;

/// One period's statistic set, stamped with the period's start (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub ts: i64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub count: u32,
    /// The instance was in service for every sample of the period, so the point counts in the
    /// group's dimension too (spool files from before this field: yes).
    #[serde(default = "yes")]
    pub in_service: bool,
}

fn yes() -> bool {
    true
}

/// Folds 1-per-second samples into one [`Point`] per period.
#[derive(Debug)]
pub struct Aggregator {
    period: i64,
    current: Option<Point>,
}

impl Aggregator {
    pub fn new(period_secs: u64) -> Self {
        Self {
            period: period_secs.max(1) as i64,
            current: None,
        }
    }

    /// Adds a sample taken at `t` (`in_service`: the instance's lifecycle target then); returns
    /// the previous period's point when `t` starts a new one.
    pub fn add(&mut self, t: i64, value: u64, in_service: bool) -> Option<Point> {
        let start = t - t.rem_euclid(self.period);
        let v = value as f64;
        match &mut self.current {
            Some(p) if p.ts == start => {
                p.min = p.min.min(v);
                p.max = p.max.max(v);
                p.sum += v;
                p.count += 1;
                p.in_service &= in_service;
                None
            }
            slot => slot.replace(Point {
                ts: start,
                min: v,
                max: v,
                sum: v,
                count: 1,
                in_service,
            }),
        }
    }
}

/// Unsent points, oldest first, bounded by age; mirrored to an optional spool file.
#[derive(Debug)]
pub struct Buffer {
    points: VecDeque<Point>,
    max_age: i64,
    pub dropped: u64,
    spool: Option<PathBuf>,
}

impl Buffer {
    /// Opens the buffer, reloading any points a previous run left in the spool file.
    pub fn new(max_age_secs: u64, spool: Option<PathBuf>) -> Self {
        let mut points = VecDeque::new();
        if let Some(path) = &spool
            && let Ok(text) = std::fs::read_to_string(path)
        {
            let mut bad = 0;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<Point>(line) {
                    Ok(p) => points.push_back(p),
                    Err(_) => bad += 1,
                }
            }
            if bad > 0 {
                tracing::warn!(file = %path.display(), bad, "skipped unreadable lines in the spool file");
            }
            tracing::info!(file = %path.display(), points = points.len(), "reloaded unsent points from the spool file");
        }
        Self {
            points,
            max_age: max_age_secs as i64,
            dropped: 0,
            spool,
        }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Adds a point and drops those older than the age bound (counted in `dropped`).
    pub fn push(&mut self, p: Point, now: i64) {
        self.points.push_back(p);
        while self
            .points
            .front()
            .is_some_and(|o| o.ts < now - self.max_age)
        {
            self.points.pop_front();
            self.dropped += 1;
        }
        if let Some(path) = &self.spool {
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{}", serde_json::to_string(&p).unwrap_or_default()));
            if let Err(e) = appended {
                tracing::warn!(file = %path.display(), error = %e, "cannot append to the spool file");
            }
        }
    }

    /// The oldest `n` points, for one publish call.
    pub fn peek(&self, n: usize) -> Vec<Point> {
        self.points.iter().take(n).copied().collect()
    }

    /// Forgets the oldest `n` points after they were published.
    pub fn confirm(&mut self, n: usize) {
        for _ in 0..n.min(self.points.len()) {
            self.points.pop_front();
        }
        if let Some(path) = &self.spool {
            let body: String = self
                .points
                .iter()
                .map(|p| serde_json::to_string(p).unwrap_or_default() + "\n")
                .collect();
            let tmp = path.with_extension("tmp");
            if let Err(e) = std::fs::write(&tmp, body).and_then(|_| std::fs::rename(&tmp, path)) {
                tracing::warn!(file = %path.display(), error = %e, "cannot rewrite the spool file");
            }
        }
    }
}

/// Where points go.
pub enum Sink {
    CloudWatch {
        client: aws_sdk_cloudwatch::Client,
        metric: MetricId,
        group: String,
        instance: String,
        high_resolution: bool,
    },
    /// The embedded default: one JSON line per point on stdout.
    Stdout,
    /// Prometheus /metrics only.
    None,
}

/// Points per PutMetricData call (two datums each, well under the 1,000-datum limit).
pub const BATCH: usize = 150;

impl Sink {
    pub fn describe(&self) -> String {
        match self {
            Self::CloudWatch {
                metric,
                group,
                instance,
                ..
            } => {
                format!(
                    "cloudwatch {}/{} group={group} instance={instance}",
                    metric.namespace, metric.name
                )
            }
            Self::Stdout => "stdout".into(),
            Self::None => "none (Prometheus /metrics only)".into(),
        }
    }

    /// Publishes points (at most [`BATCH`]); on error, nothing is confirmed and all are retried.
    pub async fn put(&self, points: &[Point]) -> Result<(), String> {
        match self {
            Self::None => Ok(()),
            Self::Stdout => {
                for p in points {
                    println!(
                        "{}",
                        serde_json::json!({"metric": "TCPconnections", "ts": p.ts, "min": p.min, "max": p.max, "sum": p.sum, "samples": p.count})
                    );
                }
                Ok(())
            }
            Self::CloudWatch {
                client,
                metric,
                group,
                instance,
                high_resolution,
            } => {
                let mut req = client.put_metric_data().namespace(&metric.namespace);
                for p in points {
                    for dims in dimension_sets(group, instance, p.in_service) {
                        let mut d = MetricDatum::builder()
                            .metric_name(&metric.name)
                            .timestamp(DateTime::from_secs(p.ts))
                            .unit(StandardUnit::Count)
                            .storage_resolution(if *high_resolution { 1 } else { 60 })
                            .statistic_values(
                                StatisticSet::builder()
                                    .minimum(p.min)
                                    .maximum(p.max)
                                    .sum(p.sum)
                                    .sample_count(p.count as f64)
                                    .build(),
                            );
                        for (k, v) in dims {
                            d = d.dimensions(Dimension::builder().name(k).value(v).build());
                        }
                        req = req.metric_data(d.build());
                    }
                }
                req.send().await.map(|_| ()).map_err(|e| {
                    let e = aws_sdk_cloudwatch::error::DisplayErrorContext(e).to_string();
                    if e.contains("AccessDenied") || e.contains("not authorized") {
                        format!("{e} (the instance role needs cloudwatch:PutMetricData for namespace {})", metric.namespace)
                    } else {
                        e
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_per_period() {
        let mut a = Aggregator::new(10);
        assert_eq!(a.add(100, 5, true), None);
        assert_eq!(a.add(105, 9, true), None);
        let p = a.add(110, 1, true).unwrap();
        assert_eq!(
            p,
            Point {
                ts: 100,
                min: 5.0,
                max: 9.0,
                sum: 14.0,
                count: 2,
                in_service: true,
            }
        );
    }

    /// A period with one sample taken out of service (in the warm pool, leaving) is published
    /// per instance only; a spool line written before the field counts as in service.
    #[test]
    fn a_period_with_a_sample_out_of_service_stays_out_of_the_group() {
        let mut a = Aggregator::new(10);
        a.add(100, 0, false);
        a.add(105, 3, true);
        assert!(!a.add(110, 3, true).expect("period 100").in_service);
        assert!(a.add(120, 3, true).expect("period 110").in_service);
        let old: Point =
            serde_json::from_str(r#"{"ts":0,"min":1.0,"max":1.0,"sum":1.0,"count":1}"#)
                .expect("old spool line");
        assert!(old.in_service);
    }

    #[test]
    fn buffer_drops_the_oldest_beyond_its_age_and_counts_them() {
        let mut b = Buffer::new(60, None);
        for ts in (0..120).step_by(10) {
            b.push(
                Point {
                    ts,
                    min: 0.0,
                    max: 0.0,
                    sum: 0.0,
                    count: 1,
                    in_service: true,
                },
                ts,
            );
        }
        assert_eq!(b.peek(1)[0].ts, 50);
        assert_eq!(b.dropped, 5);
        b.confirm(3);
        assert_eq!(b.len(), 4);
    }

    #[test]
    fn spool_survives_a_restart_without_doubling() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.jsonl");
        let mut b = Buffer::new(3600, Some(path.clone()));
        for ts in 0..5 {
            b.push(
                Point {
                    ts,
                    min: 1.0,
                    max: 1.0,
                    sum: 1.0,
                    count: 1,
                    in_service: true,
                },
                ts,
            );
        }
        b.confirm(2);
        drop(b);
        let b = Buffer::new(3600, Some(path));
        assert_eq!(
            b.peek(10).iter().map(|p| p.ts).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
    }
}
