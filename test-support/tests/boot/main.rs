//! The deployment, booted under real systemd: four Debian 12 machines (systemd-nspawn, each a
//! copy of the root file system scripts/test caches): a chat node, the controller instance of
//! controller.tf's one-instance group, a chat node whose first boot fails, and a node of a team's
//! own service (`var.service`: the agent alone, in front of an unmodified echo server). Each runs
//! the user data rendered from terraform's real template (user_data.sh.tftpl,
//! controller_user_data.sh.tftpl), which installs the release from an HTTPS URL on the host, as
//! cloud-init would on EC2.
//!
//! Only the AWS network is a stand-in: moto (SSM, CloudWatch, Auto Scaling, EC2, DynamoDB) and an
//! IMDSv2 and lifecycle stub ([`InstanceStub`]) per machine, all on the host's loopback, which the
//! machines share. A drop-in for every service in a machine points the SDK's endpoints at them;
//! everything else (packages, units, credentials, the lease table's conditional writes, the
//! official socket.io-client on the host) is the real path.
//!
//! Needs root (systemd-nspawn, nsenter). Prints the time of each phase.

mod aws;
mod machine;
mod release;
mod render;

use connscale_test_support::{
    InstanceIdentity, InstanceStub, LifecycleAction, LifecycleCall, MotoServer, RedisServer,
    free_port, workspace_root,
};
use machine::Machine;
use serde_json::{Map, Value, json};
use std::time::{Duration, Instant};

/// Prints how long each phase took, and the total.
struct Phases {
    start: Instant,
    last: Instant,
}

impl Phases {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            last: now,
        }
    }

    fn done(&mut self, what: &str) {
        let now = Instant::now();
        println!(
            "[boot {:6.1} s] {what} ({:.1} s)",
            (now - self.start).as_secs_f64(),
            (now - self.last).as_secs_f64()
        );
        self.last = now;
    }
}

/// Polls `f` every 200 ms until it returns `Some`, up to `secs`; panics naming `what`.
fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A random token of `n` hex digits (the secrets the deployment must not leak).
fn token(n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(rand::random::<u32>() % 16, 16).unwrap_or('0'))
        .collect()
}

/// The secrets: in SSM as SecureString, and nowhere readable but by the services.
struct Secrets {
    api_token: String,
    redis_auth_token: String,
}

/// Everything the template's variables are made from.
struct Deployment<'a> {
    release: &'a release::Release,
    group: &'a aws::Group,
    redis_port: u16,
    chat_port: u16,
    health_port: u16,
    secrets: &'a Secrets,
    stub: &'a InstanceStub,
}

const NAMESPACE: &str = "connscale";
const METRIC: &str = "TCPconnections";
const DRAIN_HOOK: &str = "connscale-drain";
const LAUNCH_HOOK: &str = "connscale-launch";
const HEARTBEAT_METRIC: &str = "ControllerHeartbeat";
const CONTROLLER_UNIT: &str = "connscale-controller.service";
const API_TOKEN_PARAM: &str = "/connscale/boot-test/api-token";
const REDIS_TOKEN_PARAM: &str = "/connscale/boot-test/redis-auth-token";

/// The value the module would pass for one of fleet.tf's template variables.
fn template_value(key: &str, d: &Deployment) -> Value {
    match key {
        "release_url" => json!(d.release.url),
        "release_sha256" => json!(d.release.sha256),
        "chat_port" => json!(d.chat_port),
        "health_port" => json!(d.health_port),
        "node_cap" => json!(100),
        "metric_namespace" => json!(NAMESPACE),
        "metric_name" => json!(METRIC),
        "publish_period" => json!(5),
        "hook_name" | "drain_hook" => json!(DRAIN_HOOK),
        "launch_hook" | "launch_hook_name" => json!(LAUNCH_HOOK),
        "install_timeout" => json!(120),
        "drain_timeout" => json!(60),
        "agent_drain_timeout" => json!(30),
        // Under the test's few clients at once: the grace ends as the drain starts.
        "drain_grace" => json!(20),
        "drain_grace_until_below" => json!(1000),
        "hook_heartbeat_timeout" => json!(120),
        "region" | "aws_region" => json!(d.stub.identity().region),
        "group_name" | "name" => json!(d.group.name),
        "api_token_parameter" | "api_token_param" => json!(API_TOKEN_PARAM),
        "redis_auth_token_parameter" | "redis_auth_token_param" | "redis_token_parameter" => {
            json!(REDIS_TOKEN_PARAM)
        }
        "redis_host" | "redis_endpoint" | "redis_address" => json!("127.0.0.1"),
        "redis_port" => json!(d.redis_port),
        // The module before SSM: secrets in the user data (the assert below refuses them).
        "api_token" => json!(d.secrets.api_token),
        // Plain redis:// on loopback stands in for ElastiCache's rediss:// (no test CA in chat-node's
        // compiled-in roots); the AUTH token reaches chat-node as a credential either way.
        "redis_url" => json!(format!("redis://127.0.0.1:{}", d.redis_port)),
        // What AWS gets: the boot test's own drop-in points the SDKs at the stand-ins instead.
        "aws_endpoint_url" => json!(""),
        // chat-node (var.service null); the own-service node overrides them (own_service_vars).
        "service_unit" | "service_install" | "service_drain_url" => json!(""),
        "close_window" => json!(10),
        other => panic!(
            "fleet.tf passes the user-data template a variable `{other}` that the boot test has no value for: add it to template_value in test-support/tests/boot.rs"
        ),
    }
}

/// The values the module would pass for controller.tf's template variables.
struct ControllerDeployment<'a> {
    release: &'a release::Release,
    /// var.name: the fleet's Auto Scaling group (fleet.tf names it so).
    fleet_group: &'a str,
    lease: &'a LeaseTable,
    policy: &'a str,
}

/// The value controller.tf passes for one of controller_user_data.sh.tftpl's variables.
fn controller_template_value(key: &str, c: &ControllerDeployment) -> Value {
    match key {
        "release_url" => json!(c.release.url),
        "release_sha256" => json!(c.release.sha256),
        "group" => json!(c.fleet_group),
        "lease_table" => json!(c.lease.name),
        "policy" => json!(c.policy),
        other => panic!(
            "controller.tf passes the controller's user-data template a variable `{other}` that the boot test has no value for: add it to controller_template_value in test-support/tests/boot/main.rs"
        ),
    }
}

/// The lease table as terraform/lease.tf makes it for the module's `var.name`.
struct LeaseTable {
    name: String,
    key: String,
}

impl LeaseTable {
    /// Reads `aws_dynamodb_table.lease`'s name and hash key from lease.tf.
    fn of_module(var_name: &str) -> Self {
        let tf = std::fs::read_to_string(workspace_root().join("terraform/lease.tf"))
            .expect("terraform/lease.tf");
        let block = tf
            .split_once("resource \"aws_dynamodb_table\" \"lease\"")
            .map(|(_, b)| b)
            .expect("lease.tf declares aws_dynamodb_table.lease");
        let arg = |name: &str| {
            block
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once('=')?;
                    (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
                })
                .unwrap_or_else(|| panic!("aws_dynamodb_table.lease has no {name}"))
        };
        let name = arg("name").replace("${var.name}", var_name);
        assert!(
            !name.contains("${"),
            "lease.tf's table name {name:?} uses more than var.name: teach the boot test"
        );
        Self {
            name,
            key: arg("hash_key"),
        }
    }
}

/// The policy the controller machine runs (controller_policy's text): the shipped default with
/// the group's bounds set to the test group's (min = max = 1), so the loop holds, never scales.
fn controller_policy() -> String {
    let text = std::fs::read_to_string(workspace_root().join("policies/default.toml"))
        .expect("policies/default.toml");
    let mut table = String::new();
    let mut set = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with('[') {
                table = l.trim().to_string();
            }
            let key = l.split_once('=').map(|(k, _)| k.trim());
            match key {
                Some(k @ ("min_size" | "max_size")) if table == "[group]" => {
                    set += 1;
                    format!("{k} = 1")
                }
                _ => l.to_string(),
            }
        })
        .collect();
    assert_eq!(
        set, 2,
        "policies/default.toml's [group] has no min_size and max_size"
    );
    lines.join("\n") + "\n"
}

/// The drop-in that stands in for the AWS network: every service's SDK goes to the host's moto
/// and the machine's stub (and the agent's own IMDS client to the stub). Auto Scaling goes to
/// `autoscaling` (the stub, for the lifecycle calls moto lacks, or moto itself).
fn aws_stand_in_dropin(moto: &MotoServer, stub: &InstanceStub, autoscaling: &str) -> String {
    let m = moto.endpoint();
    let env = [
        ("AWS_ENDPOINT_URL_SSM", m.clone()),
        ("AWS_ENDPOINT_URL_CLOUDWATCH", m.clone()),
        ("AWS_ENDPOINT_URL_EC2", m.clone()),
        ("AWS_ENDPOINT_URL_DYNAMODB", m.clone()),
        ("AWS_ENDPOINT_URL_AUTO_SCALING", autoscaling.to_string()),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", stub.imds_endpoint()),
        ("CONNSCALE_IMDS_ENDPOINT", stub.imds_endpoint()),
    ];
    let mut s = String::from(
        "# Test only: the boot test's stand-ins for the AWS network (moto and the IMDS stub).\n[Service]\n",
    );
    for (k, v) in env {
        s.push_str(&format!("Environment={k}={v}\n"));
    }
    s
}

/// cloud-init's part that runs user data, reduced to what it does for a shell script: once, as
/// root, after the network is up, output to the console and the journal.
const USER_DATA_UNIT: &str = "[Unit]
Description=Run the instance's user data (stands in for cloud-init's scripts-user)
After=network-online.target
Wants=network-online.target
# Once per instance, as cloud-init: its semaphore is written when the module runs, and a later
# boot (a stopped warm-pool instance started again) skips the user data.
ConditionPathExists=!/var/lib/cloud/instance/sem/config_scripts_user
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStartPre=/bin/sh -c 'mkdir -p /var/lib/cloud/instance/sem && touch /var/lib/cloud/instance/sem/config_scripts_user'
ExecStart=/var/lib/cloud/instance/scripts/part-001
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=300
[Install]
WantedBy=multi-user.target
";

/// The machine shares the host's kernel, whose settings it cannot (and must not) change:
/// `sysctl --system` checks that every key in /etc/sysctl.d exists and records the call instead.
/// Any other use of sysctl goes to the real one.
const SYSCTL_STAND_IN: &str = r#"#!/bin/sh
# Test only (boot test): checks and records instead of setting the shared host kernel's values.
case " $* " in *" --system "*) ;; *) exec /usr/sbin/sysctl "$@" ;; esac
echo "sysctl $*" >> /run/sysctl-stand-in.log
for f in /etc/sysctl.d/*.conf; do
  [ -f "$f" ] || continue
  sed -e 's/[#;].*//' -e 's/=.*//' -e 's/[[:space:]]//g' "$f" | while read -r key; do
    [ -n "$key" ] || continue
    [ -e "/proc/sys/$(echo "$key" | tr . /)" ] || { echo "sysctl: cannot stat /proc/sys/$key ($f)" >&2; exit 1; }
    echo "$key" >> /run/sysctl-stand-in.log
  done || exit 1
done
"#;

/// The chat node's units, with `systemd-analyze security` at most 2.5 each (the controller's unit
/// runs on its own machine, controller.tf's one-instance group: [`CONTROLLER_UNIT`]).
const UNITS: [&str; 2] = ["chat-node.service", "connscale-agent.service"];

/// Renders `template` with `vars` (terraform's templatefile() where it runs, checked against the
/// subset renderer); returns the user data and the renderer's name.
fn render_user_data(template: &std::path::Path, vars: &Map<String, Value>) -> (String, String) {
    let (user_data, renderer) = render::render(template, vars);
    if renderer.starts_with("terraform") {
        // The fallback renderer must agree with terraform wherever it renders at all.
        let text = std::fs::read_to_string(template).expect("template");
        match render::subset_render(&text, vars) {
            Ok(s) => assert_eq!(s, user_data, "the subset renderer disagrees with terraform"),
            Err(e) => println!("the subset renderer refuses this template: {e}"),
        }
    }
    (user_data, renderer.to_string())
}

/// Writes the user data and what stands in for cloud-init and the AWS network into `m`.
fn prepare(m: &Machine, user_data: &str, dropin: &str, tls: &release::TestCa) {
    m.write("/var/lib/cloud/instance/scripts/part-001", user_data, 0o700);
    m.write(
        "/etc/systemd/system/user-data.service",
        USER_DATA_UNIT,
        0o644,
    );
    m.enable("user-data.service");
    m.write(
        "/etc/systemd/system/service.d/90-aws-stand-in.conf",
        dropin,
        0o644,
    );
    tls.trust_in(m);
}

/// Waits for the boot to finish and asserts the user data succeeded.
fn assert_user_data_ran(m: &Machine) {
    let booted = m.wait_booted(240);
    println!("{}: boot finished: {booted}", m.name);
    let state = m.unit_state("user-data.service");
    assert_eq!(
        state,
        "active",
        "the user data failed on {}: {}\ncredentials: {}",
        m.name,
        m.journal("user-data.service"),
        m.journal("connscale-credentials.service")
    );
}

/// A node of the fleet's group (a copy of `rootfs` named `name`), prepared to boot `user_data`
/// with its own IMDS and lifecycle stub, and the sysctl stand-in a shared kernel needs.
fn node_machine(
    rootfs: &std::path::Path,
    name: &str,
    user_data: &str,
    moto: &MotoServer,
    stub: &InstanceStub,
    tls: &release::TestCa,
) -> Machine {
    let m = Machine::copy_of(rootfs, name);
    prepare(
        &m,
        user_data,
        &aws_stand_in_dropin(moto, stub, &stub.autoscaling_endpoint()),
        tls,
    );
    m.write("/usr/local/sbin/sysctl", SYSCTL_STAND_IN, 0o755);
    m
}

/// The accepted CompleteLifecycleAction calls for `hook`, oldest first.
fn completed(stub: &InstanceStub, hook: &str) -> Vec<LifecycleCall> {
    stub.lifecycle_calls()
        .into_iter()
        .filter(|c| c.action == LifecycleAction::Complete && c.hook == hook && c.accepted)
        .collect()
}

/// Asserts that no file holding a secret on `m` is readable by an unprivileged user; returns
/// those files.
fn assert_secrets_private(m: &Machine, secrets: &Secrets) -> Vec<String> {
    let holders = secret_holders(m, secrets);
    for f in &holders {
        let out = m.exec(&["runuser", "-u", "nobody", "--", "cat", f.as_str()]);
        assert!(!out.status.success(), "nobody can read the secret in {f}");
    }
    holders
}

/// Files under the usual places that hold one of the secrets (as `grep -l` names them).
fn secret_holders(m: &Machine, secrets: &Secrets) -> Vec<String> {
    m.sh(&format!(
        "grep -rlsF -e '{}' -e '{}' /etc /run /var /tmp /root /home /opt /usr/local /srv || true",
        secrets.api_token, secrets.redis_auth_token
    ))
    .split_whitespace()
    .map(String::from)
    .collect()
}

/// Asserts that neither secret is in `user_data`.
fn assert_no_secret_in(user_data: &str, secrets: &Secrets, what: &str) {
    for (name, s) in [
        ("API token", &secrets.api_token),
        ("Redis AUTH token", &secrets.redis_auth_token),
    ] {
        assert!(
            !user_data.contains(s.as_str()),
            "the {name} is in the {what} (anyone with ec2:DescribeInstanceAttribute reads it)"
        );
    }
}

/// The team's own service of the own-service node: what its `service.install` sets up on the
/// first boot. An unmodified server: systemd's socket activation handing each connection to
/// `cat`, an echo server that knows nothing of connscale (no drain endpoint, no signal handling).
fn own_service_install(port: u16) -> String {
    format!(
        "set -eu
cat > /etc/systemd/system/echo.socket <<'UNIT'
[Socket]
ListenStream=0.0.0.0:{port}
Accept=yes
[Install]
WantedBy=sockets.target
UNIT
cat > /etc/systemd/system/echo@.service <<'UNIT'
[Service]
ExecStart=/bin/cat
StandardInput=socket
UNIT
echo 'own service installed' > /var/log/own-service-install.log
"
    )
}

/// fleet.tf's variables for a node of `var.service = {{ unit = \"echo.socket\", port, install }}`:
/// what the module passes then (no Redis, no chat-node).
fn own_service_vars(chat: &Map<String, Value>, port: u16, health_port: u16) -> Map<String, Value> {
    use base64::Engine;
    let install = base64::engine::general_purpose::STANDARD.encode(own_service_install(port));
    let mut vars = chat.clone();
    for (k, v) in [
        ("service_unit", json!("echo.socket")),
        ("service_install", json!(install)),
        ("service_drain_url", json!("")),
        ("chat_port", json!(port)),
        ("health_port", json!(health_port)),
        ("redis_url", json!("")),
        ("redis_auth_token_parameter", json!("")),
    ] {
        assert!(vars.insert(k.into(), v).is_some(), "fleet.tf passes no {k}");
    }
    vars
}

/// A client of the echo service: connected, and answered.
fn echo_client(port: u16) -> std::net::TcpStream {
    use std::io::{BufRead, Write};
    let mut c =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the own service");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(b"ping\n").expect("write");
    let mut line = String::new();
    std::io::BufReader::new(c.try_clone().expect("clone"))
        .read_line(&mut line)
        .expect("read the echo");
    assert_eq!(line, "ping\n", "the own service did not echo");
    c
}

/// One more round trip on an open echo connection.
fn assert_echoes(c: &mut std::net::TcpStream) {
    use std::io::{BufRead, Write};
    c.write_all(b"still there\n").expect("write");
    let mut line = String::new();
    std::io::BufReader::new(c.try_clone().expect("clone"))
        .read_line(&mut line)
        .expect("read the echo");
    assert_eq!(line, "still there\n", "the connection did not echo");
}

/// Whether the server ended `c` (reset or closed): a read returns an error or end of file.
fn ended(c: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 16];
    matches!(c.read(&mut buf), Ok(0) | Err(_))
}

/// The own-service node after its first boot (no apt-get: from the release's tarball): only the
/// agent installed, the team's unit serving, the launch hook completed, the clients counted; then
/// a scale-in, where the agent closes the connections itself (no drain endpoint) and completes
/// the drain hook.
fn check_own_service_node(
    om: &Machine,
    stub: &InstanceStub,
    port: u16,
    health_port: u16,
    secrets: &Secrets,
) {
    assert_user_data_ran(om);
    let installed = om.sh("cat /var/log/own-service-install.log 2>&1; command -v chat-node || echo 'no chat-node'; systemctl list-unit-files chat-node.service redis-server.service --no-legend | wc -l; command -v connscale-agent; dpkg-query -W connscale-agent 2>/dev/null || echo 'from the tarball'; test -f /usr/share/connscale-agent/close-drain.conf && echo 'drop-in shipped'");
    assert_eq!(
        installed.split_whitespace().collect::<Vec<_>>().join(" "),
        "own service installed no chat-node 0 /usr/bin/connscale-agent from the tarball drop-in shipped",
        "the own-service node (agent only, from the tarball): {installed}\n{}",
        om.journal("user-data.service")
    );
    for unit in [
        "echo.socket",
        "connscale-agent.service",
        "connscale-credentials.service",
    ] {
        assert_eq!(
            om.unit_state(unit),
            "active",
            "{unit}: {}",
            om.journal(unit)
        );
    }
    let creds = om.sh("ls /run/connscale/credentials");
    assert_eq!(
        creds.trim(),
        "api-token",
        "credentials of a node without Redis"
    );
    assert_secrets_private(om, secrets);
    let launch = completed(stub, LAUNCH_HOOK).into_iter().next();
    assert!(
        launch.is_some_and(|c| c.result.as_deref() == Some("CONTINUE")),
        "the own-service node's launch hook: {:?}\n{}",
        stub.lifecycle_calls(),
        om.journal("user-data.service")
    );
    let mut clients = [echo_client(port), echo_client(port), echo_client(port)];
    let health_url = format!("http://127.0.0.1:{health_port}/health");
    let (code, body) = wait_for(15, "/health to count the 3 echo clients", || {
        let (code, body) = http_get(&health_url);
        (body["connections"] == 3).then_some((code, body))
    });
    assert_eq!(code, 200, "/health of the own-service node: {body}");
    let metrics = om.sh(&format!(
        "curl -s -m 5 http://127.0.0.1:{health_port}/metrics"
    ));
    assert!(
        metrics.contains("connscale_drain_close_available 1"),
        "the agent cannot close connections (the user data installs close-drain.conf): {}",
        om.journal("connscale-agent.service")
    );
    let score = exposure(om, "connscale-agent.service");
    println!("own-service node: systemd-analyze security connscale-agent.service {score:.1}");
    assert!(
        score <= 2.5,
        "the own-service node's agent rates {score:.1}"
    );

    // The controller's cordon, the instance tag the node reads through IMDS tags: no new
    // clients (503 cordoned), its 3 connections untouched; lifted, 200 again.
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
        + 300;
    let tag = connscale_common::cordon::TAG;
    stub.set_instance_tag(
        tag,
        Some(&connscale_common::cordon::value(
            until,
            until - connscale_common::cordon::HOLD,
        )),
    );
    let (_, body) = wait_for(30, "/health to say cordoned", || {
        let (code, body) = http_get(&health_url);
        (code == 503 && body["state"] == "cordoned").then_some((code, body))
    });
    assert_eq!(body["connections"], 3, "cordoned: {body}");
    for c in clients.iter_mut() {
        assert_echoes(c);
    }
    stub.set_instance_tag(tag, None);
    wait_for(30, "/health at 200 once the cordon is lifted", || {
        (http_get(&health_url).0 == 200).then_some(())
    });

    // Scale-in: out of the ALB (503), the grace ends at once (3 < drain_grace_until_below),
    // then the agent resets the connections over close_window and completes the hook.
    stub.await_hook(Some(DRAIN_HOOK));
    stub.set_target_lifecycle_state("Terminated");
    wait_for(15, "/health to say draining", || {
        (http_get(&health_url).0 == 503).then_some(())
    });
    for c in clients.iter_mut() {
        c.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        assert!(
            ended(c),
            "the agent did not close an echo client's connection"
        );
    }
    let done = wait_for(
        60,
        "the agent to complete the own-service node's drain hook",
        || completed(stub, DRAIN_HOOK).into_iter().next(),
    );
    assert_eq!(done.result.as_deref(), Some("CONTINUE"));
    let journal = om.journal("connscale-agent.service");
    assert!(
        journal.contains("closing the remaining connections over the window")
            && journal.contains("every connection closed"),
        "the agent's journal does not tell of the close drain: {journal}"
    );
    assert_eq!(
        om.unit_state("echo.socket"),
        "active",
        "the drain stopped the service itself"
    );
}

#[test]
fn heavy_deployment_boots_under_systemd_serves_chat_and_scales_in() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the boot test needs root (systemd-nspawn, nsenter): run it as root, as CI does"
    );
    let mut t = Phases::new();
    let rootfs = machine::cached_rootfs();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    // --- AWS stand-ins and Redis on the host ---------------------------------------------
    let moto = MotoServer::start();
    let group = rt.block_on(aws::create_group(&moto, "connscale-boot"));
    // controller.tf's own group of one for the control loop, and lease.tf's table.
    let controller_group = rt.block_on(aws::create_group(
        &moto,
        &format!("{}-controller", group.name),
    ));
    let lease = LeaseTable::of_module(&group.name);
    rt.block_on(aws::create_lease_table(&moto, &lease.name, &lease.key));
    let secrets = Secrets {
        api_token: token(40),
        redis_auth_token: token(32),
    };
    rt.block_on(async {
        aws::put_secure_string(&moto, API_TOKEN_PARAM, &secrets.api_token).await;
        aws::put_secure_string(&moto, REDIS_TOKEN_PARAM, &secrets.redis_auth_token).await;
    });
    let redis = RedisServer::start();
    require_redis_auth(&redis, &secrets.redis_auth_token);
    let stub = InstanceStub::start(
        InstanceIdentity {
            instance_id: group.instance_id.clone(),
            group: group.name.clone(),
            ..InstanceIdentity::default()
        },
        &moto.endpoint(),
    );
    // The instance launches paused on the launch hook until its user data completes it.
    stub.set_target_lifecycle_state("InService");
    stub.await_hook(Some(LAUNCH_HOOK));
    // The controller instance's own IMDS (its group has no lifecycle hooks).
    let controller_stub = InstanceStub::start(
        InstanceIdentity {
            instance_id: controller_group.instance_id.clone(),
            group: controller_group.name.clone(),
            role: controller_group.name.clone(),
            ..InstanceIdentity::default()
        },
        &moto.endpoint(),
    );
    controller_stub.set_target_lifecycle_state("InService");
    // A second chat node whose first boot fails (its API token's parameter does not exist): it
    // must ABANDON its launch hook, so Auto Scaling replaces it instead of waiting it out.
    let launching = |instance_id: &str| {
        let stub = InstanceStub::start(
            InstanceIdentity {
                instance_id: instance_id.into(),
                group: group.name.clone(),
                ..InstanceIdentity::default()
            },
            &moto.endpoint(),
        );
        stub.set_target_lifecycle_state("InService");
        stub.await_hook(Some(LAUNCH_HOOK));
        stub
    };
    let failing_stub = launching("i-0badb007000000001");
    // A node of a team that brings its own service (var.service): the agent only, no chat-node.
    let own_stub = launching("i-0015e41ce0000001");
    t.done("moto (groups, lease table), redis-server and the IMDS / lifecycle stubs up");

    // --- The release, served over HTTPS --------------------------------------------------
    let work = tempfile::tempdir().expect("tempdir");
    let tls = release::TestCa::make(work.path());
    let rel = release::Release::build(work.path(), &tls);
    t.done(&format!("release packaged ({})", rel.kind));

    // --- User data from the real template ------------------------------------------------
    let (chat_port, health_port) = (free_port(), free_port());
    let d = Deployment {
        release: &rel,
        group: &group,
        redis_port: redis.port(),
        chat_port,
        health_port,
        secrets: &secrets,
        stub: &stub,
    };
    let root = workspace_root();
    let keys = |tf: &str, template: &str| {
        let text = std::fs::read_to_string(root.join("terraform").join(tf)).expect(tf);
        render::template_keys(&text, template)
    };
    let vars: Map<String, Value> = keys("fleet.tf", "templates/user_data.sh.tftpl")
        .into_iter()
        .map(|k| {
            let v = template_value(&k, &d);
            (k, v)
        })
        .collect();
    let (user_data, renderer) =
        render_user_data(&root.join("terraform/templates/user_data.sh.tftpl"), &vars);
    assert_no_secret_in(&user_data, &secrets, "chat node's rendered user data");
    let mut failing_vars = vars.clone();
    let (fail_chat, fail_health) = (free_port(), free_port());
    for (k, v) in [
        (
            "api_token_parameter",
            json!("/connscale/boot-test/no-such-parameter"),
        ),
        ("chat_port", json!(fail_chat)),
        ("health_port", json!(fail_health)),
    ] {
        assert!(
            failing_vars.insert(k.into(), v).is_some(),
            "fleet.tf passes no {k}"
        );
    }
    let (failing_user_data, _) = render_user_data(
        &root.join("terraform/templates/user_data.sh.tftpl"),
        &failing_vars,
    );
    let (own_port, own_health) = (free_port(), free_port());
    let (own_user_data, _) = render_user_data(
        &root.join("terraform/templates/user_data.sh.tftpl"),
        &own_service_vars(&vars, own_port, own_health),
    );
    assert_no_secret_in(
        &own_user_data,
        &secrets,
        "own-service node's rendered user data",
    );
    let policy = controller_policy();
    let c = ControllerDeployment {
        release: &rel,
        fleet_group: &group.name,
        lease: &lease,
        policy: &policy,
    };
    let controller_vars: Map<String, Value> =
        keys("controller.tf", "templates/controller_user_data.sh.tftpl")
            .into_iter()
            .map(|k| {
                let v = controller_template_value(&k, &c);
                (k, v)
            })
            .collect();
    let (controller_user_data, _) = render_user_data(
        &root.join("terraform/templates/controller_user_data.sh.tftpl"),
        &controller_vars,
    );
    assert_no_secret_in(
        &controller_user_data,
        &secrets,
        "controller's rendered user data",
    );
    t.done(&format!(
        "user data (node, controller) rendered by {renderer}"
    ));

    // --- The machines: a chat node and the controller, booted side by side ------------------
    let mut m = node_machine(&rootfs, "node", &user_data, &moto, &stub, &tls);
    let mut cm = Machine::copy_of(&rootfs, "controller");
    // The controller's Auto Scaling calls go to moto itself: its own instance has no hooks.
    prepare(
        &cm,
        &controller_user_data,
        &aws_stand_in_dropin(&moto, &controller_stub, &moto.endpoint()),
        &tls,
    );
    let mut fm = node_machine(
        &rootfs,
        "node-failing",
        &failing_user_data,
        &moto,
        &failing_stub,
        &tls,
    );
    let mut om = node_machine(
        &rootfs,
        "node-own-service",
        &own_user_data,
        &moto,
        &own_stub,
        &tls,
    );
    // A machine without apt-get, as Amazon Linux 2023 (the module's other AMI): the user data
    // takes the release's tarball instead of the .debs.
    std::fs::rename(
        om.path("/usr/bin/apt-get"),
        om.path("/usr/bin/apt-get.hidden"),
    )
    .expect("hide apt-get in the own-service machine");
    t.done("machines prepared");
    m.boot();
    cm.boot();
    fm.boot();
    om.boot();
    t.done("machines booted");
    assert_user_data_ran(&m);
    t.done("node: user data ran");

    // --- Units active, hardened --------------------------------------------------------------
    for unit in UNITS {
        let s = wait_for(30, &format!("{unit} to settle"), || {
            let s = m.unit_state(unit);
            (s != "activating").then_some(s)
        });
        assert_eq!(s, "active", "{unit} is {s}: {}", m.journal(unit));
    }
    let scores: Vec<(String, f64)> = UNITS
        .iter()
        .map(|u| (u.to_string(), exposure(&m, u)))
        .collect();
    for (unit, score) in &scores {
        println!("systemd-analyze security {unit}: {score:.1}");
    }
    for (unit, score) in &scores {
        assert!(
            *score <= 2.5,
            "systemd-analyze security rates {unit} {score:.1} (> 2.5): {}",
            m.sh(&format!(
                "systemd-analyze security --no-pager {unit} | grep -v '^  ✓' | head -40"
            ))
        );
    }
    t.done("units active, exposure printed");

    // --- The controller machine: the loop runs, takes the lease, publishes its heartbeat -----
    assert_user_data_ran(&cm);
    let s = wait_for(30, &format!("{CONTROLLER_UNIT} to settle"), || {
        let s = cm.unit_state(CONTROLLER_UNIT);
        (s != "activating").then_some(s)
    });
    assert_eq!(
        s,
        "active",
        "{CONTROLLER_UNIT} is {s}: {}",
        cm.journal(CONTROLLER_UNIT)
    );
    let score = exposure(&cm, CONTROLLER_UNIT);
    println!("systemd-analyze security {CONTROLLER_UNIT}: {score:.1}");
    assert!(
        score <= 2.5,
        "systemd-analyze security rates {CONTROLLER_UNIT} {score:.1} (> 2.5): {}",
        cm.sh(&format!(
            "systemd-analyze security --no-pager {CONTROLLER_UNIT} | grep -v '^  ✓' | head -40"
        ))
    );
    let item = wait_for(60, "the controller to take the lease", || {
        rt.block_on(aws::lease_item(&moto, &lease.name, &lease.key, &group.name))
    });
    // lease.rs's holder name: the instance's hostname, the loop's PID, a random suffix.
    let hostname = cm.sh("hostname").trim().to_string();
    let pid = cm
        .sh(&format!("systemctl show -P MainPID {CONTROLLER_UNIT}"))
        .trim()
        .to_string();
    let holder = item.get("holder").cloned().unwrap_or_default();
    println!(
        "lease {} in {}: holder {holder}, token {}, expires {}",
        group.name,
        lease.name,
        item.get("token").map_or("-", String::as_str),
        item.get("expires").map_or("-", String::as_str)
    );
    assert!(
        holder.starts_with(&format!("{hostname}:{pid}:")),
        "the lease's holder {holder:?} is not the controller's loop ({hostname}, PID {pid}): {item:?}"
    );
    // The table was empty: the first take makes token 1 (every change of hands adds one).
    assert_eq!(
        item.get("token").map(String::as_str),
        Some("1"),
        "the first take of the lease: {item:?}"
    );
    let restarts = cm.sh(&format!("systemctl show -P NRestarts {CONTROLLER_UNIT}"));
    assert_eq!(restarts.trim(), "0", "{}", cm.journal(CONTROLLER_UNIT));
    let (hb, n) = wait_for(30, "a ControllerHeartbeat datapoint in moto", || {
        rt.block_on(aws::metric_max(
            &moto,
            NAMESPACE,
            HEARTBEAT_METRIC,
            &[("AutoScalingGroupName", group.name.as_str())],
        ))
    });
    println!(
        "moto has {n} {HEARTBEAT_METRIC} datapoints for {}, max {hb}",
        group.name
    );
    assert_eq!(hb, 1.0);
    // A whole turn: the loop read the fleet from moto (the node's group) and held.
    let turn = format!("{}: desired 1 → 1 [hold]", group.name);
    wait_for(30, "the controller's first turn in its journal", || {
        cm.journal(CONTROLLER_UNIT).contains(&turn).then_some(())
    });
    let holders = secret_holders(&cm, &secrets);
    assert!(
        holders.is_empty(),
        "the controller machine holds a secret it has no use for: {holders:?}"
    );
    t.done("controller: unit active, lease taken, heartbeat in moto, a turn held");

    // --- Stopping the controller releases the lease ------------------------------------------
    cm.sh(&format!("systemctl stop {CONTROLLER_UNIT}"));
    let state = cm.unit_state(CONTROLLER_UNIT);
    assert_eq!(
        state,
        "inactive",
        "{CONTROLLER_UNIT} after its stop: {}",
        cm.journal(CONTROLLER_UNIT)
    );
    let after = rt.block_on(aws::lease_item(&moto, &lease.name, &lease.key, &group.name));
    println!("lease after systemctl stop {CONTROLLER_UNIT}: {after:?}");
    assert_eq!(
        after,
        None,
        "systemctl stop did not release the lease (it would stand until it expires): {}",
        cm.journal(CONTROLLER_UNIT)
    );
    let journal = cm.journal(CONTROLLER_UNIT);
    assert!(
        journal.contains("SIGTERM"),
        "the loop did not log the SIGTERM it stopped on: {journal}"
    );
    // Its job is done: it powers off while the node's phases run.
    cm.begin_poweroff();
    t.done("controller: systemctl stop released the lease");

    // --- A first boot that fails ABANDONs its launch hook ---------------------------------------
    let abandoned = wait_for(180, "the failing node to abandon its launch hook", || {
        completed(&failing_stub, LAUNCH_HOOK).into_iter().next()
    });
    let journal = fm.journal("user-data.service");
    assert_eq!(
        abandoned.result.as_deref(),
        Some("ABANDON"),
        "a failed install completed its launch hook with {:?}: {journal}",
        abandoned.result
    );
    assert_eq!(failing_stub.waiting_hook(), None);
    let state = wait_for(30, "the failing node's user data to end", || {
        let s = fm.unit_state("user-data.service");
        (s != "activating").then_some(s)
    });
    assert_eq!(state, "failed", "the failing node's user data: {journal}");
    println!(
        "failing node: user data {state}, launch hook {LAUNCH_HOOK} completed with ABANDON ({})",
        journal
            .lines()
            .find(|l| l.contains("abandoning"))
            .unwrap_or_default()
    );
    fm.begin_poweroff();
    t.done("failing node: install failed, launch hook ABANDONed");

    // --- A team's own service: the agent alone in front of it, closing it on scale-in --------
    check_own_service_node(&om, &own_stub, own_port, own_health, &secrets);
    om.begin_poweroff();
    t.done("own-service node: agent only, launch hook completed, scale-in closed its clients");

    // --- The launch hook was completed by the user data ----------------------------------------
    let launch = completed(&stub, LAUNCH_HOOK).into_iter().next();
    assert!(
        launch.is_some_and(|c| c.result.as_deref() == Some("CONTINUE")),
        "the user data did not complete the launch hook {LAUNCH_HOOK} with CONTINUE; calls: {:?}",
        stub.lifecycle_calls()
    );

    // --- Chat from the host with the official socket.io-client ---------------------------------
    let url = format!("http://127.0.0.1:{chat_port}");
    let mut js = connscale_test_support::Driver::start();
    for id in ["alice", "bob"] {
        js.connect(id, &url, json!({"transports": ["websocket"]}));
        js.emit(id, "add user", json!([id]));
        js.emit_ack(id, "join-channel", json!(["room"]));
    }
    js.emit(
        "alice",
        "new message",
        json!([{"message": "hello", "channel": "room"}]),
    );
    js.expect(10, "bob receives alice's message", |e| {
        e["id"] == "bob" && e["name"] == "new message" && e["args"][0]["message"] == "hello"
    });
    t.done("socket.io-client chats through the machine");

    // --- Health with the exact count, and the metric in moto ------------------------------------
    let health_url = format!("http://127.0.0.1:{health_port}/health");
    let (code, body) = wait_for(15, "/health to count 2 connections", || {
        let (code, body) = http_get(&health_url);
        (body["connections"] == 2).then_some((code, body))
    });
    assert_eq!(code, 200, "/health with 2 of 100 connections: {body}");
    let (max, n) = wait_for(60, "a TCPconnections datapoint in moto", || {
        rt.block_on(aws::latest_datapoint(&moto, NAMESPACE, METRIC, &group))
            .filter(|(max, _)| *max >= 2.0)
    });
    println!("moto has {n} {METRIC} datapoints, max {max}");
    t.done("health 200 with the exact count; metric reached moto");

    // --- No secret readable by an unprivileged user ---------------------------------------------
    let holders = assert_secrets_private(&m, &secrets);
    println!("files holding a secret: {}", holders.join(" "));
    t.done("no secret readable by nobody");

    // --- Stopping chat-node drains its clients; they come back and recover ---------------------
    m.sh("systemctl stop chat-node.service");
    for id in ["alice", "bob"] {
        js.expect(60, &format!("{id} drained off"), |e| {
            e["ev"] == "disconnect" && e["id"] == id
        });
    }
    m.sh("systemctl start chat-node.service");
    for id in ["alice", "bob"] {
        let c = js.expect(60, &format!("{id} reconnects"), |e| {
            e["ev"] == "connect" && e["id"] == id
        });
        assert_eq!(
            c["recovered"], true,
            "{id}'s session was not recovered: {c}"
        );
    }
    js.emit(
        "bob",
        "new message",
        json!([{"message": "back", "channel": "room"}]),
    );
    js.expect(10, "alice receives bob's message after the restart", |e| {
        e["id"] == "alice" && e["name"] == "new message" && e["args"][0]["message"] == "back"
    });
    t.done("chat-node stop drained, clients recovered");

    // --- drain.method = "close" needs the shipped drop-in, and works with it -------------------
    // The packaged unit grants no capability: with method close the agent says it cannot close
    // connections. The drop-in from the package grants CAP_NET_ADMIN, and then it can.
    let metrics_url = format!("http://127.0.0.1:{health_port}/metrics");
    let close_available = || {
        wait_for(30, "the agent's close-drain gauge", || {
            let out = std::process::Command::new("curl")
                .args(["-s", "-m", "5", &metrics_url])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("connscale_drain_close_available "))
                .map(|v| v.trim().to_string())
        })
    };
    m.sh("cp /etc/connscale/agent.toml /root/agent.toml.http && \
         sed -i -e 's/^method = \"http\"/method = \"close\"/' -e 's/^grace = .*/grace = \"1s\"/' \
           -e '/^\\[drain\\]/a window = \"2s\"' /etc/connscale/agent.toml && \
         systemctl restart connscale-agent.service");
    assert_eq!(
        close_available(),
        "0",
        "close available without the drop-in"
    );
    assert!(
        m.journal("connscale-agent.service")
            .contains("lacks CAP_NET_ADMIN"),
        "the agent says why it cannot close connections"
    );
    m.sh(
        "install -D -m 644 /usr/share/connscale-agent/close-drain.conf \
           /etc/systemd/system/connscale-agent.service.d/close-drain.conf && \
         systemctl daemon-reload && systemctl restart connscale-agent.service",
    );
    assert_eq!(
        close_available(),
        "1",
        "the drop-in grants what close needs"
    );
    let with_dropin = exposure(&m, "connscale-agent.service");
    println!(
        "systemd-analyze security connscale-agent.service with close-drain.conf: {with_dropin}"
    );
    assert!(
        with_dropin <= 2.5,
        "the drop-in leaves the agent at {with_dropin}"
    );
    // Back to the deployed configuration (chat-node drains itself) for the scale-in below.
    m.sh("cp /root/agent.toml.http /etc/connscale/agent.toml && \
         systemctl restart connscale-agent.service");
    wait_for(30, "/health back at 200 with 2 connections", || {
        let (code, body) = http_get(&health_url);
        (code == 200 && body["connections"] == 2).then_some(())
    });
    t.done("close drain: unavailable without the drop-in, available with it");

    // --- Scale-in into the stopped warm pool, and a launch out of it ---------------------------
    // The default policy reuses instances on scale-in: the agent drains (target Warmed:Stopped)
    // and AWS stops the instance. A later scale-out starts it again, paused on the launch hook in
    // Pending:Wait; cloud-init does not run the user data again, so the agent completes the hook.
    stub.await_hook(Some(DRAIN_HOOK));
    stub.set_target_lifecycle_state("Warmed:Stopped");
    for id in ["alice", "bob"] {
        js.expect(90, &format!("{id} drained into the pool"), |e| {
            e["ev"] == "disconnect" && e["id"] == id
        });
    }
    let done = wait_for(
        90,
        "the agent to complete the drain hook (into the pool)",
        || completed(&stub, DRAIN_HOOK).pop(),
    );
    assert_eq!(done.result.as_deref(), Some("CONTINUE"));
    m.poweroff(Duration::from_secs(30));
    t.done("Warmed:Stopped: agent drained and completed the hook; machine stopped");
    stub.set_target_lifecycle_state("InService");
    stub.await_hook(Some(LAUNCH_HOOK));
    m.boot();
    let launch = wait_for(
        120,
        "the agent to complete the launch hook out of the pool",
        || {
            let done = completed(&stub, LAUNCH_HOOK);
            (done.len() == 2).then(|| done[1].clone())
        },
    );
    assert_eq!(
        launch.result.as_deref(),
        Some("CONTINUE"),
        "{}",
        m.journal("connscale-agent.service")
    );
    assert_eq!(stub.waiting_hook(), None);
    let runs = m.sh("grep -c 'connscale user data: done' /var/log/connscale-user-data.log || true");
    assert_eq!(
        runs.trim(),
        "1",
        "the user data ran again on the second boot"
    );
    for id in ["alice", "bob"] {
        let c = js.expect(90, &format!("{id} reconnects after the pool"), |e| {
            e["ev"] == "connect" && e["id"] == id
        });
        assert_eq!(
            c["recovered"], true,
            "{id}'s session was not recovered: {c}"
        );
    }
    wait_for(
        30,
        "/health at 200 with 2 connections after the pool",
        || {
            let (code, body) = http_get(&health_url);
            (code == 200 && body["connections"] == 2).then_some(())
        },
    );
    t.done("out of the pool: agent completed the launch hook (no user data), clients recovered");

    // --- Scale-in: the agent drains and completes the lifecycle action --------------------------
    stub.await_hook(Some(DRAIN_HOOK));
    stub.set_target_lifecycle_state("Terminated");
    for id in ["alice", "bob"] {
        js.expect(90, &format!("{id} drained on scale-in"), |e| {
            e["ev"] == "disconnect" && e["id"] == id
        });
    }
    let done = wait_for(90, "the agent to complete the drain hook", || {
        let done = completed(&stub, DRAIN_HOOK);
        (done.len() == 2).then(|| done[1].clone())
    });
    assert_eq!(done.result.as_deref(), Some("CONTINUE"));
    assert_eq!(done.instance_id, group.instance_id);
    assert_eq!(stub.waiting_hook(), None);
    t.done("Terminated: agent drained and completed the lifecycle action");

    drop(js);
    m.poweroff(Duration::from_secs(30));
    cm.poweroff(Duration::from_secs(30));
    fm.poweroff(Duration::from_secs(30));
    om.poweroff(Duration::from_secs(30));
    t.done("machines powered off");
}

/// `systemd-analyze security UNIT`'s overall exposure (0 to 10, lower is better).
fn exposure(m: &Machine, unit: &str) -> f64 {
    let out = m.sh(&format!("systemd-analyze security --no-pager {unit}"));
    out.lines()
        .find_map(|l| {
            l.split_once("Overall exposure level for ")
                .map(|(_, r)| r.to_string())
        })
        .and_then(|r| {
            r.split_once(':')
                .and_then(|(_, v)| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or_else(|| panic!("no exposure level for {unit} in: {out}"))
}

/// `GET url` as (status, JSON body); (0, null) when unreachable.
fn http_get(url: &str) -> (u16, Value) {
    let r = std::process::Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}", url])
        .output();
    let text = r
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// Turns on AUTH with `password` (ElastiCache's auth token) on the test's redis-server.
fn require_redis_auth(redis: &RedisServer, password: &str) {
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut c = client.get_connection().expect("connect to redis");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(password)
        .query(&mut c)
        .expect("CONFIG SET requirepass");
}
