//! Connection state recovery with the official socket.io-client (≥ 4.6 recovers by itself):
//! a client in a room, behind a load balancer, is drained off its node mid-stream, reconnects to
//! the other node and receives every message it missed, in order, with no duplicates.

mod common;
use common::{Driver, TOKEN, TwoNodes, http_get, http_post, node, two_nodes};
use connscale_test_support::RedisServer;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[test]
fn heavy_drain_with_recovery_loses_and_duplicates_nothing() {
    let redis = RedisServer::start();
    // The sender emits 100 messages/s: above the default per-client rate limit (20/s).
    let fast = [("CHAT_RATE_PER_SEC", "1000"), ("CHAT_RATE_BURST", "1000")];
    let TwoNodes {
        mut d,
        lb,
        b,
        mut a,
    } = two_nodes(&redis.url(), &fast);
    for id in ["p", "s"] {
        d.emit_ack(id, "join-channel", json!(["room"]));
    }

    let n = 300;
    for i in 0..n {
        if i == n / 3 {
            // The ALB stops routing to a (its health fails while draining), and a drains.
            lb.set(vec![b.port]);
            let (code, _) = http_post(&format!("{}/api/drain", a.url()), Some(TOKEN), "");
            assert_eq!(code, 202);
        }
        d.emit(
            "s",
            "new message",
            json!([{"message": i, "channel": "room"}]),
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    d.expect(30, "p receives the last message", |e| {
        e["id"] == "p" && e["name"] == "new message" && e["args"][0]["message"] == n - 1
    });
    let reconnect = d.expect(10, "p reconnected", |e| {
        e["ev"] == "connect" && e["id"] == "p"
    });
    assert_eq!(
        reconnect["recovered"], true,
        "the client must report a recovered session"
    );
    assert!(
        d.seen
            .iter()
            .any(|e| e["ev"] == "disconnect" && e["id"] == "p"),
        "p was drained off node a"
    );
    d.drain_events(500);
    let got: Vec<i64> = d
        .events_named("p", "new message")
        .iter()
        .chain(std::iter::once(&json!({"args": [{"message": n - 1}]})))
        .filter_map(|e| e["args"][0]["message"].as_i64())
        .collect();
    let want: Vec<i64> = (0..n).collect();
    let lost: Vec<i64> = want.iter().filter(|i| !got.contains(i)).copied().collect();
    let mut dup = got.clone();
    dup.sort_unstable();
    let dups = dup.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(
        (lost.len(), dups),
        (0, 0),
        "lost {lost:?}, {dups} duplicated; got {got:?}"
    );
    assert_eq!(got, want, "out of order");
    assert_eq!(
        a.process.wait_exit(std::time::Duration::from_secs(15)),
        Some(0)
    );
}

/// A Redis that stalls past the node's 1 s command timeout still runs the publish it was sent
/// once it wakes. The node has by then delivered the message to its own clients without an
/// offset (it cannot know the publish will happen), so the copy that comes back through the
/// subscription must not reach them a second time.
#[test]
fn a_publish_that_timed_out_but_ran_is_delivered_once() {
    let redis = RedisServer::start();
    let a = node("a", Some(&redis.url()), &[]);
    let mut d = Driver::start();
    for id in ["p", "s"] {
        d.connect(id, &a.url(), json!({"transports": ["websocket"]}));
        d.emit(id, "add user", json!([id]));
        d.emit_ack(id, "join-channel", json!(["room"]));
    }
    let say = |d: &mut Driver, i: i64| {
        d.emit(
            "s",
            "new message",
            json!([{"message": i, "channel": "room"}]),
        );
    };
    say(&mut d, 0);
    d.expect(10, "p receives message 0", |e| {
        e["id"] == "p" && e["name"] == "new message" && e["args"][0]["message"] == 0
    });
    // SIGSTOP: the publish is read off the socket and run only after SIGCONT.
    let pid = redis.pid() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    say(&mut d, 1);
    d.expect(10, "p receives message 1 while Redis is stopped", |e| {
        e["id"] == "p" && e["name"] == "new message" && e["args"][0]["message"] == 1
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // Past the broker's retry back-off, so the next broadcast goes through Redis again.
    std::thread::sleep(std::time::Duration::from_secs(3));
    say(&mut d, 2);
    d.expect(10, "p receives message 2", |e| {
        e["id"] == "p" && e["name"] == "new message" && e["args"][0]["message"] == 2
    });
    d.drain_events(1000);
    let got: Vec<i64> = d
        .events_named("p", "new message")
        .iter()
        .filter_map(|e| e["args"][0]["message"].as_i64())
        .collect();
    // `expect` consumed the first delivery of each.
    assert_eq!(got, Vec::<i64>::new(), "p received these a second time");
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw Socket.IO client: the websocket after Engine.IO's open packet.
async fn raw(port: u16) -> Ws {
    use futures::StreamExt;
    let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
    let _open = ws.next().await;
    ws
}

/// The next text frame starting with `prefix` within 5 s (pings answered), or None.
async fn next_text(ws: &mut Ws, prefix: &str) -> Option<String> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.starts_with(prefix) => return Some(t.to_string()),
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "2" => {
                ws.send(Message::text("3")).await.ok()?;
            }
            Ok(Some(Ok(_))) => {}
            _ => return None,
        }
    }
}

/// Offsets are whatever a client sends. A malformed one with a valid pid replays from where the
/// socket joined its room; a pid or offset of the wrong type, or a huge offset, gets a session
/// (fresh, as the pid was spent); the node never falls over.
#[test]
fn malformed_offsets_get_a_full_replay_or_a_fresh_session() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let redis = RedisServer::start();
    let a = node("a", Some(&redis.url()), &[]);
    let (port, url) = (a.port, a.url());
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async move {
        let mut ws = raw(port).await;
        ws.send(Message::text("40")).await.expect("send");
        let hello = next_text(&mut ws, "40").await.expect("CONNECT reply");
        let pid = serde_json::from_str::<serde_json::Value>(&hello[2..]).expect("json")["pid"]
            .as_str()
            .expect("a pid")
            .to_string();
        ws.send(Message::text(r#"420["join-channel","r"]"#))
            .await
            .expect("send");
        next_text(&mut ws, "430").await.expect("joined");
        for m in ["m1", "m2"] {
            let body = json!({"event": "system", "data": m, "room": "r"}).to_string();
            let (code, _) = tokio::task::block_in_place(|| {
                http_post(&format!("{url}/api/broadcast"), Some(TOKEN), &body)
            });
            assert_eq!(code, 200);
            next_text(&mut ws, "42[\"system\"")
                .await
                .expect("delivered");
        }
        drop(ws);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;

        let mut back = raw(port).await;
        let claim = json!({"pid": pid, "offset": "9.zz-}{\"'"});
        back.send(Message::text(format!("40{claim}")))
            .await
            .expect("send");
        let again = next_text(&mut back, "40").await.expect("CONNECT reply");
        assert!(again.contains(&pid), "recovered with its pid: {again}");
        for m in ["m1", "m2"] {
            let got = next_text(&mut back, "42[\"system\"").await;
            assert!(
                got.as_deref().is_some_and(|t| t.contains(m)),
                "{m} replayed: {got:?}"
            );
        }
        let huge = "1.".repeat(20_000);
        for claim in [
            json!({"pid": pid, "offset": 12}),
            json!({"pid": 7, "offset": {"a": 1}}),
            json!({"pid": "nobody", "offset": huge}),
            json!({"pid": pid, "offset": [null]}),
        ] {
            let mut c = raw(port).await;
            c.send(Message::text(format!("40{claim}")))
                .await
                .expect("send");
            let reply = next_text(&mut c, "4").await;
            assert!(reply.is_some(), "an answer to {claim:.80}");
        }
        let (code, _) = tokio::task::block_in_place(|| http_get(&format!("{url}/healthz")));
        assert_eq!(code, 200, "the node is still up");
    });
}

/// Waits until an event matching `pred` has been seen; its index in `d.seen` (kept there, so
/// what came before and after it can be told apart).
fn wait_seen(d: &mut Driver, secs: u64, what: &str, pred: impl Fn(&Value) -> bool) -> usize {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(i) = d.seen.iter().position(&pred) {
            return i;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        d.drain_events(100);
    }
}

/// The room's messages p received in `events`, in order.
fn messages(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .filter(|e| e["ev"] == "event" && e["id"] == "p" && e["name"] == "new message")
        .filter_map(|e| e["args"][0]["message"].as_i64())
        .collect()
}

/// What p saw when it was away for 60 of the room's 110 messages with a replay read of 20
/// (`CHAT_RECOVERY_MAX_LEN`), Redis's streams in nodes of at most `node_bytes` bytes (0: no
/// limit, 100 entries), the nodes configured with `more` env too: whether its (first)
/// reconnect was recovered, and the messages it received before and after. A session that
/// was not recovered joins its room again, as an app does.
fn away_for_more_than_one_read(
    node_bytes: u32,
    more: &[(&str, &str)],
) -> (bool, Vec<i64>, Vec<i64>) {
    let redis = RedisServer::start();
    let admin = redis::Client::open(redis.url()).expect("redis url");
    let mut admin = admin.get_connection().expect("redis connection");
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("stream-node-max-bytes")
        .arg(node_bytes)
        .query(&mut admin)
        .expect("CONFIG SET");
    let mut env = vec![
        ("CHAT_RATE_PER_SEC", "1000"),
        ("CHAT_RATE_BURST", "1000"),
        ("CHAT_RECOVERY_MAX_LEN", "20"),
    ];
    env.extend_from_slice(more);
    let TwoNodes {
        mut d,
        lb,
        b,
        mut a,
    } = two_nodes(&redis.url(), &env);
    for id in ["p", "s"] {
        d.emit_ack(id, "join-channel", json!(["room"]));
    }
    let n = 110;
    let mut recovered = None;
    for i in 0..n {
        if i == 20 {
            // Nowhere to reconnect to while node a drains p off.
            lb.set(vec![]);
            let (code, _) = http_post(&format!("{}/api/drain", a.url()), Some(TOKEN), "");
            assert_eq!(code, 202);
            d.expect(10, "p is drained off node a", |e| {
                e["ev"] == "disconnect" && e["id"] == "p"
            });
        }
        if i == 80 {
            lb.set(vec![b.port]);
            let at = wait_seen(&mut d, 10, "p reconnects", |e| {
                e["ev"] == "connect" && e["id"] == "p"
            });
            let r = d.seen[at]["recovered"] == true;
            if !r {
                d.emit("p", "add user", json!(["p"]));
                d.emit_ack("p", "join-channel", json!(["room"]));
            }
            recovered = Some((r, at));
        }
        d.emit(
            "s",
            "new message",
            json!([{"message": i, "channel": "room"}]),
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    wait_seen(&mut d, 30, "p receives the last message", |e| {
        e["id"] == "p" && e["name"] == "new message" && e["args"][0]["message"] == n - 1
    });
    d.drain_events(500);
    let (recovered, at) = recovered.expect("p reconnected");
    let (before, after) = (messages(&d.seen[..at]), messages(&d.seen[at..]));
    assert_eq!(a.process.wait_exit(Duration::from_secs(15)), Some(0));
    (recovered, before, after)
}

/// The room's stream still holds all 60 messages p missed (nodes of 100 entries, none
/// trimmed): its replay reads on past the first 20 and it is recovered with every message
/// once, in order. A replay cut at 20 left a hole of 40 before the live messages.
#[test]
fn heavy_a_client_that_missed_more_than_one_read_recovers_all_of_it() {
    let (recovered, before, after) = away_for_more_than_one_read(0, &[]);
    assert!(recovered, "the stream holds everything p missed");
    let got: Vec<i64> = before.into_iter().chain(after).collect();
    assert_eq!(
        got,
        (0..110).collect::<Vec<_>>(),
        "every message once, in order"
    );
}

/// The room's stream no longer holds what p missed (4 KB nodes: trimmed to about 20): p
/// gets a fresh session, as Socket.IO answers when it cannot restore one, and from its new
/// join on every message. A replay of what was left said `recovered` over a hole.
#[test]
fn heavy_a_client_whose_missed_messages_were_trimmed_gets_a_fresh_session() {
    let (recovered, before, after) = away_for_more_than_one_read(4096, &[]);
    assert!(
        !recovered,
        "p cannot get what it missed: not a recovered session"
    );
    assert_eq!(before, (0..20).collect::<Vec<_>>());
    assert_eq!(
        after,
        (80..110).collect::<Vec<_>>(),
        "every message since it joined again"
    );
}

/// p missed 60 messages, about 9 KB of frames, and the node queues at most 2 KB for a client
/// (`CHAT_MAX_QUEUED_BYTES`): its replay is queued beyond that bound, and it gets every
/// message once, in order. Counted in the bound, the replay cut p off halfway, and its next
/// recovery started where that replay ended: the half p never read was lost.
#[test]
fn heavy_a_client_that_missed_more_than_its_outbox_holds_recovers_all_of_it() {
    let small = [
        ("CHAT_MAX_MESSAGE_BYTES", "1024"),
        ("CHAT_MAX_QUEUED_BYTES", "2048"),
    ];
    let (recovered, before, after) = away_for_more_than_one_read(0, &small);
    assert!(recovered);
    let got: Vec<i64> = before.into_iter().chain(after).collect();
    assert_eq!(
        got,
        (0..110).collect::<Vec<_>>(),
        "every message once, in order"
    );
}
