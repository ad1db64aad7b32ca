//! One client connection: an Engine.IO session carrying its Socket.IO sockets, one a namespace.
//!
//! Outgoing frames go through a queue bounded in bytes. The websocket transport drains it in the
//! connection's own task; the polling transport drains it on each long-poll GET. A slow client
//! whose queue fills is disconnected rather than allowed to grow memory without bound.

use crate::broker::SessionRecord;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use connscale_common::sio::{self, EioType, SioPacket};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Frames queued for a client.
#[derive(Debug, Clone)]
pub enum Frame {
    Text(Utf8Bytes),
    Binary(Bytes),
}

/// What a queued frame costs beyond its payload (its queue slot and buffer header), so a flood
/// of tiny frames is bounded too.
pub const FRAME_OVERHEAD: usize = 64;

impl Frame {
    fn cost(&self) -> usize {
        FRAME_OVERHEAD
            + match self {
                Frame::Text(t) => t.len(),
                Frame::Binary(b) => b.len(),
            }
    }
}

/// A client's outgoing frames: a FIFO bounded in bytes that holds no allocation while empty (an
/// idle client costs nothing here), read by one transport at a time through a [`Reader`].
///
/// The bound is in bytes, not frames, and generous (default 1 MiB, `max_queued_bytes`): a busy
/// room sends a client thousands of small frames a second, and a recovering client gets its
/// missed messages at once. A 256-frame bound cut such clients off after 128 ms of backlog;
/// they reconnected, recovered, overflowed again, and the node spent its CPU replaying. A
/// recovery's replay is queued outside the bound ([`Session::send_replayed`]).
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    limit: usize,
    ready: Notify,
    reader: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Queue {
    /// Each frame, and whether it is a replay's (see [`Outbox::push_replayed`]).
    frames: VecDeque<(Frame, bool)>,
    /// What the frames cost, replays' excluded: the bound applies to this.
    bytes: usize,
    /// The budget the replay's frames were taken from (given back as they are read).
    budget: Option<Arc<ReplayBudget>>,
}

/// Bytes of replays queued outside their clients' bounds across a node, and the most there
/// may be (`max_replay_bytes`): a client's replay is bounded by the recovery streams' length,
/// but every client of a drained node comes back at once, and one that never reads holds its
/// replay until its ping times out. Past the budget, a replay counts in its client's bound.
#[derive(Debug)]
pub struct ReplayBudget {
    used: AtomicUsize,
    max: usize,
}

impl ReplayBudget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Bytes queued now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u + n <= self.max).then_some(u + n)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// The queue was full: the frame was not queued.
#[derive(Debug)]
pub struct Full;

impl Outbox {
    /// An empty outbox holding at most `limit` bytes (see [`FRAME_OVERHEAD`]).
    pub fn new(limit: usize) -> Self {
        Self {
            queue: Mutex::default(),
            limit,
            ready: Notify::new(),
            reader: tokio::sync::Mutex::new(()),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, f: Frame) -> Result<(), Full> {
        {
            let mut q = self.queue();
            let cost = f.cost();
            if q.bytes + cost > self.limit {
                return Err(Full);
            }
            q.bytes += cost;
            q.frames.push_back((f, false));
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Queues a frame of a recovery's replay outside the bound, while `budget` has room: a
    /// replay counted in the bound cut off every client that missed more than the bound holds
    /// (1 MiB: 1.5 s of one busy room at 64,000 msg/s); each came back with the same offset
    /// and overflowed again. Past the budget it is queued as any frame.
    fn push_replayed(&self, f: Frame, budget: &Arc<ReplayBudget>) -> Result<(), Full> {
        if !budget.take(f.cost()) {
            return self.push(f);
        }
        {
            let mut q = self.queue();
            q.budget.get_or_insert_with(|| budget.clone());
            q.frames.push_back((f, true));
        }
        self.ready.notify_one();
        Ok(())
    }

    /// The reading end, once no other transport holds it.
    pub async fn reader(&self) -> Reader<'_> {
        Reader {
            outbox: self,
            _guard: self.reader.lock().await,
        }
    }

    /// The reading end, or None while another transport (a concurrent long-poll) holds it.
    pub fn try_reader(&self) -> Option<Reader<'_>> {
        let guard = self.reader.try_lock().ok()?;
        Some(Reader {
            outbox: self,
            _guard: guard,
        })
    }
}

impl Drop for Outbox {
    /// A closed session's unread replay goes back to the budget.
    fn drop(&mut self) {
        let q = self.queue.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = &q.budget {
            let unread: usize = q
                .frames
                .iter()
                .filter(|(_, r)| *r)
                .map(|(f, _)| f.cost())
                .sum();
            b.give(unread);
        }
    }
}

/// Exclusive access to an [`Outbox`]'s frames.
pub struct Reader<'a> {
    outbox: &'a Outbox,
    _guard: tokio::sync::MutexGuard<'a, ()>,
}

impl Reader<'_> {
    /// The next frame, waiting for one.
    pub async fn recv(&mut self) -> Frame {
        loop {
            if let Some(f) = self.try_recv() {
                return f;
            }
            // notify_one stores a permit when nobody waits, so a push between the check
            // above and this await is not missed.
            self.outbox.ready.notified().await;
        }
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Option<Frame> {
        let mut q = self.outbox.queue();
        let f = q.frames.pop_front().map(|(f, replayed)| {
            match (replayed, &q.budget) {
                (true, Some(b)) => b.give(f.cost()),
                _ => q.bytes -= f.cost(),
            }
            f
        });
        // The buffer is given back once drained, so idle clients hold none.
        if q.frames.is_empty() && q.frames.capacity() > 0 {
            q.frames = VecDeque::new();
        }
        f
    }
}

/// A token bucket: `rate` packets per second sustained, `burst` at once.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(burst: f64) -> Self {
        Self {
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token; false when the client is over its rate.
    pub fn take(&mut self, rate: f64, burst: f64) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Per-session Socket.IO state: the namespaces connected, and the chat's.
#[derive(Debug, Default)]
pub struct SocketState {
    /// Connected on `/`, the namespace the hub's fan-out delivers to (it reads this field).
    pub connected: bool,
    /// The other namespaces connected. See [`Self::is_connected`].
    pub namespaces: Vec<String>,
    /// The session's sockets were ended ([`Self::end`]).
    ended: bool,
    pub username: Option<String>,
    pub rooms: HashSet<String>,
    /// A binary packet waiting for its attachments.
    pub pending: Option<Box<SioPacket>>,
    /// Private session id for connection state recovery (issued only with Redis).
    pub pid: Option<String>,
    /// The all-clients stream's position when this socket connected (or where its last
    /// recovery's replay began): replay starts here if the client never received an offset.
    pub since: u64,
    /// Each room's position when this socket joined it (or where its last recovery's replay
    /// began in it): replay in a room its offset does not name starts here.
    pub joined_at: HashMap<String, u64>,
    /// The XOR of the rooms' [`room_hash`](crate::offset::room_hash)es: sockets in the same
    /// rooms have the same offset vector, so they share one frame of each broadcast.
    pub room_key: u64,
    /// Socket ids this client had before recoveries (its own messages are not replayed to it).
    pub old_sids: Vec<String>,
    /// While missed messages are replayed, live broadcasts wait here.
    pub recovering: Option<Vec<Buffered>>,
    /// After a recovery, per stream, what the replay read ahead of this node's subscription.
    pub replayed: Replayed,
}

/// A live broadcast held back while its client's recovery replays: its stream and sequence,
/// its packet text without an offset (the offset is written when it is sent), attachments.
#[derive(Debug)]
pub struct Buffered {
    pub room: Option<String>,
    pub seq: u64,
    pub text: String,
    pub attachments: Vec<Bytes>,
}

/// After a recovery, the sequences `(lo, hi]` of each stream that the replay read from Redis
/// before this node's subscription brought them (`lo`: where the subscription was). Its
/// copies of those are dropped; the first sequence outside the range ends it (one at or below
/// `lo` means Redis restarted and counts again). While any range is open, the client is
/// ahead of the node in that stream, so its offsets are its own (`hi` where it is ahead).
#[derive(Debug, Default)]
pub struct Replayed {
    pub all: Option<(u64, u64)>,
    pub rooms: HashMap<String, (u64, u64)>,
}

impl Replayed {
    pub fn is_empty(&self) -> bool {
        self.all.is_none() && self.rooms.is_empty()
    }

    fn range(&self, room: Option<&str>) -> Option<(u64, u64)> {
        match room {
            None => self.all,
            Some(r) => self.rooms.get(r).copied(),
        }
    }

    fn end(&mut self, room: Option<&str>) {
        match room {
            None => self.all = None,
            Some(r) => {
                self.rooms.remove(r);
            }
        }
    }

    /// Whether broadcast `seq` of a stream is a copy of one replayed already (then dropped).
    pub fn drops(&mut self, room: Option<&str>, seq: u64) -> bool {
        match self.range(room) {
            Some((lo, hi)) if lo < seq && seq <= hi => true,
            Some(_) => {
                self.end(room);
                false
            }
            None => false,
        }
    }

    /// Ends the ranges the node's subscription has caught up with (`reached` per stream).
    pub fn settle(&mut self, reached: impl Fn(Option<&str>) -> u64) {
        if self.all.is_some_and(|(_, hi)| reached(None) >= hi) {
            self.all = None;
        }
        self.rooms.retain(|r, (_, hi)| reached(Some(r)) < *hi);
    }

    /// Where the client is in a stream the node has reached `at`.
    pub fn ahead(&self, room: Option<&str>, at: u64) -> u64 {
        let hi = match room {
            None => self.all.map(|(_, hi)| hi),
            Some(r) => self.rooms.get(r).map(|(_, hi)| *hi),
        };
        hi.map_or(at, |hi| hi.max(at))
    }
}

impl SocketState {
    /// What a recovery of this socket (`sid`) needs: its rooms, name, every sid it had, and
    /// where replay may start in each stream.
    pub fn record(&self, sid: &str) -> SessionRecord {
        let mut sids = self.old_sids.clone();
        sids.push(sid.to_string());
        SessionRecord {
            rooms: self.rooms.iter().cloned().collect(),
            username: self.username.clone(),
            sids,
            since: self.since,
            joined_at: self
                .joined_at
                .iter()
                .map(|(r, n)| (r.clone(), *n))
                .collect(),
        }
    }

    /// A recovery that cannot replay everything: the socket goes on as a fresh session. What
    /// the client claimed (name, rooms' start points) is dropped, but not the sids it had: its
    /// own messages sent on those connections (read in their close linger, published after it
    /// came back) are still not its to get, recovered or not.
    pub fn refuse_recovery(&mut self) {
        self.recovering = None;
        self.username = None;
        self.joined_at.clear();
    }

    /// Whether the socket on `nsp` is connected.
    pub fn is_connected(&self, nsp: &str) -> bool {
        if nsp == "/" {
            self.connected
        } else {
            self.namespaces.iter().any(|n| n == nsp)
        }
    }

    /// Marks the socket on `nsp` connected or not; false when it already was.
    pub fn set_connected(&mut self, nsp: &str, on: bool) -> bool {
        if self.is_connected(nsp) == on {
            return false;
        }
        if nsp == "/" {
            self.connected = on;
        } else if on {
            self.namespaces.push(nsp.to_string());
        } else {
            self.namespaces.retain(|n| n != nsp);
        }
        true
    }

    /// Ends every socket of a finished session, once: the namespaces that were connected (`/`
    /// first), or None when it had ended already.
    pub fn end(&mut self) -> Option<Vec<String>> {
        if std::mem::replace(&mut self.ended, true) {
            return None;
        }
        let main = std::mem::take(&mut self.connected).then(|| "/".to_string());
        Some(
            main.into_iter()
                .chain(std::mem::take(&mut self.namespaces))
                .collect(),
        )
    }
}

/// One client.
#[derive(Debug)]
pub struct Session {
    pub sid: String,
    /// Frames for the client, drained by whichever transport is active.
    pub outbox: Outbox,
    pub state: Mutex<SocketState>,
    pub bucket: Mutex<Bucket>,
    /// [`clock_ms`] when the session opened.
    opened: u64,
    /// [`clock_ms`] of the last pong, and of the oldest unanswered ping (0: none).
    last_pong: AtomicU64,
    ping_sent: AtomicU64,
    /// [`clock_ms`] of the last ping sent (0: none yet).
    last_ping: AtomicU64,
    pub upgraded: AtomicBool,
    /// A websocket has come to upgrade this session (set until its probe fails): any other
    /// websocket with this sid is accepted and closed at once.
    pub upgrading: AtomicBool,
    pub websocket: AtomicBool,
    closed: AtomicBool,
    /// The client closed the session (an Engine.IO `1`): a pending long-poll is answered `6`.
    peer_closed: AtomicBool,
    /// Why the node disconnected the client, if for a reason /metrics counts (a [`Kick`]).
    kicked: std::sync::atomic::AtomicU8,
    /// [`clock_ms`] by which the client must CONNECT a namespace, or 0 once it has.
    connect_deadline: AtomicU64,
    pub close_notify: Notify,
}

/// Why the node disconnected a client that was keeping up with the protocol: counted in
/// /metrics (`chat_disconnects_total{reason}`), since the client then recovers what it missed
/// on reconnect instead of silently missing it while connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Its outbox was full: it reads slower than its rooms' traffic.
    Slow = 1,
    /// The node's subscription missed broadcasts of one of its streams (dropped or lagging).
    Missed = 2,
}

impl Session {
    /// A session whose outbox holds at most `queue_bytes`.
    pub fn new(sid: String, burst: f64, websocket: bool, queue_bytes: usize) -> Self {
        let now = clock_ms();
        Self {
            sid,
            opened: now,
            outbox: Outbox::new(queue_bytes),
            state: Mutex::new(SocketState::default()),
            bucket: Mutex::new(Bucket::new(burst)),
            last_pong: AtomicU64::new(now),
            ping_sent: AtomicU64::new(0),
            last_ping: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            upgrading: AtomicBool::new(false),
            websocket: AtomicBool::new(websocket),
            closed: AtomicBool::new(false),
            peer_closed: AtomicBool::new(false),
            kicked: std::sync::atomic::AtomicU8::new(0),
            connect_deadline: AtomicU64::new(0),
            close_notify: Notify::new(),
        }
    }

    /// Queues a frame; false (and the session is closed) if the client is too slow.
    pub fn send(&self, f: Frame) -> bool {
        if self.is_closed() {
            return false;
        }
        match self.outbox.push(f) {
            Ok(()) => true,
            Err(Full) => {
                tracing::debug!(sid = %self.sid, "client too slow: queue full, disconnecting");
                self.kick(Kick::Slow);
                false
            }
        }
    }

    /// Queues a frame of this client's replay, outside its bound while the node's `budget`
    /// has room (see [`Outbox::push_replayed`]); false (and the session is closed) as
    /// [`Self::send`].
    pub fn send_replayed(&self, f: Frame, budget: &Arc<ReplayBudget>) -> bool {
        if self.is_closed() {
            return false;
        }
        match self.outbox.push_replayed(f, budget) {
            Ok(()) => true,
            Err(Full) => {
                tracing::debug!(sid = %self.sid, "client too slow: replay past the budget, disconnecting");
                self.kick(Kick::Slow);
                false
            }
        }
    }

    pub fn send_text(&self, s: impl Into<Utf8Bytes>) -> bool {
        self.send(Frame::Text(s.into()))
    }

    /// Sends a Socket.IO packet (an Engine.IO message, then its binary attachments).
    pub fn send_packet(&self, p: &SioPacket) -> bool {
        let mut ok = self.send_text(format!("4{}", p.encode()));
        for a in &p.attachments {
            ok &= self.send(Frame::Binary(a.clone()));
        }
        ok
    }

    /// The client answered a ping.
    pub fn pong(&self) {
        self.last_pong.store(clock_ms(), Ordering::Relaxed);
        self.ping_sent.store(0, Ordering::Relaxed);
    }

    /// How long since the session opened.
    pub fn age(&self) -> Duration {
        Duration::from_millis(clock_ms().saturating_sub(self.opened))
    }

    /// How long since the last ping (or since the session opened).
    pub fn since_ping(&self) -> Duration {
        let last = self.last_ping.load(Ordering::Relaxed).max(self.opened);
        Duration::from_millis(clock_ms().saturating_sub(last))
    }

    /// Whether the client answered a ping at or after [`clock_ms`] `t`.
    pub fn ponged_since(&self, t: u64) -> bool {
        self.last_pong.load(Ordering::Relaxed) >= t
    }

    /// How long since the last pong (or since the session opened).
    pub fn since_pong(&self) -> Duration {
        Duration::from_millis(clock_ms().saturating_sub(self.last_pong.load(Ordering::Relaxed)))
    }

    /// Sends an Engine.IO ping; false, without sending, if the previous one has gone
    /// unanswered for longer than `timeout` (the caller closes the session).
    pub fn ping(&self, timeout: Duration) -> bool {
        let now = clock_ms();
        let sent = self.ping_sent.load(Ordering::Relaxed);
        if sent != 0 && now.saturating_sub(sent) > timeout.as_millis() as u64 {
            return false;
        }
        if sent == 0 {
            self.ping_sent.store(now.max(1), Ordering::Relaxed);
        }
        self.last_ping.store(now, Ordering::Relaxed);
        self.send_text(sio::eio_encode(EioType::Ping, ""));
        true
    }

    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            self.close_notify.notify_waiters();
            self.close_notify.notify_one();
        }
    }

    /// Disconnects the client for a reason /metrics counts; the first reason given is kept.
    /// False if the session was closed already.
    pub fn kick(&self, why: Kick) -> bool {
        let _ = self
            .kicked
            .compare_exchange(0, why as u8, Ordering::SeqCst, Ordering::SeqCst);
        let was_open = !self.is_closed();
        self.close();
        was_open
    }

    /// Why the node disconnected the client, if it kicked it.
    pub fn kicked(&self) -> Option<Kick> {
        match self.kicked.load(Ordering::SeqCst) {
            1 => Some(Kick::Slow),
            2 => Some(Kick::Missed),
            _ => None,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The client closed the session itself (an Engine.IO close packet).
    pub fn close_by_peer(&self) {
        self.peer_closed.store(true, Ordering::SeqCst);
        self.close();
    }

    pub fn closed_by_peer(&self) -> bool {
        self.peer_closed.load(Ordering::SeqCst)
    }

    /// The client must CONNECT a namespace within `timeout` of now (Socket.IO's connectTimeout).
    pub fn set_connect_deadline(&self, timeout: Duration) {
        let at = clock_ms() + timeout.as_millis() as u64;
        self.connect_deadline.store(at.max(1), Ordering::Relaxed);
    }

    /// A namespace is connected: the connect timeout no longer applies.
    pub fn connected_namespace(&self) {
        self.connect_deadline.store(0, Ordering::Relaxed);
    }

    /// Whether the connect timeout is over without a CONNECT.
    pub fn connect_overdue(&self, now_ms: u64) -> bool {
        let at = self.connect_deadline.load(Ordering::Relaxed);
        at != 0 && now_ms >= at
    }

    /// Rate check for one inbound packet.
    pub fn allow(&self, rate: f64, burst: f64) -> bool {
        self.bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(rate, burst)
    }

    pub fn lock_state(&self) -> std::sync::MutexGuard<'_, SocketState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Milliseconds on a monotonic clock since the process's first call (cheap to keep per session
/// in an atomic, where an `Instant` would need a lock).
pub fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A random session id (URL-safe base64 of 15 random bytes).
pub fn new_sid() -> String {
    use base64::Engine as _;
    let bytes: [u8; 15] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At 96,000 msg/s, clients that got a fresh session were sent thousands of their own
    /// messages from the connection before (their old sids were cleared with the rest).
    #[test]
    fn a_refused_recovery_keeps_the_sids_the_client_had() {
        let mut st = SocketState {
            old_sids: vec!["old".into()],
            username: Some("u".into()),
            recovering: Some(Vec::new()),
            joined_at: HashMap::from([("r".to_string(), 3)]),
            ..SocketState::default()
        };
        st.refuse_recovery();
        assert!(st.recovering.is_none() && st.username.is_none() && st.joined_at.is_empty());
        assert_eq!(st.old_sids, ["old"]);
        assert_eq!(st.record("new").sids, ["old", "new"]);
    }

    #[test]
    fn a_finished_sessions_namespaces_end_once() {
        let mut st = SocketState::default();
        assert!(st.set_connected("/custom", true));
        assert!(!st.set_connected("/custom", true), "already connected");
        assert!(st.set_connected("/", true));
        assert!(st.set_connected("/other", true) && st.set_connected("/other", false));
        assert_eq!(st.end(), Some(vec!["/".to_string(), "/custom".to_string()]));
        assert!(!st.is_connected("/") && !st.is_connected("/custom"));
        assert_eq!(st.end(), None, "a second finish has nothing to end");
    }

    #[test]
    fn bucket_allows_burst_then_limits() {
        let mut b = Bucket::new(5.0);
        let allowed = (0..20).filter(|_| b.take(1.0, 5.0)).count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn an_unanswered_ping_times_out_and_a_pong_clears_it() {
        let s = Session::new("x".into(), 1.0, true, 1 << 20);
        let timeout = Duration::from_millis(20);
        assert!(s.ping(timeout), "first ping goes out");
        std::thread::sleep(Duration::from_millis(40));
        assert!(!s.ping(timeout), "unanswered past the timeout");
        s.pong();
        assert!(s.ping(timeout), "answered: pinging again");
        let mut r = s.outbox.try_reader().expect("reader");
        assert!(matches!(r.try_recv(), Some(Frame::Text(t)) if t.as_str() == "2"));
    }

    #[tokio::test]
    async fn full_queue_closes_the_session() {
        let s = Session::new("x".into(), 1.0, true, 1 << 20);
        let frame = "x".repeat(1000);
        let fits = (1 << 20) / (frame.len() + FRAME_OVERHEAD);
        for _ in 0..fits {
            assert!(s.send_text(frame.clone()));
        }
        assert!(!s.send_text(frame));
        assert!(s.is_closed());
    }

    /// A replay ten times the bound is queued whole (from the node's budget), ahead of live
    /// frames that still get the whole bound; what is read goes back to the budget, not to
    /// the bound, and the first live frame over the bound still closes the session; a dropped
    /// session gives its unread replay back.
    #[test]
    fn a_replay_is_queued_outside_the_bound() {
        let cost = 100 + FRAME_OVERHEAD;
        let s = Session::new("x".into(), 1.0, true, 4 * cost);
        let budget = ReplayBudget::new(100 * cost);
        let frame = |c: char| Frame::Text(c.to_string().repeat(100).into());
        for _ in 0..40 {
            assert!(s.send_replayed(frame('r'), &budget));
        }
        assert_eq!(budget.used(), 40 * cost);
        for _ in 0..4 {
            assert!(s.send(frame('l')), "live frames get the whole bound");
        }
        let mut r = s.outbox.try_reader().expect("reader");
        let first: Vec<Frame> = std::iter::from_fn(|| r.try_recv()).take(30).collect();
        let replayed = |f: &Frame| matches!(f, Frame::Text(t) if t.starts_with('r'));
        assert!(first.iter().all(replayed));
        assert_eq!(budget.used(), 10 * cost, "what was read went back");
        drop(r);
        assert!(!s.send(frame('l')), "the bound is still full");
        assert!(s.is_closed());
        assert!(!s.send_replayed(frame('r'), &budget), "closed: not queued");
        drop(s);
        assert_eq!(budget.used(), 0, "the unread replay went back");
    }

    /// Past the node's budget a replay counts in its client's bound, and overflowing that
    /// closes the session as any frame does.
    #[test]
    fn a_replay_past_the_budget_counts_in_the_bound() {
        let cost = 100 + FRAME_OVERHEAD;
        let budget = ReplayBudget::new(2 * cost);
        let s = Session::new("x".into(), 1.0, true, 4 * cost);
        let frame = || Frame::Text("r".repeat(100).into());
        let queued = (0..10)
            .take_while(|_| s.send_replayed(frame(), &budget))
            .count();
        assert_eq!(queued, 6, "2 from the budget, then 4 in the bound");
        assert!(s.is_closed());
        assert_eq!(budget.used(), 2 * cost);
    }

    #[test]
    fn read_frames_free_their_room() {
        let o = Outbox::new(4 * (100 + FRAME_OVERHEAD));
        let frame = || Frame::Text("y".repeat(100).into());
        for _ in 0..3 {
            for _ in 0..4 {
                assert!(o.push(frame()).is_ok());
            }
            assert!(
                o.push(frame()).is_err(),
                "the fifth frame is over the bound"
            );
            let mut r = o.try_reader().expect("reader");
            while r.try_recv().is_some() {}
        }
    }
}
