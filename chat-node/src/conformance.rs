//! `chat-node --conformance`: the handlers of the server the official Socket.IO protocol suite
//! expects (../shared/conformance/socket.io-protocol, README), in place of the chat's. The
//! transport, sessions and timings are chat-node's own; only [`crate::config::ChatConfig::conformance`]'s
//! numbers and these handlers differ. chat-node/tests/protocol_suite.rs runs the suite.

use crate::session::Session;
use connscale_common::sio::{SioPacket, SioType};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The namespaces a client may connect to; any other gets a CONNECT_ERROR.
pub const NAMESPACES: &[&str] = &["/", "/custom"];

/// After a CONNECT on either namespace: `auth` with the CONNECT payload, [`AUTH_AFTER`] later.
pub fn on_connect(s: &Arc<Session>, nsp: &str, auth: &Value) {
    let mut p = SioPacket::event(json!(["auth", auth]), vec![]);
    p.nsp = nsp.to_string();
    let s = Arc::clone(s);
    tokio::spawn(async move {
        tokio::time::sleep(AUTH_AFTER).await;
        s.send_packet(&p);
    });
}

/// How long `auth` waits after the CONNECT answer. The suite's client (ws 8.5) emits every
/// message of one socket read at once, and the suite awaits the CONNECT answer and `auth` one
/// after the other: were both in one read (chat-node writes queued frames with one flush),
/// `auth` would go by before the suite listened for it. The reference server happens to write
/// them a turn of its event loop apart; this pause keeps them in separate reads.
pub const AUTH_AFTER: Duration = Duration::from_millis(20);

/// On `/`: `message` → `message-back` with the same arguments (and attachments);
/// `message-with-ack` → its ack, with the same arguments. `/custom` has no handlers.
pub fn on_event(s: &Session, p: SioPacket) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Frame;
    use bytes::Bytes;

    fn sent(s: &Session) -> Vec<String> {
        let mut r = s.outbox.try_reader().expect("reader");
        std::iter::from_fn(|| r.try_recv())
            .map(|f| match f {
                Frame::Text(t) => t.to_string(),
                Frame::Binary(b) => format!("<{} bytes>", b.len()),
            })
            .collect()
    }

    #[tokio::test]
    async fn the_reference_handlers_answer_as_the_suite_expects() {
        let s = Arc::new(Session::new("x".into(), 10.0, true, 1 << 20));
        on_connect(&s, "/custom", &json!({"token": "abc"}));
        tokio::time::sleep(AUTH_AFTER * 5).await;
        on_event(
            &s,
            SioPacket::decode(r#"2["message",1,"2",{"3":[true]}]"#).unwrap(),
        );
        on_event(
            &s,
            SioPacket::decode(r#"2456["message-with-ack",1,"2",{"3":[false]}]"#).unwrap(),
        );
        let mut bin =
            SioPacket::decode(r#"51-789["message-with-ack",{"_placeholder":true,"num":0}]"#)
                .unwrap();
        bin.attachments.push(Bytes::from_static(&[1, 2, 3]));
        on_event(&s, bin);
        assert_eq!(
            sent(&s),
            [
                r#"42/custom,["auth",{"token":"abc"}]"#,
                r#"42["message-back",1,"2",{"3":[true]}]"#,
                r#"43456[1,"2",{"3":[false]}]"#,
                r#"461-789[{"_placeholder":true,"num":0}]"#,
                "<3 bytes>",
            ]
        );
    }
}
