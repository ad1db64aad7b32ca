//! chat-node: a Socket.IO v5 / Engine.IO v4 chat server that scales out over Redis.
//!
//! [`transport`] speaks Engine.IO (websocket, polling, upgrade) and Socket.IO over
//! [`session`]s, and serves their sockets to an [`app::App`]; [`chat`] is the chat's; [`hub`]
//! holds sessions and rooms and delivers locally and through the [`broker`] (Redis pub/sub and
//! TTL presence); [`api`] serves back ends and operators; [`listener`] accepts connections with
//! the socket options of [`tcp`].

pub mod api;
pub mod app;
pub mod broker;
pub mod chat;
pub mod cli;
pub mod config;
pub mod hub;
pub mod listener;
pub mod offset;
pub mod session;
pub mod tcp;
pub mod transport;

use axum::Router;
use axum::routing::{get, post};
use config::ChatConfig;
use hub::Hub;
use std::sync::{Arc, OnceLock};
use tokio::sync::Notify;

static SHUTDOWN: OnceLock<Notify> = OnceLock::new();

/// Asks the server to drain and exit (POST /api/drain does this).
pub fn request_shutdown() {
    let n = SHUTDOWN.get_or_init(Notify::new);
    n.notify_waiters();
    n.notify_one();
}

/// The chat server's HTTP endpoints: Engine.IO with the chat on it, the API, the page.
pub fn router(hub: Arc<Hub>) -> Router {
    let api = Router::new()
        .route("/api/broadcast", post(api::broadcast))
        .route("/api/online", get(api::online))
        .route("/api/drain", post(api::drain))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/", get(page))
        .route("/socket.io.min.js", get(client_js))
        .with_state(hub.clone());
    transport::routes(hub.clone(), chat::Chat::new(hub)).merge(api)
}

async fn page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../static/index.html"))
}

/// The official socket.io-client 4.8 browser build (MIT, see static/socket.io-client.LICENSE),
/// vendored so the page works without a CDN or node_modules.
async fn client_js() -> impl axum::response::IntoResponse {
    (
        [
            ("content-type", "application/javascript; charset=utf-8"),
            ("cache-control", "public, max-age=86400"),
        ],
        include_str!("../static/socket.io.min.js"),
    )
}

/// Runs the node until SIGTERM, Ctrl-C or /api/drain; then drains and returns.
pub async fn run(cfg: ChatConfig) -> anyhow::Result<()> {
    let nofile = connscale_common::limits::raise_nofile();
    if let Some(w) = connscale_common::limits::cap_warning(
        "chat-node max_connections",
        cfg.max_connections as u64,
        nofile,
    ) {
        tracing::warn!("{w}");
    }
    let addr = std::net::SocketAddr::new(cfg.bind, cfg.port);
    let hub = Hub::new(cfg).map_err(anyhow::Error::msg)?;
    tokio::spawn(hub.clone().ping_loop());
    tokio::spawn(trim_loop());
    if let Some(b) = hub.broker.clone() {
        let h = hub.clone();
        tokio::spawn(async move {
            let g = h.clone();
            b.subscribe(
                move |seq, env| h.on_remote(seq, env),
                move |r| g.on_missed(r),
            )
            .await
        });
        tokio::spawn(hub.clone().presence_loop());
        tokio::spawn(hub.clone().publish_loop());
    }
    let listener = listener::NodeListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (bind/port): {e}"))?;
    tracing::info!(%addr, node = %hub.node, redis = hub.broker.is_some(), "chat-node listening");
    let notify = SHUTDOWN.get_or_init(Notify::new);
    let h = hub.clone();
    let shutdown = async move {
        tokio::select! {
            _ = signal_term() => {},
            _ = notify.notified() => {},
        }
        let window = h.cfg.drain_window;
        h.drain(window).await;
    };
    let app = router(hub).into_make_service_with_connect_info::<listener::Peer>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("chat-node stopped");
    Ok(())
}

/// Gives the allocator's free pages back to the system every few seconds. A burst of handshakes
/// (each briefly holding HTTP buffers several times a settled connection's size) otherwise
/// leaves RSS at the burst's high-water mark for good, though the memory is free.
async fn trim_loop() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
    }
}

async fn signal_term() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
    }
    tracing::info!("shutdown signal: draining");
}
