//! The node's TCP listener: a deep backlog, deferred accept, and per-connection socket options;
//! each connection's address comes with its descriptor, for the websocket handshake's cork.

use crate::tcp;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use tokio::net::{TcpListener, TcpStream};

/// Connections waiting to be accepted, at most (the kernel caps it at net.core.somaxconn).
/// A drained or crashed neighbour's clients all reconnect at once: with the usual 1,024 the
/// queue overflows, the dropped SYNs are retried only after a second, and the storm lasts.
const LISTEN_BACKLOG: u32 = 65_535;

/// Where a connection came from, and its socket (valid while its requests are served).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub fd: RawFd,
}

/// A [`TcpListener`] whose accepted sockets are set up for small, latency-bound frames.
pub struct NodeListener(TcpListener);

impl NodeListener {
    pub fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        tcp::defer_accept(&socket, 5);
        Ok(Self(socket.listen(LISTEN_BACKLOG)?))
    }
}

impl axum::serve::Listener for NodeListener {
    type Io = TcpStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (TcpStream, Peer) {
        // axum's accept loop retries (and logs) errors such as EMFILE.
        let (io, addr) = axum::serve::Listener::accept(&mut self.0).await;
        // Nagle would hold each small frame that follows another until the client's delayed
        // ACK (up to 40 ms): chat frames are small and latency-bound, as Node.js's noDelay
        // default knows.
        let _ = io.set_nodelay(true);
        tcp::delay_acks(&io);
        let fd = io.as_raw_fd();
        (io, Peer { addr, fd })
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer {
            addr: self.0.local_addr()?,
            fd: self.0.as_raw_fd(),
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, NodeListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, NodeListener>) -> Self {
        *stream.remote_addr()
    }
}
