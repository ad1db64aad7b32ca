//! Engine.IO v4 transports: websocket, HTTP long-polling, and the polling → websocket upgrade.

use crate::broker::SessionRecord;
use crate::chat;
use crate::hub::Hub;
use crate::session::{Frame, Reader, Session, new_sid};
use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use connscale_common::sio::{self, EioType, PollItem, SioPacket, SioType};
use serde::Deserialize;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

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
pub async fn engine(
    State(hub): State<Arc<Hub>>,
    Query(q): Query<EioQuery>,
    req: Request,
) -> Response {
    if q.eio.as_deref() != Some("4") {
        return eio_error(5, "Unsupported protocol version");
    }
    if !origin_allowed(&hub, req.headers()) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let method = req.method().clone();
    if method != axum::http::Method::GET && method != axum::http::Method::POST {
        return eio_error(2, "Bad handshake method");
    }
    match (q.transport.as_deref(), q.sid) {
        (Some("websocket"), sid) => {
            let (mut parts, _body) = req.into_parts();
            let Ok(ws) = WebSocketUpgrade::from_request_parts(&mut parts, &hub).await else {
                return eio_error(3, "Bad request");
            };
            // Memory per idle client is what a node's capacity is made of: a small read buffer
            // (grown on demand for a large frame); the write buffer only holds one batch.
            let ws = ws
                .read_buffer_size(256)
                .write_buffer_size(WRITE_BUFFER)
                .max_message_size(hub.cfg.max_message_bytes)
                .max_frame_size(hub.cfg.max_message_bytes);
            match sid {
                None => {
                    let s = new_session(&hub, true);
                    if let Err(why) = hub.admit(s.clone()) {
                        return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
                    }
                    s.send_text(open_packet(&hub, &s.sid, &[]));
                    // The 101 and the open packet, written by different layers, share a packet.
                    let corked = parts
                        .extensions
                        .get::<ConnectInfo<crate::listener::Peer>>()
                        .map(|c| c.0.fd);
                    if let Some(fd) = corked {
                        crate::tcp::cork(&fd, true);
                    }
                    ws.on_upgrade(move |socket| run_websocket(hub, s, socket, false, corked))
                }
                Some(sid) => match hub.get(&sid) {
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
                        ws.on_upgrade(move |socket| run_websocket(hub, s, socket, true, None))
                    }
                    None => eio_error(1, "Session ID unknown"),
                },
            }
        }
        (Some("polling"), None) if method != axum::http::Method::GET => {
            eio_error(2, "Bad handshake method")
        }
        (Some("polling"), None) => {
            let s = new_session(&hub, false);
            if let Err(why) = hub.admit(s.clone()) {
                return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
            }
            tokio::spawn(polling_heartbeat(hub.clone(), s.clone()));
            text_response(open_packet(&hub, &s.sid, &["websocket"]))
        }
        (Some("polling"), Some(sid)) => {
            let Some(s) = hub.get(&sid) else {
                return eio_error(1, "Session ID unknown");
            };
            if s.upgraded.load(Ordering::SeqCst) {
                return eio_error(3, "Bad request");
            }
            if method == axum::http::Method::POST {
                poll_post(hub, s, req).await
            } else {
                poll_get(hub, s).await
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
async fn poll_get(hub: Arc<Hub>, s: Arc<Session>) -> Response {
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
    let wait = hub.cfg.ping_interval + Duration::from_secs(1);
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
        finish(&hub, &s).await;
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

async fn poll_post(hub: Arc<Hub>, s: Arc<Session>, req: Request) -> Response {
    let Ok(body) = axum::body::to_bytes(req.into_body(), hub.cfg.max_message_bytes).await else {
        hub.metrics.malformed.fetch_add(1, Ordering::Relaxed);
        s.close();
        return (StatusCode::PAYLOAD_TOO_LARGE, "payload too large").into_response();
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return bad_packet(&hub, &s);
    };
    let Ok(items) = sio::decode_payload(text) else {
        return bad_packet(&hub, &s);
    };
    for item in items {
        let ok = match item {
            PollItem::Text(t) => on_text(&hub, &s, &t).await,
            PollItem::Binary(b) => on_binary(&hub, &s, b).await,
        };
        if !ok {
            return bad_packet(&hub, &s);
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
async fn polling_heartbeat(hub: Arc<Hub>, s: Arc<Session>) {
    let (interval, timeout) = (hub.cfg.ping_interval, hub.cfg.ping_timeout);
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
    if !s.websocket.load(Ordering::SeqCst) {
        finish(&hub, &s).await;
    }
}

/// The websocket transport: one task per client reads and writes (pings come from the hub's
/// [`ping_loop`](Hub::ping_loop) through the outbox).
#[allow(clippy::manual_async_fn)] // on purpose: see the comment in the body
fn run_websocket(
    hub: Arc<Hub>,
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
        if upgrading && !Box::pin(probe(&hub, &s, &mut ws)).await {
            s.upgrading.store(false, Ordering::SeqCst);
            return;
        }
        s.websocket.store(true, Ordering::SeqCst);
        let peer_closed = serve(&hub, &s, &mut ws, corked).await;
        Box::pin(close_websocket(hub, s, ws, peer_closed)).await;
    }
}

/// Reads the client's packets and writes its outbox until either side closes; true when the
/// client did (its Close, a broken connection or a bad frame). A `corked` socket is released
/// after the first write (the open packet), which so shares the 101's segment.
async fn serve(
    hub: &Arc<Hub>,
    s: &Arc<Session>,
    ws: &mut WebSocket,
    mut corked: Option<RawFd>,
) -> bool {
    let mut rx = s.outbox.reader().await;
    loop {
        tokio::select! {
            m = ws.recv() => {
                let ok = match m {
                    Some(Ok(Message::Text(t))) => Box::pin(on_text(hub, s, t.as_str())).await,
                    Some(Ok(Message::Binary(b))) => Box::pin(on_binary(hub, s, b)).await,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => true,
                    Some(Ok(Message::Close(_))) | None => return true,
                    Some(Err(e)) => {
                        tracing::debug!(sid = %s.sid, error = %e, "websocket error (oversized or malformed frame)");
                        hub.metrics.malformed.fetch_add(1, Ordering::Relaxed);
                        return true;
                    }
                };
                if !ok {
                    hub.metrics.malformed.fetch_add(1, Ordering::Relaxed);
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

/// Ends a websocket session. When we close (drain, ping timeout, rate limit), the recovery
/// record is saved before the client sees the close and reconnects elsewhere; then what the
/// client sent before it saw our Close is still read (its events count: nothing it emitted is
/// lost) until its own Close or [`CLOSE_LINGER`].
async fn close_websocket(hub: Arc<Hub>, s: Arc<Session>, mut ws: WebSocket, peer_closed: bool) {
    if peer_closed {
        finish(&hub, &s).await;
        return;
    }
    if let (Some(b), Some((pid, rec))) = (&hub.broker, record_of(&s)) {
        b.save_session(&pid, &rec, hub.cfg.recovery_window.as_secs().max(1))
            .await;
    }
    // Bounded: a client that stopped reading would never take the Close off our socket.
    if let Ok(Ok(())) = tokio::time::timeout(CLOSE_LINGER, ws.send(Message::Close(None))).await {
        let linger = tokio::time::sleep(CLOSE_LINGER);
        tokio::pin!(linger);
        loop {
            tokio::select! {
                m = ws.recv() => match m {
                    Some(Ok(Message::Text(t))) => { on_text(&hub, &s, t.as_str()).await; }
                    Some(Ok(Message::Binary(b))) => { on_binary(&hub, &s, b).await; }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    _ => break,
                },
                _ = &mut linger => break,
            }
        }
    }
    finish_saved(&hub, &s, true).await;
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
async fn probe(hub: &Arc<Hub>, s: &Arc<Session>, ws: &mut WebSocket) -> bool {
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
            _ = &mut deadline => {
                let _ = hub;
                return false;
            }
        }
    }
}

/// What a session's recovery needs: its pid, rooms, name and every sid it had.
fn record_of(s: &Session) -> Option<(String, SessionRecord)> {
    let st = s.lock_state();
    st.pid.clone().map(|pid| {
        let mut sids = st.old_sids.clone();
        sids.push(s.sid.clone());
        (
            pid,
            SessionRecord {
                rooms: st.rooms.iter().cloned().collect(),
                username: st.username.clone(),
                sids,
                since: st.since,
                joined_at: st.joined_at.iter().map(|(r, n)| (r.clone(), *n)).collect(),
            },
        )
    })
}

/// Removes a finished session once, keeps what its recovery needs, and tells the chat layer.
async fn finish(hub: &Arc<Hub>, s: &Arc<Session>) {
    finish_saved(hub, s, false).await;
}

/// [`finish`], when the recovery record may already have been saved.
async fn finish_saved(hub: &Arc<Hub>, s: &Arc<Session>, saved: bool) {
    s.close();
    let record = record_of(s);
    if let Some(s) = hub.remove(&s.sid) {
        if let (false, Some(b), Some((pid, rec))) = (saved, &hub.broker, record) {
            b.save_session(&pid, &rec, hub.cfg.recovery_window.as_secs().max(1))
                .await;
        }
        chat::on_disconnect(hub, &s).await;
    }
}

/// Socket.IO CONNECT. With Redis, a client presenting a known `pid` gets its rooms and name
/// back and the messages it missed after `offset`; any other client gets a fresh `pid`.
///
/// The CONNECT reply is queued under the state lock that marks the socket connected: the
/// fan-out checks that mark under the same lock, so no broadcast can overtake the reply (a
/// client that got `user joined` before its CONNECT failed its handshake).
async fn connect(hub: &Arc<Hub>, s: &Arc<Session>, data: &serde_json::Value) -> bool {
    let Some(b) = hub.broker.clone() else {
        let mut st = s.lock_state();
        st.connected = true;
        return s.send_packet(&SioPacket::connect(serde_json::json!({"sid": s.sid})));
    };
    let claimed = data.get("pid").and_then(|v| v.as_str()).map(str::to_string);
    let record = match &claimed {
        Some(pid) => b.take_session(pid).await,
        None => None,
    };
    let Some(rec) = record else {
        let since = b.current_seq();
        let pid = crate::session::new_sid();
        let reply = SioPacket::connect(serde_json::json!({"sid": s.sid, "pid": pid}));
        let mut st = s.lock_state();
        st.connected = true;
        st.pid = Some(pid);
        st.since = since;
        return s.send_packet(&reply);
    };
    let pid = claimed.unwrap_or_default();
    // Opaque to the client, and anything at all from a bad one: the hub reads it or ignores it.
    let offset = data.get("offset").and_then(|v| v.as_str());
    let reply = SioPacket::connect(serde_json::json!({"sid": s.sid, "pid": pid}));
    {
        let mut st = s.lock_state();
        st.connected = true;
        st.pid = Some(pid);
        st.since = rec.since;
        st.old_sids = rec.sids.clone();
        st.username = rec.username.clone();
        st.recovering = Some(Vec::new());
        s.send_packet(&reply);
    }
    for r in &rec.rooms {
        hub.join(s, r).await;
    }
    if rec.username.is_some() {
        hub.users.fetch_add(1, Ordering::Relaxed);
    }
    let n = hub.replay(s, offset, &rec).await;
    tracing::debug!(sid = %s.sid, replayed = n, offset, "recovered session");
    true
}

/// One Engine.IO text packet from a client; false closes the connection.
async fn on_text(hub: &Arc<Hub>, s: &Arc<Session>, text: &str) -> bool {
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
            if !s.allow(hub.cfg.rate_per_sec, hub.cfg.rate_burst) {
                hub.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(sid = %s.sid, "rate limit exceeded: disconnecting");
                s.close();
                return true;
            }
            hub.metrics.messages_in.fetch_add(1, Ordering::Relaxed);
            match SioPacket::decode(data) {
                Ok(p) => on_packet(hub, s, p).await,
                Err(_) => false,
            }
        }
        EioType::Noop | EioType::Upgrade | EioType::Open => true,
    }
}

async fn on_binary(hub: &Arc<Hub>, s: &Arc<Session>, b: Bytes) -> bool {
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
        on_event(hub, s, p).await;
    }
    true
}

/// The client left `/` (a `41`): its socket is gone (out of its rooms, `user left`, no
/// recovery: it left on purpose) but the Engine.IO session stays, pinged, for a later CONNECT
/// or another namespace, as with the reference server.
async fn leave_main_namespace(hub: &Arc<Hub>, s: &Arc<Session>) {
    let rooms: Vec<String> = {
        let mut st = s.lock_state();
        if !st.connected {
            return;
        }
        st.connected = false;
        st.pid = None;
        st.pending = None;
        st.rooms.iter().cloned().collect()
    };
    for r in rooms {
        hub.leave(s, &r);
    }
    chat::on_disconnect(hub, s).await;
}

/// A complete event for the application: the chat, or `--conformance`'s handlers.
async fn on_event(hub: &Arc<Hub>, s: &Arc<Session>, p: SioPacket) {
    if hub.cfg.conformance {
        crate::conformance::on_event(s, p);
    } else {
        chat::on_event(hub, s, p).await;
    }
}

/// A packet on a namespace other than `/`: one of `--conformance`'s, or a connect error.
fn on_namespace_packet(hub: &Hub, s: &Arc<Session>, p: SioPacket) -> bool {
    if !hub.cfg.conformance || !crate::conformance::NAMESPACES.contains(&p.nsp.as_str()) {
        s.send_packet(&SioPacket {
            nsp: p.nsp.clone(),
            ..SioPacket::connect_error("Invalid namespace")
        });
        return true;
    }
    let connected = s.lock_state().namespaces.contains(&p.nsp);
    match (p.kind, connected) {
        (SioType::Connect, false) => {
            let auth = p.data.clone().unwrap_or_else(|| serde_json::json!({}));
            s.lock_state().namespaces.push(p.nsp.clone());
            s.connected_namespace();
            s.send_packet(&SioPacket {
                nsp: p.nsp.clone(),
                ..SioPacket::connect(serde_json::json!({"sid": crate::session::new_sid()}))
            });
            crate::conformance::on_connect(s, &p.nsp, &auth);
            true
        }
        (SioType::Disconnect, _) => {
            s.lock_state().namespaces.retain(|n| *n != p.nsp);
            true
        }
        (SioType::Event, true) => {
            crate::conformance::on_event(s, p);
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

async fn on_packet(hub: &Arc<Hub>, s: &Arc<Session>, p: SioPacket) -> bool {
    if p.nsp != "/" {
        return on_namespace_packet(hub, s, p);
    }
    let connected = s.lock_state().connected;
    match (p.kind, connected) {
        (SioType::Connect, false) => {
            let data = p.data.clone().unwrap_or_else(|| serde_json::json!({}));
            if let Some(token) = &hub.cfg.auth_token
                && data.get("token").and_then(|t| t.as_str()) != Some(token.as_str())
            {
                s.send_packet(&SioPacket::connect_error("unauthorized"));
                return true;
            }
            let ok = connect(hub, s, &data).await;
            s.connected_namespace();
            if hub.cfg.conformance {
                crate::conformance::on_connect(s, "/", &data);
            }
            ok
        }
        (SioType::Disconnect, _) => {
            leave_main_namespace(hub, s).await;
            true
        }
        (SioType::Event, true) => {
            on_event(hub, s, p).await;
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
