//! The Engine.IO v4 / Socket.IO v5 wire codec: the one place packets are parsed and written.
//!
//! chat-node (server side) and loadtest (client side) both use it. Binary attachments are kept as
//! `_placeholder` objects in the JSON plus a list of raw buffers, which is how they travel on the
//! wire, so relaying a binary event never re-encodes it.

use bytes::Bytes;
use serde_json::Value;

/// The polling transport's packet separator (ASCII record separator).
pub const RECORD_SEPARATOR: char = '\x1e';

/// Why a frame could not be decoded. The connection that sent it is closed; nothing else is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("empty packet")]
    Empty,
    #[error("unknown Engine.IO packet type {0:?}")]
    EioType(char),
    #[error("unknown Socket.IO packet type {0:?}")]
    SioType(char),
    #[error("bad attachment count")]
    Attachments,
    #[error("bad ack id")]
    AckId,
    #[error("payload is not valid JSON: {0}")]
    Json(String),
    #[error("event payload must be a non-empty array starting with the event name")]
    EventShape,
    #[error("bad base64 in binary polling packet")]
    Base64,
}

/// Engine.IO v4 packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EioType {
    Open,
    Close,
    Ping,
    Pong,
    Message,
    Upgrade,
    Noop,
}

impl EioType {
    pub fn as_char(self) -> char {
        match self {
            Self::Open => '0',
            Self::Close => '1',
            Self::Ping => '2',
            Self::Pong => '3',
            Self::Message => '4',
            Self::Upgrade => '5',
            Self::Noop => '6',
        }
    }

    fn from_char(c: char) -> Result<Self, CodecError> {
        Ok(match c {
            '0' => Self::Open,
            '1' => Self::Close,
            '2' => Self::Ping,
            '3' => Self::Pong,
            '4' => Self::Message,
            '5' => Self::Upgrade,
            '6' => Self::Noop,
            other => return Err(CodecError::EioType(other)),
        })
    }
}

/// Splits a text Engine.IO packet into its type and data.
pub fn eio_decode(text: &str) -> Result<(EioType, &str), CodecError> {
    let mut chars = text.chars();
    let t = EioType::from_char(chars.next().ok_or(CodecError::Empty)?)?;
    Ok((t, chars.as_str()))
}

/// A text Engine.IO packet.
pub fn eio_encode(t: EioType, data: &str) -> String {
    let mut s = String::with_capacity(1 + data.len());
    s.push(t.as_char());
    s.push_str(data);
    s
}

/// The Engine.IO open packet's JSON (after the `0`).
pub fn eio_open_json(
    sid: &str,
    upgrades: &[&str],
    ping_interval_ms: u64,
    ping_timeout_ms: u64,
    max_payload: usize,
) -> String {
    serde_json::json!({
        "sid": sid,
        "upgrades": upgrades,
        "pingInterval": ping_interval_ms,
        "pingTimeout": ping_timeout_ms,
        "maxPayload": max_payload,
    })
    .to_string()
}

/// One item of a polling payload: text, or binary (sent as `b<base64>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollItem {
    Text(String),
    Binary(Bytes),
}

/// Joins packets into one polling response body.
pub fn encode_payload(items: &[PollItem]) -> String {
    use base64::Engine as _;
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(RECORD_SEPARATOR);
        }
        match item {
            PollItem::Text(t) => out.push_str(t),
            PollItem::Binary(b) => {
                out.push('b');
                out.push_str(&base64::engine::general_purpose::STANDARD.encode(b));
            }
        }
    }
    out
}

/// Splits a polling request body into packets.
pub fn decode_payload(body: &str) -> Result<Vec<PollItem>, CodecError> {
    use base64::Engine as _;
    body.split(RECORD_SEPARATOR)
        .map(|p| match p.strip_prefix('b') {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(|v| PollItem::Binary(Bytes::from(v)))
                .map_err(|_| CodecError::Base64),
            None => Ok(PollItem::Text(p.to_string())),
        })
        .collect()
}

/// Socket.IO v5 packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SioType {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

impl SioType {
    fn as_char(self) -> char {
        match self {
            Self::Connect => '0',
            Self::Disconnect => '1',
            Self::Event => '2',
            Self::Ack => '3',
            Self::ConnectError => '4',
            Self::BinaryEvent => '5',
            Self::BinaryAck => '6',
        }
    }

    fn from_char(c: char) -> Result<Self, CodecError> {
        Ok(match c {
            '0' => Self::Connect,
            '1' => Self::Disconnect,
            '2' => Self::Event,
            '3' => Self::Ack,
            '4' => Self::ConnectError,
            '5' => Self::BinaryEvent,
            '6' => Self::BinaryAck,
            other => return Err(CodecError::SioType(other)),
        })
    }
}

/// A Socket.IO packet. For binary packets, `data` holds `{"_placeholder":true,"num":i}` objects
/// and `attachments` the buffers (filled in after the header arrives).
#[derive(Debug, Clone, PartialEq)]
pub struct SioPacket {
    pub kind: SioType,
    pub nsp: String,
    pub id: Option<u64>,
    pub data: Option<Value>,
    /// Number of binary attachments announced in the header.
    pub expected_attachments: usize,
    pub attachments: Vec<Bytes>,
}

impl SioPacket {
    /// An event (`["name", args...]`) on the default namespace, binary if it has attachments.
    pub fn event(args: Value, attachments: Vec<Bytes>) -> Self {
        Self {
            kind: if attachments.is_empty() {
                SioType::Event
            } else {
                SioType::BinaryEvent
            },
            nsp: "/".into(),
            id: None,
            data: Some(args),
            expected_attachments: attachments.len(),
            attachments,
        }
    }

    pub fn ack(id: u64, args: Value) -> Self {
        Self {
            kind: SioType::Ack,
            nsp: "/".into(),
            id: Some(id),
            data: Some(args),
            expected_attachments: 0,
            attachments: Vec::new(),
        }
    }

    pub fn connect(data: Value) -> Self {
        Self {
            kind: SioType::Connect,
            nsp: "/".into(),
            id: None,
            data: Some(data),
            expected_attachments: 0,
            attachments: Vec::new(),
        }
    }

    pub fn connect_error(message: &str) -> Self {
        Self {
            kind: SioType::ConnectError,
            nsp: "/".into(),
            id: None,
            data: Some(serde_json::json!({ "message": message })),
            expected_attachments: 0,
            attachments: Vec::new(),
        }
    }

    /// Whether all announced binary attachments have arrived.
    pub fn is_complete(&self) -> bool {
        self.attachments.len() >= self.expected_attachments
    }

    /// The event name and its arguments, for EVENT / BINARY_EVENT packets.
    pub fn event_parts(&self) -> Result<(&str, &[Value]), CodecError> {
        match &self.data {
            Some(Value::Array(items)) => match items.split_first() {
                Some((Value::String(name), rest)) => Ok((name.as_str(), rest)),
                _ => Err(CodecError::EventShape),
            },
            _ => Err(CodecError::EventShape),
        }
    }

    /// Like [`Self::event_parts`], taking the packet apart instead of borrowing (no copies).
    pub fn into_event(self) -> Result<(String, Vec<Value>), CodecError> {
        match self.data {
            Some(Value::Array(mut items)) if matches!(items.first(), Some(Value::String(_))) => {
                match items.remove(0) {
                    Value::String(name) => Ok((name, items)),
                    _ => Err(CodecError::EventShape),
                }
            }
            _ => Err(CodecError::EventShape),
        }
    }

    /// The wire text of this packet (the Engine.IO message packet's data, without the `4`).
    /// Attachments, if any, follow as separate binary frames.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(64);
        s.push(self.kind.as_char());
        if matches!(self.kind, SioType::BinaryEvent | SioType::BinaryAck) {
            s.push_str(&self.attachments.len().to_string());
            s.push('-');
        }
        if self.nsp != "/" {
            s.push_str(&self.nsp);
            s.push(',');
        }
        if let Some(id) = self.id {
            s.push_str(&id.to_string());
        }
        if let Some(d) = &self.data {
            s.push_str(&d.to_string());
        }
        s
    }

    /// Parses a Socket.IO packet from the Engine.IO message data (after the `4`).
    pub fn decode(text: &str) -> Result<Self, CodecError> {
        let (h, rest) = decode_header(text)?;
        let data = if rest.is_empty() {
            None
        } else {
            Some(serde_json::from_str(rest).map_err(|e| CodecError::Json(e.to_string()))?)
        };
        let p = Self {
            kind: h.kind,
            nsp: h.nsp.to_string(),
            id: h.id,
            data,
            expected_attachments: h.attachments,
            attachments: Vec::new(),
        };
        if matches!(h.kind, SioType::Event | SioType::BinaryEvent) {
            p.event_parts()?;
        }
        Ok(p)
    }
}

/// A Socket.IO packet's header: everything before its JSON data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SioHeader<'a> {
    pub kind: SioType,
    pub nsp: &'a str,
    pub id: Option<u64>,
    /// Binary attachments announced (BINARY_EVENT / BINARY_ACK), at most 64.
    pub attachments: usize,
}

/// Splits Engine.IO message data (after the `4`) into the Socket.IO header and the JSON data
/// text, unparsed: a reader that knows the data's shape deserializes it straight into its own
/// types (the load generator reads every delivery this way) instead of a `Value` tree.
pub fn decode_header(text: &str) -> Result<(SioHeader<'_>, &str), CodecError> {
    let c = text.chars().next().ok_or(CodecError::Empty)?;
    let kind = SioType::from_char(c)?;
    let mut rest = &text[c.len_utf8()..];
    let mut attachments = 0;
    if matches!(kind, SioType::BinaryEvent | SioType::BinaryAck) {
        let dash = rest.find('-').ok_or(CodecError::Attachments)?;
        attachments = rest[..dash].parse().map_err(|_| CodecError::Attachments)?;
        if attachments > 64 {
            return Err(CodecError::Attachments);
        }
        rest = &rest[dash + 1..];
    }
    let mut nsp = "/";
    if rest.starts_with('/') {
        let end = rest.find(',').unwrap_or(rest.len());
        nsp = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or("");
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = if digits > 0 {
        Some(rest[..digits].parse().map_err(|_| CodecError::AckId)?)
    } else {
        None
    };
    let h = SioHeader {
        kind,
        nsp,
        id,
        attachments,
    };
    Ok((h, &rest[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn header_is_split_from_the_data() {
        let (h, data) =
            decode_header("52-/chat,12[\"ev\",{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!(
            h,
            SioHeader {
                kind: SioType::BinaryEvent,
                nsp: "/chat",
                id: Some(12),
                attachments: 2
            }
        );
        assert_eq!(data, "[\"ev\",{\"_placeholder\":true,\"num\":0}]");
        let (h, data) = decode_header("2[\"new message\"]").unwrap();
        assert_eq!(
            (h.kind, h.nsp, h.id, data),
            (SioType::Event, "/", None, "[\"new message\"]")
        );
        assert_eq!(decode_header(""), Err(CodecError::Empty));
        assert_eq!(decode_header("9[]"), Err(CodecError::SioType('9')));
        assert_eq!(decode_header("5x-[]"), Err(CodecError::Attachments));
    }

    #[test]
    fn engine_io_round_trip() {
        assert_eq!(eio_decode("2probe"), Ok((EioType::Ping, "probe")));
        assert_eq!(eio_encode(EioType::Pong, "probe"), "3probe");
        assert_eq!(eio_decode("9"), Err(CodecError::EioType('9')));
        assert_eq!(eio_decode(""), Err(CodecError::Empty));
    }

    #[test]
    fn decodes_what_socket_io_client_sends() {
        let p = SioPacket::decode(r#"2["new message","hi"]"#).expect("event");
        assert_eq!(
            p.event_parts().expect("parts"),
            ("new message", &[json!("hi")][..])
        );
        let p = SioPacket::decode(r#"212["add user","ann"]"#).expect("event with ack");
        assert_eq!(p.id, Some(12));
        let p = SioPacket::decode(r#"0{"pid":"abc","offset":"7"}"#).expect("connect");
        assert_eq!(p.kind, SioType::Connect);
        let p = SioPacket::decode("0").expect("bare connect");
        assert_eq!(p.data, None);
        let p = SioPacket::decode(r#"51-["up",{"_placeholder":true,"num":0}]"#).expect("binary");
        assert_eq!(p.expected_attachments, 1);
        assert!(!p.is_complete());
        let p = SioPacket::decode(r#"2/admin,1["x"]"#).expect("namespace");
        assert_eq!((p.nsp.as_str(), p.id), ("/admin", Some(1)));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "9",
            "2{",
            r#"2{"a":1}"#,
            "2[]",
            "2[1]",
            "5x-[\"a\"]",
            "5999-[\"a\"]",
        ] {
            assert!(SioPacket::decode(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn encodes_like_the_reference_server() {
        let p = SioPacket::event(json!(["login", {"numUsers": 2}]), vec![]);
        assert_eq!(p.encode(), r#"2["login",{"numUsers":2}]"#);
        assert_eq!(SioPacket::ack(3, json!(["ok"])).encode(), r#"33["ok"]"#);
        let b = SioPacket::event(
            json!(["f", {"_placeholder": true, "num": 0}]),
            vec![Bytes::from_static(b"x")],
        );
        assert_eq!(b.encode(), r#"51-["f",{"_placeholder":true,"num":0}]"#);
    }

    #[test]
    fn polling_payloads() {
        let items = vec![
            PollItem::Text("40".into()),
            PollItem::Binary(Bytes::from_static(&[1, 2, 3])),
        ];
        let body = encode_payload(&items);
        assert_eq!(body, "40\x1ebAQID");
        assert_eq!(decode_payload(&body), Ok(items));
        assert_eq!(decode_payload("b!!"), Err(CodecError::Base64));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(s in ".{0,64}") {
            let _ = SioPacket::decode(&s);
            let _ = eio_decode(&s);
            let _ = decode_payload(&s);
        }

        #[test]
        fn event_round_trips(name in "[a-z ]{1,12}", n in proptest::num::i64::ANY, id in proptest::option::of(0u64..1_000_000)) {
            let mut p = SioPacket::event(json!([name, {"n": n}]), vec![]);
            p.id = id;
            proptest::prop_assert_eq!(SioPacket::decode(&p.encode()), Ok(p));
        }
    }
}
