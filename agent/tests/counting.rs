//! The agent reports exactly N held connections: more than one process can hold (N > 19k, spread
//! over acceptor and client processes and source addresses), while thousands of connections a
//! second open and close on another port, for IPv4 clients of a dual-stack listener, and inside
//! another network namespace (made by the test with `unshare -n`).

mod common;
use common::{helper, helper_via};
use connscale_test_support::free_port;
use std::process::Command;

fn once(port: u16) -> serde_json::Value {
    once_with(port, &[])
}

fn once_with(port: u16, extra: &[&str]) -> serde_json::Value {
    let bin = env!("CARGO_BIN_EXE_connscale-agent");
    let out = Command::new(bin)
        .args(["--once", "--json", "--port", &port.to_string()])
        .args(extra)
        .output()
        .expect("run agent");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON sample")
}

#[test]
fn heavy_exact_count_beyond_one_process_under_churn() {
    let port = free_port();
    let churn_port = free_port();
    let _servers = [
        helper(&["serve", &port.to_string()]),
        helper(&["serve", &port.to_string()]),
    ];
    let _churn_server = helper(&["serve", &churn_port.to_string()]);
    let per = 7_000;
    let srcs = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let _clients: Vec<_> = srcs
        .iter()
        .map(|s| helper(&["connect", &port.to_string(), &per.to_string(), s]))
        .collect();
    let n = per * srcs.len() as u64;
    // Let the acceptors drain their backlog.
    let mut sample = once(port);
    for _ in 0..100 {
        if sample["connections"] == n {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        sample = once(port);
    }
    assert_eq!(sample["method"], "netlink");
    assert_eq!(sample["connections"], n, "{sample}");
    let _churners: Vec<_> = ["127.0.0.5", "127.0.0.6"]
        .iter()
        .map(|s| helper(&["churn", &churn_port.to_string(), s]))
        .collect();
    for _ in 0..20 {
        let s = once(port);
        assert_eq!(s["connections"], n, "miscounted under churn: {s}");
        assert!(s["host_established"].as_u64().unwrap_or(0) >= 2 * n);
    }
}

#[test]
fn counts_ipv4_clients_of_a_dual_stack_listener() {
    let port = free_port();
    let Ok(l) = std::net::TcpListener::bind(("::", port)) else {
        return;
    };
    let mut keep = Vec::new();
    for a in ["127.0.0.1", "::1", "127.0.0.1", "::1", "127.0.0.1"] {
        keep.push(std::net::TcpStream::connect((a, port)).expect("connect"));
        keep.push(l.accept().expect("accept").0);
    }
    assert_eq!(once(port)["connections"], 5);
}

#[test]
fn bad_config_is_one_clear_error_naming_the_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("agent.toml");
    std::fs::write(&f, "ports = [3000]\n[health]\ncapp = 5\n").expect("write");
    let bin = env!("CARGO_BIN_EXE_connscale-agent");
    let out = Command::new(bin)
        .args(["--once", "--config"])
        .arg(&f)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("capp") && err.contains("line 3") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn systemd_unit_is_hardened_and_unprivileged() {
    let unit = include_str!("../systemd/connscale-agent.service");
    for line in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_NETLINK AF_UNIX",
        "StateDirectory=connscale-agent",
    ] {
        assert!(unit.contains(line), "unit lacks {line:?}");
    }
    if let Ok(out) = Command::new("systemd-analyze")
        .args([
            "verify",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/systemd/connscale-agent.service"
            ),
        ])
        .output()
    {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("Unknown key") && !err.contains("Invalid"),
            "{err}"
        );
    }
}

#[test]
fn counts_inside_another_network_namespace_by_pid_or_path() {
    // Creating a network namespace needs CAP_SYS_ADMIN (root, as on the CI machines).
    let can = Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        can,
        "`unshare -n true` failed: this test needs util-linux and CAP_SYS_ADMIN"
    );
    let port = free_port();
    let h = helper_via(&["unshare", "-n"], &["netns", &port.to_string(), "7"]);
    let pid = h.0.id().to_string();
    let by_pid = once_with(port, &["--netns", &pid]);
    assert_eq!(by_pid["connections"], 7, "{by_pid}");
    let path = format!("/proc/{pid}/ns/net");
    assert_eq!(once_with(port, &["--netns", &path])["connections"], 7);
    // Not in this namespace: nothing listens on the port here.
    assert_eq!(once(port)["connections"], 0);
}
