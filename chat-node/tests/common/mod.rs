//! Test harness: chat-node processes and a remote-controlled socket.io-client (driver.js).
#![allow(dead_code)]

// Not every test binary that includes this module drives a client.
#[allow(unused_imports)]
pub use connscale_test_support::Driver;
use connscale_test_support::{ServerProcess, free_port, wait_for_port, workspace_bin};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Node {
    pub process: ServerProcess,
    pub port: u16,
    pub id: String,
}

pub const TOKEN: &str = "test-token";

/// Starts a chat-node on a free port (wildcard bind), optionally with Redis.
pub fn node(id: &str, redis: Option<&str>, extra: &[(&str, &str)]) -> Node {
    let bin = workspace_bin("chat-node").unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args(["--port", &port.to_string(), "--node-id", id])
        .env("CHAT_API_TOKEN", TOKEN)
        .env("CHAT_DRAIN_WINDOW", "2s");
    if let Some(r) = redis {
        cmd.args(["--redis-url", r]);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let process = ServerProcess::spawn(&format!("chat-{id}"), cmd).expect("spawn chat-node");
    assert!(
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(15)
        ),
        "chat-node {id} did not listen"
    );
    Node {
        process,
        port,
        id: id.into(),
    }
}

impl Node {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

pub fn http_get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

pub fn http_post(url: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data",
        body,
        url,
    ]);
    if let Some(t) = token {
        c.args(["-H", &format!("authorization: Bearer {t}")]);
    }
    let out = c.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The set-up of the drain-and-recover tests: nodes `a` and `b` on `redis` (with `env`), a
/// balancer in front of `a` only (a drained `a`'s clients reconnect through it wherever the
/// test points it), and a driver whose client `p` connects through the balancer and `s` to
/// `b`, both logged in (`add user`) and in no room yet.
pub struct TwoNodes {
    pub d: Driver,
    pub lb: Proxy,
    pub b: Node,
    pub a: Node,
}

pub fn two_nodes(redis: &str, env: &[(&str, &str)]) -> TwoNodes {
    let (a, b) = (node("a", Some(redis), env), node("b", Some(redis), env));
    let lb = Proxy::start(vec![a.port]);
    let mut d = Driver::start();
    let websocket = serde_json::json!({"transports": ["websocket"]});
    d.connect("p", &lb.url(), websocket.clone());
    d.connect("s", &b.url(), websocket);
    for id in ["p", "s"] {
        d.emit(id, "add user", serde_json::json!([id]));
    }
    TwoNodes { d, lb, b, a }
}

/// Polls `f` every 100 ms until it returns Some, or panics after `secs` with `what`.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP load balancer stand-in: new connections go to the first backend in its list that
/// accepts (the list can change, as an ALB's healthy targets do). Stops with the test.
pub struct Proxy {
    pub port: u16,
    pub backends: std::sync::Arc<std::sync::Mutex<Vec<u16>>>,
    _rt: tokio::runtime::Runtime,
}

impl Proxy {
    pub fn start(backends: Vec<u16>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("rt");
        let list = std::sync::Arc::new(std::sync::Mutex::new(backends));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let l2 = list.clone();
        rt.spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let targets = l2.lock().map(|l| l.clone()).unwrap_or_default();
                tokio::spawn(async move {
                    for t in targets {
                        if let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", t)).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                            return;
                        }
                    }
                });
            }
        });
        Self {
            port,
            backends: list,
            _rt: rt,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, backends: Vec<u16>) {
        if let Ok(mut l) = self.backends.lock() {
            *l = backends;
        }
    }
}
