//! A lean Socket.IO v5 client over websocket: small buffers, one task per connection, an
//! optional source address (to spread load over 127.0.0.x), failures classified by cause.

use connscale_common::sio::{self, EioType, SioPacket, SioType};
use futures::{SinkExt, StreamExt};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Why a connection attempt failed (the ramp report counts each).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    #[error("connection refused")]
    Refused,
    #[error("timed out")]
    Timeout,
    #[error("no local ports or files left (EADDRNOTAVAIL/EMFILE)")]
    Resources,
    #[error("HTTP {0} (node full or draining)")]
    Http(u16),
    #[error("protocol error")]
    Protocol,
    #[error("other I/O error")]
    Io,
}

impl Failure {
    /// The key reports count this failure under (`refused`, `timeout`, `http_503`, ...).
    pub fn label(&self) -> String {
        match self {
            Failure::Http(code) => format!("http_{code}"),
            other => serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| other.to_string()),
        }
    }
}

/// `http://host:port` → (socket address, websocket URL of the Engine.IO endpoint).
pub fn endpoint(target: &str) -> Result<(SocketAddr, String), String> {
    let hostport = target
        .trim_start_matches("http://")
        .trim_start_matches("ws://")
        .trim_end_matches('/');
    let addr: SocketAddr = hostport.parse().map_err(|_| {
        format!("target {target:?} must be http://IP:PORT (e.g. http://127.0.0.1:3000)")
    })?;
    Ok((
        addr,
        format!("ws://{hostport}/socket.io/?EIO=4&transport=websocket"),
    ))
}

/// Opens a websocket and completes the Engine.IO and Socket.IO handshakes.
pub async fn connect(
    addr: SocketAddr,
    url: &str,
    src: Option<IpAddr>,
    timeout: Duration,
) -> Result<Ws, Failure> {
    connect_recovering(addr, url, src, timeout, None)
        .await
        .map(|(ws, _)| ws)
}

/// Lets `bind(ip, 0)` leave the port to `connect`, which picks one free for that destination
/// (IP_BIND_ADDRESS_NO_PORT): bind alone must find a port free for any destination, a search
/// that grows with the sockets (TIME_WAIT included) already on the address, and the client
/// shares the cores with the server it measures. What goes on the wire is the same.
fn bind_address_only(sock: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: an int-sized option on a socket this function borrows. A failure (an old
    // kernel) leaves the port to bind, as without it.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A recoverable session: the server's private id and the last offset received.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub pid: Option<String>,
    pub offset: Option<String>,
}

/// Like [`connect`], presenting `{pid, offset}` (as socket.io-client ≥ 4.6 does) so the server
/// can replay what was missed; returns the session's pid for next time.
pub async fn connect_recovering(
    addr: SocketAddr,
    url: &str,
    src: Option<IpAddr>,
    timeout: Duration,
    rec: Option<&Recovery>,
) -> Result<(Ws, Option<String>), Failure> {
    tokio::time::timeout(timeout, async {
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(classify)?;
        if let Some(ip) = src {
            bind_address_only(&sock);
            sock.bind(SocketAddr::new(ip, 0)).map_err(classify)?;
        }
        let stream = sock.connect(addr).await.map_err(classify)?;
        let _ = stream.set_nodelay(true);
        let cfg = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(cfg))
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r) => {
                    Failure::Http(r.status().as_u16())
                }
                tokio_tungstenite::tungstenite::Error::Io(e) => classify(e),
                _ => Failure::Protocol,
            })?;
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.starts_with('0') => {}
            _ => return Err(Failure::Protocol),
        }
        let hello = match rec.and_then(|r| r.pid.as_ref()) {
            Some(pid) => format!(
                "40{}",
                serde_json::json!({"pid": pid, "offset": rec.and_then(|r| r.offset.clone())})
            ),
            None => "40".to_string(),
        };
        ws.send(Message::text(hello))
            .await
            .map_err(|_| Failure::Protocol)?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.starts_with("40") => {
                    let pid = serde_json::from_str::<serde_json::Value>(&t[2..])
                        .ok()
                        .and_then(|v| v["pid"].as_str().map(str::to_string));
                    return Ok((ws, pid));
                }
                Some(Ok(Message::Text(t))) if t.as_str() == "2" => ws
                    .send(Message::text("3"))
                    .await
                    .map_err(|_| Failure::Protocol)?,
                _ => return Err(Failure::Protocol),
            }
        }
    })
    .await
    .map_err(|_| Failure::Timeout)?
}

fn classify(e: std::io::Error) -> Failure {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => Failure::Refused,
        Some(libc::EADDRNOTAVAIL | libc::EMFILE | libc::ENFILE | libc::EADDRINUSE) => {
            Failure::Resources
        }
        Some(libc::ETIMEDOUT) => Failure::Timeout,
        _ => Failure::Io,
    }
}

/// Sends an event (`42[...]`).
pub async fn emit(ws: &mut Ws, args: serde_json::Value) -> bool {
    let p = SioPacket::event(args, vec![]);
    ws.send(Message::text(format!("4{}", p.encode())))
        .await
        .is_ok()
}

/// Sends an event with an ack id and waits (answering pings) until the server acknowledges it,
/// so what the event does (join a room, say) has happened. The Socket.IO packets that came
/// before the ack go to `before` (a room's messages may arrive between the join and its ack).
pub async fn emit_acked(
    ws: &mut Ws,
    args: serde_json::Value,
    id: u64,
    timeout: Duration,
    before: &mut Vec<Utf8Bytes>,
) -> bool {
    let mut p = SioPacket::event(args, vec![]);
    p.id = Some(id);
    if ws
        .send(Message::text(format!("4{}", p.encode())))
        .await
        .is_err()
    {
        return false;
    }
    tokio::time::timeout(timeout, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => match sio::eio_decode(t.as_str()) {
                    Ok((EioType::Ping, _)) if ws.send(Message::text("3")).await.is_err() => {
                        return false;
                    }
                    Ok((EioType::Message, data)) => {
                        if let Ok(a) = SioPacket::decode(data)
                            && a.kind == SioType::Ack
                            && a.id == Some(id)
                        {
                            return true;
                        }
                        before.push(t.clone());
                    }
                    _ => {}
                },
                Some(Ok(_)) => {}
                _ => return false,
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// What arrived on a connection, after answering pings.
pub enum Incoming {
    /// A Socket.IO packet, unparsed: readers decode only what they need (see [`Self::packet`]).
    Packet(Utf8Bytes),
    Other,
    Closed,
}

impl Incoming {
    /// The Socket.IO packet text (the Engine.IO message's data, after the `4`).
    pub fn packet(&self) -> Option<&str> {
        match self {
            Incoming::Packet(t) => t.as_str().get(1..),
            _ => None,
        }
    }
}

/// Reads the next frame, answering Engine.IO pings on the way.
pub async fn recv(ws: &mut Ws) -> Incoming {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => match sio::eio_decode(t.as_str()) {
                Ok((EioType::Ping, _)) => {
                    if ws.send(Message::text("3")).await.is_err() {
                        return Incoming::Closed;
                    }
                }
                Ok((EioType::Message, _)) => return Incoming::Packet(t),
                Ok((EioType::Close, _)) => return Incoming::Closed,
                _ => return Incoming::Other,
            },
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Incoming::Closed,
            Some(Ok(_)) => return Incoming::Other,
        }
    }
}

/// Parses `127.0.0.2-127.0.0.40` or a comma list into addresses.
pub fn parse_sources(spec: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (
                    a.parse()
                        .map_err(|_| format!("bad address {a:?} in --source-ips"))?,
                    b.parse()
                        .map_err(|_| format!("bad address {b:?} in --source-ips"))?,
                );
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a || b - a > 65_536 {
                    return Err(format!("bad range {part:?} in --source-ips"));
                }
                out.extend((a..=b).map(|n| IpAddr::from(std::net::Ipv4Addr::from(n))));
            }
            None => out.push(
                part.parse()
                    .map_err(|_| format!("bad address {part:?} in --source-ips"))?,
            ),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_endpoints_parse() {
        assert_eq!(parse_sources("127.0.0.2-127.0.0.4").unwrap().len(), 3);
        assert!(parse_sources("127.0.0.9-127.0.0.2").is_err());
        assert_eq!(
            endpoint("http://127.0.0.1:3000/").unwrap().1,
            "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"
        );
        assert!(endpoint("chat.example.com").is_err());
    }
}
