//! Engine.IO v4 transports (websocket, HTTP long-polling, the polling → websocket upgrade) and
//! the Socket.IO v5 sockets they carry, one a namespace, served to an [`App`].

use crate::app::{App, Connecting, Disconnect};
use crate::hub::Hub;
use crate::session::{Frame, Reader, Session, new_sid};
use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use connscale_common::sio::{self, EioType, PollItem, SioPacket, SioType};
use serde::Deserialize;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What the transport serves: the node's sessions and config (its [`Hub`]), and the app their
/// sockets talk to.
pub struct Server<A> {
    pub hub: Arc<Hub>,
    pub app: A,
}

/// The Engine.IO endpoint, `/socket.io/`: `app` on `hub`'s sessions.
pub fn routes<A: App>(hub: Arc<Hub>, app: A) -> Router {
    Router::new()
        // Every method: the transport answers the ones Engine.IO has no use for with 400.
        .route("/socket.io/", any(engine::<A>))
        .with_state(Arc::new(Server { hub, app }))
}

#[derive(Debug, Deserialize)]
pub struct EioQuery {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

/// Engine.IO error responses, as the reference server sends them.
fn eio_error(code: u8, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({"code": code, "message": message})),
    )
        .into_response()
}

fn origin_allowed(hub: &Hub, headers: &HeaderMap) -> bool {
    let allowed = &hub.cfg.allowed_origins;
    allowed.is_empty()
        || headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .is_none_or(|o| allowed.iter().any(|a| a == o))
}

fn open_packet(hub: &Hub, sid: &str, upgrades: &[&str]) -> String {
    sio::eio_encode(
        EioType::Open,
        &sio::eio_open_json(
            sid,
            upgrades,
            hub.cfg.ping_interval.as_millis() as u64,
            hub.cfg.ping_timeout.as_millis() as u64,
            hub.cfg.max_message_bytes,
        ),
    )
}

/// `GET|POST /socket.io/`: dispatches on `transport` and `sid`.
async fn engine<A: App>(
    State(srv): State<Arc<Server<A>>>,
    Query(q): Query<EioQuery>,
    req: Request,
) -> Response {
    if q.eio.as_deref() != Some("4") {
        return eio_error(5, "Unsupported protocol version");
    }
    if !origin_allowed(&srv.hub, req.headers()) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let method = req.method().clone();
    if method != axum::http::Method::GET && method != axum::http::Method::POST {
        return eio_error(2, "Bad handshake method");
    }
    match (q.transport.as_deref(), q.sid) {
        (Some("websocket"), sid) => {
            let (mut parts, _body) = req.into_parts();
            let Ok(ws) = WebSocketUpgrade::from_request_parts(&mut parts, &srv).await else {
                return eio_error(3, "Bad request");
            };
            // Memory per idle client is what a node's capacity is made of: a small read buffer
            // (grown on demand for a large frame); the write buffer only holds one batch.
            let ws = ws
                .read_buffer_size(256)
                .write_buffer_size(WRITE_BUFFER)
                .max_message_size(srv.hub.cfg.max_message_bytes)
                .max_frame_size(srv.hub.cfg.max_message_bytes);
            match sid {
                None => {
                    let s = new_session(&srv.hub, true);
                    if let Err(why) = srv.hub.admit(s.clone()) {
                        return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
                    }
                    s.send_text(open_packet(&srv.hub, &s.sid, &[]));
                    // The 101 and the open packet, written by different layers, share a packet.
                    let corked = parts
                        .extensions
                        .get::<ConnectInfo<crate::listener::Peer>>()
                        .map(|c| c.0.fd);
                    if let Some(fd) = corked {
                        crate::tcp::cork(&fd, true);
                    }
                    ws.on_upgrade(move |socket| run_websocket(srv, s, socket, false, corked))
                }
                Some(sid) => match srv.hub.get(&sid) {
                    // Already upgraded, upgrading, or a websocket session from the start: this
                    // one is accepted and closed, as the reference server does.
                    Some(s)
                        if s.websocket.load(Ordering::SeqCst)
                            || s.upgrading.swap(true, Ordering::SeqCst) =>
                    {
                        ws.on_upgrade(|mut socket| async move {
                            let _ = socket.send(Message::Close(None)).await;
                        })
                    }
                    Some(s) => {
                        ws.on_upgrade(move |socket| run_websocket(srv, s, socket, true, None))
                    }
                    None => eio_error(1, "Session ID unknown"),
                },
            }
        }
        (Some("polling"), None) if method != axum::http::Method::GET => {
            eio_error(2, "Bad handshake method")
        }
        (Some("polling"), None) => {
            let s = new_session(&srv.hub, false);
            if let Err(why) = srv.hub.admit(s.clone()) {
                return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
            }
            tokio::spawn(polling_heartbeat(srv.clone(), s.clone()));
            text_response(open_packet(&srv.hub, &s.sid, &["websocket"]))
        }
        (Some("polling"), Some(sid)) => {
            let Some(s) = srv.hub.get(&sid) else {
                return eio_error(1, "Session ID unknown");
            };
            if s.upgraded.load(Ordering::SeqCst) {
                return eio_error(3, "Bad request");
            }
            if method == axum::http::Method::POST {
                poll_post(srv, s, req).await
            } else {
                poll_get(srv, s).await
            }
        }
        _ => eio_error(0, "Transport unknown"),
    }
}

fn text_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=UTF-8")], body).into_response()
}

/// A new session with this node's rate burst, outbox bound and connect timeout.
fn new_session(hub: &Hub, websocket: bool) -> Arc<Session> {
    let s = Session::new(
        new_sid(),
        hub.cfg.rate_burst,
        websocket,
        hub.cfg.max_queued_bytes,
    );
    s.set_connect_deadline(hub.cfg.connect_timeout);
    Arc::new(s)
}

/// Long-poll: waits for queued frames (pings arrive at least every ping interval), returns all
/// that are ready as one payload.
async fn poll_get<A: App>(srv: Arc<Server<A>>, s: Arc<Session>) -> Response {
    if s.upgrading.load(Ordering::SeqCst) {
        // A poll during an upgrade, as the reference server answers it: refused if the upgrade
        // completes within 100 ms, else released at once with a noop (the client pauses
        // polling until its in-flight poll returns).
        for _ in 0..10 {
            if s.upgraded.load(Ordering::SeqCst) {
                return eio_error(3, "Bad request");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if s.upgrading.load(Ordering::SeqCst) {
            return text_response(sio::eio_encode(EioType::Noop, ""));
        }
    }
    let Some(mut rx) = s.outbox.try_reader() else {
        return eio_error(3, "Bad request"); // a second concurrent GET
    };
    let mut items = Vec::new();
    let wait = srv.hub.cfg.ping_interval + Duration::from_secs(1);
    tokio::select! {
        f = rx.recv() => items.push(f),
        _ = tokio::time::sleep(wait) => {},
        _ = s.close_notify.notified() => {},
    }
    while items.len() < 512 {
        match rx.try_recv() {
            Some(f) => items.push(f),
            None => break,
        }
    }
    drop(rx);
    if s.is_closed() && items.is_empty() {
        finish(&srv, &s).await;
        // The client's own close releases its pending poll with a noop (as the reference
        // server's does); ours tells it to close.
        let kind = if s.closed_by_peer() {
            EioType::Noop
        } else {
            EioType::Close
        };
        return text_response(sio::eio_encode(kind, ""));
    }
    let payload: Vec<PollItem> = items
        .into_iter()
        .map(|f| match f {
            Frame::Text(t) => PollItem::Text(t.to_string()),
            Frame::Binary(b) => PollItem::Binary(b),
        })
        .collect();
    text_response(sio::encode_payload(&payload))
}

async fn poll_post<A: App>(srv: Arc<Server<A>>, s: Arc<Session>, req: Request) -> Response {
    let Ok(body) = axum::body::to_bytes(req.into_body(), srv.hub.cfg.max_message_bytes).await
    else {
        srv.hub.metrics.malformed.fetch_add(1, Ordering::Relaxed);
        s.close();
        return (StatusCode::PAYLOAD_TOO_LARGE, "payload too large").into_response();
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return bad_packet(&srv.hub, &s);
    };
    let Ok(items) = sio::decode_payload(text) else {
        return bad_packet(&srv.hub, &s);
    };
    for item in items {
        let ok = match item {
            PollItem::Text(t) => on_text(&srv, &s, &t).await,
            PollItem::Binary(b) => on_binary(&srv, &s, b).await,
        };
        if !ok {
            return bad_packet(&srv.hub, &s);
        }
    }
    text_response("ok".into())
}

fn bad_packet(hub: &Hub, s: &Session) -> Response {
    hub.metrics.malformed.fetch_add(1, Ordering::Relaxed);
    s.close();
    eio_error(3, "Bad request")
}

/// Pings a polling session every ping interval (counted from when it opened, as the reference
/// server does) and closes it when a ping goes unanswered for the ping timeout.
async fn polling_heartbeat<A: App>(srv: Arc<Server<A>>, s: Arc<Session>) {
    let (interval, timeout) = (srv.hub.cfg.ping_interval, srv.hub.cfg.ping_timeout);
    let mut next = tokio::time::Instant::now() + interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {},
            _ = s.close_notify.notified() => break,
        }
        if s.websocket.load(Ordering::SeqCst) || s.is_closed() {
            break;
        }
        let sent = crate::session::clock_ms();
        s.send_text(sio::eio_encode(EioType::Ping, ""));
        tokio::time::sleep_until(next + timeout).await;
        if !s.websocket.load(Ordering::SeqCst) && !s.ponged_since(sent) {
            s.close();
            break;
        }
        next += interval.max(timeout);
    }
    if s.websocket.load(Ordering::SeqCst) {
        return;
    }
    if s.closed_by_peer() {
        // A client closes with its next long-poll usually in flight, and the two requests may
        // arrive in either order: that poll still gets its noop (poll_get ends the session),
        // not a 400 for a session that vanished a moment before it.
        tokio::time::sleep(CLOSED_POLL_GRACE).await;
    }
    finish(&srv, &s).await;
}

/// How long a polling session the client closed waits for a long-poll that raced its close.
const CLOSED_POLL_GRACE: Duration = Duration::from_millis(200);

/// The websocket transport: one task per client reads and writes (pings come from the hub's
/// [`ping_loop`](Hub::ping_loop) through the outbox).
#[allow(clippy::manual_async_fn)] // on purpose: see the comment in the body
fn run_websocket<A: App>(
    srv: Arc<Server<A>>,
    s: Arc<Session>,
    mut ws: WebSocket,
    upgrading: bool,
    corked: Option<RawFd>,
) -> impl Future<Output = ()> + Send {
    // An async block, not an async fn: the fn's arguments would be stored twice in the
    // connection's task (once as arguments, once as locals), and the socket alone is 368 bytes.
    // The task lives as long as the client, so it stays small: the serving loop is one future,
    // and everything else (upgrade probe, closing) is boxed only while it runs.
    async move {
        if upgrading && !Box::pin(probe(&s, &mut ws)).await {
            s.upgrading.store(false, Ordering::SeqCst);
            return;
        }
        s.websocket.store(true, Ordering::SeqCst);
        let peer_closed = serve(&srv, &s, &mut ws, corked).await;
        Box::pin(close_websocket(srv, s, ws, peer_closed)).await;
    }
}

/// Reads the client's packets and writes its outbox until either side closes; true when the
/// client did (its Close, a broken connection or a bad frame). A `corked` socket is released
/// after the first write (the open packet), which so shares the 101's segment.
async fn serve<A: App>(
    srv: &Arc<Server<A>>,
    s: &Arc<Session>,
    ws: &mut WebSocket,
    mut corked: Option<RawFd>,
) -> bool {
    let mut rx = s.outbox.reader().await;
    loop {
        tokio::select! {
            m = ws.recv() => {
                let ok = match m {
                    Some(Ok(Message::Text(t))) => Box::pin(on_text(srv, s, t.as_str())).await,
                    Some(Ok(Message::Binary(b))) => Box::pin(on_binary(srv, s, b)).await,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => true,
                    Some(Ok(Message::Close(_))) | None => return true,
                    Some(Err(e)) => {
                        tracing::debug!(sid = %s.sid, error = %e, "websocket error (oversized or malformed frame)");
                        srv.hub.metrics.malformed.fetch_add(1, Ordering::Relaxed);
                        return true;
                    }
                };
                if !ok {
                    srv.hub.metrics.malformed.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            }
            f = rx.recv() => {
                // A client that stops reading blocks this write for as long as its socket
                // lives; the session's close (outbox overflow, ping timeout, drain) ends it.
                // Biased: a write that completes at once never registers for the close.
                let ok = tokio::select! {
                    biased;
                    ok = write_batch(ws, f, &mut rx) => ok,
                    _ = s.close_notify.notified() => false,
                };
                if let Some(fd) = corked.take() {
                    crate::tcp::cork(&fd, false);
                }
                if !ok {
                    return false;
                }
            }
            _ = s.close_notify.notified() => return false,
        }
        if s.is_closed() {
            return false;
        }
    }
}

/// Ends a websocket session. When we close (drain, ping timeout, rate limit), the app hears
/// of it ([`App::closing`]) before the client sees the close and reconnects elsewhere; then
/// what the client sent before it saw our Close is still read (its events count: nothing it
/// emitted is lost) until its own Close or [`CLOSE_LINGER`].
async fn close_websocket<A: App>(
    srv: Arc<Server<A>>,
    s: Arc<Session>,
    mut ws: WebSocket,
    peer_closed: bool,
) {
    if peer_closed {
        finish(&srv, &s).await;
        return;
    }
    srv.app.closing(&s).await;
    // Bounded: a client that stopped reading would never take the Close off our socket.
    if let Ok(Ok(())) = tokio::time::timeout(CLOSE_LINGER, ws.send(Message::Close(None))).await {
        let linger = tokio::time::sleep(CLOSE_LINGER);
        tokio::pin!(linger);
        loop {
            tokio::select! {
                m = ws.recv() => match m {
                    Some(Ok(Message::Text(t))) => { on_text(&srv, &s, t.as_str()).await; }
                    Some(Ok(Message::Binary(b))) => { on_binary(&srv, &s, b).await; }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    _ => break,
                },
                _ = &mut linger => break,
            }
        }
    }
    finish(&srv, &s).await;
}

/// Bytes of frames buffered before a write, within one batch (the flush writes the rest).
const WRITE_BUFFER: usize = 16 * 1024;

/// Frames written per flush at most (one write syscall for all of them).
const WRITE_BATCH: usize = 64;

/// Writes `first` and whatever else is queued (up to [`WRITE_BATCH`]) with one flush. Under
/// load a client's frames pile up while its task waits its turn, so they go out together (a
/// syscall and a TCP segment for many deliveries); an idle client's lone frame is not delayed.
async fn write_batch(ws: &mut WebSocket, first: Frame, rx: &mut Reader<'_>) -> bool {
    use futures::SinkExt;
    let mut next = Some(first);
    let mut n = 0;
    while let Some(f) = next {
        let msg = match f {
            Frame::Text(t) => Message::Text(t),
            Frame::Binary(b) => Message::Binary(b),
        };
        if ws.feed(msg).await.is_err() {
            return false;
        }
        n += 1;
        next = if n < WRITE_BATCH { rx.try_recv() } else { None };
    }
    ws.flush().await.is_ok()
}

/// How long a server-side close waits for the client's own Close (and its last events).
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// The upgrade handshake: `2probe` → `3probe`, the polling GET is released with a noop, then `5`.
async fn probe(s: &Arc<Session>, ws: &mut WebSocket) -> bool {
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            m = ws.recv() => match m {
                Some(Ok(Message::Text(t))) if t.as_str() == "2probe" => {
                    if ws.send(Message::Text("3probe".into())).await.is_err() {
                        return false;
                    }
                    // Releases a pending long-poll (one holds the outbox's reader); a poll
                    // that comes later is answered in poll_get.
                    if s.outbox.try_reader().is_none() {
                        s.send_text(sio::eio_encode(EioType::Noop, ""));
                    }
                }
                Some(Ok(Message::Text(t))) if t.as_str() == "5" => {
                    s.upgraded.store(true, Ordering::SeqCst);
                    return true;
                }
                Some(Ok(_)) => {}
                _ => return false,
            },
            _ = &mut deadline => return false,
        }
    }
}

/// Removes a finished session, once (a polling session's heartbeat and its last poll may
/// both end it, at the same time): the app hears that each socket it had is gone, while the
/// hub still knows its rooms.
async fn finish<A: App>(srv: &Arc<Server<A>>, s: &Arc<Session>) {
    s.close();
    let Some(gone) = s.lock_state().end() else {
        return;
    };
    for nsp in gone {
        srv.app.disconnect(s, &nsp, Disconnect::Closed).await;
    }
    srv.hub.remove(&s.sid);
}

/// One Engine.IO text packet from a client; false closes the connection.
async fn on_text<A: App>(srv: &Arc<Server<A>>, s: &Arc<Session>, text: &str) -> bool {
    let Ok((kind, data)) = sio::eio_decode(text) else {
        return false;
    };
    match kind {
        EioType::Pong => {
            s.pong();
            true
        }
        EioType::Ping => s.send_text(sio::eio_encode(EioType::Pong, data)),
        EioType::Close => {
            s.close_by_peer();
            true
        }
        EioType::Message => {
            let cfg = &srv.hub.cfg;
            if !s.allow(cfg.rate_per_sec, cfg.rate_burst) {
                srv.hub.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(sid = %s.sid, "rate limit exceeded: disconnecting");
                s.close();
                return true;
            }
            srv.hub.metrics.messages_in.fetch_add(1, Ordering::Relaxed);
            match SioPacket::decode(data) {
                Ok(p) => on_packet(srv, s, p).await,
                Err(_) => false,
            }
        }
        EioType::Noop | EioType::Upgrade | EioType::Open => true,
    }
}

/// One binary attachment: the last of a packet's hands the event to the app.
async fn on_binary<A: App>(srv: &Arc<Server<A>>, s: &Arc<Session>, b: Bytes) -> bool {
    let complete = {
        let mut st = s.lock_state();
        let Some(p) = st.pending.as_mut() else {
            return false;
        };
        p.attachments.push(b);
        if p.is_complete() {
            st.pending.take().map(|p| *p)
        } else {
            None
        }
    };
    if let Some(p) = complete {
        srv.app.event(s, p).await;
    }
    true
}

/// One Socket.IO packet, on any namespace: CONNECT and DISCONNECT open and close the socket
/// there, through the app; a packet for a namespace the client has not connected (or a second
/// CONNECT) closes the connection.
async fn on_packet<A: App>(srv: &Arc<Server<A>>, s: &Arc<Session>, p: SioPacket) -> bool {
    let connected = s.lock_state().is_connected(&p.nsp);
    match (p.kind, connected) {
        (SioType::Connect, false) => {
            let auth = p.data.unwrap_or_else(|| serde_json::json!({}));
            let c = Connecting {
                session: s,
                nsp: &p.nsp,
                auth,
            };
            let _answered = srv.app.connect(c).await;
            true
        }
        (SioType::Disconnect, _) => {
            leave(srv, s, &p.nsp).await;
            true
        }
        (SioType::Event, true) => {
            srv.app.event(s, p).await;
            true
        }
        (SioType::BinaryEvent, true) => {
            s.lock_state().pending = Some(Box::new(p));
            true
        }
        (SioType::Ack | SioType::BinaryAck, true) => true,
        _ => false,
    }
}

/// The client left a namespace (a DISCONNECT): its socket there is gone, but the Engine.IO
/// session stays, pinged, for a later CONNECT or another namespace, as with the reference
/// server.
async fn leave<A: App>(srv: &Arc<Server<A>>, s: &Arc<Session>, nsp: &str) {
    {
        let mut st = s.lock_state();
        if !st.set_connected(nsp, false) {
            return;
        }
        if st.pending.as_ref().is_some_and(|p| p.nsp == nsp) {
            st.pending = None;
        }
    }
    srv.app.disconnect(s, nsp, Disconnect::Left).await;
}
