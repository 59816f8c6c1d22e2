//! Closing the proxy's listening sockets the moment a stopping process stops accepting.
//!
//! Pingora stops its accept loops on shutdown but keeps the listening sockets open until the
//! process exits (it holds them for a hand-over to a new process). Meanwhile the kernel
//! still completes connections into the backlog, and a client that reconnects after a
//! `Connection: close` answer would send its request into a socket nobody will read, to be
//! reset at exit. Shutting the listeners down at once makes such a client's connect fail
//! instead, before any request is sent. Not for an upgrade: there the new process accepts
//! on the very same sockets.

use nix::sys::socket::{getpeername, getsockname, shutdown, Shutdown, SockaddrStorage};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Shuts down every listening socket of this process bound to one of `addrs`; returns how
/// many it shut.
pub fn stop_listening(addrs: &[SocketAddr]) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut shut = 0;
    for entry in entries.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        let Some(local) = getsockname::<SockaddrStorage>(fd)
            .ok()
            .and_then(|s| to_std(&s))
        else {
            continue;
        };
        // A connected socket shares its local address with the listener; only a listener
        // has no peer.
        if addrs.contains(&local)
            && getpeername::<SockaddrStorage>(fd).is_err()
            && shutdown(fd, Shutdown::Both).is_ok()
        {
            shut += 1;
        }
    }
    shut
}

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_shut_listener_refuses_and_its_connections_live_on() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(stop_listening(&[addr]), 1);
        assert!(TcpStream::connect(addr).is_err(), "still accepting");
        // The accepted connection is not a listener and stays up.
        assert!(accepted.peer_addr().is_ok());
        drop(client);
    }
}
