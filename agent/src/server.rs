//! The agent's HTTP endpoints: `/health` for the load balancer, `/metrics` for Prometheus.

use crate::{Shared, lock};
use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

pub fn router(status: Shared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(status)
}

/// 200 below the cap while the service listens; 503 at the cap (until the hysteresis band),
/// while nothing listens on a counted port, and while draining.
async fn health(State(s): State<Shared>) -> impl IntoResponse {
    let st = lock(&s).clone();
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
            "method": st.method,
        })),
    )
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    let st = lock(&s).clone();
    let mut out = String::new();
    let mut g = |name: &str, help: &str, kind: &str, value: String| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    g(
        "connscale_connections",
        "Established TCP connections on the service ports.",
        "gauge",
        st.connections.to_string(),
    );
    g(
        "connscale_host_established",
        "Host-wide established TCP connections (CurrEstab).",
        "gauge",
        st.host_established.to_string(),
    );
    g(
        "connscale_cap",
        "Connection cap at which /health turns 503.",
        "gauge",
        st.cap.to_string(),
    );
    g(
        "connscale_healthy",
        "1 when /health answers 200.",
        "gauge",
        u8::from(st.health.is_healthy()).to_string(),
    );
    g(
        "connscale_listening",
        "1 when every counted port has a listener (the service is up).",
        "gauge",
        u8::from(st.listening).to_string(),
    );
    g(
        "connscale_draining",
        "1 while the node drains for scale-in.",
        "gauge",
        u8::from(st.health == crate::health::HealthState::Draining).to_string(),
    );
    g(
        "connscale_count_method_netlink",
        "1 when counting through netlink, 0 on the /proc fallback.",
        "gauge",
        u8::from(st.method == crate::count::Method::Netlink).to_string(),
    );
    g(
        "connscale_samples_total",
        "Samples taken.",
        "counter",
        st.samples.to_string(),
    );
    g(
        "connscale_sample_errors_total",
        "Samples that failed.",
        "counter",
        st.sample_errors.to_string(),
    );
    g(
        "connscale_buffered_points",
        "Statistic sets waiting to be published.",
        "gauge",
        st.buffered_points.to_string(),
    );
    g(
        "connscale_dropped_points_total",
        "Statistic sets dropped for age while the sink was unreachable.",
        "counter",
        st.dropped_points.to_string(),
    );
    g(
        "connscale_published_points_total",
        "Statistic sets published.",
        "counter",
        st.published_points.to_string(),
    );
    g(
        "connscale_publish_errors_total",
        "Failed publish calls.",
        "counter",
        st.publish_errors.to_string(),
    );
    if let Some(ok) = st.close_available {
        g(
            "connscale_drain_close_available",
            "drain.method = close: 1 when the agent can close connections (CAP_NET_ADMIN and SOCK_DESTROY).",
            "gauge",
            u8::from(ok).to_string(),
        );
    }
    if let Some(n) = st.drain.open_at_start {
        g(
            "connscale_drain_open_at_close_start",
            "Connections open when the last close drain began closing them.",
            "gauge",
            n.to_string(),
        );
    }
    g(
        "connscale_drain_closed_total",
        "Connections the agent closed itself in the last drain (method close).",
        "counter",
        st.drain.closed.to_string(),
    );
    g(
        "connscale_drain_seconds",
        "Duration of the last finished drain, from the scale-in signal (0: none finished).",
        "gauge",
        st.drain.seconds.to_string(),
    );
    ([("content-type", "text/plain; version=0.0.4")], out)
}
