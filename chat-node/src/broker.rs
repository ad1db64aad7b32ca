//! Cross-node fan-out and presence over Redis. Without Redis, the hub delivers locally only
//! (the in-process broker of a single node).
//!
//! Publishing uses a reconnecting connection manager; the subscriber runs its own loop that
//! reconnects with backoff capped at 1 s, so delivery resumes within ~2 s of Redis returning,
//! and logs each up/down change once. While Redis is unreachable, commands fail fast (one probe
//! per 500 ms), so a burst of clients is never served at the pace of Redis timeouts.
//!
//! Presence is one key per node with a TTL heartbeat, so a SIGKILLed node disappears from the
//! count when its key expires (no INCR/DECR to drift).
//!
//! Every room is a stream of its own: its channel, sequence and recovery stream share the hash
//! tag `{room:NAME}`, so in a Redis Cluster (`redis+cluster://seed1:port,seed2:port`, or
//! `rediss+cluster://`) rooms spread over the shards and each publish is one atomic script
//! (sequence, stream, publish) on the shard that owns its room: fan-out and recovery writes
//! scale with the shards. Broadcasts to every client, presence and recovery records keep the
//! one tag `{connscale}`. A node subscribes only to the rooms its clients are in (sharded
//! SSUBSCRIBE on each room's shard in a cluster, SUBSCRIBE on a single Redis), from the first
//! local member's join until the last one leaves, and knows how far each subscribed stream
//! has reached ([`Positions`]): that vector is a client's recovery offset (see
//! [`crate::offset`]).

use futures::StreamExt;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A broadcast as it travels between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// Origin node.
    pub o: String,
    /// Room, or all clients.
    pub r: Option<String>,
    /// Socket id to skip (the sender).
    pub x: Option<String>,
    /// The Socket.IO packet text.
    pub p: String,
    /// Binary attachments, base64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub b: Vec<String>,
    /// Publish time, Unix microseconds (for the fan-out latency histogram).
    pub t: u64,
    /// The origin's own number for this broadcast (0 from a node that does not number them),
    /// increasing in the order it publishes: lets the origin recognise a publish it gave up
    /// on but Redis ran anyway, and every node the second copy of a publish retried after it
    /// ran.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub i: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The all-clients stream's channel.
pub const CHANNEL: &str = "{connscale}:chat";
const SEQ_KEY: &str = "{connscale}:seq";
const STREAM_KEY: &str = "{connscale}:stream:*all";
const SESSION_PREFIX: &str = "{connscale}:session:";

/// The hash tag a room's keys and channel share (`{room:NAME}`): Redis Cluster hashes only
/// what is between the first `{` and the next `}`, and every key of one room starts the same,
/// so they share a slot whatever the name holds.
fn room_tag(room: &str) -> String {
    format!("{{room:{room}}}")
}

/// The channel a stream's broadcasts are published on (`None`: broadcasts to everyone).
pub fn channel(room: Option<&str>) -> String {
    match room {
        None => CHANNEL.to_string(),
        Some(r) => format!("{}:chat", room_tag(r)),
    }
}

/// The key of a stream's sequence.
pub fn seq_key(room: Option<&str>) -> String {
    match room {
        None => SEQ_KEY.to_string(),
        Some(r) => format!("{}:seq", room_tag(r)),
    }
}

/// The recovery stream of a room (`None`: broadcasts to everyone).
pub fn stream_key(room: Option<&str>) -> String {
    match room {
        None => STREAM_KEY.to_string(),
        Some(r) => format!("{}:stream", room_tag(r)),
    }
}

/// The room a channel carries (`Some(None)`: the all-clients channel; None: not ours).
fn channel_room(channel: &str) -> Option<Option<String>> {
    if channel == CHANNEL {
        return Some(None);
    }
    let inner = channel.strip_prefix("{room:")?.strip_suffix("}:chat")?;
    Some(Some(inner.to_string()))
}

/// One round trip, atomically: the stream's next sequence number, the envelope appended to
/// its bounded stream under that number (so each stream's ids increase), and the publish
/// ("seq|envelope") on its channel, by PUBLISH or, in a cluster, SPUBLISH (ARGV[5]). All three
/// keys share the stream's hash tag. Atomicity is what keeps every stream in order.
const PUBLISH_SCRIPT: &str = r#"
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], seq .. '-1', 'e', ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call(ARGV[5], ARGV[4], seq .. '|' .. ARGV[1])
return seq
"#;
/// Hashed once: `Script::new` takes the SHA-1 of its text, and every message names it by that.
static PUBLISH: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(PUBLISH_SCRIPT));

/// Whether Redis answered NOSCRIPT: it has lost the script (restarted, failed over to a replica
/// that never loaded it, or SCRIPT FLUSH).
fn no_script(r: &redis::RedisResult<u64>) -> bool {
    r.as_ref()
        .is_err_and(|e| e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
}

/// Whether an error means Redis (or one shard) could not be reached.
fn unreachable(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// How far the subscription has delivered each stream this node receives: the all-clients
/// stream and every room a local client is in. Clients' recovery offsets are read from it.
#[derive(Debug, Default, Clone)]
pub struct Positions {
    pub all: u64,
    pub rooms: HashMap<String, u64>,
}

impl Positions {
    /// A stream's position (0 for a room not received here).
    pub fn get(&self, room: Option<&str>) -> u64 {
        match room {
            None => self.all,
            Some(r) => self.rooms.get(r).copied().unwrap_or(0),
        }
    }
}

/// Every Redis connection's socket options: Nagle off. Publishes are small requests pipelined on
/// one connection, and with Nagle on each waits on the wire until Redis acknowledges the one
/// before it (Redis sets TCP_NODELAY on its side; redis-rs leaves it off by default).
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// A Redis Cluster client builder over `seeds` with [`tcp_settings`] and the AUTH password.
/// Retries are few and short: with redis-rs's defaults (16, from 1.28 s apart) a request to a
/// killed master retried for minutes, and the connection's queue of them held every other
/// request back long after its replica had taken over.
fn cluster_builder(
    seeds: &[String],
    password: Option<&str>,
) -> redis::cluster::ClusterClientBuilder {
    let b = redis::cluster::ClusterClientBuilder::new(seeds.to_vec())
        .tcp_settings(tcp_settings())
        .retries(3)
        .min_retry_wait(20)
        .max_retry_wait(250)
        .connection_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_secs(1));
    match password {
        Some(p) => b.password(p),
        None => b,
    }
}

/// What a disconnected socket leaves behind for its recovery.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionRecord {
    pub rooms: Vec<String>,
    pub username: Option<String>,
    pub sids: Vec<String>,
    /// The all-clients stream's position when the socket connected (or was recovered).
    pub since: u64,
    /// Each room's position when the socket joined it (or was recovered): replay in a room its
    /// offset does not name starts there.
    #[serde(default)]
    pub joined_at: BTreeMap<String, u64>,
}
/// One hash, node → "connections users expires": reading everyone's presence is one command
/// whatever else the keyspace holds (a SCAN for per-node keys walks every recovery record).
const PRESENCE_KEY: &str = "{connscale}:presence";
pub const PRESENCE_TTL_SECS: u64 = 10;
/// Writes a node's entry, expiring PRESENCE_TTL_SECS from Redis's own clock (nodes' clocks
/// need not agree).
const HEARTBEAT_SCRIPT: &str = r"
local now = tonumber(redis.call('TIME')[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. (now + tonumber(ARGV[3])))
return 1";
/// Every live entry; expired ones (a crashed node's) are removed on the way.
const PRESENCE_SCRIPT: &str = r"
local now = tonumber(redis.call('TIME')[1])
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local exp = tonumber(string.match(all[i + 1], '(%d+)$'))
  if exp and exp >= now then
    table.insert(out, all[i])
    table.insert(out, all[i + 1])
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out";

/// Where a node's Redis is.
#[allow(clippy::large_enum_variant)] // one per process
enum Backend {
    Single(redis::Client),
    Cluster {
        client: redis::cluster::ClusterClient,
        seeds: Vec<String>,
        password: Option<String>,
    },
}

/// A command connection to either backend: both reconnect on their own.
#[derive(Clone)]
enum Conn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The seed URLs of a `redis+cluster://a:1,b:2` (or `rediss+cluster://`) URL; None for a
/// plain one.
pub fn cluster_seeds(url: &str) -> Option<Vec<String>> {
    let (scheme, rest) = url.split_once("://")?;
    let base = scheme.strip_suffix("+cluster")?;
    Some(
        rest.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| format!("{base}://{s}"))
            .collect(),
    )
}

/// The Redis side of a node.
pub struct RedisBroker {
    backend: Backend,
    conn: std::sync::Mutex<Option<Conn>>,
    /// Held by the one task creating the command connection; the others fail fast.
    connecting: tokio::sync::Mutex<()>,
    /// 0 = not yet known, 1 = up, 2 = down: the first failure is logged too.
    state: AtomicU8,
    /// Commands may try Redis again from this time (ms on `clock`); 0 = no failure pending.
    retry_at_ms: AtomicU64,
    clock: Instant,
    /// Rooms this node's clients are in: the subscription's channels besides [`CHANNEL`].
    wanted: std::sync::Mutex<HashSet<String>>,
    /// The subscription connection and the channels subscribed on it; held across each
    /// (un)subscribe, so changes to one room happen in the order they were asked for.
    subs: tokio::sync::Mutex<Subs>,
    /// See [`RedisBroker::positions`].
    positions: std::sync::RwLock<Positions>,
}

/// The subscription connection's side that changes what it receives.
#[derive(Clone)]
enum SubConn {
    Single(redis::aio::PubSubSink),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl SubConn {
    async fn subscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            SubConn::Single(s) => s.subscribe(channels).await,
            // SSUBSCRIBE takes channels of one slot at a time.
            SubConn::Cluster(c) => {
                for ch in channels {
                    c.ssubscribe(ch).await?;
                }
                Ok(())
            }
        }
    }

    async fn unsubscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            SubConn::Single(s) => s.unsubscribe(channel).await,
            SubConn::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }
}

/// The live subscription, if any, and the channels it has confirmed.
#[derive(Default)]
struct Subs {
    conn: Option<SubConn>,
    active: HashSet<String>,
}

/// After a connectivity failure, how long commands fail fast before one of them probes again.
const RETRY_MS: u64 = 500;
/// How long a probe may take before another caller may probe.
const PROBE_BUDGET_MS: u64 = 1_500;
/// How often a recovery read is tried before the stream counts as unreadable.
const READ_TRIES: u32 = 3;

impl RedisBroker {
    /// Validates the URL; connecting happens lazily and is retried for ever. `password` is the
    /// AUTH password (the `redis-auth-token` credential): set on the connection info, never
    /// spliced into the URL, so any character is safe in it. It replaces one in the URL.
    pub fn new(url: &str, password: Option<&str>) -> Result<Self, String> {
        if url.starts_with("rediss") {
            // Both ring and aws-lc-rs are linked, so rustls needs telling which to use (without
            // this, the first TLS connection panics). Err = one is installed already: fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let invalid = |e: redis::RedisError| {
            format!(
                "invalid redis_url {url:?}: {e} (expected redis://host:port, rediss://host:port, \
                 or redis+cluster://host:port,host:port for Redis Cluster)"
            )
        };
        let backend = match cluster_seeds(url) {
            Some(seeds) if seeds.is_empty() => {
                return Err(invalid(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "no cluster seed nodes",
                ))));
            }
            Some(seeds) => Backend::Cluster {
                client: cluster_builder(&seeds, password).build().map_err(invalid)?,
                seeds,
                password: password.map(str::to_string),
            },
            None => {
                use redis::IntoConnectionInfo;
                let mut info = url.into_connection_info().map_err(invalid)?;
                if let Some(p) = password {
                    let redis = info.redis_settings().clone().set_password(p);
                    info = info.set_redis_settings(redis);
                }
                Backend::Single(
                    redis::Client::open(info.set_tcp_settings(tcp_settings())).map_err(invalid)?,
                )
            }
        };
        Ok(Self {
            backend,
            conn: std::sync::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            state: AtomicU8::new(0),
            retry_at_ms: AtomicU64::new(0),
            clock: Instant::now(),
            wanted: std::sync::Mutex::default(),
            subs: tokio::sync::Mutex::default(),
            positions: std::sync::RwLock::default(),
        })
    }

    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Relaxed) == 1
    }

    fn mark(&self, up: bool, why: &str) {
        let new = if up { 1 } else { 2 };
        if self.state.swap(new, Ordering::Relaxed) != new {
            if up {
                tracing::info!("redis reachable: cross-node delivery on");
            } else {
                tracing::warn!(
                    error = why,
                    "redis unreachable: serving local clients only, retrying"
                );
            }
        }
    }

    /// The channel's publish command for this backend.
    fn publish_command(&self) -> &'static str {
        match self.backend {
            Backend::Single(_) => "PUBLISH",
            Backend::Cluster { .. } => "SPUBLISH",
        }
    }

    async fn connect(&self) -> redis::RedisResult<Conn> {
        match &self.backend {
            Backend::Single(c) => redis::aio::ConnectionManager::new(c.clone())
                .await
                .map(Conn::Single),
            Backend::Cluster { client, .. } => {
                client.get_async_connection().await.map(Conn::Cluster)
            }
        }
    }

    fn current_conn(&self) -> Option<Conn> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The command connection, created on first use by one task at a time.
    async fn manager(&self) -> Option<Conn> {
        if let Some(c) = self.current_conn() {
            return Some(c);
        }
        let _one = self.connecting.try_lock().ok()?;
        if let Some(c) = self.current_conn() {
            return Some(c);
        }
        match tokio::time::timeout(Duration::from_secs(1), self.connect()).await {
            Ok(Ok(m)) => {
                *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(m.clone());
                Some(m)
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.failed("connect timeout");
                None
            }
        }
    }

    /// Whether a command may go to Redis now. After a connectivity failure one caller per
    /// [`RETRY_MS`] probes and the rest fail fast, so a burst of connecting clients never
    /// queues behind an unreachable Redis (each would otherwise wait out the 1-s timeout).
    fn may_try(&self) -> bool {
        let at = self.retry_at_ms.load(Ordering::Relaxed);
        if at == 0 {
            return true;
        }
        let now = self.now_ms();
        now >= at
            && self
                .retry_at_ms
                .compare_exchange(
                    at,
                    now + PROBE_BUDGET_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    fn failed(&self, why: &str) {
        self.retry_at_ms
            .store(self.now_ms() + RETRY_MS, Ordering::Relaxed);
        self.mark(false, why);
    }

    async fn run<T>(&self, f: impl AsyncFnOnce(&mut Conn) -> redis::RedisResult<T>) -> Option<T> {
        if !self.may_try() {
            return None;
        }
        let mut m = self.manager().await?;
        match tokio::time::timeout(Duration::from_secs(1), f(&mut m)).await {
            Ok(Ok(v)) => {
                self.retry_at_ms.store(0, Ordering::Relaxed);
                Some(v)
            }
            Ok(Err(e))
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() =>
            {
                self.failed(&e.to_string());
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis command failed");
                None
            }
            Err(_) => {
                self.failed("timeout");
                None
            }
        }
    }

    /// Persists broadcasts for recovery and publishes them to the other nodes, in order per
    /// stream, one pipeline per stream, all at once; returns each one's sequence number in its
    /// stream, or None where it was not published (Redis or its shard unreachable, or it
    /// refused that one). A cluster pipeline must stay on one slot, and one shard failing over
    /// must not hold back the others' streams.
    pub async fn publish_batch(
        &self,
        envs: &[&Envelope],
        max_len: u64,
        ttl_secs: u64,
    ) -> Vec<Option<u64>> {
        let mut out = vec![None; envs.len()];
        if !self.may_try() {
            return out;
        }
        let Some(conn) = self.manager().await else {
            return out;
        };
        let groups = self.publish_groups(envs, max_len, ttl_secs);
        let runs = groups.iter().map(|(_, pipe)| {
            let mut c = conn.clone();
            async move {
                match tokio::time::timeout(Duration::from_secs(1), run_publish(pipe, &mut c)).await
                {
                    Ok(r) => r,
                    Err(_) => Err(redis::RedisError::from(std::io::Error::from(
                        std::io::ErrorKind::TimedOut,
                    ))),
                }
            }
        });
        let results = futures::future::join_all(runs).await;
        let mut reached = false;
        let mut why = String::new();
        for ((idx, _), r) in groups.iter().zip(results) {
            match r {
                Ok(replies) => {
                    reached = true;
                    for (i, reply) in idx.iter().zip(replies) {
                        out[*i] = reply
                            .inspect_err(
                                |e| tracing::warn!(error = %e, "redis refused a broadcast"),
                            )
                            .ok();
                    }
                }
                Err(e) if unreachable(&e) => why = e.to_string(),
                Err(e) => tracing::warn!(error = %e, "redis refused a batch of broadcasts"),
            }
        }
        match (reached, why.is_empty()) {
            (true, _) => self.retry_at_ms.store(0, Ordering::Relaxed),
            (false, false) => self.failed(&why),
            (false, true) => {}
        }
        out
    }

    /// The batch split by stream: each stream's envelopes (their indexes in `envs`, in order)
    /// and the pipeline of their publish scripts.
    fn publish_groups(
        &self,
        envs: &[&Envelope],
        max_len: u64,
        ttl_secs: u64,
    ) -> Vec<(Vec<usize>, redis::Pipeline)> {
        let mut order: Vec<Option<&str>> = Vec::new();
        let mut groups: HashMap<Option<&str>, (Vec<usize>, redis::Pipeline)> = HashMap::new();
        for (i, env) in envs.iter().enumerate() {
            let Ok(body) = serde_json::to_string(env) else {
                continue;
            };
            let room = env.r.as_deref();
            let (idx, pipe) = groups.entry(room).or_insert_with(|| {
                order.push(room);
                let mut p = redis::pipe();
                p.ignore_errors();
                (Vec::new(), p)
            });
            idx.push(i);
            pipe.add_command(
                redis::cmd("EVALSHA")
                    .arg(PUBLISH.get_hash())
                    .arg(2)
                    .arg(seq_key(room))
                    .arg(stream_key(room))
                    .arg(body)
                    .arg(max_len)
                    .arg(ttl_secs)
                    .arg(channel(room))
                    .arg(self.publish_command())
                    .to_owned(),
            );
        }
        order
            .into_iter()
            .filter_map(|r| groups.remove(&r))
            .collect()
    }

    /// Envelopes of a room's stream with sequence numbers above `after`, oldest first; None
    /// when the stream could not be read, after a few tries ([`READ_TRIES`], [`RETRY_MS`]
    /// apart: a shard failing over, a timeout under load): a recovery must not take
    /// "unreadable" for "nothing missed".
    pub async fn read_after(
        &self,
        room: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Option<Vec<(u64, Envelope)>> {
        for attempt in 1..=READ_TRIES {
            if let Some(rows) = self.read_after_once(room, after, limit).await {
                return Some(rows);
            }
            if attempt < READ_TRIES {
                tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
            }
        }
        tracing::warn!(room, after, "could not read a recovery stream");
        None
    }

    async fn read_after_once(
        &self,
        room: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Option<Vec<(u64, Envelope)>> {
        let key = stream_key(room);
        type Rows = Vec<(String, Vec<(String, String)>)>;
        let rows: Rows = self
            .run(async |c| {
                redis::cmd("XRANGE")
                    .arg(key)
                    .arg(format!("({after}-1"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(c)
                    .await
            })
            .await?;
        Some(
            rows.into_iter()
                .filter_map(|(id, fields)| {
                    let seq = id.split('-').next()?.parse().ok()?;
                    let body = fields.into_iter().find(|(k, _)| k == "e")?.1;
                    Some((seq, serde_json::from_str(&body).ok()?))
                })
                .collect(),
        )
    }

    /// A stream's sequence in Redis (0 if it has none yet), or None if it cannot be read.
    async fn read_seq(&self, room: Option<&str>) -> Option<u64> {
        let key = seq_key(room);
        self.run(async |c| c.get::<_, Option<u64>>(key).await)
            .await
            .map(|v| v.unwrap_or(0))
    }

    pub async fn save_session(&self, pid: &str, rec: &SessionRecord, ttl_secs: u64) -> bool {
        let Ok(body) = serde_json::to_string(rec) else {
            return false;
        };
        let key = format!("{SESSION_PREFIX}{pid}");
        self.run(async |c| c.set_ex::<_, _, ()>(key, body, ttl_secs).await)
            .await
            .is_some()
    }

    /// Takes (and deletes) a session record, so a pid recovers at most once.
    pub async fn take_session(&self, pid: &str) -> Option<SessionRecord> {
        let key = format!("{SESSION_PREFIX}{pid}");
        let body: Option<String> = self
            .run(async |c| redis::cmd("GETDEL").arg(key).query_async(c).await)
            .await?;
        serde_json::from_str(&body?).ok()
    }

    /// Refreshes this node's presence entry: "connections users".
    pub async fn heartbeat(&self, node: &str, conns: usize, users: i64) -> bool {
        self.run(async |c| {
            redis::Script::new(HEARTBEAT_SCRIPT)
                .key(PRESENCE_KEY)
                .arg(node)
                .arg(format!("{conns} {users}"))
                .arg(PRESENCE_TTL_SECS)
                .invoke_async::<i64>(c)
                .await
        })
        .await
        .is_some()
    }

    /// Every live node's (connections, users).
    pub async fn presence(&self) -> Option<BTreeMap<String, (u64, i64)>> {
        let flat: Vec<String> = self
            .run(async |c| {
                redis::Script::new(PRESENCE_SCRIPT)
                    .key(PRESENCE_KEY)
                    .invoke_async(c)
                    .await
            })
            .await?;
        Some(
            flat.chunks_exact(2)
                .map(|kv| {
                    let mut it = kv[1].split_whitespace();
                    let conns = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                    let users = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                    (kv[0].clone(), (conns, users))
                })
                .collect(),
        )
    }

    /// How far the subscription has delivered each stream received here. Read it under the
    /// lock only briefly: the subscription waits for it to deliver.
    pub fn positions(&self) -> std::sync::RwLockReadGuard<'_, Positions> {
        self.positions.read().unwrap_or_else(|e| e.into_inner())
    }

    fn positions_mut(&self) -> std::sync::RwLockWriteGuard<'_, Positions> {
        self.positions.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The all-clients stream's position: where a connecting client starts.
    pub fn current_seq(&self) -> u64 {
        self.positions().all
    }

    /// Whether this node receives a stream (every room a local client is in, and all-clients).
    pub fn receives(&self, room: Option<&str>) -> bool {
        room.is_none_or(|r| self.positions().rooms.contains_key(r))
    }

    fn wanted(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that a local client is (or no local client is any longer) in `room`; the hub
    /// calls it as its room's first member joins and its last one leaves, in that order, and
    /// then [`watch`](Self::watch) or [`unwatch`](Self::unwatch).
    pub fn want(&self, room: &str, wanted: bool) {
        let mut w = self.wanted();
        if wanted {
            w.insert(room.to_string());
        } else {
            w.remove(room);
        }
    }

    /// Subscribes to a wanted room unless it is subscribed already, and reads how far its
    /// stream is; returns once the subscription is confirmed, so a client that has joined gets
    /// every broadcast published after. Redis down: returns at once, and the subscription
    /// takes the room when it reconnects. False when the subscription connection is up but
    /// the SUBSCRIBE failed or timed out: the room's broadcasts from other nodes would not
    /// arrive, so the caller must not count a client in it.
    pub async fn watch(&self, room: &str) -> bool {
        let mut subs = self.subs.lock().await;
        let ch = channel(Some(room));
        if !self.wanted().contains(room) || subs.active.contains(&ch) {
            return true;
        }
        self.positions_mut()
            .rooms
            .entry(room.to_string())
            .or_insert(0);
        let Some(conn) = subs.conn.as_mut() else {
            return true;
        };
        let done = tokio::time::timeout(
            Duration::from_secs(1),
            conn.subscribe(std::slice::from_ref(&ch)),
        )
        .await;
        if !matches!(done, Ok(Ok(()))) {
            tracing::warn!(room, "could not subscribe to a room: the join is refused");
            return false;
        }
        subs.active.insert(ch);
        // After the subscription: every later broadcast arrives through it.
        if let Some(n) = self.read_seq(Some(room)).await {
            let mut p = self.positions_mut();
            let at = p.rooms.entry(room.to_string()).or_insert(0);
            *at = (*at).max(n);
        }
        true
    }

    /// Unsubscribes from a room no local client wants any longer and forgets its position.
    pub async fn unwatch(&self, room: &str) {
        let mut subs = self.subs.lock().await;
        if self.wanted().contains(room) {
            return;
        }
        let ch = channel(Some(room));
        if subs.active.remove(&ch)
            && let Some(conn) = subs.conn.as_mut()
        {
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.unsubscribe(&ch)).await;
        }
        self.positions_mut().rooms.remove(room);
    }

    /// A fresh subscription connection: subscribes to everything wanted and re-reads every
    /// stream's position (set, not raised: a Redis that came back empty counts again).
    async fn attach(&self, conn: SubConn) -> Result<(), String> {
        let mut subs = self.subs.lock().await;
        subs.active.clear();
        subs.conn = Some(conn.clone());
        let rooms: Vec<String> = self.wanted().iter().cloned().collect();
        let mut channels = vec![CHANNEL.to_string()];
        channels.extend(rooms.iter().map(|r| channel(Some(r))));
        let mut c = conn;
        c.subscribe(&channels).await.map_err(|e| e.to_string())?;
        self.mark(true, "");
        subs.active.extend(channels);
        self.resync(None).await;
        for r in &rooms {
            self.resync(Some(r)).await;
        }
        Ok(())
    }

    /// Sets a stream's position from Redis (after a (re)subscription to it), unless this node
    /// has delivered some of it already and Redis has moved on since. Then the broadcasts in
    /// between were either published after the subscription (on their way through it, in
    /// order) or before it (missed): the next delivery tells which, as a jump past the kept
    /// position ([`Step::AfterGap`]), before anything later reaches a client. Judging now
    /// would disconnect the clients of every room whose broadcasts are merely in flight.
    async fn resync(&self, room: Option<&str>) {
        let Some(n) = self.read_seq(room).await else {
            return;
        };
        let mut p = self.positions_mut();
        let at = match room {
            None => &mut p.all,
            Some(r) => p.rooms.entry(r.to_string()).or_insert(0),
        };
        // 0: nothing delivered yet; below: a Redis that came back empty counts again.
        if *at == 0 || n < *at {
            *at = n;
        } else if n > *at {
            tracing::debug!(
                room,
                was = *at,
                now = n,
                "stream moved on while resubscribing"
            );
        }
    }

    /// The subscription connection is gone: nothing is subscribed until the next attach.
    async fn detach(&self) {
        let mut subs = self.subs.lock().await;
        subs.conn = None;
        subs.active.clear();
    }

    /// Receives other nodes' broadcasts (with their sequence numbers) for ever, reconnecting
    /// after any failure with backoff capped at 1 s. Each stream's position is advanced before
    /// its broadcast is delivered; broadcasts of rooms no longer received here are dropped.
    /// A stream whose broadcasts did not all arrive (a sequence jump, also past what was
    /// published while the subscription was down: see `resync`) is passed to `missed` before
    /// the next is delivered: its clients here can no longer get every broadcast in order.
    pub async fn subscribe(&self, deliver: impl Fn(u64, Envelope), missed: impl Fn(Option<&str>)) {
        let deliver = |seq, env: Envelope| match self.advance(env.r.as_deref(), seq) {
            Step::Skip => {}
            Step::Next => deliver(seq, env),
            Step::AfterGap => {
                tracing::warn!(
                    room = env.r.as_deref(),
                    seq,
                    "broadcasts missing before this one"
                );
                missed(env.r.as_deref());
                deliver(seq, env)
            }
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            let ended = match &self.backend {
                Backend::Single(client) => self.listen_single(client, &deliver).await,
                Backend::Cluster {
                    seeds, password, ..
                } => {
                    self.listen_cluster(seeds, password.as_deref(), &deliver)
                        .await
                }
            };
            self.detach().await;
            match ended {
                // It was subscribed: retry soon.
                Ok(()) => {
                    self.mark(false, "subscription connection closed");
                    backoff = Duration::from_millis(100);
                }
                Err(why) => self.mark(false, &why),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Raises a stream's position to `seq`, and says whether broadcasts are missing before it.
    pub(crate) fn advance(&self, room: Option<&str>, seq: u64) -> Step {
        let mut p = self.positions_mut();
        let at = match room {
            None => &mut p.all,
            Some(r) => match p.rooms.get_mut(r) {
                Some(at) => at,
                None => return Step::Skip,
            },
        };
        // At 0 the position is not known yet (a room just subscribed, read right after).
        let gap = *at != 0 && seq > *at + 1;
        *at = (*at).max(seq);
        if gap { Step::AfterGap } else { Step::Next }
    }

    /// One subscription to a single Redis, until its connection ends; Err if it never began.
    async fn listen_single(
        &self,
        client: &redis::Client,
        deliver: &impl Fn(u64, Envelope),
    ) -> Result<(), String> {
        let ps = tokio::time::timeout(Duration::from_secs(1), client.get_async_pubsub())
            .await
            .map_err(|_| "connect timeout".to_string())?
            .map_err(|e| e.to_string())?;
        let (sink, mut stream) = ps.split();
        self.attach(SubConn::Single(sink)).await?;
        while let Some(msg) = stream.next().await {
            if let Ok(body) = msg.get_payload::<String>() {
                on_broadcast(&body, deliver);
            }
        }
        Ok(())
    }

    /// One sharded subscription over RESP3 pushes, until the connection ends; Err if it never
    /// began. The cluster connection resubscribes by itself after a node's connection drops or
    /// a slot moves (a failover): each confirmation re-reads that stream's position.
    async fn listen_cluster(
        &self,
        seeds: &[String],
        password: Option<&str>,
        deliver: &impl Fn(u64, Envelope),
    ) -> Result<(), String> {
        use redis::{FromRedisValue, PushKind};
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let client = cluster_builder(seeds, password)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx)
            .build()
            .map_err(|e| e.to_string())?;
        let conn = tokio::time::timeout(Duration::from_secs(1), client.get_async_connection())
            .await
            .map_err(|_| "connect timeout".to_string())?
            .map_err(|e| e.to_string())?;
        self.attach(SubConn::Cluster(conn.clone())).await?;
        // Since a node's connection was lost, if it was: its channels come back once the
        // connection learns who serves their slots now (see `poke_shards`).
        let mut lost = false;
        let mut tick = tokio::time::interval(POKE_EVERY);
        loop {
            tokio::select! {
                push = rx.recv() => {
                    let Some(push) = push else { break };
                    match push.kind {
                        PushKind::SMessage => {
                            let body = push.data.into_iter().nth(1);
                            if let Some(Ok(body)) = body.map(String::from_redis_value) {
                                on_broadcast(&body, deliver);
                            }
                        }
                        PushKind::SSubscribe => {
                            self.mark(true, "");
                            let ch = push.data.into_iter().next().map(String::from_redis_value);
                            if let Some(Ok(Some(room))) = ch.map(|c| c.map(|c| channel_room(&c))) {
                                self.resync(room.as_deref()).await;
                            }
                        }
                        PushKind::Disconnection => {
                            self.mark(false, "cluster node connection lost");
                            lost = true;
                        }
                        _ => {}
                    }
                }
                _ = tick.tick(), if lost => lost = !self.rejoin_shards(&conn).await,
            }
        }
        Ok(())
    }

    /// After a shard's connection was lost: true once every subscribed channel is subscribed
    /// again where its slot is served now. redis-rs resubscribes after a slot-map refresh,
    /// but not on a replica promoted after that refresh (seen in the failover test: no
    /// subscriber on the new master), so this waits until the connection reaches every
    /// stream's shard (`poke_shards`), then subscribes everything again itself (a channel
    /// subscribed twice on one connection is still one subscription).
    async fn rejoin_shards(&self, conn: &redis::cluster_async::ClusterConnection) -> bool {
        if !self.poke_shards(conn).await {
            return false;
        }
        let subs = self.subs.lock().await;
        let mut c = conn.clone();
        for ch in &subs.active {
            let again = tokio::time::timeout(POKE_EVERY * 4, c.ssubscribe(ch)).await;
            if !matches!(again, Ok(Ok(()))) {
                return false;
            }
        }
        true
    }

    /// Reads every subscribed stream's sequence through the subscription's own connection;
    /// true once all answer. A command failing against a lost master makes the connection
    /// refresh its slot map, so once all answer it knows every slot's master.
    async fn poke_shards(&self, conn: &redis::cluster_async::ClusterConnection) -> bool {
        let mut keys = vec![seq_key(None)];
        keys.extend(self.wanted().iter().map(|r| seq_key(Some(r))));
        let reads = keys.into_iter().map(|k| {
            let mut c = conn.clone();
            async move {
                let get = c.get::<_, Option<u64>>(k);
                matches!(tokio::time::timeout(POKE_EVERY, get).await, Ok(Ok(_)))
            }
        });
        futures::future::join_all(reads)
            .await
            .into_iter()
            .all(|ok| ok)
    }
}

/// What the subscription does with a broadcast, given how far its stream had reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Its room is not received here (any longer): dropped.
    Skip,
    /// Delivered: nothing of its stream is missing before it.
    Next,
    /// Delivered, after the clients that missed what came between are told.
    AfterGap,
}

/// How often a subscription that lost a shard's connection pokes the shards.
const POKE_EVERY: Duration = Duration::from_millis(250);

/// One stream's pipeline of publish scripts. Redis restarted or failed over to a replica
/// without the script: its cache is empty and nothing ran. Load, then once more (not when
/// only some ran: those would run twice).
async fn run_publish(
    pipe: &redis::Pipeline,
    c: &mut Conn,
) -> redis::RedisResult<Vec<redis::RedisResult<u64>>> {
    let r: Vec<redis::RedisResult<u64>> = pipe.query_async(c).await?;
    if !r.is_empty() && r.iter().all(no_script) {
        PUBLISH.load_async(c).await?;
        return pipe.query_async(c).await;
    }
    Ok(r)
}

/// One "seq|envelope" message from a channel, delivered or (malformed) logged and dropped.
fn on_broadcast(body: &str, deliver: &impl Fn(u64, Envelope)) {
    let parsed = body.split_once('|').and_then(|(seq, env)| {
        Some((
            seq.parse().ok()?,
            serde_json::from_str::<Envelope>(env).ok()?,
        ))
    });
    match parsed {
        Some((seq, env)) => deliver(seq, env),
        None => tracing::warn!("ignoring malformed broadcast from redis"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_seeds() {
        assert_eq!(
            cluster_seeds("redis+cluster://10.0.0.1:7000, 10.0.0.2:7001"),
            Some(vec![
                "redis://10.0.0.1:7000".into(),
                "redis://10.0.0.2:7001".into()
            ])
        );
        assert_eq!(
            cluster_seeds("rediss+cluster://c.example:6379"),
            Some(vec!["rediss://c.example:6379".into()])
        );
        assert_eq!(cluster_seeds("redis://127.0.0.1:6379"), None);
        assert!(RedisBroker::new("redis+cluster://", None).is_err());
        assert!(RedisBroker::new("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", None).is_ok());
    }

    /// A Redis with `requirepass`: the password (with `#` and `@`, which a URL would break on)
    /// goes on the connection info, so commands work; without it they fail (NOAUTH).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_auth_password_reaches_a_redis_that_requires_it() {
        const PASSWORD: &str = "p#ss@w:rd/?x";
        let redis = connscale_test_support::RedisServer::start();
        let url = format!("redis://127.0.0.1:{}", redis.port());
        let admin = redis::Client::open(url.as_str()).unwrap();
        let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg(PASSWORD)
            .query_async(&mut admin)
            .await
            .unwrap();
        let rec = SessionRecord::default();
        let with = RedisBroker::new(&url, Some(PASSWORD)).unwrap();
        assert!(
            with.save_session("p1", &rec, 60).await,
            "saved with the password"
        );
        let without = RedisBroker::new(&url, None).unwrap();
        assert!(
            !without.save_session("p2", &rec, 60).await,
            "refused without it"
        );
    }

    /// A Redis that accepts connections and never answers: every attempt to use it costs the
    /// full 1-s timeout. 100 commands at once must not each wait out an attempt of their own
    /// (queued one after another, that was 100 s for the last one).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commands_fail_fast_while_redis_does_not_answer() {
        let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", hole.local_addr().unwrap());
        let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = attempts.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((c, _)) = hole.accept().await {
                seen.fetch_add(1, Ordering::Relaxed);
                held.push(c);
            }
        });
        let b = std::sync::Arc::new(RedisBroker::new(&url, None).unwrap());
        let rec = SessionRecord::default();
        let calls: Vec<_> = (0..100)
            .map(|i| {
                let (b, rec) = (b.clone(), rec.clone());
                tokio::spawn(async move { b.save_session(&format!("p{i}"), &rec, 60).await })
            })
            .collect();
        for c in calls {
            assert!(
                !c.await.unwrap(),
                "nothing can be saved in a Redis that never answers"
            );
        }
        let n = attempts.load(Ordering::Relaxed);
        assert!(
            n <= 3,
            "{n} connection attempts for 100 commands: callers queued behind each other's attempts"
        );
        assert!(!b.is_up());
    }

    /// A batch goes out in order, numbered consecutively, and into its room's stream; after
    /// the script cache empties (a restarted Redis) the next batch still goes out, all of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_publish_in_order_even_after_the_script_cache_empties() {
        let redis = connscale_test_support::RedisServer::start();
        let b = RedisBroker::new(&format!("redis://127.0.0.1:{}", redis.port()), None).unwrap();
        let env = |i: u64| Envelope {
            o: "n1".into(),
            r: Some("r1".into()),
            x: None,
            p: format!("2[\"m\",{i}]"),
            b: vec![],
            t: i,
            i,
        };
        let first: Vec<Envelope> = (1..=5).map(env).collect();
        let seqs = b
            .publish_batch(&first.iter().collect::<Vec<_>>(), 100, 60)
            .await;
        assert_eq!(seqs, (1..=5).map(Some).collect::<Vec<_>>());
        b.run(async |c| redis::cmd("SCRIPT").arg("FLUSH").query_async::<()>(c).await)
            .await
            .expect("SCRIPT FLUSH");
        let second: Vec<Envelope> = (6..=8).map(env).collect();
        let seqs = b
            .publish_batch(&second.iter().collect::<Vec<_>>(), 100, 60)
            .await;
        assert_eq!(seqs, (6..=8).map(Some).collect::<Vec<_>>());
        let kept: Vec<(u64, u64)> = b
            .read_after(Some("r1"), 0, 100)
            .await
            .expect("readable")
            .into_iter()
            .map(|(n, e)| (n, e.t))
            .collect();
        assert_eq!(kept, (1..=8).map(|i| (i, i)).collect::<Vec<_>>());
    }
}
