//! The official socket.io-client (npm, lockfile committed) against two chat-nodes sharing one
//! real redis-server: cross-node chat, rooms, numUsers, acks, binary, the polling → websocket
//! upgrade, the online count after a SIGKILL, delivery resuming after a Redis restart, a
//! TLS-only Redis (rediss://), a three-master Redis Cluster with sharded pub/sub, a drain with
//! clients moving to the other node, and bad clients (oversized, flooding, malformed, or no
//! longer reading) cut off without hurting others.

mod common;
use common::{Driver, Node, TOKEN, eventually, http_get, http_post, node};
use connscale_test_support::{RedisCluster, RedisServer, find_tool};
use serde_json::{Value, json};

#[test]
fn heavy_cross_node_chat_rooms_acks_binary_and_upgrade() {
    let redis = RedisServer::start();
    let (a, b) = (
        node("a", Some(&redis.url()), &[]),
        node("b", Some(&redis.url()), &[]),
    );
    let mut d = Driver::start();
    // ann on node a over websocket; bob on node b starting with polling, then upgrading.
    d.connect("ann", &a.url(), json!({"transports": ["websocket"]}));
    d.connect("bob", &b.url(), json!({}));
    let opened = d.expect(10, "bob's session opens", |e| {
        e["ev"] == "open" && e["id"] == "bob"
    });
    assert_eq!(
        opened["transport"], "polling",
        "the default client starts with long-polling"
    );
    d.expect(10, "bob upgrades to websocket", |e| {
        e["ev"] == "upgrade" && e["id"] == "bob" && e["transport"] == "websocket"
    });

    let ack = d.emit_ack("bob", "add user", json!(["bob"]));
    assert_eq!(ack, json!([{"numUsers": 1}]));
    d.emit("ann", "add user", json!(["ann"]));
    let login = d.expect(10, "ann login", |e| {
        e["id"] == "ann" && e["name"] == "login"
    });
    assert_eq!(login["args"][0]["numUsers"], 2, "numUsers is cluster-wide");
    let joined = d.expect(10, "bob sees ann join", |e| {
        e["id"] == "bob" && e["name"] == "user joined"
    });
    assert_eq!(joined["args"][0]["username"], "ann");

    // Cross-node message with an ack; the sender does not get its own message.
    let ack = d.emit_ack("ann", "new message", json!(["hello from a"]));
    assert_eq!(ack, json!(["ok"]));
    let m = d.expect(10, "bob gets ann's message", |e| {
        e["id"] == "bob" && e["name"] == "new message"
    });
    assert_eq!(
        m["args"][0],
        json!({"username": "ann", "message": "hello from a"})
    );

    // Binary payloads cross nodes intact.
    d.emit("bob", "new message", json!([{"$bin": "AAECAwQ="}]));
    let m = d.expect(10, "ann gets binary", |e| {
        e["id"] == "ann" && e["name"] == "new message"
    });
    assert_eq!(m["args"][0]["message"], json!({"$bin": "AAECAwQ="}));

    // Rooms: carl (node b) joins "ops"; a channel message from ann reaches carl, not bob.
    d.connect("carl", &b.url(), json!({"transports": ["websocket"]}));
    d.emit("carl", "add user", json!(["carl"]));
    d.expect(10, "carl login", |e| {
        e["id"] == "carl" && e["name"] == "login"
    });
    d.emit_ack("carl", "join-channel", json!(["ops"]));
    d.emit_ack("ann", "join-channel", json!(["ops"]));
    let notice = d.expect(10, "carl sees ann join ops", |e| {
        e["id"] == "carl" && e["name"] == "channel notice"
    });
    assert_eq!(notice["args"][0]["action"], "joined");
    d.emit_ack(
        "ann",
        "new message",
        json!([{"message": "ops only", "channel": "ops"}]),
    );
    let m = d.expect(10, "carl gets the channel message", |e| {
        e["id"] == "carl" && e["name"] == "new message"
    });
    assert_eq!(m["args"][0]["channel"], "ops");
    d.drain_events(500);
    assert!(
        d.events_named("bob", "new message")
            .iter()
            .all(|e| e["args"][0]["message"] != "ops only"),
        "bob is not in ops"
    );

    // System messages from a back end: token required; delivered on every node.
    let (code, _) = http_post(
        &format!("{}/api/broadcast", a.url()),
        Some("wrong"),
        r#"{"event":"system","data":"x"}"#,
    );
    assert_eq!(code, 401);
    let (code, body) = http_post(
        &format!("{}/api/broadcast", a.url()),
        Some(TOKEN),
        r#"{"event":"system","data":{"text":"maintenance"}}"#,
    );
    assert_eq!(code, 200, "{body}");
    for who in ["ann", "bob", "carl"] {
        let e = d.expect(10, &format!("{who} gets the system message"), |e| {
            e["id"] == who && e["name"] == "system"
        });
        assert_eq!(e["args"][0]["text"], "maintenance");
    }

    // Leaving: `user left` with the new cluster-wide count.
    d.send(json!({"op": "close", "id": "carl"}));
    let left = d.expect(10, "ann sees carl leave", |e| {
        e["id"] == "ann" && e["name"] == "user left"
    });
    assert_eq!(left["args"][0], json!({"username": "carl", "numUsers": 2}));
}

fn online(url: &str) -> Value {
    serde_json::from_str(&http_get(&format!("{url}/api/online")).1).unwrap_or_default()
}

#[test]
fn heavy_online_count_converges_after_sigkill() {
    let redis = RedisServer::start();
    let (a, b) = (
        node("a", Some(&redis.url()), &[]),
        node("b", Some(&redis.url()), &[]),
    );
    let mut d = Driver::start();
    for i in 0..3 {
        d.connect(
            &format!("a{i}"),
            &a.url(),
            json!({"transports": ["websocket"], "reconnection": false}),
        );
    }
    for i in 0..2 {
        d.connect(
            &format!("b{i}"),
            &b.url(),
            json!({"transports": ["websocket"], "reconnection": false}),
        );
    }
    eventually(15, "online = 5 with both nodes", || {
        (online(&a.url())["online"] == 5).then_some(())
    });
    b.process.signal(libc::SIGKILL);
    // The killed node's presence key expires (TTL 10 s); the count must follow within 15 s.
    let start = std::time::Instant::now();
    let v = eventually(30, "online drops to node a's 3", || {
        let v = online(&a.url());
        (v["online"] == 3).then_some(v)
    });
    assert!(v["nodes"].get("b").is_none(), "{v}");
    assert!(
        start.elapsed().as_secs() <= 15,
        "converged only after {:?}",
        start.elapsed()
    );
}

#[test]
fn heavy_delivery_resumes_after_redis_restart() {
    let mut redis = RedisServer::start();
    let (a, b) = (
        node("a", Some(&redis.url()), &[]),
        node("b", Some(&redis.url()), &[]),
    );
    let mut d = Driver::start();
    d.connect("x", &a.url(), json!({"transports": ["websocket"]}));
    d.connect("y", &b.url(), json!({"transports": ["websocket"]}));
    d.emit("x", "add user", json!(["x"]));
    d.emit("y", "add user", json!(["y"]));
    d.expect(10, "y login", |e| e["id"] == "y" && e["name"] == "login");
    d.emit("x", "new message", json!(["before"]));
    d.expect(10, "y gets 'before'", |e| {
        e["id"] == "y" && e["name"] == "new message"
    });

    redis.kill();
    // Local clients keep being served while Redis is down.
    d.connect("z", &a.url(), json!({"transports": ["websocket"]}));
    d.emit("z", "add user", json!(["z"]));
    d.emit("x", "new message", json!(["local during outage"]));
    d.expect(10, "z (same node) gets it during the outage", |e| {
        e["id"] == "z"
            && e["name"] == "new message"
            && e["args"][0]["message"] == "local during outage"
    });
    // A node started while Redis is down serves a burst of new clients at once: they must not
    // queue one by one behind its attempts to reach Redis (1 s each).
    let c = node("c", Some(&redis.url()), &[]);
    let burst: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
    for id in &burst {
        d.send(json!({"op": "connect", "id": id, "url": c.url(), "opts": {"transports": ["websocket"]}}));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(6);
    for id in &burst {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        d.expect(
            left.as_secs().max(1),
            &format!("{id} connects to c while Redis is down"),
            |e| e["ev"] == "connect" && e["id"] == id.as_str(),
        );
    }
    redis.restart();
    // Cross-node delivery resumes without restarting anything, on the node that never saw
    // Redis too.
    let got = eventually(20, "cross-node delivery after restart", || {
        d.emit("x", "new message", json!(["after"]));
        d.drain_events(300);
        let on = |id: &str| {
            d.events_named(id, "new message")
                .into_iter()
                .find(|e| e["args"][0]["message"] == "after")
        };
        on("y").zip(on("c0"))
    });
    assert_eq!(got.0["args"][0]["username"], "x");
    assert_eq!(got.1["args"][0]["username"], "x");
}

#[test]
fn heavy_drain_moves_clients_to_the_other_node() {
    let redis = RedisServer::start();
    let (mut a, b) = (
        node("a", Some(&redis.url()), &[]),
        node("b", Some(&redis.url()), &[]),
    );
    let mut d = Driver::start();
    // Two clients that know both nodes, as behind a load balancer; they start on a.
    for id in ["p", "q"] {
        d.connect(id, &a.url(), json!({"transports": ["websocket"]}));
    }
    let (code, _) = http_post(&format!("{}/api/drain", a.url()), Some(TOKEN), "");
    assert_eq!(code, 202);
    assert_eq!(http_get(&format!("{}/readyz", a.url())).0, 503);
    for id in ["p", "q"] {
        let e = d.expect(10, &format!("{id} is disconnected by the drain"), |e| {
            e["ev"] == "disconnect" && e["id"] == id
        });
        assert_eq!(
            e["reason"], "transport close",
            "a drain must let clients reconnect (not 'io server disconnect')"
        );
    }
    assert_eq!(
        a.process.wait_exit(std::time::Duration::from_secs(15)),
        Some(0),
        "node a exits after draining"
    );
    // Reconnecting "through the load balancer" lands them on b.
    for id in ["p2", "q2"] {
        d.connect(id, &b.url(), json!({"transports": ["websocket"]}));
    }
    eventually(10, "node b holds the drained clients", || {
        (online(&b.url())["nodes"]["b"] == 2).then_some(())
    });
}

#[test]
fn heavy_bad_clients_are_cut_off_and_others_unaffected() {
    let n = node("solo", None, &[]);
    let mut d = Driver::start();
    d.connect("good", &n.url(), json!({"transports": ["websocket"]}));
    d.emit("good", "add user", json!(["good"]));
    d.expect(10, "good login", |e| {
        e["id"] == "good" && e["name"] == "login"
    });
    // Oversized: one 100 KiB message (limit 64 KiB).
    d.connect(
        "big",
        &n.url(),
        json!({"transports": ["websocket"], "reconnection": false}),
    );
    d.emit("big", "new message", json!(["x".repeat(100 * 1024)]));
    d.expect(10, "oversized client cut off", |e| {
        e["ev"] == "disconnect" && e["id"] == "big"
    });
    // Flooding: far beyond the rate limit.
    d.connect(
        "flood",
        &n.url(),
        json!({"transports": ["websocket"], "reconnection": false}),
    );
    for i in 0..200 {
        d.emit("flood", "typing", json!([i]));
    }
    d.expect(10, "flooding client cut off", |e| {
        e["ev"] == "disconnect" && e["id"] == "flood"
    });
    // Malformed frames on a raw websocket.
    let port = n.port;
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async move {
        use futures::{SinkExt, StreamExt};
        let mut ws = raw_client(port, None).await;
        ws.send(tokio_tungstenite::tungstenite::Message::text("42{not json"))
            .await
            .expect("send");
        let mut closed = false;
        for _ in 0..10 {
            match tokio::time::timeout(std::time::Duration::from_secs(2), ws.next()).await {
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))))
                | Ok(None)
                | Ok(Some(Err(_))) => {
                    closed = true;
                    break;
                }
                _ => {}
            }
        }
        assert!(closed, "malformed client was not disconnected");
    });
    // The good client still works.
    let ack = d.emit_ack("good", "new message", json!(["still here"]));
    assert_eq!(ack, json!(["ok"]));
    let (_, metrics) = http_get(&format!("{}/metrics", n.url()));
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{name} "))
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    };
    assert!(value("chat_malformed_total") >= 2.0, "{metrics}");
    assert!(value("chat_rate_limited_total") >= 1.0, "{metrics}");
}

/// A raw Socket.IO client on the default namespace (open and CONNECT read), optionally with a
/// tiny receive buffer so the server's writes back up as soon as it stops reading.
async fn raw_client(
    port: u16,
    rcvbuf: Option<u32>,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    use futures::{SinkExt, StreamExt};
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(b) = rcvbuf {
        sock.set_recv_buffer_size(b).expect("SO_RCVBUF");
    }
    let tcp = sock
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.expect("ws");
    let _open = ws.next().await;
    ws.send(tokio_tungstenite::tungstenite::Message::text("40"))
        .await
        .expect("send");
    let _connect = ws.next().await;
    ws
}

#[test]
fn heavy_a_client_that_stops_reading_is_cut_off_and_others_unaffected() {
    // 256 KiB may wait for one client; 150 system messages of 32 KiB are 4.8 MB.
    let n = node("solo", None, &[("CHAT_MAX_QUEUED_BYTES", "262144")]);
    let (port, url) = (n.port, n.url());
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async move {
        use futures::StreamExt;
        let _stuck = raw_client(port, Some(2048)).await;
        let mut reader = raw_client(port, None).await;
        let count = tokio::spawn(async move {
            let mut got = 0;
            while got < 150 {
                match tokio::time::timeout(std::time::Duration::from_secs(20), reader.next()).await
                {
                    Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))))
                        if t.starts_with("42[\"bulk\"") =>
                    {
                        got += 1
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            (got, reader)
        });
        let before = tokio::task::block_in_place(|| online(&url));
        assert_eq!(before["nodes"]["solo"], 2, "{before}");
        let body = json!({"event": "bulk", "data": "x".repeat(32 * 1024)}).to_string();
        for _ in 0..150 {
            let (code, text) = tokio::task::block_in_place(|| {
                http_post(&format!("{url}/api/broadcast"), Some(TOKEN), &body)
            });
            assert_eq!(code, 200, "{text}");
        }
        let (got, _reader) = count.await.expect("reader");
        assert_eq!(got, 150, "the reading client got every message");
        // The stuck client is let go, its socket included (it never reads our Close either).
        tokio::task::block_in_place(|| {
            eventually(15, "the stuck client's connection is closed", || {
                (online(&url)["nodes"]["solo"] == 1).then_some(())
            })
        });
    });
}

#[test]
fn heavy_cross_node_chat_over_a_tls_only_redis() {
    // No plain port: everything between the nodes and Redis is TLS (rediss://).
    let redis = RedisServer::start_tls();
    let url = redis.url();
    assert!(url.starts_with("rediss://"), "{url}");
    two_nodes_chatting(&url, "over TLS");
}

/// Two nodes on the Redis at `url`, client x on one and y on the other: both log in, y's
/// numUsers counts x, and a message from x reaches y (`via` names the Redis in messages).
fn two_nodes_chatting(url: &str, via: &str) -> (Node, Node, Driver) {
    let (a, b) = (node("a", Some(url), &[]), node("b", Some(url), &[]));
    let mut d = Driver::start();
    d.connect("x", &a.url(), json!({"transports": ["websocket"]}));
    d.connect("y", &b.url(), json!({"transports": ["websocket"]}));
    d.emit("x", "add user", json!(["x"]));
    // x's login is sent once x's node has written its presence: y's count then includes it.
    d.expect(10, "x login", |e| e["id"] == "x" && e["name"] == "login");
    d.emit("y", "add user", json!(["y"]));
    let login = d.expect(10, "y login", |e| e["id"] == "y" && e["name"] == "login");
    assert_eq!(login["args"][0]["numUsers"], 2, "cluster-wide count {via}");
    d.emit("x", "new message", json!([via]));
    let got = d.expect(10, &format!("y gets x's message {via}"), |e| {
        e["id"] == "y" && e["name"] == "new message"
    });
    assert_eq!(got["args"][0]["message"], via);
    (a, b, d)
}

#[test]
fn heavy_cross_node_chat_over_a_redis_cluster_with_sharded_pubsub() {
    let cluster = RedisCluster::start(3);
    let (a, _b, mut d) = two_nodes_chatting(&cluster.url(), "through the cluster");

    d.emit_ack("y", "join-channel", json!(["ops"]));
    d.emit_ack("x", "join-channel", json!(["ops"]));
    d.emit_ack(
        "y",
        "new message",
        json!([{"message": "room hop", "channel": "ops"}]),
    );
    let m = d.expect(10, "x gets y's room message across nodes", |e| {
        e["id"] == "x" && e["name"] == "new message" && e["args"][0]["channel"] == "ops"
    });
    assert_eq!(m["args"][0]["message"], "room hop");

    // The subscription is sharded: the channel is listed by PUBSUB SHARDCHANNELS on the master
    // that owns its slot (a plain SUBSCRIBE would not appear there), with both nodes on it.
    let cli = find_tool("redis-cli", &[], "apt-get install -y redis-tools").expect("redis-cli");
    let sharded: Vec<String> = cluster
        .ports()
        .iter()
        .map(|p| {
            let out = std::process::Command::new(&cli)
                .args([
                    "-p",
                    &p.to_string(),
                    "pubsub",
                    "shardnumsub",
                    "{connscale}:chat",
                ])
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();
    assert!(
        sharded.iter().any(|o| o.lines().nth(1) == Some("2")),
        "both nodes hold a sharded subscription on the slot's master: {sharded:?}"
    );
    eventually(15, "online count over the cluster", || {
        (online(&a.url())["online"] == 2).then_some(())
    });
}

#[test]
fn heavy_pings_keep_idle_clients_connected_and_their_answers_are_awaited() {
    // socket.io-client gives up on a server that has not pinged within pingInterval +
    // pingTimeout (2 s here): staying connected for 6 s shows the node's ping task reaches it.
    let n = node(
        "p",
        None,
        &[("CHAT_PING_INTERVAL", "1s"), ("CHAT_PING_TIMEOUT", "1s")],
    );
    let mut d = Driver::start();
    d.connect("idle", &n.url(), json!({"transports": ["websocket"]}));
    d.drain_events(6000);
    let gone: Vec<&Value> = d.seen.iter().filter(|e| e["ev"] == "disconnect").collect();
    assert!(gone.is_empty(), "disconnected while idle: {gone:?}");
    d.emit("idle", "add user", json!(["still here"]));
    let login = d.expect(10, "login after 6 s idle", |e| {
        e["id"] == "idle" && e["name"] == "login"
    });
    assert_eq!(login["args"][0]["numUsers"], 1);
}
