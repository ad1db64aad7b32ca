//! The server the official Socket.IO protocol suite expects (../shared/conformance/
//! socket.io-protocol, its README): chat-node's own transport with the suite's reference
//! handlers on `/` and `/custom` instead of the chat. chat-node/tests/protocol_suite.rs runs the
//! suite against it.
//!
//! Usage: `cargo run -p chat-node --bin protocol-server -- [--port 3000]`, then the suite's
//! `npx mocha test-suite.js`.

use chat_node::app::{Answered, App, Connecting, Disconnect};
use chat_node::config::ChatConfig;
use chat_node::hub::Hub;
use chat_node::listener::{NodeListener, Peer};
use chat_node::session::Session;
use clap::Parser;
use connscale_common::sio::{SioPacket, SioType};
use serde_json::{Map, Value, json};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The official Socket.IO protocol suite's server, on chat-node's transport.
#[derive(Debug, Parser)]
#[command(name = "protocol-server")]
struct Cli {
    /// Port to listen on: the suite's URL is http://localhost:3000.
    #[arg(long, default_value_t = 3000)]
    port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let hub = Hub::new(suite_config(cli.bind, cli.port)).map_err(anyhow::Error::msg)?;
    // Websocket pings and the connect timeout.
    tokio::spawn(hub.clone().ping_loop());
    let app = chat_node::transport::routes(hub, Reference)
        .layer(axum::middleware::map_response(cors_any))
        .into_make_service_with_connect_info::<Peer>();
    let addr = SocketAddr::new(cli.bind, cli.port);
    let listener =
        NodeListener::bind(addr).map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// The suite's Engine.IO options: pingInterval 300 ms, pingTimeout 200 ms, maxPayload
/// 1,000,000 bytes, connectTimeout 1 s; any origin. Alone: no Redis, so CONNECT answers
/// `{"sid"}` only.
fn suite_config(bind: IpAddr, port: u16) -> ChatConfig {
    ChatConfig {
        bind,
        port,
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(1),
        max_message_bytes: 1_000_000,
        ..ChatConfig::default()
    }
}

/// The suite's CORS origin `*`.
async fn cors_any(mut r: axum::response::Response) -> axum::response::Response {
    r.headers_mut().insert(
        axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
        axum::http::HeaderValue::from_static("*"),
    );
    r
}

/// The suite's reference handlers: `auth` on connecting to `/` or `/custom`, echoes on `/`.
struct Reference;

/// The namespaces a client may connect to; any other gets a CONNECT_ERROR.
const NAMESPACES: &[&str] = &["/", "/custom"];

/// How long `auth` waits after the CONNECT answer. The suite's client (ws 8.5) emits every
/// message of one socket read at once, and the suite awaits the CONNECT answer and `auth` one
/// after the other: were both in one read (chat-node writes queued frames with one flush),
/// `auth` would go by before the suite listened for it. The reference server happens to write
/// them a turn of its event loop apart; this pause keeps them in separate reads.
const AUTH_AFTER: Duration = Duration::from_millis(20);

impl App for Reference {
    /// Accepts the two namespaces, then emits `auth` with the CONNECT payload.
    async fn connect(&self, c: Connecting<'_>) -> Answered {
        if !NAMESPACES.contains(&c.nsp) {
            return c.refuse("Invalid namespace");
        }
        let auth = SioPacket {
            nsp: c.nsp.to_string(),
            ..SioPacket::event(json!(["auth", c.auth]), vec![])
        };
        let s = Arc::clone(c.session);
        let answered = c.accept(Map::new());
        tokio::spawn(async move {
            tokio::time::sleep(AUTH_AFTER).await;
            s.send_packet(&auth);
        });
        answered
    }

    /// On `/`: `message` → `message-back` with the same arguments (and attachments);
    /// `message-with-ack` → its ack, with the same arguments. `/custom` has no handlers.
    async fn event(&self, s: &Arc<Session>, p: SioPacket) {
        if p.nsp != "/" {
            return;
        }
        let Ok((name, args)) = p.event_parts() else {
            return;
        };
        match (name, p.id) {
            ("message", _) => {
                let mut back = vec![json!("message-back")];
                back.extend(args.iter().cloned());
                s.send_packet(&SioPacket::event(Value::Array(back), p.attachments.clone()));
            }
            ("message-with-ack", Some(id)) => {
                let mut ack = SioPacket::ack(id, Value::Array(args.to_vec()));
                if !p.attachments.is_empty() {
                    ack.kind = SioType::BinaryAck;
                    ack.expected_attachments = p.attachments.len();
                    ack.attachments = p.attachments.clone();
                }
                s.send_packet(&ack);
            }
            _ => {}
        }
    }

    async fn disconnect(&self, _s: &Arc<Session>, _nsp: &str, _why: Disconnect) {}
}
