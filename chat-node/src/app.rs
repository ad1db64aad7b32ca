//! The seam between the Socket.IO transport and the application it serves.
//!
//! [`crate::transport`] speaks Engine.IO and Socket.IO, namespaces included; what a CONNECT, an
//! event or a disconnect means is an [`App`]'s. The chat ([`crate::chat::Chat`]) is one; the
//! protocol suite's reference handlers (src/bin/protocol_server.rs) are another.

use crate::session::{Session, new_sid};
use connscale_common::sio::SioPacket;
use serde_json::{Map, Value};
use std::sync::Arc;

/// What the transport calls for a client's sockets, one namespace at a time.
pub trait App: Send + Sync + 'static {
    /// Answers a client's CONNECT to a namespace: accepts it (with data for the reply) or
    /// refuses it. Any namespace may be asked for; an app refuses the ones it does not serve.
    fn connect(&self, c: Connecting<'_>) -> impl Future<Output = Answered> + Send;

    /// A complete event (its attachments arrived) on a namespace the client has connected;
    /// `p.id` is the ack it asks for.
    fn event(&self, s: &Arc<Session>, p: SioPacket) -> impl Future<Output = ()> + Send;

    /// The server is about to close the connection (drain, ping timeout, a slow client) and
    /// the client will reconnect, perhaps to another node: whatever it needs there must be
    /// saved before it is told. Its sockets are still connected, and what it sent before it
    /// saw the close still arrives as events.
    fn closing(&self, _s: &Arc<Session>) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The client's socket on `nsp` is gone; called once per accepted CONNECT.
    fn disconnect(
        &self,
        s: &Arc<Session>,
        nsp: &str,
        why: Disconnect,
    ) -> impl Future<Output = ()> + Send;
}

/// Why a socket left its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The client left the namespace (a DISCONNECT packet): on purpose, its connection stays.
    Left,
    /// The connection ended: closed by either side, timed out or broken.
    Closed,
}

/// A client's CONNECT to a namespace, answered once: [`accept`](Self::accept) or
/// [`refuse`](Self::refuse).
pub struct Connecting<'a> {
    pub session: &'a Arc<Session>,
    pub nsp: &'a str,
    /// The CONNECT payload (the client's `auth`), `{}` when it sent none.
    pub auth: Value,
}

/// A CONNECT was answered. Only [`Connecting`] makes one, so every [`App::connect`] answers.
#[must_use = "return it from App::connect"]
#[derive(Debug)]
pub struct Answered(());

impl Connecting<'_> {
    /// Connects the socket and queues the CONNECT reply: its `sid` and `data`'s fields.
    ///
    /// The reply is queued under the state lock that marks the namespace connected: the hub's
    /// fan-out checks that mark under the same lock, so no broadcast can overtake the reply (a
    /// client that got `user joined` before its CONNECT failed its handshake).
    pub fn accept(self, mut data: Map<String, Value>) -> Answered {
        let s = self.session;
        // On `/`, the socket id is the session's: the hub's fan-out and recovery know it so.
        let sid = if self.nsp == "/" {
            s.sid.clone()
        } else {
            new_sid()
        };
        data.insert("sid".into(), Value::String(sid));
        let reply = SioPacket {
            nsp: self.nsp.to_string(),
            ..SioPacket::connect(Value::Object(data))
        };
        {
            let mut st = s.lock_state();
            st.set_connected(self.nsp, true);
            s.send_packet(&reply);
        }
        s.connected_namespace();
        Answered(())
    }

    /// Answers with a CONNECT_ERROR carrying `message`; the connection stays, unconnected.
    pub fn refuse(self, message: &str) -> Answered {
        self.session.send_packet(&SioPacket {
            nsp: self.nsp.to_string(),
            ..SioPacket::connect_error(message)
        });
        Answered(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Frame;
    use serde_json::json;

    fn sent(s: &Session) -> Vec<String> {
        let mut r = s.outbox.try_reader().expect("reader");
        std::iter::from_fn(|| r.try_recv())
            .map(|f| match f {
                Frame::Text(t) => t.to_string(),
                Frame::Binary(b) => format!("<{} bytes>", b.len()),
            })
            .collect()
    }

    fn connecting<'a>(s: &'a Arc<Session>, nsp: &'a str) -> Connecting<'a> {
        Connecting {
            session: s,
            nsp,
            auth: json!({}),
        }
    }

    #[test]
    fn an_accepted_namespace_is_connected_and_a_refused_one_is_not() {
        let s = Arc::new(Session::new("e1".into(), 10.0, true, 1 << 20));
        s.set_connect_deadline(std::time::Duration::ZERO);
        let pid = Map::from_iter([("pid".to_string(), json!("p1"))]);
        let _ = connecting(&s, "/").accept(pid);
        let _ = connecting(&s, "/custom").accept(Map::new());
        let _ = connecting(&s, "/nope").refuse("Invalid namespace");
        {
            let st = s.lock_state();
            assert!(st.is_connected("/") && st.is_connected("/custom"));
            assert!(!st.is_connected("/nope"));
        }
        assert!(
            !s.connect_overdue(u64::MAX),
            "a connected namespace ends the connect timeout"
        );
        let out = sent(&s);
        assert_eq!(
            out[0], r#"40{"pid":"p1","sid":"e1"}"#,
            "`/`'s socket id is the session's"
        );
        assert!(out[1].starts_with(r#"40/custom,{"sid":""#), "{}", out[1]);
        assert_eq!(out[2], r#"44/nope,{"message":"Invalid namespace"}"#);
    }
}
