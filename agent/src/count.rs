//! Counting established TCP connections by local port: netlink SOCK_DIAG, /proc fallback; and
//! closing them one by one with SOCK_DESTROY (the request `ss -K` sends), for the `close` drain.
//!
//! The netlink request carries the state filter (ESTABLISHED only) and the local port in its
//! socket id, so the kernel skips every other socket and we only count the replies. Both
//! address families are asked: a `[::]` listener reports its IPv4 clients as AF_INET6.

use serde::Serialize;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// How a count was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Netlink,
    Proc,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Netlink => "netlink",
            Self::Proc => "proc",
        }
    }
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_ESTABLISHED: u32 = 1;
const TCP_LISTEN: u32 = 10;
const NLMSG_HDRLEN: usize = 16;
const REQ_LEN: usize = NLMSG_HDRLEN + 56;

/// A reusable netlink socket (opened once, optionally inside another network namespace).
pub struct NetlinkCounter {
    fd: OwnedFd,
    buf: Vec<u8>,
    seq: u32,
    /// Per port: the families that have a listener (empty: none), and when that was checked.
    families: std::collections::HashMap<u16, (Vec<u8>, std::time::Instant)>,
}

/// How long the listener families of a port are trusted before being checked again (so /health
/// sees a service stop listening within this long). A port without a listener is checked on
/// every sample: a service that starts is seen at once.
const FAMILY_TTL: std::time::Duration = std::time::Duration::from_secs(5);

impl NetlinkCounter {
    /// Opens a NETLINK_SOCK_DIAG socket in this process's network namespace.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned immediately.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            fd,
            buf: vec![0u8; 64 * 1024],
            seq: 0,
            families: std::collections::HashMap::new(),
        })
    }

    /// Opens the socket inside the network namespace at `netns` (`/proc/PID/ns/net` or
    /// `/run/netns/NAME`). Needs CAP_SYS_ADMIN; the socket keeps that namespace for its life.
    pub fn in_namespace(netns: &Path) -> io::Result<Self> {
        let netns = netns.to_path_buf();
        // setns affects only the calling thread: do it on a throwaway thread.
        std::thread::spawn(move || -> io::Result<Self> {
            let target = std::fs::File::open(&netns)?;
            // SAFETY: setns on a valid namespace fd; this thread exits right after.
            if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "setns({}) failed: {}",
                        netns.display(),
                        io::Error::last_os_error()
                    ),
                ));
            }
            Self::new()
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
    }

    /// Established connections whose local port is one of `ports`, and whether every one of
    /// those ports has a listener.
    ///
    /// Each established dump walks the kernel's whole established-socket table, whatever the
    /// filter, so only the families that have a listener on the port are asked (a LISTEN-only
    /// dump skips that table and costs nearly nothing). With no listener (service restarting),
    /// both are asked, as lingering connections still count.
    pub fn count(&mut self, ports: &[u16]) -> io::Result<Counted> {
        let mut c = Counted {
            connections: 0,
            listening: true,
        };
        for &port in ports {
            let mut families = self.listener_families(port)?;
            if families.is_empty() {
                c.listening = false;
                families = vec![libc::AF_INET as u8, libc::AF_INET6 as u8];
            }
            for family in families {
                c.connections += self.dump(family, port, 1 << TCP_ESTABLISHED)?;
            }
        }
        Ok(c)
    }

    /// The families with a LISTEN socket on `port` (empty when none).
    fn listener_families(&mut self, port: u16) -> io::Result<Vec<u8>> {
        if let Some((f, at)) = self.families.get(&port)
            && !f.is_empty()
            && at.elapsed() < FAMILY_TTL
        {
            return Ok(f.clone());
        }
        let mut found = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            if self.dump(family, port, 1 << TCP_LISTEN)? > 0 {
                found.push(family);
            }
        }
        self.families
            .insert(port, (found.clone(), std::time::Instant::now()));
        Ok(found)
    }

    fn dump(&mut self, family: u8, port: u16, states: u32) -> io::Result<u64> {
        let mut count = 0;
        self.dump_each(family, port, states, |_| count += 1)?;
        Ok(count)
    }

    /// The established sockets whose local port is `port`, in both address families.
    pub fn established(&mut self, port: u16) -> io::Result<Vec<SockId>> {
        let mut out = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            self.dump_each(family, port, 1 << TCP_ESTABLISHED, |msg| {
                if let Some(id) = msg.get(4..4 + SOCKID_LEN) {
                    let mut s = SockId {
                        family,
                        id: [0; SOCKID_LEN],
                    };
                    s.id.copy_from_slice(id);
                    out.push(s);
                }
            })?;
        }
        Ok(out)
    }

    /// Destroys one socket (SOCK_DESTROY): the kernel closes it and its peer gets a reset at
    /// once. `NotFound` when it is already gone. Needs CAP_NET_ADMIN (`PermissionDenied`) and a
    /// kernel built with CONFIG_INET_DIAG_DESTROY (`Unsupported`).
    pub fn destroy(&mut self, sock: &SockId) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = request(sock.family, 0, u32::MAX, self.seq);
        req[4..6].copy_from_slice(&SOCK_DESTROY.to_ne_bytes());
        req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
        req[NLMSG_HDRLEN + 8..NLMSG_HDRLEN + 8 + SOCKID_LEN].copy_from_slice(&sock.id);
        self.send(&req)?;
        self.replies(|_| {})
    }

    /// Whether [`Self::destroy`] can work here: this process has CAP_NET_ADMIN and the kernel
    /// answers SOCK_DESTROY (asked about a socket that cannot exist, so nothing is closed).
    /// The error says what is missing and how to grant it.
    pub fn destroy_available(&mut self) -> Result<(), String> {
        if !has_net_admin() {
            return Err("the agent lacks CAP_NET_ADMIN: install the unit's close-drain drop-in (README, \"Bring your own service\")".into());
        }
        let nobody = SockId {
            family: libc::AF_INET as u8,
            id: [0; SOCKID_LEN],
        };
        match self.destroy(&nobody) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Err(
                "this kernel cannot destroy sockets (built without CONFIG_INET_DIAG_DESTROY)"
                    .into(),
            ),
            Err(e) => Err(format!("SOCK_DESTROY failed: {e}")),
        }
    }

    fn dump_each(
        &mut self,
        family: u8,
        port: u16,
        states: u32,
        each: impl FnMut(&[u8]),
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let req = request(family, port, states, self.seq);
        self.send(&req)?;
        self.replies(each)
    }

    fn send(&mut self, req: &[u8]) -> io::Result<()> {
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: sendto with a buffer and address we own, lengths correct.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads the replies to the last request until its end (NLMSG_DONE or an ack), passing each
    /// SOCK_DIAG message's payload to `each`.
    fn replies(&mut self, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        loop {
            // SAFETY: recv into our own buffer of the stated length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if let Replies::Done = parse_replies(&self.buf[..n as usize], self.seq, &mut each)? {
                return Ok(());
            }
        }
    }
}

/// Length of `inet_diag_sockid`: ports, addresses, interface and cookie.
const SOCKID_LEN: usize = 48;

/// One TCP socket as the kernel names it (`inet_diag_sockid`, cookie included), so that
/// [`NetlinkCounter::destroy`] closes exactly it and never a later socket on the same addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockId {
    family: u8,
    id: [u8; SOCKID_LEN],
}

impl SockId {
    /// The remote end (the client), for logs.
    pub fn peer(&self) -> std::net::SocketAddr {
        let port = u16::from_be_bytes([self.id[2], self.id[3]]);
        let addr = &self.id[20..36];
        let ip: std::net::IpAddr = if self.family == libc::AF_INET as u8 {
            std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).into()
        } else {
            let mut a = [0u8; 16];
            a.copy_from_slice(addr);
            std::net::Ipv6Addr::from(a).into()
        };
        (ip, port).into()
    }
}

/// linux/capability.h (libc does not export the capability numbers).
const CAP_NET_ADMIN: u32 = 12;

/// Whether CAP_NET_ADMIN is in this process's effective set (`CapEff` in /proc/self/status).
fn has_net_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// An `inet_diag_req_v2` dump request: TCP sockets in `states` (a bitmask of 1 << state) with
/// local port `port`.
fn request(family: u8, port: u16, states: u32, seq: u32) -> [u8; REQ_LEN] {
    let mut r = [0u8; REQ_LEN];
    r[0..4].copy_from_slice(&(REQ_LEN as u32).to_ne_bytes());
    r[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    r[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    r[8..12].copy_from_slice(&seq.to_ne_bytes());
    let b = &mut r[NLMSG_HDRLEN..];
    b[0] = family;
    b[1] = libc::IPPROTO_TCP as u8;
    b[2] = 0; // idiag_ext: no extensions, smallest replies
    b[4..8].copy_from_slice(&states.to_ne_bytes());
    // inet_diag_sockid starts at offset 8: sport (big endian), dport, addresses, ...
    b[8..10].copy_from_slice(&port.to_be_bytes());
    r
}

enum Replies {
    More,
    Done,
}

/// Walks the netlink messages of one datagram that answer request `seq`, with bounds checks on
/// every header: each SOCK_DIAG payload goes to `each`; NLMSG_DONE or an ack (an error message
/// with errno 0) ends the reply, any other error message is that errno.
fn parse_replies(mut buf: &[u8], seq: u32, each: &mut impl FnMut(&[u8])) -> io::Result<Replies> {
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let msg_seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            ));
        }
        if msg_seq == seq {
            match kind {
                NLMSG_DONE => return Ok(Replies::Done),
                NLMSG_ERROR => {
                    let errno = buf
                        .get(16..20)
                        .map(|e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]))
                        .unwrap_or(0);
                    if errno == 0 {
                        return Ok(Replies::Done);
                    }
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                SOCK_DIAG_BY_FAMILY => each(&buf[NLMSG_HDRLEN..len]),
                _ => {}
            }
        }
        let aligned = (len + 3) & !3;
        buf = buf.get(aligned..).unwrap_or(&[]);
    }
    Ok(Replies::More)
}

/// Established connections and whether every port has a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub connections: u64,
    pub listening: bool,
}

/// Counts from /proc/net/tcp{,6} (of `proc_root`, e.g. `/proc` or `/proc/PID`): state 01 (and
/// 0A, LISTEN, for the listener check) with a local port in `ports`. Not exact while connections
/// churn (the kernel prints the table in pieces), which is why netlink is preferred.
pub fn count_proc(proc_root: &Path, ports: &[u16]) -> io::Result<Counted> {
    let mut total = 0;
    let mut listening = vec![false; ports.len()];
    let mut any = false;
    for file in ["net/tcp", "net/tcp6"] {
        let text = match std::fs::read_to_string(proc_root.join(file)) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        any = true;
        for (port, state) in text.lines().skip(1).filter_map(proc_line) {
            let Some(i) = ports.iter().position(|&p| p == port) else {
                continue;
            };
            match state {
                "01" => total += 1,
                "0A" => listening[i] = true,
                _ => {}
            }
        }
    }
    if !any {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no /proc/net/tcp or tcp6",
        ));
    }
    Ok(Counted {
        connections: total,
        listening: listening.iter().all(|&l| l),
    })
}

/// The local port and the state (hex, `01` established, `0A` listen) of one /proc/net/tcp line.
fn proc_line(line: &str) -> Option<(u16, &str)> {
    let mut f = line.split_whitespace();
    let (Some(_), Some(local), Some(_), Some(state)) = (f.next(), f.next(), f.next(), f.next())
    else {
        return None;
    };
    let port = local
        .rsplit_once(':')
        .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())?;
    Some((port, state))
}

/// Host-wide established TCP connections (CurrEstab in /proc/net/snmp), all ports, both ends
/// of loopback connections.
pub fn host_established(proc_root: &Path) -> io::Result<u64> {
    let text = std::fs::read_to_string(proc_root.join("net/snmp"))?;
    let mut lines = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no Tcp: lines in /proc/net/snmp",
        ));
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "CurrEstab")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CurrEstab in /proc/net/snmp"))
}

/// One sample: connections on the service ports, whether each has a listener, the host total,
/// and how it was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub connections: u64,
    pub listening: bool,
    pub host_established: u64,
    pub method: Method,
}

/// Counts with netlink when it works, else /proc (and says so once in the logs).
pub struct Counter {
    netlink: Option<NetlinkCounter>,
    proc_root: std::path::PathBuf,
    ports: Vec<u16>,
}

impl Counter {
    /// `netns`: count inside that network namespace (`/proc/PID/ns/net` or `/run/netns/X`).
    pub fn new(ports: Vec<u16>, netns: Option<&Path>, force_proc: bool) -> Self {
        let proc_root = match netns
            .and_then(|p| p.strip_prefix("/proc").ok())
            .and_then(|rest| rest.components().next())
        {
            Some(pid) => Path::new("/proc").join(pid),
            None => "/proc".into(),
        };
        let netlink = if force_proc {
            None
        } else {
            let opened = match netns {
                Some(ns) => NetlinkCounter::in_namespace(ns),
                None => NetlinkCounter::new(),
            };
            match opened {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::warn!(error = %e, "netlink SOCK_DIAG unavailable; falling back to /proc/net/tcp (inexact under churn)");
                    None
                }
            }
        };
        Self {
            netlink,
            proc_root,
            ports,
        }
    }

    pub fn method(&self) -> Method {
        if self.netlink.is_some() {
            Method::Netlink
        } else {
            Method::Proc
        }
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    pub fn sample(&mut self) -> io::Result<Sample> {
        let counted = match self.netlink.as_mut().map(|n| n.count(&self.ports)) {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "netlink count failed; falling back to /proc/net/tcp from now on");
                self.netlink = None;
                count_proc(&self.proc_root, &self.ports)?
            }
            None => count_proc(&self.proc_root, &self.ports)?,
        };
        Ok(Sample {
            connections: counted.connections,
            listening: counted.listening,
            host_established: host_established(&self.proc_root).unwrap_or(0),
            method: self.method(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn counts_exactly_the_listeners_established_connections() {
        // Below the ephemeral range: a client socket elsewhere on the machine may hold any
        // ephemeral port as its local port, and would be counted too.
        let port = connscale_test_support::free_port();
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut keep = Vec::new();
        for _ in 0..25 {
            keep.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
            keep.push(l.accept().unwrap().0);
        }
        for _ in 0..7 {
            keep.push(TcpStream::connect(other.local_addr().unwrap()).unwrap());
            keep.push(other.accept().unwrap().0);
        }
        let mut c = Counter::new(vec![port], None, false);
        assert_eq!(c.method(), Method::Netlink);
        assert_eq!(c.sample().unwrap().connections, 25);
        let mut p = Counter::new(vec![port], None, true);
        // Field by field: host_established is host-wide and moves with every other test.
        let s = p.sample().unwrap();
        assert_eq!(
            (s.method, s.connections, s.listening),
            (Method::Proc, 25, true)
        );
        assert!(c.sample().unwrap().host_established >= 64);
    }

    #[test]
    fn dual_stack_listener_counts_ipv4_and_ipv6_clients() {
        let port = connscale_test_support::free_port();
        let Ok(l) = TcpListener::bind(("::", port)) else {
            return;
        };
        let mut keep = Vec::new();
        for addr in ["127.0.0.1", "::1", "127.0.0.1"] {
            keep.push(TcpStream::connect((addr, port)).unwrap());
            keep.push(l.accept().unwrap().0);
        }
        assert_eq!(
            Counter::new(vec![port], None, false)
                .sample()
                .unwrap()
                .connections,
            3
        );
    }

    #[test]
    fn parses_proc_lines() {
        let line = "   0: 0100007F:1F90 0100007F:D2B4 01 00000000:00000000 00:00000000 00000000  1000        0 1 1 0";
        assert_eq!(proc_line(line), Some((8080, "01")));
        assert_eq!(proc_line(&line.replace(" 01 ", " 0A ")), Some((8080, "0A")));
        assert_eq!(proc_line("garbage"), None);
    }

    #[test]
    fn listener_is_seen_by_netlink_and_proc() {
        let port = connscale_test_support::free_port();
        for force_proc in [false, true] {
            let listening = || {
                Counter::new(vec![port], None, force_proc)
                    .sample()
                    .unwrap()
                    .listening
            };
            assert!(!listening(), "no listener yet (proc: {force_proc})");
            let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
            assert!(listening(), "listening (proc: {force_proc})");
            // A client still connected after the listener closed is counted, not listening.
            let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let a = l.accept().unwrap().0;
            drop(l);
            let s = Counter::new(vec![port], None, force_proc).sample().unwrap();
            assert_eq!(
                (s.connections, s.listening),
                (1, false),
                "proc: {force_proc}"
            );
            drop((c, a));
        }
        // Two ports: both must listen.
        let other = connscale_test_support::free_port();
        let _l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let mut c = Counter::new(vec![port, other], None, false);
        assert!(!c.sample().unwrap().listening);
        let _m = TcpListener::bind(("0.0.0.0", other)).unwrap();
        assert!(
            c.sample().unwrap().listening,
            "a missing listener is re-checked every sample"
        );
    }

    #[test]
    fn destroy_resets_exactly_the_named_connection() {
        use std::io::Read;
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let mut a = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let b = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _served = (l.accept().expect("accept"), l.accept().expect("accept"));
        let mut nl = NetlinkCounter::new().expect("netlink");
        nl.destroy_available()
            .expect("SOCK_DESTROY available (run as root: CAP_NET_ADMIN)");
        let socks = nl.established(port).expect("list");
        assert_eq!(socks.len(), 2, "{socks:?}");
        let of_a = socks
            .iter()
            .find(|s| s.peer() == a.local_addr().expect("addr"))
            .expect("a's server side is listed with a as its peer");
        nl.destroy(of_a).expect("destroy");
        let mut buf = [0u8; 1];
        let e = a.read(&mut buf).expect_err("a is reset");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        let left = nl.established(port).expect("list");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].peer(), b.local_addr().expect("addr"));
        // Already gone: NotFound, not some other socket.
        let e = nl.destroy(of_a).expect_err("gone");
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    }

    #[test]
    fn netlink_parser_rejects_truncation() {
        let mut m = vec![0u8; 20];
        m[0..4].copy_from_slice(&200u32.to_ne_bytes());
        assert!(parse_replies(&m, 1, &mut |_| {}).is_err());
    }
}
