//! Fan-out sharded by room on a real Redis Cluster, with the official socket.io-client: rooms
//! spread over the shards (each shard's own PUBSUB SHARDNUMSUB and stream keys say so), a
//! node subscribes to a room only while one of its clients is in it, a client in rooms on
//! different shards drained to another node recovers what it missed in every room, and after
//! a master is killed, delivery resumes once its replica is promoted and a reconnecting client
//! recovers what it missed.

mod common;
use common::{Driver, TOKEN, TwoNodes, eventually, http_post, node, two_nodes};
use connscale_test_support::RedisCluster;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A room's channel, as chat-node names it (the `{room:NAME}` hash tag).
fn room_channel(room: &str) -> String {
    format!("{{room:{room}}}:chat")
}

/// Subscribers of a room's channel as the master serving it counts them (a sharded channel
/// lives on its slot's shard only).
fn shard_subscribers(cluster: &RedisCluster, room: &str) -> u64 {
    let ch = room_channel(room);
    let Some(port) = cluster.master_of(&ch) else {
        return 0;
    };
    let out = cluster.cli(port, &["pubsub", "shardnumsub", &ch]);
    out.lines()
        .nth(1)
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Per master port: the room stream keys it holds (`SCAN` on that master alone).
fn stream_keys_per_master(cluster: &RedisCluster) -> BTreeMap<u16, usize> {
    cluster
        .masters()
        .iter()
        .map(|m| {
            let keys = cluster.cli(m.port, &["--scan", "--pattern", "{room:*}:stream"]);
            (m.port, keys.lines().filter(|l| !l.is_empty()).count())
        })
        .collect()
}

/// Rooms `room-0`, `room-1`, ... until `per` of them are on each of `n` different masters.
fn rooms_on_distinct_masters(cluster: &RedisCluster, n: usize, per: usize) -> Vec<String> {
    let mut by_master: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for i in 0..1000 {
        let r = format!("room-{i}");
        if let Some(p) = cluster.master_of(&room_channel(&r)) {
            by_master.entry(p).or_default().push(r);
        }
        let full = by_master.values().filter(|v| v.len() >= per).count();
        if full >= n {
            break;
        }
    }
    by_master
        .into_values()
        .filter(|v| v.len() >= per)
        .take(n)
        .flat_map(|v| v.into_iter().take(per))
        .collect()
}

fn message_in(d: &Driver, id: &str, room: &str) -> Vec<i64> {
    d.events_named(id, "new message")
        .iter()
        .filter(|e| e["args"][0]["channel"] == room)
        .filter_map(|e| e["args"][0]["message"].as_i64())
        .collect()
}

#[test]
fn heavy_thirty_rooms_spread_over_the_shards_and_subscriptions_follow_members() {
    let cluster = RedisCluster::start(3);
    let fast = [("CHAT_RATE_PER_SEC", "1000"), ("CHAT_RATE_BURST", "1000")];
    let (a, b) = (
        node("a", Some(&cluster.url()), &fast),
        node("b", Some(&cluster.url()), &fast),
    );
    let mut d = Driver::start();
    d.connect("x", &a.url(), json!({"transports": ["websocket"]}));
    d.connect("y", &b.url(), json!({"transports": ["websocket"]}));
    d.emit("x", "add user", json!(["x"]));
    d.emit("y", "add user", json!(["y"]));
    let rooms: Vec<String> = (0..30).map(|i| format!("topic-{i}")).collect();
    for r in &rooms {
        d.emit_ack("y", "join-channel", json!([r]));
        d.emit_ack("x", "join-channel", json!([r]));
    }
    for r in &rooms {
        d.emit_ack("x", "new message", json!([{"message": 1, "channel": r}]));
    }
    for r in &rooms {
        d.expect(10, &format!("y gets x's message in {r}"), |e| {
            e["id"] == "y" && e["name"] == "new message" && e["args"][0]["channel"] == r.as_str()
        });
    }
    // Both nodes hold each room's sharded subscription, on the master serving its slot.
    let mut rooms_per_master: BTreeMap<u16, usize> = BTreeMap::new();
    for r in &rooms {
        assert_eq!(shard_subscribers(&cluster, r), 2, "both nodes on {r}");
        let port = cluster.master_of(&room_channel(r)).expect("a master");
        *rooms_per_master.entry(port).or_default() += 1;
    }
    let streams = stream_keys_per_master(&cluster);
    let carrying = streams.values().filter(|n| **n > 0).count();
    eprintln!("rooms per master (by channel): {rooms_per_master:?}; stream keys: {streams:?}");
    assert!(
        rooms_per_master.len() >= 2 && carrying >= 2,
        "rooms spread over at least 2 shards: {rooms_per_master:?}, streams {streams:?}"
    );
    assert_eq!(streams.values().sum::<usize>(), 30, "one stream per room");

    // y leaves a room: node b, with no client left in it, unsubscribes; a stays.
    let left = &rooms[0];
    d.emit_ack("y", "leave-channel", json!([left]));
    eventually(10, "node b unsubscribes from the room y left", || {
        (shard_subscribers(&cluster, left) == 1).then_some(())
    });
    d.emit_ack("y", "join-channel", json!([left]));
    assert_eq!(shard_subscribers(&cluster, left), 2, "and subscribes again");
    d.emit_ack("x", "new message", json!([{"message": 2, "channel": left}]));
    d.expect(10, "y gets the room's message after joining again", |e| {
        e["id"] == "y" && e["name"] == "new message" && e["args"][0]["message"] == 2
    });
}

/// A client in rooms on two different shards is drained off its node mid-stream and recovers
/// on the other node: every room's messages arrive once each, in order.
#[test]
fn heavy_a_client_in_rooms_on_several_shards_recovers_every_room() {
    let cluster = RedisCluster::start(3);
    let fast = [("CHAT_RATE_PER_SEC", "1000"), ("CHAT_RATE_BURST", "1000")];
    let rooms = rooms_on_distinct_masters(&cluster, 2, 2);
    assert_eq!(rooms.len(), 4, "two rooms on each of two masters");
    let TwoNodes {
        mut d,
        lb,
        b,
        mut a,
    } = two_nodes(&cluster.url(), &fast);
    for r in &rooms {
        d.emit_ack("p", "join-channel", json!([r]));
        d.emit_ack("s", "join-channel", json!([r]));
    }
    let n = 240;
    for i in 0..n {
        if i == n / 3 {
            lb.set(vec![b.port]);
            let (code, _) = http_post(&format!("{}/api/drain", a.url()), Some(TOKEN), "");
            assert_eq!(code, 202);
        }
        let r = &rooms[i as usize % rooms.len()];
        d.emit("s", "new message", json!([{"message": i, "channel": r}]));
        std::thread::sleep(Duration::from_millis(10));
    }
    let last_room = &rooms[(n - 1) as usize % rooms.len()];
    d.expect(30, "p receives the last message", |e| {
        e["id"] == "p"
            && e["name"] == "new message"
            && e["args"][0]["message"] == n - 1
            && e["args"][0]["channel"] == last_room.as_str()
    });
    let reconnect = d.expect(10, "p reconnected", |e| {
        e["ev"] == "connect" && e["id"] == "p"
    });
    assert_eq!(reconnect["recovered"], true, "a recovered session");
    d.drain_events(1000);
    for (k, r) in rooms.iter().enumerate() {
        let mut got = message_in(&d, "p", r);
        if r == last_room {
            got.push(n - 1);
        }
        let want: Vec<i64> = (0..n).filter(|i| *i as usize % rooms.len() == k).collect();
        assert_eq!(got, want, "room {r}: every message once, in order");
    }
    assert_eq!(a.process.wait_exit(Duration::from_secs(15)), Some(0));
}

/// One replica per master. The master serving a room is killed; once its replica is promoted,
/// delivery in the room resumes within 5 s (measured; the bound is a generous one), and a
/// client drained to the other node afterwards recovers what it missed.
#[test]
fn heavy_delivery_resumes_after_a_master_fails_over_and_recovery_works() {
    let mut cluster = RedisCluster::start_with_replicas(3, 1);
    let fast = [("CHAT_RATE_PER_SEC", "1000"), ("CHAT_RATE_BURST", "1000")];
    // A room whose master is not the one holding presence and recovery records.
    let home = cluster.master_of("{connscale}:chat").expect("a master");
    let room = (0..100)
        .map(|i| format!("fail-{i}"))
        .find(|r| {
            cluster
                .master_of(&room_channel(r))
                .is_some_and(|p| p != home)
        })
        .expect("a room on another master");
    let TwoNodes {
        mut d,
        lb,
        b,
        mut a,
    } = two_nodes(&cluster.url(), &fast);
    for id in ["p", "s"] {
        d.emit_ack(id, "join-channel", json!([room]));
    }
    d.emit_ack(
        "s",
        "new message",
        json!([{"message": -1, "channel": room}]),
    );
    d.expect(10, "p gets the first message", |e| {
        e["id"] == "p" && e["name"] == "new message" && e["args"][0]["message"] == -1
    });

    let port = cluster.master_of(&room_channel(&room)).expect("its master");
    let killed = cluster
        .masters()
        .into_iter()
        .find(|m| m.port == port)
        .expect("the master");
    cluster.kill(port);
    let (promoted, took) = cluster
        .wait_promoted(&killed, Duration::from_secs(30))
        .expect("the replica takes over");
    let promoted_at = Instant::now();
    eprintln!("replica {promoted} promoted {took:?} after master {port} was killed");
    // Probes until one gets through: from then on, the room delivers again.
    let mut probe = 1000;
    let resumed = loop {
        d.emit(
            "s",
            "new message",
            json!([{"message": probe, "channel": room}]),
        );
        d.drain_events(200);
        if d.events_named("p", "new message")
            .iter()
            .any(|e| e["args"][0]["message"].as_i64() >= Some(1000))
        {
            break promoted_at.elapsed();
        }
        assert!(
            promoted_at.elapsed() < Duration::from_secs(30),
            "no delivery 30 s after the promotion"
        );
        probe += 1;
    };
    eprintln!("delivery resumed {resumed:?} after the promotion");
    assert!(
        resumed <= Duration::from_secs(5),
        "delivery resumed only {resumed:?} after the promotion"
    );

    // Now p is drained to b while s keeps talking: it recovers every message it missed.
    d.drain_events(500);
    d.seen.clear();
    let n = 120;
    for i in 0..n {
        if i == n / 3 {
            lb.set(vec![b.port]);
            let (code, _) = http_post(&format!("{}/api/drain", a.url()), Some(TOKEN), "");
            assert_eq!(code, 202);
        }
        d.emit("s", "new message", json!([{"message": i, "channel": room}]));
        std::thread::sleep(Duration::from_millis(10));
    }
    d.expect(30, "p receives the last message", |e| {
        e["id"] == "p" && e["name"] == "new message" && e["args"][0]["message"] == n - 1
    });
    let reconnect = d.expect(10, "p reconnected", |e| {
        e["ev"] == "connect" && e["id"] == "p"
    });
    assert_eq!(reconnect["recovered"], true, "a recovered session");
    d.drain_events(1000);
    let mut got: Vec<i64> = message_in(&d, "p", &room)
        .into_iter()
        .filter(|m| (0..n).contains(m))
        .collect();
    got.push(n - 1);
    let want: Vec<i64> = (0..n).collect();
    let dups = got.len() - got.iter().collect::<BTreeSet<_>>().len();
    assert_eq!(
        got, want,
        "every message once, in order ({dups} duplicated)"
    );
    assert_eq!(a.process.wait_exit(Duration::from_secs(15)), Some(0));
}
