//! The chat protocol the fleets use, on top of Socket.IO events.
//!
//! `add user` → `login` {numUsers} to the sender and `user joined` to others; `new message` →
//! `new message` {username, message} to others (to one room when it carries a `channel`);
//! `typing` / `stop typing`; `join-channel` / `leave-channel` with a `channel notice` to the
//! room; `user left` {username, numUsers} on disconnect. numUsers is cluster-wide.

use crate::hub::Hub;
use crate::session::Session;
use connscale_common::sio::{SioPacket, SioType};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Handles one complete Socket.IO packet from a connected client.
pub async fn on_event(hub: &Arc<Hub>, s: &Arc<Session>, p: SioPacket) {
    let Ok((name, args)) = p.event_parts() else {
        return;
    };
    let (name, args) = (name.to_string(), args.to_vec());
    let username = s.lock_state().username.clone();
    let mut ack = json!(["ok"]);
    match (name.as_str(), username) {
        ("add user", None) => {
            let Some(Value::String(u)) = args.first() else {
                return;
            };
            let u: String = u.chars().take(64).collect();
            s.lock_state().username = Some(u.clone());
            hub.users.fetch_add(1, Ordering::Relaxed);
            hub.refresh_presence().await;
            let n = hub.cluster_users();
            s.send_packet(&SioPacket::event(json!(["login", {"numUsers": n}]), vec![]));
            hub.broadcast(
                None,
                Some(&s.sid),
                &SioPacket::event(
                    json!(["user joined", {"username": u, "numUsers": n}]),
                    vec![],
                ),
            )
            .await;
            ack = json!([{"numUsers": n}]);
        }
        ("new message", Some(u)) => {
            let (message, channel) = match args.first() {
                Some(Value::Object(o)) if o.contains_key("channel") => (
                    o.get("message").cloned().unwrap_or(Value::Null),
                    o.get("channel").and_then(Value::as_str).map(str::to_string),
                ),
                Some(v) => (v.clone(), None),
                None => return,
            };
            if let Some(ch) = &channel
                && !s.lock_state().rooms.contains(ch)
            {
                ack = json!([{"error": "not in channel"}]);
            } else {
                let mut body = json!({"username": u, "message": message});
                if let Some(ch) = &channel {
                    body["channel"] = json!(ch);
                }
                let out = SioPacket::event(json!(["new message", body]), p.attachments.clone());
                hub.broadcast(channel.as_deref(), Some(&s.sid), &out).await;
            }
        }
        ("typing" | "stop typing", Some(u)) => {
            hub.broadcast(
                None,
                Some(&s.sid),
                &SioPacket::event(json!([name, {"username": u}]), vec![]),
            )
            .await;
        }
        ("join-channel" | "leave-channel", user) => {
            let Some(Value::String(ch)) = args.first() else {
                return;
            };
            let ch: String = ch.chars().take(128).collect();
            let joining = name == "join-channel";
            if joining {
                hub.join(s, &ch).await;
            }
            let notice = json!(["channel notice", {"channel": ch, "username": user, "action": if joining { "joined" } else { "left" }}]);
            hub.broadcast(Some(&ch), Some(&s.sid), &SioPacket::event(notice, vec![]))
                .await;
            if !joining {
                hub.leave(s, &ch);
            }
        }
        _ => {}
    }
    if let Some(id) = p.id {
        let mut a = SioPacket::ack(id, ack);
        a.kind = SioType::Ack;
        s.send_packet(&a);
    }
}

/// After a client is gone: `user left` to everyone if it had logged in.
pub async fn on_disconnect(hub: &Arc<Hub>, s: &Arc<Session>) {
    let user = s.lock_state().username.take();
    if let Some(u) = user {
        hub.users.fetch_sub(1, Ordering::Relaxed);
        hub.refresh_presence().await;
        let n = hub.cluster_users();
        hub.broadcast(
            None,
            Some(&s.sid),
            &SioPacket::event(json!(["user left", {"username": u, "numUsers": n}]), vec![]),
        )
        .await;
    }
}
