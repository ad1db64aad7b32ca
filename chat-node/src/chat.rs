//! The chat protocol the fleets use, on top of Socket.IO events.
//!
//! `add user` → `login` {numUsers} to the sender and `user joined` to others; `new message` →
//! `new message` {username, message} to others (to one room when it carries a `channel`);
//! `typing` / `stop typing`; `join-channel` / `leave-channel` with a `channel notice` to the
//! room; `user left` {username, numUsers} on disconnect. numUsers is cluster-wide.
//!
//! With Redis, a socket's rooms and name outlive its connection for `recovery_window`: a client
//! that reconnects (to any node) presenting its `pid` gets them back, and what it missed.

use crate::app::{Answered, App, Connecting, Disconnect};
use crate::hub::Hub;
use crate::session::Session;
use connscale_common::sio::{SioPacket, SioType};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The chat application on `/`, the only namespace it serves.
pub struct Chat {
    hub: Arc<Hub>,
}

impl Chat {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }

    /// Saves what the socket's recovery needs (its rooms, name and every sid it had) under its
    /// `pid`. Once: the pid is taken, so when [`App::closing`] saved it the disconnect saves
    /// nothing, and cannot bring back a record another node has taken since.
    async fn save_recovery(&self, s: &Session) {
        let Some(b) = &self.hub.broker else { return };
        let (pid, rec) = {
            let mut st = s.lock_state();
            let Some(pid) = st.pid.take() else { return };
            (pid, st.record(&s.sid))
        };
        b.save_session(&pid, &rec, self.hub.cfg.recovery_window.as_secs().max(1))
            .await;
    }
}

impl App for Chat {
    /// With Redis, a client presenting a known `pid` gets its rooms and name back and the
    /// messages it missed after `offset`, if all of them can still be replayed; any other
    /// client gets a fresh `pid` (socket.io-client: `recovered` false), as Socket.IO answers
    /// when it cannot restore a session.
    async fn connect(&self, c: Connecting<'_>) -> Answered {
        if c.nsp != "/" {
            return c.refuse("Invalid namespace");
        }
        let hub = &self.hub;
        if let Some(token) = &hub.cfg.auth_token
            && c.auth.get("token").and_then(Value::as_str) != Some(token.as_str())
        {
            return c.refuse("unauthorized");
        }
        let Some(b) = hub.broker.clone() else {
            return c.accept(Map::new());
        };
        let s = Arc::clone(c.session);
        let claimed = c
            .auth
            .get("pid")
            .and_then(Value::as_str)
            .map(str::to_string);
        let record = match &claimed {
            Some(pid) => b.take_session(pid).await,
            None => None,
        };
        let reply = |pid: &str| Map::from_iter([("pid".to_string(), json!(pid))]);
        let fresh = |c: Connecting<'_>| {
            let since = b.current_seq();
            let pid = crate::session::new_sid();
            {
                let mut st = s.lock_state();
                st.pid = Some(pid.clone());
                st.since = since;
            }
            c.accept(reply(&pid))
        };
        // The socket's state is set before the CONNECT is accepted: until then the fan-out
        // passes it by, and from then on it finds the state complete.
        let Some(rec) = record else {
            return fresh(c);
        };
        let pid = claimed.unwrap_or_default();
        // Opaque to the client, and anything at all from a bad one: the hub reads it or ignores it.
        let offset = c
            .auth
            .get("offset")
            .and_then(Value::as_str)
            .map(str::to_string);
        {
            let mut st = s.lock_state();
            // Set now, so a connection closed meanwhile saves the record again.
            st.pid = Some(pid.clone());
            st.username = rec.username.clone();
            st.since = rec.since;
            // Where replay starts in each room until it has run: a connection closed during
            // its replay saves these, not this node's positions (which would skip the rest).
            st.joined_at = rec.joined_at.clone().into_iter().collect();
            st.old_sids = rec.sids.clone();
            st.recovering = Some(Vec::new());
        }
        // Joined (and buffering live broadcasts) before the replay is read, and read whole
        // before the CONNECT is answered: recovered only if nothing missed is left out.
        let mut joined = true;
        for r in &rec.rooms {
            // One room it cannot be in is enough: the others' 1-s timeouts would add nothing.
            if !hub.join(&s, r).await {
                joined = false;
                break;
            }
        }
        let replay = if joined {
            hub.read_replay(&s, offset.as_deref(), &rec).await
        } else {
            None
        };
        let Some(replay) = replay else {
            tracing::debug!(sid = %s.sid, offset, "cannot replay everything missed: a fresh session");
            for r in &rec.rooms {
                hub.leave(&s, r);
            }
            s.lock_state().refuse_recovery();
            return fresh(c);
        };
        if rec.username.is_some() {
            hub.users.fetch_add(1, Ordering::Relaxed);
        }
        let answered = c.accept(reply(&pid));
        let n = hub.send_replay(&s, replay);
        tracing::debug!(sid = %s.sid, replayed = n, offset, "recovered session");
        answered
    }

    async fn event(&self, s: &Arc<Session>, p: SioPacket) {
        on_event(&self.hub, s, p).await;
    }

    /// The client will reconnect, maybe elsewhere: its recovery record is saved before it can.
    async fn closing(&self, s: &Arc<Session>) {
        self.save_recovery(s).await;
    }

    /// Out of its rooms, and `user left` if it had logged in. A client that left `/` on
    /// purpose gets no recovery; a closed connection's record is saved (unless it was when the
    /// server began closing).
    async fn disconnect(&self, s: &Arc<Session>, _nsp: &str, why: Disconnect) {
        match why {
            Disconnect::Closed => self.save_recovery(s).await,
            Disconnect::Left => s.lock_state().pid = None,
        }
        let rooms: Vec<String> = s.lock_state().rooms.iter().cloned().collect();
        for r in rooms {
            self.hub.leave(s, &r);
        }
        on_disconnect(&self.hub, s).await;
    }
}

/// Handles one complete Socket.IO packet from a connected client.
async fn on_event(hub: &Arc<Hub>, s: &Arc<Session>, p: SioPacket) {
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
            if joining && !hub.join(s, &ch).await {
                ack = json!([{"error": "could not subscribe to the channel, try again"}]);
            } else {
                let notice = json!(["channel notice", {"channel": ch, "username": user, "action": if joining { "joined" } else { "left" }}]);
                hub.broadcast(Some(&ch), Some(&s.sid), &SioPacket::event(notice, vec![]))
                    .await;
                if !joining {
                    hub.leave(s, &ch);
                }
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
async fn on_disconnect(hub: &Arc<Hub>, s: &Arc<Session>) {
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
