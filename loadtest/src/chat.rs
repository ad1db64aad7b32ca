//! `loadtest chat`: clients in rooms exchange numbered messages; every receiver checks it got
//! each room-mate's messages exactly once and in order, and end-to-end latency goes into an HDR
//! histogram.

use crate::client::{self, Incoming};
use connscale_common::sio::{self, SioType};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct ChatConfig {
    pub targets: Vec<String>,
    pub clients: usize,
    pub rooms: usize,
    /// Messages per second across all clients.
    pub send_rate: f64,
    pub duration: Duration,
    pub sources: Vec<IpAddr>,
    /// Ends sending early when notified (the demo stops once the fleet is back at its minimum);
    /// `duration` stays the upper bound.
    pub stop_early: Option<Arc<tokio::sync::Notify>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatReport {
    pub clients_connected: usize,
    /// Clients that never connected, by cause (their messages are not expected by anyone).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub connect_failures: BTreeMap<String, usize>,
    /// Reconnections after a node went away (each with a recovery attempt).
    pub reconnects: usize,
    /// Reconnections the server answered as a fresh session (a new pid, socket.io-client's
    /// `recovered` false): what the client missed then is lost for good, not while
    /// connected, and it joined its room again.
    pub not_recovered: usize,
    pub sent: u64,
    /// Deliveries expected: each message × its room-mates (excluding the sender).
    pub expected_deliveries: u64,
    pub delivered: u64,
    /// Deliveries that never came (= `lost_for_good`).
    pub lost: u64,
    /// Deliveries a receiver skipped while connected: a sender's message missing between two
    /// of its messages received on one connection, that another room-mate did get (so the
    /// node had it). Must be 0: a client that cannot keep up is disconnected instead.
    pub lost_while_connected: u64,
    /// Deliveries that came on a reconnected connection and were sent before it opened: missed
    /// during a disconnect, then recovered.
    pub recovered_after_reconnect: u64,
    /// Deliveries that never came, however the receiver was connected (`lost`, by its new name).
    pub lost_for_good: u64,
    /// Messages the sender's node may never have taken in: those a sender sent on a connection
    /// after the last one of it that any room-mate got (it was disconnected with them on the
    /// wire). Their deliveries count in `lost_for_good`; a gap they leave is no loss while
    /// connected.
    pub never_delivered: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Deliveries of a client's own messages back to it (a broadcast leaves its sender out,
    /// also across the sender's reconnects): must be 0.
    pub echoed: u64,
    /// Deliveries of messages an earlier run sent (a node still working off an overload): not
    /// counted as this run's deliveries, duplicates or latencies.
    #[serde(skip_serializing_if = "is_zero")]
    pub from_earlier_runs: u64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
    /// The first few lost deliveries (receiver, sender, sequence number), to tell when and
    /// where they went missing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lost_samples: Vec<(u64, u64, u64)>,
    /// The first few deliveries lost while connected (receiver, sender, sequence number).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lost_while_connected_samples: Vec<(u64, u64, u64)>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// One receiver's view: per sender, the sequence numbers seen, and which connection they
/// came on (to tell a gap while connected from one across a reconnect).
#[derive(Default)]
struct Seen {
    /// The receiver's own client number (None in tests that do not care).
    me: Option<u64>,
    per_sender: HashMap<u64, FromSender>,
    echoed: u64,
    dup: u64,
    ooo: u64,
    stale: u64,
    /// The connection deliveries arrive on now (0: the first), and when it opened (µs).
    conn: u64,
    conn_since: u64,
    /// Deliveries sent before the connection they came on opened (see `recovered_after_reconnect`).
    recovered: u64,
    /// (sender, first, last, connection) numbers missing between two deliveries on one
    /// connection: judged at the end, once it is known whether they came later or any
    /// room-mate got them.
    holes: Vec<(u64, u64, u64, u64)>,
    /// The connections the server answered as a fresh session, and when their room join was
    /// acked (µs): a message sent before that may have been published before the join, and
    /// then the connection had no claim to it (see [`judge_holes`]).
    fresh_since: HashMap<u64, u64>,
    /// Deliveries recorded so far: each one's place in the order this receiver got them.
    arrived: u32,
    /// Per connection, the last delivery on it (sender, number).
    last_on: HashMap<u64, (u64, u64)>,
}

/// What one receiver has seen of one sender.
#[derive(Default)]
struct FromSender {
    /// The highest number seen.
    high: u64,
    seen: Seqs,
    /// Per number, where it came in this receiver's order of deliveries (1-based; 0: never).
    order: Vec<u32>,
    /// The highest number seen on the connection `(connection, number)`.
    on_conn: Option<(u64, u64)>,
}

impl Seen {
    /// Counts a delivery of `st` in run `run`; false when another run sent it (its latency
    /// says nothing about this one).
    fn record(&mut self, run: u64, st: &Stamp) -> bool {
        if st.r != run {
            self.stale += 1;
            return false;
        }
        if self.me == Some(st.s) {
            self.echoed += 1;
            return false;
        }
        let (conn, since) = (self.conn, self.conn_since);
        let e = self.per_sender.entry(st.s).or_default();
        let first = e.seen.is_empty();
        if !e.seen.insert(st.n) {
            self.dup += 1;
            return true;
        }
        if !first && st.n < e.high {
            self.ooo += 1;
        }
        e.high = e.high.max(st.n);
        self.arrived += 1;
        // Below the Seqs bound (insert refused wilder numbers), so this allocation is bounded.
        let i = st.n as usize;
        if e.order.len() <= i {
            e.order.resize(i + 1, 0);
        }
        e.order[i] = self.arrived;
        self.last_on.insert(conn, (st.s, st.n));
        if conn > 0 && st.t < since {
            self.recovered += 1;
        }
        match e.on_conn {
            Some((c, last)) if c == conn && st.n <= last => {}
            Some((c, last)) if c == conn && st.n > last + 1 => {
                self.holes.push((st.s, last + 1, st.n - 1, conn));
                e.on_conn = Some((conn, st.n));
            }
            _ => e.on_conn = Some((conn, st.n)),
        }
        true
    }

    /// Deliveries now come on a new connection, opened just now.
    fn reconnected(&mut self) {
        self.conn += 1;
        self.conn_since = now_us();
    }

    /// The connection deliveries arrive on now is a fresh session, in its room since `at` (µs).
    fn fresh(&mut self, at: u64) {
        self.fresh_since.insert(self.conn, at);
    }

    /// Where `sender`'s `n` came in this receiver's deliveries (None: never).
    fn place(&self, sender: u64, n: u64) -> Option<u32> {
        let p = *self.per_sender.get(&sender)?.order.get(n as usize)?;
        (p > 0).then_some(p)
    }

    fn got(&self, sender: u64, n: u64) -> bool {
        self.per_sender
            .get(&sender)
            .is_some_and(|e| e.seen.contains(&n))
    }
}

/// Sequence numbers above 2^26 (67 M messages from one client) are not ours.
const MAX_SEQ_WORDS: usize = 1 << 20;

/// A delivery as chat-node and the reference server send it:
/// `["new message", {"username": .., "message": {"s", "n", "t"}}, offset?]`. Parsed straight
/// into these types (no `Value` tree): the client reads every delivery and shares the cores
/// with the server it measures.
#[derive(Deserialize)]
struct Delivery<'a>(
    #[serde(borrow)] Cow<'a, str>,
    DeliveryBody,
    #[serde(default, borrow)] Option<Cow<'a, str>>,
);

#[derive(Deserialize)]
struct DeliveryBody {
    message: Stamp,
}

/// What each client puts in its messages: run, sender, sequence number, send time (µs). The
/// run id tells this run's messages from those of an earlier run that a node delivers late
/// (sequence numbers start at 0 in every run, so they would look like duplicates).
#[derive(Deserialize)]
struct Stamp {
    #[serde(default)]
    r: u64,
    s: u64,
    n: u64,
    t: u64,
}

/// A `new message` event on the default namespace, or None for any other packet.
fn parse_delivery(packet: &str) -> Option<Delivery<'_>> {
    let (h, data) = sio::decode_header(packet).ok()?;
    if h.kind != SioType::Event || h.nsp != "/" {
        return None;
    }
    let d: Delivery = serde_json::from_str(data).ok()?;
    (d.0 == "new message").then_some(d)
}

/// Where in each send interval client `i` of `clients` sends, as a fraction of the interval:
/// spread evenly, so the run's rate arrives steadily rather than as one burst per interval.
fn send_phase(i: usize, clients: usize) -> f64 {
    i as f64 / clients.max(1) as f64
}

/// A client's measured latencies (µs) on their way into the run's one histogram, added a batch
/// at a time: one histogram per client (about 140 KB of counters each, 200 clients) made
/// nearly every record a cache miss, and one shared histogram locked per delivery would make
/// the worker threads contend.
struct LatencyBatch {
    buf: Vec<u64>,
    hist: Arc<Mutex<Histogram<u64>>>,
}

impl LatencyBatch {
    const LEN: usize = 128;

    fn new(hist: Arc<Mutex<Histogram<u64>>>) -> Self {
        Self {
            buf: Vec::with_capacity(Self::LEN),
            hist,
        }
    }

    fn record(&mut self, us: u64) {
        self.buf.push(us.min(MAX_LATENCY_US));
        if self.buf.len() == Self::LEN {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let mut h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
        for us in self.buf.drain(..) {
            let _ = h.record(us);
        }
    }
}

/// The histogram's range: a delivery later than a minute is counted as a minute late.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A set of sequence numbers (dense from 0): one bit each.
#[derive(Default)]
struct Seqs {
    bits: Vec<u64>,
    count: u64,
}

impl Seqs {
    /// Adds `n`; false if it was already there.
    fn insert(&mut self, n: u64) -> bool {
        let (word, bit) = ((n / 64) as usize, 1u64 << (n % 64));
        if word >= MAX_SEQ_WORDS {
            // Not a number our clients sent (they count from 0): never allocate for it.
            return false;
        }
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let new = self.bits[word] & bit == 0;
        self.bits[word] |= bit;
        self.count += u64::from(new);
        new
    }

    fn contains(&self, n: &u64) -> bool {
        self.bits
            .get((n / 64) as usize)
            .is_some_and(|w| w & (1u64 << (n % 64)) != 0)
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }
}

pub async fn run(cfg: ChatConfig) -> Result<ChatReport, String> {
    let eps: Vec<_> = cfg
        .targets
        .iter()
        .map(|t| client::endpoint(t))
        .collect::<Result<_, _>>()?;
    if eps.is_empty() || cfg.clients < 2 || cfg.rooms == 0 {
        return Err("need at least one --target, 2 --clients and 1 --rooms".into());
    }
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3).map_err(|e| e.to_string())?,
    ));
    let run_id: u64 = rand::random::<u32>() as u64 + 1;
    let sent_by: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    // Per sender, the first number it sent on each of its connections, and when it sent each.
    let starts_by: Arc<Mutex<HashMap<u64, Vec<u64>>>> = Arc::default();
    let sent_at: Arc<Mutex<HashMap<u64, Vec<u64>>>> = Arc::default();
    let seen: Vec<Arc<Mutex<Seen>>> = (0..cfg.clients as u64)
        .map(|i| {
            Arc::new(Mutex::new(Seen {
                me: Some(i),
                ..Seen::default()
            }))
        })
        .collect();
    let ready = Arc::new(tokio::sync::Barrier::new(cfg.clients + 1));
    let stop = Arc::new(tokio::sync::Notify::new());
    let connected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reconnects = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let not_recovered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sending = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reconnecting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failures: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let per_client_rate = cfg.send_rate / cfg.clients as f64;
    let mut tasks = Vec::new();
    for i in 0..cfg.clients {
        let (addr, url) = eps[i % eps.len()].clone();
        let src = (!cfg.sources.is_empty()).then(|| cfg.sources[i % cfg.sources.len()]);
        let room = format!("room-{}", i % cfg.rooms);
        let (hist, sent_by, seen, ready, stop, connected, reconnects) = (
            hist.clone(),
            sent_by.clone(),
            seen[i].clone(),
            ready.clone(),
            stop.clone(),
            connected.clone(),
            reconnects.clone(),
        );
        let (sending, reconnecting, failures, starts_by, not_recovered, sent_at) = (
            sending.clone(),
            reconnecting.clone(),
            failures.clone(),
            starts_by.clone(),
            not_recovered.clone(),
            sent_at.clone(),
        );
        let (duration, cfg_clients) = (cfg.duration, cfg.clients);
        tasks.push(tokio::spawn(async move {
            let mut rec = client::Recovery::default();
            let ws = client::connect_recovering(addr, &url, src, Duration::from_secs(10), None).await;
            let (mut ws, pid) = match ws {
                Ok(x) => x,
                Err(f) => {
                    *failures.lock().unwrap_or_else(|e| e.into_inner()).entry(f.label()).or_default() += 1;
                    ready.wait().await;
                    return;
                }
            };
            rec.pid = pid;
            connected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            client::emit(&mut ws, json!(["add user", format!("c{i}")])).await;
            // Acked: nobody sends before every client is in its room.
            client::emit_acked(&mut ws, json!(["join-channel", room]), 0, Duration::from_secs(10), &mut Vec::new()).await;
            ready.wait().await;
            let gap = Duration::from_secs_f64(1.0 / per_client_rate.max(1e-6));
            let start = Instant::now() + gap.mul_f64(send_phase(i, cfg_clients));
            let mut next = tokio::time::Instant::from_std(start);
            let mut seq = 0u64;
            let mut starts = vec![0u64];
            let mut times = Vec::new();
            let mut latencies = LatencyBatch::new(hist);
            let stopped = stop.notified();
            tokio::pin!(stopped);
            let end = tokio::time::Instant::now() + duration;
            // One timer per client, re-armed after each send (not a new one per loop turn).
            let timer = tokio::time::sleep_until(next);
            tokio::pin!(timer);
            loop {
                tokio::select! {
                    _ = &mut timer, if next < end && sending.load(std::sync::atomic::Ordering::Relaxed) => {
                        let t = now_us();
                        let msg = json!(["new message", {"message": {"r": run_id, "s": i, "n": seq, "t": t}, "channel": room}]);
                        if client::emit(&mut ws, msg).await {
                            seq += 1;
                            times.push(t);
                        }
                        next += gap;
                        timer.as_mut().reset(next);
                    }
                    m = client::recv(&mut ws) => match m {
                        Incoming::Packet(t) => take_delivery(&t, run_id, &mut rec, &seen, &mut latencies),
                        Incoming::Closed => {
                            // The node went away (drain, crash): reconnect through the same
                            // target (a balancer routes elsewhere) and recover what was missed.
                            let mut again = None;
                            reconnecting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            for _ in 0..50 {
                                if let Ok(x) = client::connect_recovering(addr, &url, src, Duration::from_secs(5), Some(&rec)).await {
                                    again = Some(x);
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            reconnecting.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                            let Some((w, pid)) = again else { break };
                            ws = w;
                            seen.lock().unwrap_or_else(|e| e.into_inner()).reconnected();
                            starts.push(seq);
                            reconnects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if pid != rec.pid {
                                // Not recovered (no Redis, the window passed, or the server
                                // could not replay all it missed): start over.
                                rec.pid = pid;
                                rec.offset = None;
                                not_recovered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                client::emit(&mut ws, json!(["add user", format!("c{i}")])).await;
                                let mut before = Vec::new();
                                client::emit_acked(&mut ws, json!(["join-channel", room]), 0, Duration::from_secs(10), &mut before).await;
                                // The room's messages that came before the ack were delivered.
                                seen.lock().unwrap_or_else(|e| e.into_inner()).fresh(now_us());
                                for t in before {
                                    take_delivery(&t, run_id, &mut rec, &seen, &mut latencies);
                                }
                            }
                        }
                        _ => {}
                    },
                    _ = &mut stopped => break,
                }
            }
            latencies.flush();
            sent_by.lock().unwrap_or_else(|e| e.into_inner()).insert(i as u64, seq);
            starts_by.lock().unwrap_or_else(|e| e.into_inner()).insert(i as u64, starts);
            sent_at.lock().unwrap_or_else(|e| e.into_inner()).insert(i as u64, times);
        }));
    }
    ready.wait().await;
    match &cfg.stop_early {
        Some(early) => {
            tokio::select! {
                _ = tokio::time::sleep(cfg.duration) => {}
                _ = early.notified() => {}
            }
        }
        None => tokio::time::sleep(cfg.duration).await,
    }
    sending.store(false, std::sync::atomic::Ordering::Relaxed);
    // Deliveries in flight, and clients still reconnecting (then recovering what they missed).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settle = Instant::now() + Duration::from_secs(15);
    while reconnecting.load(std::sync::atomic::Ordering::Relaxed) > 0 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.notify_waiters();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let sent_by = sent_by.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut r = ChatReport {
        clients_connected: connected.load(std::sync::atomic::Ordering::Relaxed),
        reconnects: reconnects.load(std::sync::atomic::Ordering::Relaxed),
        not_recovered: not_recovered.load(std::sync::atomic::Ordering::Relaxed),
        connect_failures: failures.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        sent: sent_by.values().sum(),
        ..Default::default()
    };
    let seen: Vec<_> = seen
        .iter()
        .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()))
        .collect();
    let seen: Vec<&Seen> = seen.iter().map(|g| &**g).collect();
    let starts_by = starts_by.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let taken = taken_in(&seen, &sent_by, &starts_by, cfg.rooms);
    let sent_at = sent_at.lock().unwrap_or_else(|e| e.into_inner());
    judge_holes(&mut r, &seen, &taken, &sent_at, cfg.rooms);
    r.never_delivered = never_delivered(&taken);
    for (recv, s) in seen.iter().enumerate() {
        r.recovered_after_reconnect += s.recovered;
        r.duplicated += s.dup;
        r.out_of_order += s.ooo;
        r.echoed += s.echoed;
        r.from_earlier_runs += s.stale;
        for (&sender, &count) in &sent_by {
            if sender as usize == recv
                || sender as usize % cfg.rooms != recv % cfg.rooms
                || !sent_by.contains_key(&(recv as u64))
            {
                continue;
            }
            let got = s.per_sender.get(&sender).map_or(0, |e| e.seen.count);
            r.expected_deliveries += count;
            r.delivered += got.min(count);
            r.lost += count.saturating_sub(got);
            if got < count && r.lost_samples.len() < 20 {
                let have = s.per_sender.get(&sender).map(|e| &e.seen);
                r.lost_samples.extend(
                    (0..count)
                        .filter(|n| !have.is_some_and(|h| h.contains(n)))
                        .take(5)
                        .map(|n| (recv as u64, sender, n)),
                );
            }
        }
    }
    r.lost_for_good = r.lost;
    let h = hist.lock().unwrap_or_else(|e| e.into_inner());
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    r.latency_ms_p50 = ms(0.5);
    r.latency_ms_p99 = ms(0.99);
    r.latency_ms_p999 = ms(0.999);
    r.latency_ms_max = h.max() as f64 / 1000.0;
    Ok(r)
}

/// One packet a client received (the Engine.IO message text): a delivery updates the offset
/// it recovers from and is recorded with its latency; anything else is ignored.
fn take_delivery(
    text: &str,
    run_id: u64,
    rec: &mut client::Recovery,
    seen: &Mutex<Seen>,
    latencies: &mut LatencyBatch,
) {
    let Some(Delivery(_, DeliveryBody { message: stamp }, off)) =
        text.get(1..).and_then(parse_delivery)
    else {
        return;
    };
    if let Some(off) = off {
        let o = rec.offset.get_or_insert_with(String::new);
        o.clear();
        o.push_str(&off);
    }
    if seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .record(run_id, &stamp)
    {
        latencies.record(now_us().saturating_sub(stamp.t).max(1));
    }
}

/// Room-mates of receiver `recv` (its room, not itself) among `n` clients in `rooms` rooms.
fn room_mates(recv: usize, n: usize, rooms: usize) -> impl Iterator<Item = usize> {
    (0..n).filter(move |&o| o != recv && o % rooms == recv % rooms)
}

/// One connection of a sender: the numbers it sent on it (`first..=last`), and the highest of
/// them any room-mate received (None: none). The node reads a connection's messages in order,
/// so it took in every one up to `reached`; those after it may never have left the socket
/// (the sender was disconnected with them on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SentOn {
    first: u64,
    last: u64,
    reached: Option<u64>,
}

impl SentOn {
    /// Whether the node took `n` in (sent on this connection, at or before `reached`).
    fn took(&self, n: u64) -> bool {
        (self.first..=self.last).contains(&n) && self.reached.is_some_and(|m| n <= m)
    }

    /// How many of its messages the node may never have taken in.
    fn tail(&self) -> u64 {
        match self.reached {
            Some(m) => self.last - m,
            None => self.last - self.first + 1,
        }
    }
}

/// Each sender's connections with how far its room-mates got into each.
fn taken_in(
    seen: &[&Seen],
    sent_by: &HashMap<u64, u64>,
    starts_by: &HashMap<u64, Vec<u64>>,
    rooms: usize,
) -> HashMap<u64, Vec<SentOn>> {
    let mut out = HashMap::new();
    for (&sender, &count) in sent_by {
        let starts = starts_by.get(&sender).map_or(&[0][..], |v| v.as_slice());
        let ends = starts.iter().skip(1).copied().chain([count]);
        let mates: Vec<usize> = room_mates(sender as usize, seen.len(), rooms).collect();
        let conns = starts
            .iter()
            .zip(ends)
            .filter(|(a, end)| *a < end)
            .map(|(&first, end)| {
                let got = |n: &u64| mates.iter().any(|&o| seen[o].got(sender, *n));
                let reached = (first..end).rev().find(got);
                SentOn {
                    first,
                    last: end - 1,
                    reached,
                }
            })
            .collect();
        out.insert(sender, conns);
    }
    out
}

/// Counts each hole a receiver saw on one connection that it never filled, of messages the
/// node took in (see [`SentOn`]) while the connection was up: lost while connected. A sender
/// that did not report (it never finished) counts as having sent them all.
///
/// A sender's messages reach the room out of its own order across its reconnect (its old
/// connection's last ones, read in the server's close linger, are published after its new
/// connection's first), so a hole opens where they are still to come. Not counted, as the
/// connection was not up when they were published: those a room-mate got after the
/// receiver's last delivery on that connection (a room's clients get its broadcasts in one
/// order), and on a fresh session's connection those sent (`sent_at`) before its join was
/// acked (they may have been published before the join).
fn judge_holes(
    r: &mut ChatReport,
    seen: &[&Seen],
    taken: &HashMap<u64, Vec<SentOn>>,
    sent_at: &HashMap<u64, Vec<u64>>,
    rooms: usize,
) {
    for (recv, s) in seen.iter().enumerate() {
        for &(sender, lo, hi, conn) in &s.holes {
            let joined = s.fresh_since.get(&conn);
            let last = s.last_on.get(&conn).copied();
            let after_last = |n: u64| {
                let Some((ls, ln)) = last else { return false };
                room_mates(recv, seen.len(), rooms).any(|o| {
                    let m = seen[o];
                    m.place(sender, n)
                        .zip(m.place(ls, ln))
                        .is_some_and(|(a, b)| a > b)
                })
            };
            for n in lo..=hi {
                let took = || {
                    taken
                        .get(&sender)
                        .is_none_or(|conns| conns.iter().any(|c| c.took(n)))
                };
                let before_join = || {
                    let t = sent_at.get(&sender).and_then(|v| v.get(n as usize));
                    joined.is_some_and(|j| t.is_some_and(|t| t < j))
                };
                if s.got(sender, n) || !took() || before_join() || after_last(n) {
                    continue;
                }
                r.lost_while_connected += 1;
                if r.lost_while_connected_samples.len() < 20 {
                    r.lost_while_connected_samples
                        .push((recv as u64, sender, n));
                }
            }
        }
    }
}

/// Messages the node may never have taken in: each sender connection's tail after the last
/// one any room-mate received.
fn never_delivered(taken: &HashMap<u64, Vec<SentOn>>) -> u64 {
    taken.values().flatten().map(SentOn::tail).sum()
}

impl ChatReport {
    pub fn table(&self) -> String {
        let mut t = format!(
            "clients {}  sent {}  deliveries {}/{}\nlost {}  duplicated {}  out of order {}\nlatency ms  p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n",
            self.clients_connected,
            self.sent,
            self.delivered,
            self.expected_deliveries,
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.latency_ms_p50,
            self.latency_ms_p99,
            self.latency_ms_p999,
            self.latency_ms_max
        );
        t += &format!(
            "lost while connected {}  missed during a disconnect and recovered {}  lost for good {} \
             (never delivered to anyone {})\n",
            self.lost_while_connected,
            self.recovered_after_reconnect,
            self.lost_for_good,
            self.never_delivered
        );
        if self.echoed > 0 {
            t += &format!(
                "own messages delivered back to their sender: {}\n",
                self.echoed
            );
        }
        if self.reconnects > 0 {
            t += &format!(
                "reconnects {} (answered as a fresh session: {})\n",
                self.reconnects, self.not_recovered
            );
        }
        if !self.connect_failures.is_empty() {
            let causes: Vec<String> = self
                .connect_failures
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            t += &format!("clients that never connected: {}\n", causes.join(", "));
        }
        if self.from_earlier_runs > 0 {
            t += &format!(
                "deliveries of earlier runs' messages (not counted): {}\n",
                self.from_earlier_runs
            );
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_send_spread_over_the_whole_interval() {
        for clients in [2, 10, 200, 1000, 3000] {
            let mut phases: Vec<f64> = (0..clients).map(|i| send_phase(i, clients)).collect();
            phases.sort_by(f64::total_cmp);
            assert!(
                phases.iter().all(|p| (0.0..1.0).contains(p)),
                "{clients}: {phases:?}"
            );
            let widest = phases
                .windows(2)
                .map(|w| w[1] - w[0])
                .chain([1.0 - phases[clients - 1] + phases[0]])
                .fold(0.0, f64::max);
            assert!(
                widest <= 1.0 / clients as f64 + 1e-9,
                "{clients} clients: a gap of {widest}"
            );
        }
    }

    #[test]
    fn latencies_reach_the_histogram_in_batches_and_on_flush() {
        let hist = Arc::new(Mutex::new(
            Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap(),
        ));
        let mut b = LatencyBatch::new(hist.clone());
        for us in 1..=LatencyBatch::LEN as u64 + 3 {
            b.record(us);
        }
        assert_eq!(hist.lock().unwrap().len(), LatencyBatch::LEN as u64);
        b.record(u64::MAX);
        b.flush();
        let h = hist.lock().unwrap();
        assert_eq!(h.len(), LatencyBatch::LEN as u64 + 4);
        assert!(
            h.max() >= MAX_LATENCY_US && h.max() < 2 * MAX_LATENCY_US,
            "{}",
            h.max()
        );
    }

    #[test]
    fn deliveries_are_read_with_and_without_an_offset() {
        let with = r#"2["new message",{"username":"c1","message":{"r":3,"s":1,"n":7,"t":99},"channel":"room-1"},"42"]"#;
        let d = parse_delivery(with).expect("a delivery");
        let m = &d.1.message;
        assert_eq!((m.r, m.s, m.n, m.t), (3, 1, 7, 99));
        assert_eq!(d.2.as_deref(), Some("42"));
        let without = r#"2["new message",{"username":"c1","message":{"s":2,"n":0,"t":5}}]"#;
        assert!(parse_delivery(without).is_some_and(|d| d.2.is_none() && d.1.message.s == 2));
    }

    #[test]
    fn another_runs_messages_are_neither_duplicates_nor_latencies() {
        let st = |r, s, n| Stamp { r, s, n, t: 0 };
        let mut seen = Seen::default();
        assert!(seen.record(7, &st(7, 1, 0)));
        assert!(seen.record(7, &st(7, 1, 1)));
        // An earlier run's (or an old loadtest's, without a run id) numbers start at 0 too.
        assert!(!seen.record(7, &st(5, 1, 0)));
        assert!(!seen.record(7, &st(0, 1, 1)));
        assert_eq!((seen.dup, seen.ooo, seen.stale), (0, 0, 2));
        assert!(seen.record(7, &st(7, 1, 1)));
        assert!(seen.record(7, &st(7, 2, 3)) && seen.record(7, &st(7, 2, 2)));
        assert_eq!((seen.dup, seen.ooo, seen.stale), (1, 1, 2));
        assert_eq!(seen.per_sender[&1].seen.count, 2);
    }

    /// Receiver 0 skips sender 2's #2 on one connection while the node had it (a later one
    /// from the same sender connection arrived): lost while connected. It then misses #4
    /// across a reconnect and gets #5 (sent before the new connection opened) on it:
    /// recovered, #4 lost for good but not while connected. #7 and #8, the end of the sender's
    /// first connection that nobody got, never reached the node: no loss while connected.
    #[test]
    fn gaps_on_one_connection_are_told_from_gaps_across_a_reconnect() {
        let st = |n, t| Stamp { r: 1, s: 2, n, t };
        let (mut a, mut b) = (Seen::default(), Seen::default());
        for n in [0, 1, 3] {
            assert!(a.record(1, &st(n, 1)));
        }
        a.reconnected();
        // Sent before the new connection opened (one µs: now_us() taken just before
        // reconnected() can fall in the same microsecond, and then it would not be).
        let sent_at = a.conn_since - 1;
        for n in [5, 6, 9] {
            assert!(a.record(1, &st(n, if n == 5 { sent_at } else { now_us() + 1 })));
        }
        for n in [0, 1, 2, 3, 4, 5, 6, 9] {
            b.record(1, &st(n, 1));
        }
        let seen = [&a, &b, &Seen::default()];
        let sent_by: HashMap<u64, u64> = [(0, 0), (1, 0), (2, 10)].into_iter().collect();
        let starts: HashMap<u64, Vec<u64>> = [(2, vec![0, 9])].into_iter().collect();
        let taken = taken_in(&seen, &sent_by, &starts, 1);
        let mut r = ChatReport::default();
        judge_holes(&mut r, &seen, &taken, &HashMap::new(), 1);
        assert_eq!(r.lost_while_connected_samples, [(0, 2, 2)]);
        assert_eq!(r.lost_while_connected, 1);
        assert_eq!(a.recovered, 1);
        assert_eq!(never_delivered(&taken), 2, "#7 and #8");
    }

    /// Sender 1 reconnected, and its old connection's last messages (#3, #4) were published
    /// after its new connection's first (#5, #6). Receiver 0, on a fresh session that joined
    /// after #5 and #6 were published, got #3, #4, #7: #5 and #6 were sent before its join,
    /// not lost while connected. #8, sent after the join and missing between #7 and #9, is.
    #[test]
    fn a_fresh_session_owes_nothing_sent_before_its_join() {
        let st = |n| Stamp {
            r: 1,
            s: 1,
            n,
            t: 1,
        };
        let (mut a, mut b) = (Seen::default(), Seen::default());
        a.record(1, &st(0));
        a.reconnected();
        a.fresh(100);
        for n in [3, 4, 7, 9] {
            assert!(a.record(1, &st(n)));
        }
        for n in [0, 1, 2, 5, 6, 3, 4, 7, 8, 9] {
            b.record(1, &st(n));
        }
        let sender = Seen::default();
        let seen = [&a, &sender, &b];
        let sent_by: HashMap<u64, u64> = [(0, 0), (1, 10), (2, 0)].into_iter().collect();
        let starts: HashMap<u64, Vec<u64>> = [(1, vec![0, 5])].into_iter().collect();
        let sent_at: HashMap<u64, Vec<u64>> =
            [(1, vec![10, 20, 30, 40, 50, 60, 70, 150, 160, 170])]
                .into_iter()
                .collect();
        let taken = taken_in(&seen, &sent_by, &starts, 1);
        let mut r = ChatReport::default();
        judge_holes(&mut r, &seen, &taken, &sent_at, 1);
        assert_eq!(r.lost_while_connected_samples, [(0, 1, 8)]);
        let mut r = ChatReport::default();
        judge_holes(&mut r, &seen, &taken, &HashMap::new(), 1);
        assert_eq!(
            r.lost_while_connected_samples,
            [(0, 1, 5), (0, 1, 6), (0, 1, 8)],
            "without send times every hole counts"
        );
    }

    /// Sender 1 reconnected after #4 and its old connection's #1-#4 were published after its
    /// new connection's #5. Receiver 0 got #0, #5, #1 and was disconnected: #2-#4, which a
    /// room-mate got after #1, came after its connection ended, not while it was up. Had it
    /// also got #3 and #4, the #2 between them would be a loss while connected.
    #[test]
    fn what_came_after_a_connections_last_delivery_was_not_owed_to_it() {
        let st = |n| Stamp {
            r: 1,
            s: 1,
            n,
            t: 1,
        };
        let judge = |got: &[u64]| {
            let (mut a, mut b) = (Seen::default(), Seen::default());
            for &n in got {
                a.record(1, &st(n));
            }
            for n in [0, 5, 1, 2, 3, 4, 6] {
                b.record(1, &st(n));
            }
            let sender = Seen::default();
            let seen = [&a, &sender, &b];
            let sent_by: HashMap<u64, u64> = [(0, 0), (1, 7), (2, 0)].into_iter().collect();
            let starts: HashMap<u64, Vec<u64>> = [(1, vec![0, 5])].into_iter().collect();
            let taken = taken_in(&seen, &sent_by, &starts, 1);
            let mut r = ChatReport::default();
            judge_holes(&mut r, &seen, &taken, &HashMap::new(), 1);
            r.lost_while_connected_samples
        };
        assert_eq!(judge(&[0, 5, 1]), []);
        assert_eq!(judge(&[0, 5, 1, 3, 4]), [(0, 1, 2)]);
    }

    /// A client's own message delivered back to it is an echo, not a delivery from a sender
    /// (whose gaps would read as losses).
    #[test]
    fn a_clients_own_message_is_an_echo() {
        let mut s = Seen {
            me: Some(3),
            ..Seen::default()
        };
        let st = |s, n| Stamp { r: 1, s, n, t: 1 };
        assert!(!s.record(1, &st(3, 0)));
        assert!(s.record(1, &st(4, 0)));
        assert_eq!(s.echoed, 1);
        assert!(!s.per_sender.contains_key(&3));
    }

    /// A far-off number from a misbehaving server is neither a hole to walk nor a panic.
    #[test]
    fn a_wild_sequence_number_is_ignored() {
        let mut s = Seen::default();
        s.record(
            1,
            &Stamp {
                r: 1,
                s: 1,
                n: 0,
                t: 0,
            },
        );
        s.record(
            1,
            &Stamp {
                r: 1,
                s: 1,
                n: u64::MAX,
                t: 0,
            },
        );
        assert!(s.holes.is_empty());
    }

    #[test]
    fn other_packets_are_not_deliveries() {
        for p in [
            r#"2["user joined",{"username":"c1","numUsers":2}]"#,
            r#"2["new message",{"username":"c1","message":"hello"}]"#,
            r#"2/admin,["new message",{"message":{"s":1,"n":1,"t":1}}]"#,
            r#"30[]"#,
            "",
        ] {
            assert!(parse_delivery(p).is_none(), "{p}");
        }
    }
}
