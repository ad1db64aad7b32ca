//! The node's registry of sessions and rooms, and delivery: local fan-out plus the broker.

use crate::broker::{Envelope, RedisBroker};
use crate::config::ChatConfig;
use crate::session::{Frame, Session};
use axum::extract::ws::Utf8Bytes;
use base64::Engine as _;
use bytes::Bytes;
use connscale_common::sio::SioPacket;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub malformed: AtomicU64,
    pub rate_limited: AtomicU64,
    pub refused: AtomicU64,
    pub published: AtomicU64,
    pub publish_failed: AtomicU64,
    /// Fan-out latency of remote broadcasts (publish → local delivery), microsecond buckets.
    pub fanout_us: [AtomicU64; 8],
    pub fanout_sum_us: AtomicU64,
    pub fanout_count: AtomicU64,
}

pub const FANOUT_BUCKETS_US: [u64; 8] =
    [500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, u64::MAX];

/// Other nodes as last read from Redis.
#[derive(Debug, Default, Clone)]
pub struct ClusterView {
    pub nodes: BTreeMap<String, (u64, i64)>,
}

pub struct Hub {
    pub cfg: ChatConfig,
    pub node: String,
    sessions: RwLock<HashMap<String, Arc<Session>>>,
    rooms: RwLock<HashMap<String, HashSet<String>>>,
    pub users: AtomicI64,
    pub cluster: Mutex<ClusterView>,
    pub broker: Option<Arc<RedisBroker>>,
    pub draining: AtomicBool,
    pub metrics: Metrics,
    /// Broadcasts on their way to Redis, in arrival order (with Redis only).
    outgoing: Option<tokio::sync::mpsc::Sender<Outgoing>>,
    /// The other end, until [`Hub::publish_loop`] takes it.
    outgoing_rx: Mutex<Option<tokio::sync::mpsc::Receiver<Outgoing>>>,
    /// Broadcasts queued or being published: a drain waits for them before the node exits.
    unpublished: AtomicUsize,
    /// The highest sequence number the subscription has delivered here.
    delivered_seq: AtomicU64,
    /// The last number given to a broadcast from this node ([`Envelope::i`]).
    last_broadcast: AtomicU64,
    /// This node's broadcasts that its clients got without an offset because publishing failed.
    unnumbered: Mutex<Unnumbered>,
}

/// This node's broadcasts that failed to publish and went to its own clients unnumbered. A
/// failed publish may still have run (a timeout or a dropped connection after Redis read the
/// command), and then the subscription brings it back: those clients must not get it twice.
/// Bounded: the oldest are forgotten first, long after any stalled Redis could answer.
#[derive(Default)]
struct Unnumbered {
    ids: HashSet<u64>,
    order: std::collections::VecDeque<u64>,
}

impl Unnumbered {
    const CAP: usize = 65_536;

    fn insert(&mut self, id: u64) {
        if self.order.len() == Self::CAP
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        self.ids.insert(id);
        self.order.push_back(id);
    }

    /// True once for an id that was inserted (and not yet forgotten).
    fn take(&mut self, id: u64) -> bool {
        self.ids.remove(&id)
    }
}

/// A broadcast waiting for [`Hub::publish_loop`], with its binary attachments as they arrived.
struct Outgoing {
    env: Envelope,
    attachments: Vec<Bytes>,
}

/// How many broadcasts may wait for Redis before a sender waits too.
const OUTGOING_QUEUE: usize = 4096;
/// At most this many broadcasts go to Redis in one round trip.
const PUBLISH_BATCH: usize = 256;
/// How far (in messages, cluster-wide) publishing may run ahead of what the subscription has
/// delivered here. Past it the publisher waits, its queue fills and readers stop reading, so
/// clients' sockets hold the excess: otherwise a node above its capacity takes in more than it
/// can fan out, and the backlog (Redis's output buffer to the subscriber) outlives the load.
const MAX_LAG: u64 = 1024;
/// The longest a batch waits for the subscription: it may be down while publishing works.
const LAG_WAIT: Duration = Duration::from_millis(100);

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Hub {
    pub fn new(cfg: ChatConfig) -> Result<Arc<Self>, String> {
        let broker = match &cfg.redis_url {
            Some(url) => Some(Arc::new(RedisBroker::new(
                url,
                cfg.redis_password.as_deref(),
            )?)),
            None => None,
        };
        let (outgoing, outgoing_rx) = match broker {
            Some(_) => {
                let (tx, rx) = tokio::sync::mpsc::channel(OUTGOING_QUEUE);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        Ok(Arc::new(Self {
            node: cfg.node_name(),
            cfg,
            sessions: RwLock::new(HashMap::new()),
            rooms: RwLock::new(HashMap::new()),
            users: AtomicI64::new(0),
            cluster: Mutex::new(ClusterView::default()),
            broker,
            draining: AtomicBool::new(false),
            metrics: Metrics::default(),
            outgoing,
            outgoing_rx: Mutex::new(outgoing_rx),
            unpublished: AtomicUsize::new(0),
            delivered_seq: AtomicU64::new(0),
            last_broadcast: AtomicU64::new(0),
            unnumbered: Mutex::default(),
        }))
    }

    pub fn connections(&self) -> usize {
        self.sessions.read().map(|s| s.len()).unwrap_or(0)
    }

    pub fn room_count(&self) -> usize {
        self.rooms.read().map(|r| r.len()).unwrap_or(0)
    }

    pub fn get(&self, sid: &str) -> Option<Arc<Session>> {
        self.sessions.read().ok()?.get(sid).cloned()
    }

    /// Registers a session unless the node is draining or at its hard cap.
    pub fn admit(&self, s: Arc<Session>) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Relaxed) {
            self.metrics.refused.fetch_add(1, Ordering::Relaxed);
            return Err("draining");
        }
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.cfg.max_connections {
            self.metrics.refused.fetch_add(1, Ordering::Relaxed);
            return Err("at connection cap");
        }
        map.insert(s.sid.clone(), s);
        Ok(())
    }

    /// Forgets a session and its room memberships; returns it if it was registered.
    pub fn remove(&self, sid: &str) -> Option<Arc<Session>> {
        let s = self
            .sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sid)?;
        let rooms: Vec<String> = s.lock_state().rooms.drain().collect();
        let mut r = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        for room in rooms {
            if let Some(set) = r.get_mut(&room) {
                set.remove(sid);
                if set.is_empty() {
                    r.remove(&room);
                }
            }
        }
        Some(s)
    }

    pub fn join(&self, s: &Session, room: &str) {
        s.lock_state().rooms.insert(room.to_string());
        self.rooms
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(room.to_string())
            .or_default()
            .insert(s.sid.clone());
    }

    pub fn leave(&self, s: &Session, room: &str) {
        s.lock_state().rooms.remove(room);
        let mut r = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = r.get_mut(room) {
            set.remove(&s.sid);
            if set.is_empty() {
                r.remove(room);
            }
        }
    }

    /// Delivers a packet to this node's clients (all, or a room), skipping `except`. With a
    /// sequence number, the packet carries it as its offset (the last argument), and clients in
    /// the middle of a recovery get it after their replay instead.
    pub fn deliver_local(
        &self,
        room: Option<&str>,
        except: Option<&str>,
        text: &str,
        attachments: &[Bytes],
        seq: Option<u64>,
    ) {
        let text = match seq {
            Some(n) => with_offset(text, n),
            None => text.to_string(),
        };
        let frame = Utf8Bytes::from(format!("4{text}"));
        let targets: Vec<Arc<Session>> = {
            let sessions = self.sessions.read().unwrap_or_else(|e| e.into_inner());
            match room {
                None => sessions.values().cloned().collect(),
                Some(r) => {
                    let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
                    rooms
                        .get(r)
                        .map(|ids| {
                            ids.iter()
                                .filter_map(|id| sessions.get(id).cloned())
                                .collect()
                        })
                        .unwrap_or_default()
                }
            }
        };
        let mut sent = 0;
        for s in targets {
            if Some(s.sid.as_str()) == except {
                continue;
            }
            {
                let mut st = s.lock_state();
                if !st.connected {
                    continue;
                }
                if let Some(n) = seq {
                    if let Some(buf) = st.recovering.as_mut() {
                        buf.push((n, text.clone(), attachments.to_vec()));
                        continue;
                    }
                    match st.replayed {
                        Some((lo, hi)) if lo < n && n <= hi => continue,
                        Some(_) => st.replayed = None,
                        None => {}
                    }
                }
            }
            let mut ok = s.send(Frame::Text(frame.clone()));
            for a in attachments {
                ok &= s.send(Frame::Binary(a.clone()));
            }
            sent += u64::from(ok);
        }
        self.metrics.messages_out.fetch_add(sent, Ordering::Relaxed);
    }

    /// Broadcasts to every matching client on every node. With Redis, the message is queued for
    /// [`Hub::publish_loop`], which numbers it, keeps it for recovery and publishes it; it is
    /// delivered with its offset through the subscription. The caller waits only while the
    /// queue is full, not for Redis: a client's next event is read at once, still published
    /// after this one.
    pub async fn broadcast(&self, room: Option<&str>, except: Option<&str>, p: &SioPacket) {
        let text = p.encode();
        let Some(tx) = &self.outgoing else {
            self.deliver_local(room, except, &text, &p.attachments, None);
            return;
        };
        let env = Envelope {
            o: self.node.clone(),
            r: room.map(str::to_string),
            x: except.map(str::to_string),
            p: text,
            b: p.attachments
                .iter()
                .map(|a| base64::engine::general_purpose::STANDARD.encode(a))
                .collect(),
            t: now_us(),
            i: self.last_broadcast.fetch_add(1, Ordering::Relaxed) + 1,
        };
        self.unpublished.fetch_add(1, Ordering::SeqCst);
        let o = Outgoing {
            env,
            attachments: p.attachments.clone(),
        };
        if let Err(tokio::sync::mpsc::error::SendError(o)) = tx.send(o).await {
            // No publisher (the node is stopping): this node's clients still get it.
            self.unpublished.fetch_sub(1, Ordering::SeqCst);
            self.deliver_unpublished(&o);
        }
    }

    /// Publishes queued broadcasts in arrival order, as many per Redis round trip as have
    /// queued (up to [`PUBLISH_BATCH`]). Published: local clients get each back through the
    /// subscription like every other node's clients, so each connection sees offsets in
    /// increasing order (recovery resumes after the last offset a client saw: a later offset
    /// delivered early would be replayed twice). Not published (Redis down): this node's
    /// clients still get it, unnumbered. Runs for the node's life; started once.
    pub async fn publish_loop(self: Arc<Self>) {
        let (Some(b), Some(mut rx)) = (
            self.broker.clone(),
            self.outgoing_rx.lock().ok().and_then(|mut r| r.take()),
        ) else {
            return;
        };
        let (max_len, ttl) = (
            self.cfg.recovery_max_len,
            self.cfg.recovery_window.as_secs().max(1),
        );
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        let mut published = 0;
        while rx.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
            let waited = tokio::time::Instant::now();
            while published > self.delivered_seq.load(Ordering::Relaxed) + MAX_LAG
                && waited.elapsed() < LAG_WAIT
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let envs: Vec<&Envelope> = batch.iter().map(|o: &Outgoing| &o.env).collect();
            let seqs = b.publish_batch(&envs, max_len, ttl).await;
            published = seqs.iter().flatten().copied().max().unwrap_or(published);
            let n = batch.len();
            for (o, seq) in batch.drain(..).zip(seqs) {
                match seq {
                    Some(_) => self.metrics.published.fetch_add(1, Ordering::Relaxed),
                    None => {
                        self.deliver_unpublished(&o);
                        self.metrics.publish_failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            self.unpublished.fetch_sub(n, Ordering::SeqCst);
        }
    }

    fn deliver_unpublished(&self, o: &Outgoing) {
        let e = &o.env;
        if e.i != 0 {
            self.unnumbered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(e.i);
        }
        self.deliver_local(e.r.as_deref(), e.x.as_deref(), &e.p, &o.attachments, None);
    }

    /// A broadcast as the subscription delivers it, in offset order (this node's own included).
    pub fn on_remote(&self, seq: u64, env: Envelope) {
        let delivered_already = env.o == self.node
            && env.i != 0
            && self
                .unnumbered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(env.i);
        if !delivered_already {
            let attachments = decode_attachments(&env);
            self.deliver_local(
                env.r.as_deref(),
                env.x.as_deref(),
                &env.p,
                &attachments,
                Some(seq),
            );
        }
        self.delivered_seq.fetch_max(seq, Ordering::Relaxed);
        let lat = now_us().saturating_sub(env.t);
        let m = &self.metrics;
        let i = FANOUT_BUCKETS_US
            .iter()
            .position(|b| lat <= *b)
            .unwrap_or(7);
        m.fanout_us[i].fetch_add(1, Ordering::Relaxed);
        m.fanout_sum_us.fetch_add(lat, Ordering::Relaxed);
        m.fanout_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends a recovering client what it missed after `offset` in its rooms (and broadcasts to
    /// all), in order, then what arrived live meanwhile, skipping anything already replayed.
    /// Reads are proportional to the client's rooms, not to all traffic.
    pub async fn replay(&self, s: &Session, offset: u64) -> usize {
        let Some(b) = &self.broker else { return 0 };
        let (rooms, old): (Vec<String>, Vec<String>) = {
            let st = s.lock_state();
            (st.rooms.iter().cloned().collect(), st.old_sids.clone())
        };
        let limit = self.cfg.recovery_max_len as usize;
        let oldest = now_us().saturating_sub(self.cfg.recovery_window.as_micros() as u64);
        let mut missed: Vec<(u64, Envelope)> = b.read_after(None, offset, limit).await;
        for r in &rooms {
            missed.extend(b.read_after(Some(r), offset, limit).await);
        }
        missed.sort_by_key(|(n, _)| *n);
        missed.dedup_by_key(|(n, _)| *n);
        let mut last = offset;
        let mut sent = 0;
        for (n, env) in missed {
            last = n;
            if env.t < oldest || env.x.as_ref().is_some_and(|x| old.contains(x)) {
                continue;
            }
            s.send_text(format!("4{}", with_offset(&env.p, n)));
            for a in decode_attachments(&env) {
                s.send(Frame::Binary(a));
            }
            sent += 1;
        }
        // Under the lock that live deliveries take: none can come between the buffered ones
        // and the end of recovery, and any later copy of a replayed offset is dropped.
        let mut st = s.lock_state();
        for (n, text, atts) in st.recovering.take().unwrap_or_default() {
            if n > last {
                s.send_text(format!("4{text}"));
                for a in atts {
                    s.send(Frame::Binary(a));
                }
                last = n;
            }
        }
        let lo = self.delivered_seq.load(Ordering::Relaxed);
        st.replayed = (last > lo).then_some((lo, last));
        sent
    }

    /// Users logged in across the cluster: live nodes' reports, this node's exact count.
    pub fn cluster_users(&self) -> i64 {
        let others: i64 = self
            .cluster
            .lock()
            .map(|c| {
                c.nodes
                    .iter()
                    .filter(|(n, _)| **n != self.node)
                    .map(|(_, v)| v.1)
                    .sum()
            })
            .unwrap_or(0);
        others + self.users.load(Ordering::Relaxed)
    }

    /// (cluster connections, per-node connections) for /api/online.
    pub fn online(&self) -> (u64, BTreeMap<String, u64>) {
        let mut per: BTreeMap<String, u64> = self
            .cluster
            .lock()
            .map(|c| c.nodes.iter().map(|(n, v)| (n.clone(), v.0)).collect())
            .unwrap_or_default();
        per.insert(self.node.clone(), self.connections() as u64);
        (per.values().sum(), per)
    }

    /// Writes this node's presence and re-reads everyone's (one Redis round trip each).
    /// Called every 2 s, and on every login/logout so numUsers is exact when it is sent.
    pub async fn refresh_presence(&self) {
        let Some(b) = &self.broker else { return };
        b.heartbeat(
            &self.node,
            self.connections(),
            self.users.load(Ordering::Relaxed),
        )
        .await;
        if let Some(nodes) = b.presence().await
            && let Ok(mut c) = self.cluster.lock()
        {
            c.nodes = nodes;
        }
    }

    /// Pings every websocket client once per ping interval and closes those that left the
    /// previous ping unanswered past the ping timeout, and any session (either transport) that
    /// has not connected a namespace within `connect_timeout`. One task for the node instead of a timer
    /// per connection; the clients are spread over the interval in one-second slices by sid,
    /// so the pings do not all go out at once (under a second, the protocol suite's 300 ms, each
    /// session is pinged an interval after its last ping instead). A session's first ping waits a whole interval
    /// after it opened, as the reference server's does: an earlier one could come between a
    /// client's CONNECT and its answer.
    pub async fn ping_loop(self: Arc<Self>) {
        let interval = self.cfg.ping_interval;
        // Under a second, every session has its own schedule, checked ten times an interval.
        let (slice, slices) = if interval < Duration::from_secs(1) {
            ((interval / 10).max(Duration::from_millis(10)), 1)
        } else {
            (Duration::from_secs(1), interval.as_secs())
        };
        let own_schedule = slices == 1;
        let mut tick = tokio::time::interval(slice);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for n in 0u64.. {
            tick.tick().await;
            let now = crate::session::clock_ms();
            let mut overdue = Vec::new();
            let due: Vec<Arc<Session>> = self
                .sessions
                .read()
                .map(|m| {
                    m.values()
                        .filter(|s| {
                            // Any transport: no CONNECT within connect_timeout closes it.
                            let late = s.connect_overdue(now);
                            if late {
                                overdue.push(Arc::clone(s));
                            }
                            !late
                        })
                        .filter(|s| s.websocket.load(Ordering::Relaxed))
                        .filter(|s| ping_slice(&s.sid, slices) == n % slices)
                        .filter(|s| s.age() >= interval)
                        .filter(|s| !own_schedule || s.since_ping() + slice / 2 >= interval)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            for s in overdue {
                tracing::debug!(sid = %s.sid, "no CONNECT within connect_timeout: disconnecting");
                s.connected_namespace();
                s.close();
            }
            for s in due {
                if !s.ping(self.cfg.ping_timeout) {
                    tracing::debug!(sid = %s.sid, "ping timeout: disconnecting");
                    s.close();
                }
            }
        }
    }

    /// Keeps this node's presence key fresh and the cluster view current.
    pub async fn presence_loop(self: Arc<Self>) {
        loop {
            self.refresh_presence().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Disconnects every client spread evenly over `window` (they reconnect elsewhere without a
    /// stampede); returns when none is left or the window plus a grace period is over.
    pub async fn drain(self: Arc<Self>, window: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        let all: Vec<Arc<Session>> = self
            .sessions
            .read()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default();
        tracing::info!(
            clients = all.len(),
            window_s = window.as_secs_f64(),
            "draining"
        );
        let step = if all.is_empty() {
            Duration::ZERO
        } else {
            window / all.len() as u32
        };
        for s in all {
            s.close();
            tokio::time::sleep(step).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while (self.connections() > 0 || self.unpublished.load(Ordering::SeqCst) > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(left = self.connections(), "drain finished");
    }
}

/// Appends the offset as the event's last argument (`2["ev",{...}]` → `2["ev",{...},"7"]`),
/// which is where socket.io-client ≥ 4.6 reads it from.
pub fn with_offset(text: &str, seq: u64) -> String {
    match text.strip_suffix(']') {
        Some(head) if head.ends_with('[') => format!("{head}\"{seq}\"]"),
        Some(head) => format!("{head},\"{seq}\"]"),
        None => text.to_string(),
    }
}

fn decode_attachments(env: &Envelope) -> Vec<Bytes> {
    env.b
        .iter()
        .filter_map(|a| {
            base64::engine::general_purpose::STANDARD
                .decode(a)
                .ok()
                .map(Bytes::from)
        })
        .collect()
}

/// Which one-second slice of the ping interval a session's pings fall in.
fn ping_slice(sid: &str, slices: u64) -> u64 {
    sid.bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        % slices
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets of the numbered messages queued for `s`, in order.
    fn offsets_sent(s: &Session) -> Vec<u64> {
        let mut r = s.outbox.try_reader().expect("no other reader");
        std::iter::from_fn(|| r.try_recv())
            .filter_map(|f| match f {
                Frame::Text(t) => t
                    .as_str()
                    .rsplit_once(",\"")
                    .and_then(|(_, o)| o.trim_end_matches("\"]").parse().ok()),
                Frame::Binary(_) => None,
            })
            .collect()
    }

    fn envelope(room: &str, i: u64) -> Envelope {
        Envelope {
            o: "elsewhere".into(),
            r: Some(room.into()),
            x: None,
            p: format!("2[\"new message\",{i}]"),
            b: vec![],
            t: now_us(),
            i,
        }
    }

    /// A client recovering on a node whose subscription lags: the replay reads offsets from
    /// the stream that the subscription brings afterwards, and the client from a node that was
    /// ahead already holds some. Each offset reaches it once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_recovered_client_gets_each_offset_once() {
        let redis = connscale_test_support::RedisServer::start();
        let hub = Hub::new(ChatConfig {
            redis_url: Some(redis.url()),
            ..ChatConfig::default()
        })
        .unwrap();
        let b = hub.broker.clone().unwrap();
        let envs: Vec<Envelope> = (1..=6).map(|i| envelope("r", i)).collect();
        let seqs = b
            .publish_batch(&envs.iter().collect::<Vec<_>>(), 100, 60)
            .await;
        assert_eq!(seqs, (1..=6).map(Some).collect::<Vec<_>>());
        // The subscription here has delivered 1..=2 so far.
        for (n, e) in (1..=2).zip(&envs) {
            hub.on_remote(n, e.clone());
        }
        let s = Arc::new(Session::new("s1".into(), 10.0, true, 1 << 20));
        hub.admit(s.clone()).unwrap();
        {
            let mut st = s.lock_state();
            st.connected = true;
            st.recovering = Some(Vec::new());
        }
        hub.join(&s, "r");
        // The client had seen up to 3 on its old node; 4..=6 are in the stream.
        hub.on_remote(3, envs[2].clone());
        hub.replay(&s, 3).await;
        for (n, e) in (4..=6).zip(&envs[3..]) {
            hub.on_remote(n, e.clone());
        }
        let next = envelope("r", 7);
        b.publish_batch(&[&next], 100, 60).await;
        hub.on_remote(7, next);
        assert_eq!(offsets_sent(&s), [4, 5, 6, 7]);
    }

    #[test]
    fn offsets_are_the_last_argument() {
        assert_eq!(
            with_offset(r#"2["new message",{"a":1}]"#, 7),
            r#"2["new message",{"a":1},"7"]"#
        );
        assert_eq!(
            with_offset(r#"51-["f",{"_placeholder":true,"num":0}]"#, 12),
            r#"51-["f",{"_placeholder":true,"num":0},"12"]"#
        );
    }
}
