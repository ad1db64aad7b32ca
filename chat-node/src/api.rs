//! HTTP endpoints for web back ends and operators: broadcast, online count, drain, health,
//! readiness and Prometheus metrics.

use crate::hub::{FANOUT_BUCKETS_US, Hub};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use connscale_common::prometheus::{CONTENT_TYPE, Exposition, Kind};
use connscale_common::sio::SioPacket;
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Checks the bearer token; the error is the status and message to answer with.
fn authorized(hub: &Hub, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    let Some(token) = &hub.cfg.api_token else {
        return Err((
            StatusCode::FORBIDDEN,
            "api_token is not configured on this node",
        ));
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(token.as_str()) {
        Ok(())
    } else {
        Err((StatusCode::UNAUTHORIZED, "missing or wrong bearer token"))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastReq {
    event: String,
    #[serde(default)]
    data: serde_json::Value,
    room: Option<String>,
}

/// `POST /api/broadcast` {event, data, room?}: a system message to every matching client on
/// every node.
pub async fn broadcast(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Result<Json<BroadcastReq>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(r) = authorized(&hub, &headers) {
        return r.into_response();
    }
    let Ok(Json(req)) = body else {
        return (
            StatusCode::BAD_REQUEST,
            "expected JSON {\"event\": string, \"data\": any, \"room\"?: string}",
        )
            .into_response();
    };
    if req.event.is_empty() || req.event.len() > 128 {
        return (StatusCode::BAD_REQUEST, "event must be 1-128 characters").into_response();
    }
    let p = SioPacket::event(serde_json::json!([req.event, req.data]), vec![]);
    hub.broadcast(req.room.as_deref(), None, &p).await;
    Json(serde_json::json!({"ok": true, "node": hub.node})).into_response()
}

/// `GET /api/online`: connected clients across the cluster and per node.
pub async fn online(State(hub): State<Arc<Hub>>) -> Response {
    let (total, nodes) = hub.online();
    Json(serde_json::json!({"online": total, "users": hub.cluster_users(), "nodes": nodes}))
        .into_response()
}

/// `POST /api/drain`: stop accepting, disconnect clients over the drain window, then exit.
pub async fn drain(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&hub, &headers) {
        return r.into_response();
    }
    if !hub.draining.swap(true, Ordering::SeqCst) {
        crate::request_shutdown();
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"draining": true, "window_s": hub.cfg.drain_window.as_secs_f64()})),
    )
        .into_response()
}

pub async fn healthz() -> &'static str {
    "ok"
}

/// 503 while draining (the node should get no new clients) and at the hard cap.
pub async fn readyz(State(hub): State<Arc<Hub>>) -> Response {
    if hub.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if hub.connections() >= hub.cfg.max_connections {
        (StatusCode::SERVICE_UNAVAILABLE, "at connection cap").into_response()
    } else {
        "ready".into_response()
    }
}

/// `chat_disconnects_total{reason}`: clients the node disconnected because they could not get
/// every broadcast of their rooms in order (they recover on reconnect).
fn kicks(out: &mut Exposition, m: &crate::hub::Metrics) {
    const NAME: &str = "chat_disconnects_total";
    out.family(
        NAME,
        Kind::Counter,
        "Clients disconnected so that none silently misses a broadcast: slow (outbox full), \
         missed (the node's subscription missed broadcasts).",
    );
    out.sample(
        NAME,
        &[("reason", "slow")],
        m.kicked_slow.load(Ordering::Relaxed),
    );
    out.sample(
        NAME,
        &[("reason", "missed")],
        m.kicked_missed.load(Ordering::Relaxed),
    );
}

pub async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    let m = &hub.metrics;
    let mut out = Exposition::new();
    out.metric(
        "chat_connections",
        Kind::Gauge,
        "Connected clients on this node.",
        hub.connections() as u64,
    );
    out.metric(
        "chat_rooms",
        Kind::Gauge,
        "Rooms with at least one local member.",
        hub.room_count() as u64,
    );
    out.metric(
        "chat_users",
        Kind::Gauge,
        "Logged-in users on this node.",
        hub.users.load(Ordering::Relaxed).max(0) as u64,
    );
    out.metric(
        "chat_messages_in_total",
        Kind::Counter,
        "Socket.IO packets received.",
        m.messages_in.load(Ordering::Relaxed),
    );
    out.metric(
        "chat_messages_out_total",
        Kind::Counter,
        "Packets delivered to local clients.",
        m.messages_out.load(Ordering::Relaxed),
    );
    out.metric(
        "chat_malformed_total",
        Kind::Counter,
        "Connections closed for malformed or oversized packets.",
        m.malformed.load(Ordering::Relaxed),
    );
    out.metric(
        "chat_rate_limited_total",
        Kind::Counter,
        "Connections closed for flooding.",
        m.rate_limited.load(Ordering::Relaxed),
    );
    out.metric(
        "chat_refused_total",
        Kind::Counter,
        "Connections refused (cap or draining).",
        m.refused.load(Ordering::Relaxed),
    );
    out.metric(
        "chat_published_total",
        Kind::Counter,
        "Broadcasts published to Redis.",
        m.published.load(Ordering::Relaxed),
    );
    out.metric(
        "chat_publish_failed_total",
        Kind::Counter,
        "Broadcasts not published (Redis down).",
        m.publish_failed.load(Ordering::Relaxed),
    );
    out.metric(
        "chat_publish_retried_total",
        Kind::Counter,
        "Broadcasts published on a second or later attempt (the first timed out or failed).",
        m.publish_retried.load(Ordering::Relaxed),
    );
    out.metric(
        "chat_replay_queued_bytes",
        Kind::Gauge,
        "Bytes of recoveries' replays queued beyond their clients' max_queued_bytes (at most max_replay_bytes).",
        hub.replay_budget.used() as u64,
    );
    out.metric(
        "chat_redis_up",
        Kind::Gauge,
        "1 when Redis is reachable (always 0 without Redis).",
        u64::from(hub.broker.as_ref().is_some_and(|b| b.is_up())),
    );
    kicks(&mut out, m);
    fanout(&mut out, m);
    ([("content-type", CONTENT_TYPE)], out.finish()).into_response()
}

/// `chat_fanout_seconds`: publish-to-delivery latency, as a histogram.
fn fanout(out: &mut Exposition, m: &crate::hub::Metrics) {
    const NAME: &str = "chat_fanout_seconds";
    out.family(
        NAME,
        Kind::Histogram,
        "Publish-to-delivery latency of broadcasts (through Redis).",
    );
    let bucket = format!("{NAME}_bucket");
    let mut cum = 0;
    for (i, b) in FANOUT_BUCKETS_US.iter().enumerate() {
        cum += m.fanout_us[i].load(Ordering::Relaxed);
        let le = if *b == u64::MAX {
            "+Inf".to_string()
        } else {
            format!("{}", *b as f64 / 1e6)
        };
        out.sample(&bucket, &[("le", &le)], cum);
    }
    let sum = m.fanout_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
    out.sample(&format!("{NAME}_sum"), &[], sum);
    out.sample(
        &format!("{NAME}_count"),
        &[],
        m.fanout_count.load(Ordering::Relaxed),
    );
}
