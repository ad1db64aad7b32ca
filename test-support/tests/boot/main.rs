//! The deployment, booted under real systemd: a Debian 12 machine (systemd-nspawn, from the root
//! file system scripts/test caches) runs the user data rendered from terraform's real template,
//! which installs the release from an HTTPS URL on the host, as cloud-init would on EC2.
//!
//! Only the AWS network is a stand-in: moto (SSM, CloudWatch, Auto Scaling, EC2) and the IMDSv2
//! and lifecycle stub ([`InstanceStub`]), all on the host's loopback, which the machine shares.
//! A drop-in for every service in the machine points the SDK's endpoints at them; everything
//! else (packages, units, credentials, the official socket.io-client on the host) is the real path.
//!
//! Needs root (systemd-nspawn, nsenter). Prints the time of each phase.

mod aws;
mod machine;
mod release;
mod render;

use connscale_test_support::{
    InstanceIdentity, InstanceStub, LifecycleAction, MotoServer, RedisServer, free_port,
    workspace_root,
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
        "drain_timeout" => json!(60),
        "agent_drain_timeout" => json!(30),
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
        other => panic!(
            "fleet.tf passes the user-data template a variable `{other}` that the boot test has no value for: add it to template_value in test-support/tests/boot.rs"
        ),
    }
}

/// The drop-in that stands in for the AWS network: every service's SDK goes to the host's moto
/// and stubs (and the agent's own IMDS client to the stub).
fn aws_stand_in_dropin(moto: &MotoServer, stub: &InstanceStub) -> String {
    let m = moto.endpoint();
    let env = [
        ("AWS_ENDPOINT_URL_SSM", m.clone()),
        ("AWS_ENDPOINT_URL_CLOUDWATCH", m.clone()),
        ("AWS_ENDPOINT_URL_EC2", m.clone()),
        ("AWS_ENDPOINT_URL_DYNAMODB", m.clone()),
        ("AWS_ENDPOINT_URL_AUTO_SCALING", stub.autoscaling_endpoint()),
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
[Service]
Type=oneshot
RemainAfterExit=yes
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

/// The chat node's units, with `systemd-analyze security` at most 2.5 each. (connscale-controller.service
/// runs on the control loop's own one-instance group, controller.tf: not booted here yet.)
const UNITS: [&str; 2] = ["chat-node.service", "connscale-agent.service"];

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
    t.done("moto, redis-server and the IMDS / lifecycle stub up");

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
    let fleet = std::fs::read_to_string(root.join("terraform/fleet.tf")).expect("fleet.tf");
    let vars: Map<String, Value> = render::template_keys(&fleet)
        .into_iter()
        .map(|k| {
            let v = template_value(&k, &d);
            (k, v)
        })
        .collect();
    let template = root.join("terraform/templates/user_data.sh.tftpl");
    let (user_data, renderer) = render::render(&template, &vars);
    if renderer.starts_with("terraform") {
        // The fallback renderer must agree with terraform wherever it renders at all.
        let text = std::fs::read_to_string(&template).expect("template");
        match render::subset_render(&text, &vars) {
            Ok(s) => assert_eq!(s, user_data, "the subset renderer disagrees with terraform"),
            Err(e) => println!("the subset renderer refuses this template: {e}"),
        }
    }
    t.done(&format!("user data rendered by {renderer}"));
    for (name, s) in [
        ("API token", &secrets.api_token),
        ("Redis AUTH token", &secrets.redis_auth_token),
    ] {
        assert!(
            !user_data.contains(s.as_str()),
            "the {name} is in the rendered user data (anyone with ec2:DescribeInstanceAttribute reads it)"
        );
    }

    // --- The machine -----------------------------------------------------------------------
    let mut m = Machine::copy_of(&rootfs);
    m.write(
        "/var/lib/cloud/instance/scripts/part-001",
        &user_data,
        0o700,
    );
    m.write(
        "/etc/systemd/system/user-data.service",
        USER_DATA_UNIT,
        0o644,
    );
    m.enable("user-data.service");
    m.write(
        "/etc/systemd/system/service.d/90-aws-stand-in.conf",
        &aws_stand_in_dropin(&moto, &stub),
        0o644,
    );
    m.write("/usr/local/sbin/sysctl", SYSCTL_STAND_IN, 0o755);
    tls.trust_in(&m);
    t.done("machine prepared");
    m.boot();
    t.done("machine booted");
    let booted = m.wait_booted(240);
    println!("machine boot finished: {booted}");
    let state = m.unit_state("user-data.service");
    assert_eq!(
        state,
        "active",
        "the user data failed: {}\ncredentials: {}",
        m.journal("user-data.service"),
        m.journal("connscale-credentials.service")
    );
    t.done("user data ran");

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

    // --- The launch hook was completed by the user data ----------------------------------------
    let launch = stub
        .lifecycle_calls()
        .into_iter()
        .find(|c| c.action == LifecycleAction::Complete && c.hook == LAUNCH_HOOK && c.accepted);
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
    let holders = m.sh(&format!(
        "grep -rlsF -e '{}' -e '{}' /etc /run /var /tmp /root /home /opt /usr/local /srv || true",
        secrets.api_token, secrets.redis_auth_token
    ));
    println!(
        "files holding a secret: {}",
        holders.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    for f in holders.split_whitespace() {
        let out = m.exec(&["runuser", "-u", "nobody", "--", "cat", f]);
        assert!(!out.status.success(), "nobody can read the secret in {f}");
    }
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

    // The controller's own machine (controller.tf's one-instance group) is not booted here yet:
    // its unit, score and lease release are covered by docgen's unit test and
    // controller/tests/aws.rs (SIGTERM releases the lease), not under systemd.

    // --- Scale-in: the agent drains and completes the lifecycle action --------------------------
    stub.await_hook(Some(DRAIN_HOOK));
    stub.set_target_lifecycle_state("Terminated");
    for id in ["alice", "bob"] {
        js.expect(90, &format!("{id} drained on scale-in"), |e| {
            e["ev"] == "disconnect" && e["id"] == id
        });
    }
    let done = wait_for(90, "the agent to complete the drain hook", || {
        stub.lifecycle_calls()
            .into_iter()
            .find(|c| c.action == LifecycleAction::Complete && c.hook == DRAIN_HOOK && c.accepted)
    });
    assert_eq!(done.result.as_deref(), Some("CONTINUE"));
    assert_eq!(done.instance_id, group.instance_id);
    assert_eq!(stub.waiting_hook(), None);
    t.done("Terminated: agent drained and completed the lifecycle action");

    drop(js);
    m.poweroff(Duration::from_secs(30));
    t.done("machine powered off");
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
