//! Recovery offsets: how far a client has read in each stream it receives.
//!
//! Every room numbers its broadcasts with a sequence of its own (rooms live on different Redis
//! Cluster shards, so no single counter can number them all), and broadcasts to every client
//! have one more. A position is therefore a vector: the sequence reached in the all-clients
//! stream, then per room the room's sequence. socket.io-client treats the offset as an opaque
//! string and sends back the last one it received, so each numbered packet carries its
//! recipient's whole vector, written `ALL(.HASH-SEQ)*` (decimal sequences; HASH: 8 hex digits
//! of the room name's FNV-1a hash, so a long room name costs 8 characters).

use std::collections::HashMap;

/// FNV-1a, 64 bits: stable across processes and releases (std's hasher is neither promised).
pub fn room_hash(room: &str) -> u64 {
    room.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The 32 bits of a room's hash an offset names it by.
fn short(room: &str) -> u32 {
    room_hash(room) as u32
}

/// An offset's text for `all` and each `(room, seq)`, rooms in hash order (one vector, one
/// text).
pub fn encode<'a>(all: u64, rooms: impl IntoIterator<Item = (&'a str, u64)>) -> String {
    let mut parts: Vec<(u32, u64)> = rooms.into_iter().map(|(r, n)| (short(r), n)).collect();
    parts.sort_unstable();
    let mut out = all.to_string();
    for (h, n) in parts {
        out.push_str(&format!(".{h:08x}-{n}"));
    }
    out
}

/// An offset a client sent back, as far as it could be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claimed {
    pub all: u64,
    rooms: HashMap<u32, u64>,
}

impl Claimed {
    /// Reads an offset; None for anything not in [`encode`]'s form (a client's bad or forged
    /// offset is no offset: replay starts where the session's record says).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('.');
        let all = parts.next()?.parse().ok()?;
        let rooms = parts
            .map(|p| {
                let (h, n) = p.split_once('-')?;
                if h.len() != 8 {
                    return None;
                }
                Some((u32::from_str_radix(h, 16).ok()?, n.parse().ok()?))
            })
            .collect::<Option<HashMap<u32, u64>>>()?;
        Some(Self { all, rooms })
    }

    /// The sequence the client reached in `room`, if its offset names the room.
    pub fn room(&self, room: &str) -> Option<u64> {
        self.rooms.get(&short(room)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_reads_back_as_written() {
        let text = encode(7, [("ops", 3), ("a room with a long name", 12)]);
        let c = Claimed::parse(&text).expect("parses");
        assert_eq!(c.all, 7);
        assert_eq!(c.room("ops"), Some(3));
        assert_eq!(c.room("a room with a long name"), Some(12));
        assert_eq!(c.room("elsewhere"), None);
        assert_eq!(encode(0, []), "0");
        assert_eq!(Claimed::parse("42").map(|c| c.all), Some(42));
    }

    /// Whatever a client sends, parsing answers (None for anything malformed), never panics.
    #[test]
    fn malformed_offsets_are_no_offset() {
        for bad in [
            "",
            ".",
            "x",
            "-1",
            "1.",
            "1.abc-2",
            "1.0000000g-2",
            "1.00000001-",
            "1.00000001-x",
            "1.00000001-2-3",
            "99999999999999999999999",
            "1.000000001-2",
            "😀",
            "1.0000😀-2",
        ] {
            assert_eq!(Claimed::parse(bad), None, "{bad:?}");
        }
        let long = format!("1{}", ".00000001-2".repeat(10_000));
        assert!(Claimed::parse(&long).is_some());
    }
}
