//! TCP socket options that save packets in connection handshakes.
//!
//! On a fresh connection Linux acknowledges every segment at once ("quickack"), though in a
//! request/response exchange the reply could carry the ACK. A handshake of small messages
//! (HTTP upgrade, 101, Engine.IO open, Socket.IO connect) then costs a bare ACK per message,
//! and each packet costs both ends kernel time. Delayed ACKs only ever delay a bare ACK, never
//! data (Nagle stays off).

use std::os::fd::AsRawFd;

fn set(fd: &impl AsRawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: setsockopt on a descriptor the caller owns, with an int-sized value. A failure
    // (not a TCP socket, an old kernel) only loses the optimisation.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Lets the kernel delay ACKs so they ride on the next data sent ("pingpong" mode). For the
/// server side only: the load generator must not change how the servers it measures behave,
/// and a client delaying its ACKs does (with it in `loadtest`, the Node.js reference managed
/// 7,604 deliveries/s instead of 41,811).
pub fn delay_acks(fd: &impl AsRawFd) {
    set(fd, libc::IPPROTO_TCP, libc::TCP_QUICKACK, 0);
}

/// A listener hands out a connection only once its first data has arrived (up to `secs`
/// seconds), so accepting it and reading the request take one wakeup, not two.
pub fn defer_accept(fd: &impl AsRawFd, secs: i32) {
    set(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, secs);
}

/// Holds (`true`) or releases (`false`) partial segments: what is written in between leaves as
/// one segment when released (or after 200 ms). A websocket's 101 response and its first frame
/// are written by different layers; corked, they share a packet.
pub fn cork(fd: &impl AsRawFd, on: bool) {
    set(fd, libc::IPPROTO_TCP, libc::TCP_CORK, i32::from(on));
}
