//! The packaged systemd units (what scripts/release puts in the .debs): each parses
//! (`systemd-analyze verify` reports no unknown key or invalid value) and is rated 2.5 or lower
//! by `systemd-analyze security --offline=yes` (systemd 252+). The boot test rates them again
//! inside a booted container.

use std::path::PathBuf;
use std::process::Command;

const UNITS: &[&str] = &[
    "agent/systemd/connscale-agent.service",
    "agent/systemd/connscale-credentials.service",
    "chat-node/systemd/chat-node.service",
    "controller/systemd/connscale-controller.service",
];

fn unit_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

fn analyze(args: &[&str], unit: &PathBuf) -> String {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze: {e} (install it: apt-get install -y systemd)")
        });
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The "Overall exposure level for X: N.N" figure.
fn exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    line.rsplit(':')
        .next()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn every_unit_parses_and_rates_2_5_or_lower() {
    for rel in UNITS {
        let unit = unit_path(rel);
        let verify = analyze(&["verify", "--man=no"], &unit);
        assert!(
            !verify.contains("Unknown key")
                && !verify.contains("Invalid")
                && !verify.contains("Failed to parse"),
            "{rel}: {verify}"
        );
        let report = analyze(&["security", "--offline=yes", "--no-pager"], &unit);
        let score =
            exposure(&report).unwrap_or_else(|| panic!("{rel}: no exposure level in:\n{report}"));
        println!("{rel}: systemd-analyze security {score}");
        assert!(score <= 2.5, "{rel} rates {score} (> 2.5):\n{report}");
    }
}

#[test]
fn the_exposure_line_is_read() {
    let r = "x\n→ Overall exposure level for chat-node.service: 1.2 OK 🙂\n";
    assert_eq!(exposure(r), Some(1.2));
    assert_eq!(exposure("nothing"), None);
}
