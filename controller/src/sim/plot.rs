//! SVG plots of simulated (and demo) timelines: demand, per-policy capacity, and actions.

use super::Report;
use std::fmt::Write;

const COLORS: [&str; 6] = [
    "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// One series to draw: a name and (t, value) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

/// A line chart with a legend and optional action markers (t, label) on the x axis.
/// `x_unit`: the x axis label and how many seconds one label unit is (("hours", 3600.0)).
pub fn line_chart(
    title: &str,
    y_label: &str,
    x_unit: (&str, f64),
    series: &[Series],
    markers: &[(f64, String)],
) -> String {
    let (w, h, l, r, t, b) = (1000.0, 420.0, 70.0, 180.0, 40.0, 40.0);
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let y1 = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.05;
    let span = (x1 - x0).max(1.0);
    let px = |x: f64| l + (x - x0) / span * (w - l - r);
    let py = |y: f64| h - b - y / y1 * (h - t - b);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{l}" y="22" font-size="15">{}</text>"#,
        xml(title)
    );
    for i in 0..=4 {
        let y = y1 * i as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{l}" x2="{}" y1="{py}" y2="{py}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{:.0}</text>"##,
            w - r,
            l - 6.0,
            py(y) + 4.0,
            y,
            py = py(y)
        );
    }
    let _ = write!(
        s,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})">{}</text>"#,
        h / 2.0,
        h / 2.0,
        xml(y_label)
    );
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (l + w - r) / 2.0,
        h - 8.0,
        xml(x_unit.0)
    );
    for i in 0..=5 {
        let x = x0 + span * i as f64 / 5.0;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{:.1}</text>"#,
            px(x),
            h - b + 16.0,
            (x - x0) / x_unit.1
        );
    }
    for (t_, label) in markers.iter().take(400) {
        let _ = write!(
            s,
            r##"<line x1="{x}" x2="{x}" y1="{}" y2="{}" stroke="#999" stroke-width="0.6"><title>{}</title></line>"##,
            h - b,
            h - b - 8.0,
            xml(label),
            x = px(*t_)
        );
    }
    for (i, se) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let d: String = se
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1} ", px(x), py(y)))
            .collect();
        let dash = if se.dashed {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="1.3"{dash} points="{d}"/>"#
        );
        let ly = t + 16.0 * i as f64;
        let _ = write!(
            s,
            r#"<rect x="{}" y="{}" width="14" height="3" fill="{c}"/><text x="{}" y="{}">{}</text>"#,
            w - r + 10.0,
            ly,
            w - r + 30.0,
            ly + 5.0,
            xml(se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Demand and each policy's capacity (nodes × cap) over time.
pub fn report_svg(report: &Report, node_cap: f64) -> String {
    let mut series = Vec::new();
    if let Some(first) = report.policies.values().next() {
        series.push(Series {
            name: "demand",
            points: first
                .timeline
                .iter()
                .map(|s| (s.t as f64, s.demand))
                .collect(),
            dashed: false,
        });
    }
    for (name, o) in &report.policies {
        series.push(Series {
            name,
            points: o
                .timeline
                .iter()
                .map(|s| (s.t as f64, s.nodes as f64 * node_cap))
                .collect(),
            dashed: true,
        });
    }
    let markers: Vec<(f64, String)> = report
        .policies
        .get("connscale")
        .map(|o| {
            o.actions
                .iter()
                .map(|(t, r)| (*t as f64, r.clone()))
                .collect()
        })
        .unwrap_or_default();
    line_chart(
        &format!(
            "{}: demand vs capacity (nodes × cap); ticks = connscale actions",
            report.trace
        ),
        "connections",
        ("hours", 3600.0),
        &series,
        &markers,
    )
}
