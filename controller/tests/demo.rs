//! A short `connscale demo` (the README's first command) on this machine: the local fleet scales
//! out to at least 3 instances under load and back to its minimum, scale-in drains chat clients
//! that recover with nothing lost or duplicated, the agents' per-node counts equal the
//! balancer's, and no process is left behind.

use connscale_test_support::workspace_bin;
use std::process::Command;

#[test]
fn heavy_demo_scales_out_and_in_and_loses_nothing() {
    let bin = workspace_bin("connscale").unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("tmp");
    let plot = dir.path().join("demo.svg");
    let out = Command::new(bin)
        .args(["demo", "--duration", "80s", "--json", "--plot"])
        .arg(&plot)
        .output()
        .expect("run connscale demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stderr}");
    let r: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{stderr}"));
    let m = &r["messages"];
    let ctx = format!("{r:#}\n--- live view ---\n{stderr}");
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
