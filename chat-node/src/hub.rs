//! The node's registry of sessions and rooms, and delivery: local fan-out plus the broker.

use crate::broker::{Envelope, Positions, RedisBroker, SessionRecord};
use crate::config::ChatConfig;
use crate::offset;
use crate::session::{Buffered, Frame, Kick, ReplayBudget, Session, SocketState};
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
    /// Broadcasts published again after a failed attempt (see [`PUBLISH_RETRY_FOR`]).
    pub publish_retried: AtomicU64,
    /// Clients disconnected because they could not get every broadcast of their streams in
    /// order: their outbox was full ([`Kick::Slow`]), or the subscription missed broadcasts
    /// ([`Kick::Missed`]). Counted as their sessions end.
    pub kicked_slow: AtomicU64,
    pub kicked_missed: AtomicU64,
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
    /// The highest [`Envelope::i`] of this node's published broadcasts to streams it receives,
    /// and of those its subscription has brought back: how far publishing runs ahead.
    published_own: AtomicU64,
    seen_own: AtomicU64,
    /// The last number given to a broadcast from this node ([`Envelope::i`]).
    last_broadcast: AtomicU64,
    /// This node's broadcasts that its clients got without an offset because publishing failed.
    unnumbered: Mutex<Unnumbered>,
    /// Per stream and origin node, the highest [`Envelope::i`] delivered: a publish retried
    /// after a timeout may have run twice, and its second copy must not reach clients again.
    last_from: Mutex<HashMap<Option<String>, HashMap<String, u64>>>,
    /// Replays queued beyond their clients' bounds (`max_replay_bytes`).
    pub replay_budget: Arc<ReplayBudget>,
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
/// How far (in this node's messages) publishing may run ahead of what the subscription has
/// brought back. Past it the publisher waits, its queue fills and readers stop reading, so
/// clients' sockets hold the excess: otherwise a node above its capacity takes in more than it
/// can fan out, and the backlog (Redis's output buffer to the subscriber) outlives the load.
const MAX_LAG: u64 = 1024;
/// The longest a batch waits for the subscription: it may be down while publishing works.
const LAG_WAIT: Duration = Duration::from_millis(100);
/// How long broadcasts that failed to publish while Redis was up (a timeout under overload)
/// are tried again, the queue waiting behind them, before they go to this node's clients
/// only: other nodes' clients would miss them while connected. Once Redis is known to be
/// down, nothing is retried, so local clients are served at once.
const PUBLISH_RETRY_FOR: Duration = Duration::from_secs(2);

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
        let first = now_us();
        let replay_budget = cfg.max_replay_bytes;
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
            published_own: AtomicU64::new(first),
            seen_own: AtomicU64::new(first),
            // From the clock, not 0: other nodes drop numbers at or below the highest they
            // have seen from this node's name, and a restarted node must start above them.
            last_broadcast: AtomicU64::new(first),
            unnumbered: Mutex::default(),
            last_from: Mutex::default(),
            replay_budget: ReplayBudget::new(replay_budget),
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
        match s.kicked() {
            Some(Kick::Slow) => self.metrics.kicked_slow.fetch_add(1, Ordering::Relaxed),
            Some(Kick::Missed) => self.metrics.kicked_missed.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
        let rooms: Vec<String> = {
            let mut st = s.lock_state();
            st.room_key = 0;
            st.joined_at.clear();
            st.rooms.drain().collect()
        };
        for room in rooms {
            self.forget_member(&room, sid);
        }
        Some(s)
    }

    /// Puts a socket in a room. The room's first local member subscribes the node to it, and
    /// every join returns once that subscription is confirmed (Redis up), so the client gets
    /// every broadcast to the room published after. False, and the socket is not in the room,
    /// when the node could not subscribe (the SUBSCRIBE failed or timed out while Redis was
    /// reachable): a member then would miss other nodes' broadcasts while connected.
    #[must_use = "false: the socket is not in the room"]
    pub async fn join(&self, s: &Session, room: &str) -> bool {
        {
            let mut st = s.lock_state();
            if st.rooms.insert(room.to_string()) {
                st.room_key ^= offset::room_hash(room);
            }
        }
        {
            let mut r = self.rooms.write().unwrap_or_else(|e| e.into_inner());
            let set = r.entry(room.to_string()).or_default();
            if set.is_empty()
                && let Some(b) = &self.broker
            {
                b.want(room, true);
            }
            set.insert(s.sid.clone());
        }
        if let Some(b) = &self.broker {
            if !b.watch(room).await {
                // Not subscribed: in the room, the socket would miss other nodes' broadcasts.
                self.leave(s, room);
                return false;
            }
            let at = b.positions().get(Some(room));
            // Joining again changes nothing: replay in the room still starts at the first join.
            s.lock_state()
                .joined_at
                .entry(room.to_string())
                .or_insert(at);
        }
        true
    }

    pub fn leave(&self, s: &Session, room: &str) {
        {
            let mut st = s.lock_state();
            if st.rooms.remove(room) {
                st.room_key ^= offset::room_hash(room);
            }
            st.joined_at.remove(room);
            st.replayed.rooms.remove(room);
        }
        self.forget_member(room, &s.sid);
    }

    /// Takes a socket out of a room's members; the last one leaving unsubscribes the node.
    fn forget_member(&self, room: &str, sid: &str) {
        let mut r = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        let Some(set) = r.get_mut(room) else { return };
        set.remove(sid);
        if !set.is_empty() {
            return;
        }
        r.remove(room);
        self.last_from
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&Some(room.to_string()));
        if let Some(b) = &self.broker {
            b.want(room, false);
            let (b, room) = (b.clone(), room.to_string());
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { b.unwatch(&room).await });
            }
        }
    }

    /// Delivers a packet to this node's clients (all, or a room), skipping `except`. With a
    /// sequence number (from the subscription), each client's copy carries its offset vector
    /// as the last argument (one frame per distinct room set), and clients in the middle of a
    /// recovery get it after their replay instead.
    pub fn deliver_local(
        &self,
        room: Option<&str>,
        except: Option<&str>,
        text: &str,
        attachments: &[Bytes],
        seq: Option<u64>,
    ) {
        let targets = self.targets(room);
        let plain = Utf8Bytes::from(format!("4{text}"));
        // Only numbered deliveries read positions (and hold the subscription's writes back).
        let positions = seq.and(self.broker.as_ref()).map(|b| b.positions());
        let numbered = seq.zip(positions.as_deref());
        let mut shared: HashMap<u64, Utf8Bytes> = HashMap::new();
        let mut sent = 0;
        for s in targets {
            if Some(s.sid.as_str()) == except {
                continue;
            }
            let frame = {
                let mut st = s.lock_state();
                // A socket recovering before its CONNECT is answered buffers what is numbered
                // (its replay is read up to where the buffer begins).
                if !st.connected && (st.recovering.is_none() || numbered.is_none()) {
                    continue;
                }
                // Its own, sent on a connection it had before (read there in the close linger,
                // published after it came back): the sender is the client, not the socket.
                if except.is_some_and(|x| st.old_sids.iter().any(|o| o == x)) {
                    continue;
                }
                match numbered {
                    None => plain.clone(),
                    Some((n, pos)) => {
                        let b = Numbered {
                            room,
                            seq: n,
                            text,
                            attachments,
                        };
                        match b.frame_for(&mut st, pos, &mut shared) {
                            Some(f) => f,
                            None => continue,
                        }
                    }
                }
            };
            let mut ok = s.send(Frame::Text(frame));
            for a in attachments {
                ok &= s.send(Frame::Binary(a.clone()));
            }
            sent += u64::from(ok);
        }
        self.metrics.messages_out.fetch_add(sent, Ordering::Relaxed);
    }

    /// The connected-or-not sessions a broadcast to `room` (None: everyone) goes to.
    fn targets(&self, room: Option<&str>) -> Vec<Arc<Session>> {
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
            // Numbered by the publisher, in publish order (see `Hub::repeated`).
            i: 0,
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
    /// delivered early would be replayed twice). A batch that fails while Redis was up is
    /// tried again for a while ([`PUBLISH_RETRY_FOR`]). Not published (Redis down): this
    /// node's clients still get it, unnumbered. Runs for the node's life; started once.
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
        while rx.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
            let waited = tokio::time::Instant::now();
            while self.published_own.load(Ordering::Relaxed)
                > self.seen_own.load(Ordering::Relaxed) + MAX_LAG
                && waited.elapsed() < LAG_WAIT
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            for o in &mut batch {
                o.env.i = self.last_broadcast.fetch_add(1, Ordering::Relaxed) + 1;
            }
            let was_up = b.is_up();
            let envs: Vec<&Envelope> = batch.iter().map(|o: &Outgoing| &o.env).collect();
            let mut seqs = b.publish_batch(&envs, max_len, ttl).await;
            if was_up {
                self.retry_failed(&b, &batch, &mut seqs).await;
            }
            let n = batch.len();
            for (o, seq) in batch.drain(..).zip(seqs) {
                match seq {
                    Some(_) => {
                        // Only what comes back counts: a room no local client is in does not.
                        if b.receives(o.env.r.as_deref()) {
                            self.published_own.fetch_max(o.env.i, Ordering::Relaxed);
                        }
                        self.metrics.published.fetch_add(1, Ordering::Relaxed)
                    }
                    None => {
                        self.deliver_unpublished(&o);
                        self.metrics.publish_failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            self.unpublished.fetch_sub(n, Ordering::SeqCst);
        }
    }

    /// Publishes again, in order, the broadcasts of `batch` whose `seqs` are None, until all
    /// are published or [`PUBLISH_RETRY_FOR`] has passed. One that ran although its attempt
    /// failed comes back twice: [`Hub::repeated`] drops the second copy.
    async fn retry_failed(&self, b: &RedisBroker, batch: &[Outgoing], seqs: &mut [Option<u64>]) {
        let (max_len, ttl) = (
            self.cfg.recovery_max_len,
            self.cfg.recovery_window.as_secs().max(1),
        );
        let until = tokio::time::Instant::now() + PUBLISH_RETRY_FOR;
        loop {
            let failed: Vec<usize> = (0..seqs.len())
                .filter(|&i| seqs[i].is_none() && !published_after(batch, seqs, i))
                .collect();
            if failed.is_empty() || tokio::time::Instant::now() >= until {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let envs: Vec<&Envelope> = failed.iter().map(|&i| &batch[i].env).collect();
            let again = b.publish_batch(&envs, max_len, ttl).await;
            for (i, seq) in failed.into_iter().zip(again) {
                if seq.is_some() {
                    self.metrics.publish_retried.fetch_add(1, Ordering::Relaxed);
                }
                seqs[i] = seq;
            }
        }
    }

    /// Whether the subscription has delivered this broadcast already: a second copy of a
    /// publish retried after it ran (each origin numbers its broadcasts in increasing order,
    /// and publishes each stream's in that order).
    fn repeated(&self, env: &Envelope) -> bool {
        if env.i == 0 {
            return false;
        }
        let mut m = self.last_from.lock().unwrap_or_else(|e| e.into_inner());
        let per_origin = match m.get_mut(&env.r) {
            Some(p) => p,
            None => m.entry(env.r.clone()).or_default(),
        };
        match per_origin.get_mut(&env.o) {
            Some(last) if env.i <= *last => true,
            Some(last) => {
                *last = env.i;
                false
            }
            None => {
                per_origin.insert(env.o.clone(), env.i);
                false
            }
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

    /// A broadcast as the subscription delivers it, in order within its stream (this node's own
    /// included), its stream's position already advanced to `seq`.
    pub fn on_remote(&self, seq: u64, env: Envelope) {
        if self.repeated(&env) {
            return;
        }
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
        if env.o == self.node {
            self.seen_own.fetch_max(env.i, Ordering::Relaxed);
        }
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

    /// The subscription missed broadcasts of a stream (a room, or None: all clients): every
    /// local client receiving it is disconnected before anything later is delivered, so none
    /// stays connected having silently missed one. Each reconnects and its offset, the last
    /// broadcast it did get, recovers the rest from the stream.
    pub fn on_missed(&self, room: Option<&str>) {
        let kicked = self
            .targets(room)
            .into_iter()
            .filter(|s| s.kick(Kick::Missed))
            .count();
        tracing::warn!(
            room,
            kicked,
            "broadcasts missed: disconnecting the stream's clients"
        );
    }

    /// Reads what a recovering client missed in each of its streams (its rooms and the
    /// broadcasts to all) after its offset, every stream up to at least where this node's
    /// delivery stood when the client began recovering: from there on, what arrives live is
    /// buffered for it (see [`Numbered::frame_for`]). Call it once the client has joined its
    /// rooms, before its CONNECT is answered. None when that cannot be read whole: a stream
    /// trimmed past the offset (`recovery_max_len`), expired, or unreadable. Replaying part of
    /// it would leave a hole before the live broadcasts on a connection that says it was
    /// recovered; the caller answers as a fresh session instead, which the client knows is
    /// not recovered.
    pub async fn read_replay(
        &self,
        s: &Session,
        offset: Option<&str>,
        rec: &SessionRecord,
    ) -> Option<Replay> {
        let b = self.broker.as_ref()?;
        let rooms: Vec<String> = s.lock_state().rooms.iter().cloned().collect();
        let cur = Cursor::start(offset.and_then(offset::Claimed::parse), rec, &rooms);
        // At or past where the buffer of live broadcasts begins, in every stream.
        let need = b.positions().clone();
        let chunk = self.cfg.recovery_max_len.clamp(1, REPLAY_READ) as usize;
        let streams = cur.streams();
        let reads = streams.iter().map(|(room, after)| {
            read_whole(b, room.as_deref(), *after, need.get(room.as_deref()), chunk)
        });
        let reads: Vec<Vec<(u64, Envelope)>> = futures::future::join_all(reads)
            .await
            .into_iter()
            .collect::<Option<_>>()?;
        Some(Replay {
            cur,
            missed: merge_by_time(streams, reads),
        })
    }

    /// Sends a recovering client its replay, then what arrived live meanwhile, skipping
    /// anything already replayed; each packet carries the client's vector as it advances.
    /// Returns how many were replayed.
    pub fn send_replay(&self, s: &Session, r: Replay) -> usize {
        let Some(b) = &self.broker else { return 0 };
        let Replay { mut cur, missed } = r;
        let old = s.lock_state().old_sids.clone();
        let oldest = now_us().saturating_sub(self.cfg.recovery_window.as_micros() as u64);
        let mut sent = 0;
        for (room, n, env) in missed {
            cur.set(room.as_deref(), n);
            if env.t < oldest || env.x.as_ref().is_some_and(|x| old.contains(x)) {
                continue;
            }
            let text = format!("4{}", with_offset(&env.p, &cur.text()));
            s.send_replayed(Frame::Text(text.into()), &self.replay_budget);
            for a in decode_attachments(&env) {
                s.send_replayed(Frame::Binary(a), &self.replay_budget);
            }
            sent += 1;
        }
        // Read before the state lock (deliveries take this one first): anything delivered
        // after it is buffered, and a copy of it dropped below is one the buffer held.
        let reached = b.positions().clone();
        // Under the lock that live deliveries take: none can come between the buffered ones
        // and the end of recovery, and any later copy of a replayed offset is dropped.
        let mut st = s.lock_state();
        for m in st.recovering.take().unwrap_or_default() {
            if m.seq > cur.get(m.room.as_deref()) {
                cur.set(m.room.as_deref(), m.seq);
                s.send_text(format!("4{}", with_offset(&m.text, &cur.text())));
                for a in m.attachments {
                    s.send(Frame::Binary(a));
                }
            }
        }
        cur.finish(&mut st, &reached);
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

/// Whether a broadcast of `batch` later than `i` in its stream was published: `i` published
/// now would come after it, out of order (and other nodes would drop it as a repeat).
fn published_after(batch: &[Outgoing], seqs: &[Option<u64>], i: usize) -> bool {
    let room = &batch[i].env.r;
    batch[i + 1..]
        .iter()
        .zip(&seqs[i + 1..])
        .any(|(o, s)| s.is_some() && o.env.r == *room)
}

/// What a recovering client missed, read whole ([`Hub::read_replay`]) and not yet sent.
pub struct Replay {
    cur: Cursor,
    missed: Vec<(Option<String>, u64, Envelope)>,
}

/// Most envelopes one replay read asks for: a few hundred KB, well within the 1-s command
/// timeout of a loaded Redis (a replay of `recovery_max_len` takes several).
const REPLAY_READ: u64 = 1_000;

/// A stream's envelopes after `after`, without a gap, up to at least `need` (in reads of
/// `chunk`); None if the stream no longer holds them all (trimmed past `after`, expired) or
/// cannot be read. Bounded by `need`: a stream that moves on meanwhile is not chased.
async fn read_whole(
    b: &RedisBroker,
    room: Option<&str>,
    after: u64,
    need: u64,
    chunk: usize,
) -> Option<Vec<(u64, Envelope)>> {
    let mut out = Vec::new();
    let mut at = after;
    loop {
        let rows = b.read_after(room, at, chunk).await?;
        let full = rows.len() >= chunk;
        for (n, env) in rows {
            if n != at + 1 {
                tracing::debug!(
                    room,
                    after = at,
                    next = n,
                    "replay would skip: not recovered"
                );
                return None;
            }
            at = n;
            out.push((n, env));
        }
        if at >= need || !full {
            return (at >= need).then_some(out);
        }
    }
}

/// A recovering client's position in each of its streams, advanced as its replay is sent,
/// and where its replay began in each.
struct Cursor {
    all: u64,
    rooms: BTreeMap<String, u64>,
    began: (u64, BTreeMap<String, u64>),
}

impl Cursor {
    /// Where replay starts: the offset the client sent where it names a stream, else where
    /// the record says the socket started in it (connected, joined, or last recovered);
    /// never before that start (a room left and joined again restarts at the join).
    fn start(claimed: Option<offset::Claimed>, rec: &SessionRecord, rooms: &[String]) -> Self {
        let all = claimed.as_ref().map_or(0, |c| c.all).max(rec.since);
        let rooms = rooms
            .iter()
            .map(|r| {
                let joined = rec.joined_at.get(r).copied().unwrap_or(0);
                let got = claimed.as_ref().and_then(|c| c.room(r)).unwrap_or(0);
                (r.clone(), got.max(joined))
            })
            .collect::<BTreeMap<_, _>>();
        Self {
            all,
            began: (all, rooms.clone()),
            rooms,
        }
    }

    fn streams(&self) -> Vec<(Option<String>, u64)> {
        std::iter::once((None, self.all))
            .chain(self.rooms.iter().map(|(r, n)| (Some(r.clone()), *n)))
            .collect()
    }

    fn get(&self, room: Option<&str>) -> u64 {
        match room {
            None => self.all,
            Some(r) => self.rooms.get(r).copied().unwrap_or(0),
        }
    }

    fn set(&mut self, room: Option<&str>, n: u64) {
        match room {
            None => self.all = n,
            Some(r) => {
                if let Some(at) = self.rooms.get_mut(r) {
                    *at = n;
                }
            }
        }
    }

    fn text(&self) -> String {
        offset::encode(self.all, self.rooms.iter().map(|(r, n)| (r.as_str(), *n)))
    }

    /// Ends the recovery: the streams in which the replay read ahead of the node's
    /// subscription (`reached`) get their ranges. A later recovery may start where this one
    /// began, not where it ended: the replay is queued, not yet read, and a client
    /// disconnected before reading it all (its outbox full) claims an offset inside it.
    fn finish(self, st: &mut SocketState, reached: &Positions) {
        let range = |room: Option<&str>, hi: u64| {
            let lo = reached.get(room);
            (hi > lo).then_some((lo, hi))
        };
        st.replayed.all = range(None, self.all);
        st.replayed.rooms = self
            .rooms
            .iter()
            .filter_map(|(r, hi)| Some((r.clone(), range(Some(r), *hi)?)))
            .collect();
        let (all, rooms) = self.began;
        st.since = all;
        st.joined_at = rooms.into_iter().collect();
    }
}

/// One stream's envelopes not yet merged.
type Pending = std::iter::Peekable<std::vec::IntoIter<(u64, Envelope)>>;

/// The streams' envelopes in one list, each stream kept in its own order, the streams
/// interleaved by publish time (the order the client would have seen them in, near enough).
fn merge_by_time(
    streams: Vec<(Option<String>, u64)>,
    reads: Vec<Vec<(u64, Envelope)>>,
) -> Vec<(Option<String>, u64, Envelope)> {
    let mut heads: Vec<(Option<String>, Pending)> = streams
        .into_iter()
        .map(|(r, _)| r)
        .zip(reads.into_iter().map(|v| v.into_iter().peekable()))
        .collect();
    let mut out = Vec::new();
    loop {
        let next = heads
            .iter_mut()
            .enumerate()
            .filter_map(|(i, (_, it))| it.peek().map(|(_, e)| (e.t, i)))
            .min();
        let Some((_, i)) = next else { return out };
        let (room, it) = &mut heads[i];
        if let Some((n, env)) = it.next() {
            out.push((room.clone(), n, env));
        }
    }
}

/// A broadcast the subscription delivered: its stream, sequence and packet.
struct Numbered<'a> {
    room: Option<&'a str>,
    seq: u64,
    text: &'a str,
    attachments: &'a [Bytes],
}

impl Numbered<'_> {
    /// The frame for one socket (None: not now). A recovering socket gets it later; one just
    /// recovered drops the copies of what its replay sent and has offsets of its own while it
    /// is ahead of the node; any other socket shares the frame of its room set.
    fn frame_for(
        &self,
        st: &mut SocketState,
        pos: &Positions,
        shared: &mut HashMap<u64, Utf8Bytes>,
    ) -> Option<Utf8Bytes> {
        if let Some(buf) = st.recovering.as_mut() {
            buf.push(Buffered {
                room: self.room.map(str::to_string),
                seq: self.seq,
                text: self.text.to_string(),
                attachments: self.attachments.to_vec(),
            });
            return None;
        }
        if !st.replayed.is_empty() {
            if st.replayed.drops(self.room, self.seq) {
                return None;
            }
            st.replayed.settle(|r| pos.get(r));
            if !st.replayed.is_empty() {
                let v = vector(st, |r| st.replayed.ahead(r, pos.get(r)));
                return Some(numbered_frame(self.text, &v));
            }
        }
        let frame = shared
            .entry(st.room_key)
            .or_insert_with(|| numbered_frame(self.text, &vector(st, |r| pos.get(r))));
        Some(frame.clone())
    }
}

/// A socket's offset: `at` of the all-clients stream and of each of its rooms.
fn vector(st: &SocketState, at: impl Fn(Option<&str>) -> u64) -> String {
    offset::encode(
        at(None),
        st.rooms.iter().map(|r| (r.as_str(), at(Some(r.as_str())))),
    )
}

fn numbered_frame(text: &str, offset: &str) -> Utf8Bytes {
    Utf8Bytes::from(format!("4{}", with_offset(text, offset)))
}

/// Appends the offset as the event's last argument (`2["ev",{...}]` → `2["ev",{...},"7"]`),
/// which is where socket.io-client ≥ 4.6 reads it from.
pub fn with_offset(text: &str, seq: &str) -> String {
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
    use crate::broker::Step;

    /// The offsets (as vectors) of the numbered messages queued for `s`, in order.
    fn offsets_sent(s: &Session) -> Vec<offset::Claimed> {
        let mut r = s.outbox.try_reader().expect("no other reader");
        std::iter::from_fn(|| r.try_recv())
            .filter_map(|f| match f {
                Frame::Text(t) => t
                    .as_str()
                    .rsplit_once(",\"")
                    .and_then(|(_, o)| offset::Claimed::parse(o.trim_end_matches("\"]"))),
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
            t: now_us() + i,
            i,
        }
    }

    /// A hub on a fresh Redis whose subscription is not running: the tests deliver by hand.
    fn hub_on(redis: &connscale_test_support::RedisServer) -> (Arc<Hub>, Arc<RedisBroker>) {
        let hub = Hub::new(ChatConfig {
            redis_url: Some(redis.url()),
            ..ChatConfig::default()
        })
        .unwrap();
        let b = hub.broker.clone().unwrap();
        (hub, b)
    }

    /// What the subscription does with a broadcast: advance its stream, then deliver.
    fn deliver(hub: &Hub, b: &RedisBroker, n: u64, e: &Envelope) {
        match b.advance(e.r.as_deref(), n) {
            Step::Skip => {}
            Step::Next => hub.on_remote(n, e.clone()),
            Step::AfterGap => {
                hub.on_missed(e.r.as_deref());
                hub.on_remote(n, e.clone());
            }
        }
    }

    /// A session that has sent its CONNECT (`recovering`: and is being recovered).
    /// Recovers a client as `Chat::connect` does: [`Hub::read_replay`], then
    /// [`Hub::send_replay`]; None (nothing sent) when what it missed cannot be replayed whole.
    async fn replay(
        hub: &Hub,
        s: &Session,
        offset: Option<&str>,
        rec: &SessionRecord,
    ) -> Option<usize> {
        let r = hub.read_replay(s, offset, rec).await?;
        Some(hub.send_replay(s, r))
    }

    /// Runs one command on `redis` over a connection of its own, as an operator would.
    async fn admin(redis: &connscale_test_support::RedisServer, args: &[&str]) {
        let c = redis::Client::open(redis.url()).unwrap();
        let mut c = c.get_multiplexed_async_connection().await.unwrap();
        let _: redis::Value = redis::cmd(args[0])
            .arg(&args[1..])
            .query_async(&mut c)
            .await
            .unwrap();
    }

    fn connected(hub: &Hub, sid: &str, recovering: bool) -> Arc<Session> {
        let s = Arc::new(Session::new(sid.into(), 10.0, true, 1 << 20));
        hub.admit(s.clone()).unwrap();
        let mut st = s.lock_state();
        st.connected = true;
        st.recovering = recovering.then(Vec::new);
        drop(st);
        s
    }

    /// Room "r" with `n` broadcasts published, and delivered here to client s0, who keeps the
    /// node subscribed to it.
    async fn busy_room(hub: &Hub, b: &RedisBroker, n: u64) -> Vec<Envelope> {
        let envs: Vec<Envelope> = (1..=n).map(|i| envelope("r", i)).collect();
        b.publish_batch(&envs.iter().collect::<Vec<_>>(), 100, 60)
            .await;
        let other = connected(hub, "s0", false);
        assert!(hub.join(&other, "r").await);
        for (n, e) in (1..=n).zip(&envs) {
            deliver(hub, b, n, e);
        }
        envs
    }

    /// A client `sid` being recovered into room "r" (joined, its CONNECT sent).
    async fn recovering_in_r(hub: &Hub, sid: &str) -> Arc<Session> {
        let s = connected(hub, sid, true);
        assert!(hub.join(&s, "r").await);
        s
    }

    /// The record of a socket that was in room "r".
    fn was_in_r() -> SessionRecord {
        SessionRecord {
            rooms: vec!["r".into()],
            ..SessionRecord::default()
        }
    }

    /// A client recovering on a node whose subscription lags: the replay reads offsets from
    /// the stream that the subscription brings afterwards, and the client from a node that was
    /// ahead already holds some. Each offset reaches it once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_recovered_client_gets_each_offset_once() {
        let redis = connscale_test_support::RedisServer::start();
        let (hub, b) = hub_on(&redis);
        let envs: Vec<Envelope> = (1..=6).map(|i| envelope("r", i)).collect();
        let seqs = b
            .publish_batch(&envs.iter().collect::<Vec<_>>(), 100, 60)
            .await;
        assert_eq!(seqs, (1..=6).map(Some).collect::<Vec<_>>());
        // Another client keeps the room subscribed; the subscription has delivered 1..=2.
        let other = connected(&hub, "s0", false);
        assert!(hub.join(&other, "r").await);
        for (n, e) in (1..=2).zip(&envs) {
            deliver(&hub, &b, n, e);
        }
        let s = connected(&hub, "s1", true);
        assert!(hub.join(&s, "r").await);
        // The client had seen up to 3 on its old node; 4..=6 are in the stream.
        deliver(&hub, &b, 3, &envs[2]);
        let rec = was_in_r();
        let held = offset::encode(0, [("r", 3)]);
        replay(&hub, &s, Some(&held), &rec).await;
        for (n, e) in (4..=6).zip(&envs[3..]) {
            deliver(&hub, &b, n, e);
        }
        let next = envelope("r", 7);
        b.publish_batch(&[&next], 100, 60).await;
        deliver(&hub, &b, 7, &next);
        let got: Vec<Option<u64>> = offsets_sent(&s).iter().map(|o| o.room("r")).collect();
        assert_eq!(got, [4, 5, 6, 7].map(Some));
    }

    /// Each room has its own sequence, and a client's offset holds its place in each: replay
    /// resumes every room where the client was, and a malformed offset replays from where the
    /// record says the socket joined each room (never a panic).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_resumes_each_room_where_the_offset_says() {
        let redis = connscale_test_support::RedisServer::start();
        let (hub, b) = hub_on(&redis);
        let envs: Vec<Envelope> = [("a", 1), ("b", 2), ("a", 3), ("b", 4), ("a", 5)]
            .into_iter()
            .map(|(r, i)| envelope(r, i))
            .collect();
        let seqs = b
            .publish_batch(&envs.iter().collect::<Vec<_>>(), 100, 60)
            .await;
        assert_eq!(seqs, [1, 1, 2, 2, 3].map(Some));
        let rec = SessionRecord {
            rooms: vec!["a".into(), "b".into()],
            joined_at: [("b".to_string(), 1)].into_iter().collect(),
            ..SessionRecord::default()
        };
        let replayed = async |sid: &str, held: Option<&str>| {
            let s = connected(&hub, sid, true);
            for r in &rec.rooms {
                assert!(hub.join(&s, r).await);
            }
            replay(&hub, &s, held, &rec).await;
            let last = offsets_sent(&s).pop().expect("something replayed");
            hub.remove(sid);
            (last.room("a"), last.room("b"), last.all)
        };
        let held = offset::encode(0, [("a", 1), ("b", 2)]);
        assert_eq!(
            replayed("s1", Some(&held)).await,
            (Some(3), Some(2), 0),
            "a 2..=3"
        );
        for bad in ["garbage", "1.zz-3", "", "1.00000001-2.", "-5"] {
            assert_eq!(
                replayed("s2", Some(bad)).await,
                (Some(3), Some(2), 0),
                "{bad:?}: a from 0, b from its join at 1"
            );
        }
        let far = format!("{}.00000000-1", u64::MAX);
        assert_eq!(replayed("s3", Some(&far)).await.0, Some(3), "{far}");
    }

    /// More missed than one read holds (`recovery_max_len` 3, 6 missed): the replay reads on
    /// until it reaches where the live broadcasts, buffered from before the CONNECT was
    /// answered, begin; the client gets every offset once, in order (a replay cut at 3 left a
    /// hole before the live 7 and 8).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replay_longer_than_one_read_reaches_the_live_broadcasts() {
        let redis = connscale_test_support::RedisServer::start();
        let hub = Hub::new(ChatConfig {
            redis_url: Some(redis.url()),
            recovery_max_len: 3,
            ..ChatConfig::default()
        })
        .unwrap();
        let b = hub.broker.clone().unwrap();
        let envs: Vec<Envelope> = (1..=8).map(|i| envelope("r", i)).collect();
        b.publish_batch(&envs.iter().collect::<Vec<_>>(), 100, 60)
            .await;
        let other = connected(&hub, "s0", false);
        assert!(hub.join(&other, "r").await);
        for (n, e) in (1..=6).zip(&envs) {
            deliver(&hub, &b, n, e);
        }
        // Recovering, its CONNECT not answered yet: joined, and live broadcasts buffered.
        let s = connected(&hub, "s1", true);
        s.lock_state().connected = false;
        assert!(hub.join(&s, "r").await);
        let rec = was_in_r();
        let held = offset::encode(0, [("r", 0)]);
        let replay = hub.read_replay(&s, Some(&held), &rec).await;
        deliver(&hub, &b, 7, &envs[6]);
        assert!(offsets_sent(&s).is_empty(), "nothing before the CONNECT");
        s.lock_state().connected = true;
        hub.send_replay(&s, replay.expect("the stream holds all it missed"));
        deliver(&hub, &b, 8, &envs[7]);
        let got: Vec<Option<u64>> = offsets_sent(&s).iter().map(|o| o.room("r")).collect();
        assert_eq!(got, (1..=8).map(Some).collect::<Vec<_>>());
    }

    /// A client's own message sent on its previous connection and published after it came
    /// back (read in that connection's close linger) is not sent back to it, as its replay
    /// leaves it out; everyone else gets it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clients_own_message_from_its_old_connection_is_not_echoed() {
        let redis = connscale_test_support::RedisServer::start();
        let (hub, b) = hub_on(&redis);
        let (s, other) = (connected(&hub, "new", false), connected(&hub, "s0", false));
        s.lock_state().old_sids = vec!["old".into()];
        for c in [&s, &other] {
            assert!(hub.join(c, "r").await);
        }
        let mine = Envelope {
            x: Some("old".into()),
            ..envelope("r", 1)
        };
        b.publish_batch(&[&mine], 100, 60).await;
        deliver(&hub, &b, 1, &mine);
        assert!(offsets_sent(&s).is_empty(), "its own message came back");
        assert_eq!(offsets_sent(&other).len(), 1);
    }

    /// A client disconnected before it read its whole replay (its outbox overflowed with it,
    /// at 64,000 msg/s) claims an offset inside that replay when it comes back: its record
    /// lets the next replay start there. It started where the first replay ended, and the
    /// rest of the first replay was lost for good (with a hole while connected when a
    /// sender's later messages came after it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_gone_before_its_replay_was_read_recovers_the_rest() {
        let redis = connscale_test_support::RedisServer::start();
        let (hub, b) = hub_on(&redis);
        busy_room(&hub, &b, 6).await;
        let s = recovering_in_r(&hub, "s1").await;
        let held = offset::encode(0, [("r", 2)]);
        assert_eq!(replay(&hub, &s, Some(&held), &was_in_r()).await, Some(4));
        // It read 3 and 4 of its replay, then was disconnected: the record it leaves.
        let again = s.lock_state().record(&s.sid);
        hub.remove("s1");
        let s = recovering_in_r(&hub, "s2").await;
        let held = offset::encode(0, [("r", 4)]);
        assert_eq!(replay(&hub, &s, Some(&held), &again).await, Some(2));
        let got: Vec<Option<u64>> = offsets_sent(&s).iter().map(|o| o.room("r")).collect();
        assert_eq!(got, [5, 6].map(Some));
    }

    /// The stream no longer holds what the client missed (trimmed past its offset): nothing
    /// is replayed and the caller answers as a fresh session, instead of a recovered one
    /// with a hole; an offset the stream still covers is recovered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replay_the_stream_no_longer_holds_is_refused() {
        let redis = connscale_test_support::RedisServer::start();
        let (hub, b) = hub_on(&redis);
        busy_room(&hub, &b, 6).await;
        let key = crate::broker::stream_key(Some("r"));
        admin(&redis, &["XTRIM", &key, "MAXLEN", "2"]).await;
        let s = recovering_in_r(&hub, "s1").await;
        let held = offset::encode(0, [("r", 1)]);
        assert!(replay(&hub, &s, Some(&held), &was_in_r()).await.is_none());
        assert!(offsets_sent(&s).is_empty(), "nothing replayed");
        hub.remove("s1");
        let s = recovering_in_r(&hub, "s2").await;
        let held = offset::encode(0, [("r", 4)]);
        assert_eq!(replay(&hub, &s, Some(&held), &was_in_r()).await, Some(2));
        let got: Vec<Option<u64>> = offsets_sent(&s).iter().map(|o| o.room("r")).collect();
        assert_eq!(got, [5, 6].map(Some));
    }

    /// A broadcast whose stream jumped (room seq 2, then 4): the room's clients here are
    /// disconnected before it is delivered (they recover 3 and 4 from their offsets), and
    /// /metrics counts them; a client of another room stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sequence_jump_disconnects_the_rooms_clients() {
        let redis = connscale_test_support::RedisServer::start();
        let (hub, b) = hub_on(&redis);
        let (s, other) = (connected(&hub, "s1", false), connected(&hub, "s2", false));
        assert!(hub.join(&s, "r").await);
        assert!(hub.join(&other, "q").await);
        for n in [1, 2, 4] {
            deliver(&hub, &b, n, &envelope("r", n));
        }
        deliver(&hub, &b, 1, &envelope("q", 1));
        let got: Vec<Option<u64>> = offsets_sent(&s).iter().map(|o| o.room("r")).collect();
        assert_eq!(got, [1, 2].map(Some), "nothing after the gap");
        assert_eq!(s.kicked(), Some(Kick::Missed));
        assert!(!other.is_closed(), "another room's client stays");
        hub.remove("s1");
        assert_eq!(hub.metrics.kicked_missed.load(Ordering::Relaxed), 1);
    }

    /// A client whose outbox fills is disconnected, counted as slow.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_outbox_is_counted_as_slow() {
        let redis = connscale_test_support::RedisServer::start();
        let (hub, b) = hub_on(&redis);
        let s = Arc::new(Session::new("s1".into(), 10.0, true, 64));
        s.lock_state().connected = true;
        hub.admit(s.clone()).unwrap();
        assert!(hub.join(&s, "r").await);
        for n in 1..=8 {
            deliver(&hub, &b, n, &envelope("r", n));
        }
        assert_eq!(s.kicked(), Some(Kick::Slow));
        hub.remove("s1");
        assert_eq!(hub.metrics.kicked_slow.load(Ordering::Relaxed), 1);
    }

    /// Redis drops the node's subscription (as it does to a subscriber past its
    /// `client-output-buffer-limit pubsub`) while another node keeps publishing to a room: a
    /// client of the room here either gets every broadcast in order or is disconnected.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_subscription_never_leaves_a_client_missing_broadcasts() {
        let redis = connscale_test_support::RedisServer::start();
        let (hub, b) = hub_on(&redis);
        let (h, g) = (hub.clone(), hub.clone());
        let sub = b.clone();
        let task = tokio::spawn(async move {
            sub.subscribe(move |n, e| h.on_remote(n, e), move |r| g.on_missed(r))
                .await
        });
        let until = |f: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !f() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        until(&|| b.is_up());
        let s = connected(&hub, "s1", false);
        assert!(hub.join(&s, "r").await);
        let elsewhere = RedisBroker::new(&redis.url(), None).unwrap();
        let publish = async |i: u64| {
            elsewhere.publish_batch(&[&envelope("r", i)], 100, 60).await[0].expect("published")
        };
        let mut got = Vec::new();
        let take = |s: &Session, got: &mut Vec<u64>| {
            got.extend(offsets_sent(s).iter().filter_map(|o| o.room("r")))
        };
        for i in 1..=3 {
            publish(i).await;
        }
        until(&|| b.positions().get(Some("r")) == 3);
        admin(&redis, &["CLIENT", "KILL", "TYPE", "pubsub"]).await;
        // Before the node resubscribes (its backoff is 100 ms): these never reach it.
        for i in 4..=6 {
            publish(i).await;
        }
        let mut last = 6;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !s.is_closed() && std::time::Instant::now() < deadline {
            last += 1;
            publish(last).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            take(&s, &mut got);
            if got.last() == Some(&last) {
                break;
            }
        }
        take(&s, &mut got);
        task.abort();
        let in_order = got.iter().copied().eq(1..=got.len() as u64);
        assert!(in_order, "got {got:?} while connected");
        assert!(
            s.is_closed() || got.len() as u64 == last,
            "connected, got {got:?} of 1..={last}"
        );
        assert_eq!(s.kicked(), Some(Kick::Missed), "got {got:?}");
    }

    /// A node named `name` on `redis` with its subscription and publisher running.
    /// A SUBSCRIBE that times out (Redis stopped, its connection still open) refuses the join:
    /// a member of a room the node is not subscribed to would miss the other nodes'
    /// broadcasts while connected. Once Redis answers, the same join succeeds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_join_the_node_cannot_subscribe_for_is_refused() {
        let redis = connscale_test_support::RedisServer::start();
        let hub = live_node(&redis, "a").await;
        let s = connected(&hub, "s1", false);
        let pid = redis.pid() as i32;
        // SAFETY: signals a child process this test started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let joined = hub.join(&s, "r").await;
        unsafe { libc::kill(pid, libc::SIGCONT) };
        assert!(!joined, "joined a room the node is not subscribed to");
        assert!(!s.lock_state().rooms.contains("r"));
        assert_eq!(hub.room_count(), 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut again = false;
        while !again && tokio::time::Instant::now() < deadline {
            again = hub.join(&s, "r").await;
        }
        assert!(again, "no join once Redis answers again");
        assert!(s.lock_state().rooms.contains("r"));
    }

    async fn live_node(redis: &connscale_test_support::RedisServer, name: &str) -> Arc<Hub> {
        let hub = Hub::new(ChatConfig {
            redis_url: Some(redis.url()),
            node_id: Some(name.into()),
            ..ChatConfig::default()
        })
        .unwrap();
        let b = hub.broker.clone().unwrap();
        let (h, g) = (hub.clone(), hub.clone());
        tokio::spawn(async move {
            b.subscribe(move |n, e| h.on_remote(n, e), move |r| g.on_missed(r))
                .await
        });
        tokio::spawn(hub.clone().publish_loop());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !hub.broker.as_ref().unwrap().is_up() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        hub
    }

    /// The room's messages (their number) queued for `s` so far.
    fn messages_sent(s: &Session) -> Vec<u64> {
        let mut r = s.outbox.try_reader().expect("no other reader");
        std::iter::from_fn(|| r.try_recv())
            .filter_map(|f| match f {
                Frame::Text(t) => t
                    .as_str()
                    .strip_prefix("42[\"new message\",")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok(),
                Frame::Binary(_) => None,
            })
            .collect()
    }

    /// Redis drops the publishing node's command connection: the publish in flight fails, and
    /// is published again instead of reaching only the publisher's own clients (another
    /// node's client would miss it while connected). Sent twice, delivered once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_publish_is_retried_and_reaches_other_nodes_once() {
        let redis = connscale_test_support::RedisServer::start();
        let (a, b) = (live_node(&redis, "a").await, live_node(&redis, "b").await);
        let s = connected(&b, "s1", false);
        assert!(b.join(&s, "r").await);
        let say = async |i: u64| {
            let p = SioPacket::event(serde_json::json!(["new message", i]), vec![]);
            a.broadcast(Some("r"), None, &p).await;
        };
        let mut got = Vec::new();
        let wait_for = async |n: usize, got: &mut Vec<u64>| {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while got.len() < n && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
                got.extend(messages_sent(&s));
            }
        };
        say(1).await;
        wait_for(1, &mut got).await;
        admin(&redis, &["CLIENT", "KILL", "TYPE", "normal"]).await;
        say(2).await;
        wait_for(2, &mut got).await;
        // A duplicate of 2 would be delivered before this.
        say(3).await;
        wait_for(3, &mut got).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        got.extend(messages_sent(&s));
        assert_eq!(got, [1, 2, 3], "b's client, while connected");
        assert!(!s.is_closed());
    }

    /// The same broadcast twice in a stream (a publish retried after it ran): delivered once;
    /// the same number from another origin or in another stream is another broadcast.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_copy_of_a_broadcast_is_dropped() {
        let redis = connscale_test_support::RedisServer::start();
        let (hub, b) = hub_on(&redis);
        let s = connected(&hub, "s1", false);
        assert!(hub.join(&s, "r").await);
        assert!(hub.join(&s, "q").await);
        let mut other = envelope("r", 1);
        other.o = "third".into();
        for (n, e) in [(1, envelope("r", 1)), (2, envelope("r", 1)), (3, other)] {
            deliver(&hub, &b, n, &e);
        }
        deliver(&hub, &b, 1, &envelope("q", 1));
        let got: Vec<(Option<u64>, Option<u64>)> = offsets_sent(&s)
            .iter()
            .map(|o| (o.room("r"), o.room("q")))
            .collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(!s.is_closed(), "no gap: the copy's number still counts");
    }

    #[test]
    fn offsets_are_the_last_argument() {
        assert_eq!(
            with_offset(r#"2["new message",{"a":1}]"#, "7"),
            r#"2["new message",{"a":1},"7"]"#
        );
        assert_eq!(
            with_offset(r#"51-["f",{"_placeholder":true,"num":0}]"#, "12.0a1b2c3d-4"),
            r#"51-["f",{"_placeholder":true,"num":0},"12.0a1b2c3d-4"]"#
        );
    }
}
