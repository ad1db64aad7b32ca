//! A short `connscale demo` (the README's first command) on this machine: the local fleet scales
//! out to at least 3 instances under load and back to its minimum, every scale-in goes through
//! the instance's lifecycle hook and is completed by its own agent (the production drain path),
//! drained chat clients recover with nothing lost or duplicated, the agents' per-node counts
//! equal the balancer's, and no process is left behind. With `--warm-pool`, instances leave the
//! pool on scale-out and return to it on scale-in.

use connscale_test_support::workspace_bin;
use std::process::Command;

/// Runs the demo; returns its JSON report and the live view for messages.
fn demo(args: &[&str]) -> (serde_json::Value, String, tempfile::TempDir) {
    let bin = workspace_bin("connscale").unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("tmp");
    let plot = dir.path().join("demo.svg");
    let out = Command::new(bin)
        .arg("demo")
        .args(args)
        .args(["--json", "--plot"])
        .arg(&plot)
        .output()
        .expect("run connscale demo");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "demo failed:\n{stderr}");
    let r: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{stderr}"));
    let ctx = format!("{r:#}\n--- live view ---\n{stderr}");
    // Every scale-in drained through the agent's lifecycle code, none by the hook's timeout.
    assert!(r["drains"].as_u64() >= r["scale_ins"].as_u64(), "{ctx}");
    assert_eq!(r["scale_ins_completed_by_agent"], r["drains"], "{ctx}");
    assert_eq!(r["lifecycle_timeouts"], 0, "{ctx}");
    assert_eq!(r["processes_left"], 0, "{ctx}");
    (r, ctx, dir)
}

#[test]
fn heavy_demo_scales_out_and_in_and_loses_nothing() {
    let (r, ctx, dir) = demo(&["--duration", "80s"]);
    let plot = dir.path().join("demo.svg");
    let m = &r["messages"];
    assert!(
        r["peak_instances"].as_u64() >= Some(3),
        "did not scale out to 3: {ctx}"
    );
    assert_eq!(
        r["final_instances"], r["min_size"],
        "did not return to the minimum: {ctx}"
    );
    assert!(r["scale_ins"].as_u64() >= Some(2), "{ctx}");
    assert!(m["sent"].as_u64() > Some(100), "{ctx}");
    assert_eq!(
        (
            m["lost"].as_u64(),
            m["duplicated"].as_u64(),
            m["out_of_order"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{ctx}"
    );
    assert_eq!(m["delivered"], m["expected_deliveries"], "{ctx}");
    assert!(
        m["reconnects"].as_u64() > Some(0),
        "no chat client was drained: recovery untested: {ctx}"
    );
    assert_eq!(r["counts_match"], true, "{ctx}");
    assert_eq!(r["processes_left"], 0, "{ctx}");
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.contains("capacity"), "plot");
}

#[test]
fn heavy_demo_with_a_warm_pool_takes_instances_from_it_and_returns_them() {
    let (r, ctx, _dir) = demo(&["--duration", "60s", "--warm-pool"]);
    assert!(r["warm_pool_launches"].as_u64() >= Some(1), "{ctx}");
    assert!(r["scale_ins"].as_u64() >= Some(1), "{ctx}");
    assert_eq!(
        r["warm_pool_returns"], r["drains"],
        "every scale-in returns its instance to the pool: {ctx}"
    );
    assert_eq!(r["final_instances"], r["min_size"], "{ctx}");
    let m = &r["messages"];
    assert_eq!(m["lost"], 0, "{ctx}");
    assert_eq!(m["delivered"], m["expected_deliveries"], "{ctx}");
}
