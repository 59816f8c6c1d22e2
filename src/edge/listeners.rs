//! The proxy's listening sockets, found among the process's descriptors: to tell readiness
//! (every proxy address accepts), and to close them the moment a stopping process stops
//! accepting.
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
use std::sync::atomic::{AtomicBool, Ordering};

/// The listening sockets of this process bound to one of `addrs`, with their addresses.
fn listeners(addrs: &[SocketAddr]) -> Vec<(RawFd, SocketAddr)> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<RawFd>().ok())
        .filter_map(|fd| {
            let local = to_std(&getsockname::<SockaddrStorage>(fd).ok()?)?;
            // A connected socket shares its local address with the listener; only a
            // listener has no peer.
            (addrs.contains(&local) && getpeername::<SockaddrStorage>(fd).is_err())
                .then_some((fd, local))
        })
        .collect()
}

/// Shuts down every listening socket of this process bound to one of `addrs`; returns how
/// many it shut.
pub fn stop_listening(addrs: &[SocketAddr]) -> usize {
    listeners(addrs)
        .into_iter()
        .filter(|(fd, _)| shutdown(*fd, Shutdown::Both).is_ok())
        .count()
}

/// Whether every proxy address has its listening socket, so a connection to it is accepted
/// (Pingora binds them as its services start, a moment after the admin listener).
#[derive(Debug)]
pub struct Listening {
    addrs: Vec<SocketAddr>,
    /// Once all are seen they stay: the scan runs only until then.
    seen: AtomicBool,
}

impl Listening {
    pub fn new(addrs: Vec<SocketAddr>) -> Listening {
        Listening {
            addrs,
            seen: AtomicBool::new(false),
        }
    }

    pub fn accepting(&self) -> bool {
        if self.seen.load(Ordering::Relaxed) {
            return true;
        }
        let found = listeners(&self.addrs);
        let all = self
            .addrs
            .iter()
            .all(|addr| found.iter().any(|(_, local)| local == addr));
        if all {
            self.seen.store(true, Ordering::Relaxed);
        }
        all
    }
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
    fn listening_is_seen_once_the_socket_listens() {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let listening = Listening::new(vec![addr]);
        assert!(!listening.accepting());
        // Another test may take the port meanwhile: then there is nothing more to check.
        if let Ok(listener) = TcpListener::bind(addr) {
            assert!(listening.accepting());
            drop(listener);
            assert!(listening.accepting(), "once seen, it stays");
        }
    }

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
