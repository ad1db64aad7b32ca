//! The least a server can do per Socket.IO websocket connection, to tell how far chat-node's
//! accept rate is from what this machine allows: the same bytes and packets as chat-node's
//! handshake (101 and Engine.IO open in one segment, then the Socket.IO CONNECT reply) with the
//! same socket options, and nothing else: no HTTP framework, no sessions, no rooms, no limits.
//! Not a server to use: it trusts every byte. `scripts/bench/accept_floor.py` runs it.
//!
//! Usage: `cargo run --release -p chat-node --example handshake_floor -- PORT`

use chat_node::config::ChatConfig;
use chat_node::tcp;
use connscale_common::sio::{self, EioType, SioPacket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// An unmasked server text frame (payloads under 126 bytes).
fn frame(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&[0x81, text.len() as u8]);
    out.extend_from_slice(text.as_bytes());
}

async fn serve(mut s: TcpStream, n: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 2048];
    let mut len = 0;
    let head_end = loop {
        let r = s.read(&mut buf[len..]).await?;
        if r == 0 {
            return Ok(());
        }
        len += r;
        if let Some(i) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if len == buf.len() {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let key = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let sid = format!("floor{n:015}");
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes();
    let cfg = ChatConfig::default();
    let open = sio::eio_open_json(
        &sid,
        &[],
        cfg.ping_interval.as_millis() as u64,
        cfg.ping_timeout.as_millis() as u64,
        cfg.max_message_bytes,
    );
    frame(&mut out, &sio::eio_encode(EioType::Open, &open));
    s.write_all(&out).await?;
    // The client's CONNECT ("40", a masked frame); whatever follows is read and dropped.
    len -= head_end;
    buf.copy_within(head_end..head_end + len, 0);
    while len < 2 + 4 + 2 {
        let r = s.read(&mut buf[len..]).await?;
        if r == 0 {
            return Ok(());
        }
        len += r;
    }
    out.clear();
    let reply = SioPacket::connect(serde_json::json!({ "sid": format!("s{sid}") }));
    frame(
        &mut out,
        &sio::eio_encode(EioType::Message, &reply.encode()),
    );
    s.write_all(&out).await?;
    while s.read(&mut buf).await? > 0 {}
    Ok(())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(3100);
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    sock.bind(([0, 0, 0, 0], port).into())?;
    tcp::defer_accept(&sock, 5);
    let listener = sock.listen(65_535)?;
    let mut n = 0u64;
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tcp::delay_acks(&s);
        n += 1;
        tokio::spawn(serve(s, n));
    }
}
