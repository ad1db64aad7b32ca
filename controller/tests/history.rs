//! Messy history through the CLI: `simulate` and `schedule suggest` accept a real export's
//! out-of-order rows, repeated timestamps and gaps, say what they did in one warning line, and
//! still refuse a row they cannot read, naming its line.

use connscale_test_support::workspace_bin;
use std::process::{Command, Output};

fn connscale(args: &[&str]) -> Output {
    let bin = workspace_bin("connscale").unwrap_or_else(|e| panic!("{e}"));
    Command::new(bin)
        .args(args)
        .output()
        .expect("run connscale")
}

/// Fifteen days (suggest needs 14) of 5-minute points with an evening peak, written the way exports come: two rows
/// swapped, one timestamp twice, and a 2-hour hole.
fn messy_export() -> String {
    let mut rows: Vec<String> = (0..15 * 288)
        .filter(|i| !(400..424).contains(i))
        .map(|i| {
            let t = 1_700_000_000 + i * 300;
            let day = (i % 288) as f64 / 288.0 * std::f64::consts::TAU;
            format!("{t},{:.1}", 100.0 + 80.0 * (day - 1.9).sin())
        })
        .collect();
    rows.swap(10, 11);
    let repeat = rows[20].clone();
    rows.insert(21, repeat);
    format!("timestamp,value\n{}\n", rows.join("\n"))
}

#[test]
fn simulate_and_schedule_suggest_accept_messy_history_and_say_what_they_did() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("export.csv");
    std::fs::write(&path, messy_export()).expect("write");
    let file = path.to_str().expect("utf8");
    for args in [
        vec![
            "simulate",
            "--trace",
            file,
            "--compare",
            "classic",
            "--json",
        ],
        vec!["schedule", "suggest", "--history", file, "--json"],
    ] {
        let out = connscale(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?} failed: {stderr}");
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("warning:"))
            .collect();
        assert_eq!(warnings.len(), 1, "one warning line: {stderr}");
        let w = warnings[0];
        assert!(
            w.contains(file)
                && w.contains("sorted 1 out-of-order rows")
                && w.contains("merged 1 rows")
                && w.contains("bridged 1 gaps linearly (longest 2h 5m)"),
            "{w}"
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stderr}"));
        assert!(!json.is_null());
    }
}

#[test]
fn a_row_that_cannot_be_read_is_refused_with_its_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("broken.csv");
    let mut text = messy_export();
    text.push_str("1700999999,lots\n");
    std::fs::write(&path, &text).expect("write");
    let lines = text.lines().count();
    let file = path.to_str().expect("utf8");
    for args in [
        vec!["simulate", "--trace", file],
        vec!["schedule", "suggest", "--history", file],
    ] {
        let out = connscale(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted a broken row");
        assert!(
            stderr.contains(&format!("line {lines}")) && stderr.contains("bad value"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `simulate --summary` (scripts/bench/simulator.sh's first table): one row per trace against
/// classic with its pool and the oracle, the count of traces that meet every target, and the
/// worst trace for each target.
#[test]
fn simulate_summary_prints_one_row_per_trace_and_the_worst_of_each_target() {
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = (dir.path().join("evening.csv"), dir.path().join("later.csv"));
    std::fs::write(&a, messy_export()).expect("write");
    let shifted = messy_export().replace("timestamp,value\n", "timestamp,value\n1699990000,40\n");
    std::fs::write(&b, shifted).expect("write");
    let (a, b) = (a.to_str().expect("utf8"), b.to_str().expect("utf8"));
    let out = connscale(&["simulate", "--summary", "--trace", a, "--trace", b]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| evening") || l.starts_with("| later"))
        .collect();
    assert_eq!(rows.len(), 2, "one row per trace:\n{stdout}");
    for row in rows {
        assert_eq!(row.matches('|').count(), 7, "six columns: {row}");
        assert!(row.contains(" met") || row.contains("missed"), "{row}");
    }
    assert!(
        stdout.contains("| trace | rejected ÷ classic (≤ 0.10)"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("every target met on ") && l.ends_with(" of 2 traces")),
        "{stdout}"
    );
    for target in [
        "rejected ÷ classic",
        "inst-h ÷ classic",
        "inst-h ÷ oracle",
        "reconnects ÷ classic",
    ] {
        assert!(
            stdout.contains(&format!("worst {target}: ")),
            "no worst trace for {target}:\n{stdout}"
        );
    }
}
