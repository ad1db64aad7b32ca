//! The agent's HTTP endpoints: `/health` for the load balancer, `/metrics` for Prometheus.

use crate::{Shared, lock};
use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use connscale_common::prometheus::{CONTENT_TYPE, Exposition, Kind};

pub fn router(status: Shared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(status)
}

/// 200 below the cap while the service listens; 503 at the cap (until the hysteresis band),
/// while nothing listens on a counted port, while the controller's cordon holds, and while
/// draining. `state` says which (`ok`, `no_listener`, `full`, `cordoned`, `draining`);
/// `cordon_until` is the second the cordon holds until (null: none).
async fn health(State(s): State<Shared>) -> impl IntoResponse {
    let st = lock(&s).clone();
    let cordon_until = st.cordon_until(crate::now_secs());
    let code = if st.health.is_healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(serde_json::json!({
            "connections": st.connections,
            "listening": st.listening,
            "cap": st.cap,
            "state": st.health,
            "cordon_until": cordon_until,
            "method": st.method,
        })),
    )
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    let st = lock(&s).clone();
    let cordoned = st.cordon_until(crate::now_secs()).is_some();
    let mut out = Exposition::new();
    out.metric(
        "connscale_connections",
        Kind::Gauge,
        "Established TCP connections on the service ports.",
        st.connections,
    );
    out.metric(
        "connscale_host_established",
        Kind::Gauge,
        "Host-wide established TCP connections (CurrEstab).",
        st.host_established,
    );
    out.metric(
        "connscale_cap",
        Kind::Gauge,
        "Connection cap at which /health turns 503.",
        st.cap,
    );
    out.metric(
        "connscale_healthy",
        Kind::Gauge,
        "1 when /health answers 200.",
        u8::from(st.health.is_healthy()),
    );
    out.metric(
        "connscale_listening",
        Kind::Gauge,
        "1 when every counted port has a listener (the service is up).",
        u8::from(st.listening),
    );
    out.metric(
        "connscale_draining",
        Kind::Gauge,
        "1 while the node drains for scale-in.",
        u8::from(st.health == crate::health::HealthState::Draining),
    );
    out.metric(
        "connscale_cordoned",
        Kind::Gauge,
        "1 while the controller's cordon holds on this node: /health fails (state cordoned, unless full, no_listener or draining).",
        u8::from(cordoned),
    );
    out.metric(
        "connscale_count_method_netlink",
        Kind::Gauge,
        "1 when counting through netlink, 0 on the /proc fallback.",
        u8::from(st.method == crate::count::Method::Netlink),
    );
    out.metric(
        "connscale_samples_total",
        Kind::Counter,
        "Samples taken.",
        st.samples,
    );
    out.metric(
        "connscale_sample_errors_total",
        Kind::Counter,
        "Samples that failed.",
        st.sample_errors,
    );
    out.metric(
        "connscale_buffered_points",
        Kind::Gauge,
        "Statistic sets waiting to be published.",
        st.buffered_points,
    );
    out.metric(
        "connscale_dropped_points_total",
        Kind::Counter,
        "Statistic sets dropped for age while the sink was unreachable.",
        st.dropped_points,
    );
    out.metric(
        "connscale_published_points_total",
        Kind::Counter,
        "Statistic sets published.",
        st.published_points,
    );
    out.metric(
        "connscale_publish_errors_total",
        Kind::Counter,
        "Failed publish calls.",
        st.publish_errors,
    );
    if let Some(ok) = st.close_available {
        out.metric("connscale_drain_close_available", Kind::Gauge, "drain.method = close: 1 when the agent can close connections (CAP_NET_ADMIN and SOCK_DESTROY).", u8::from(ok));
    }
    if let Some(n) = st.drain.open_at_start {
        out.metric(
            "connscale_drain_open_at_close_start",
            Kind::Gauge,
            "Connections open when the last close drain began closing them.",
            n,
        );
    }
    out.metric(
        "connscale_drain_closed_total",
        Kind::Counter,
        "Connections the agent closed itself in the last drain (method close).",
        st.drain.closed,
    );
    out.metric(
        "connscale_drain_seconds",
        Kind::Gauge,
        "Duration of the last finished drain, from the scale-in signal (0: none finished).",
        st.drain.seconds,
    );
    ([("content-type", CONTENT_TYPE)], out.finish())
}
