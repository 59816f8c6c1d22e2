//! The upstream response-head clock: SPEC §8 says `timeouts.read` bounds the whole response
//! head, not each read. Pingora times each read of an upstream head on its own, so an
//! upstream that trickles one byte every half second is never cut. This table knows every
//! head being awaited over HTTP/1; a sweeper shuts down the socket of any that is overdue,
//! which ends the pending read at once, and the request then fails as a read timeout would
//! (504, or a retry on another node).
//!
//! A head is overdue once `timeouts.read` has passed since the gateway last sent the
//! upstream anything: the upstream owes no answer before it has the whole request, however
//! slowly a client uploads it. The kernel keeps that instant for every TCP socket
//! (`tcpi_last_data_sent`), so the request path never reads a clock or hears of body
//! pieces; the sweeper asks the kernel, and only about heads awaited longer than their
//! timeout by its own coarse count.
//!
//! Why a table and a sweeper rather than a timer per request: arming costs an uncontended
//! shard lock and no allocation, where a task per request would cost a spawn and a wakeup.
//! Why the socket's addresses are kept: the sweeper acts on a raw descriptor, which Pingora
//! may already have closed (and the kernel handed to a new socket) when a request ends
//! between two sweeps; it only shuts down a descriptor whose local and peer addresses are
//! still those of the watched connection. (What remains is the instant between that check
//! and the shutdown; holding a duplicate of every watched descriptor would close it, for
//! two system calls per request.)

use pingora::protocols::l4::ext::get_tcp_info;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use slab::Slab;
use std::net::SocketAddr;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Shards of the table, so requests on different connections rarely meet on a lock.
const SHARDS: usize = 16;

/// How often overdue heads are looked for: a head is cut at most this late.
pub const SWEEP_EVERY: Duration = Duration::from_millis(50);

/// A fired head whose request never came back to read the verdict (its task was dropped)
/// is forgotten after this many sweeps (a minute).
const FORGET_AFTER_SWEEPS: u64 = 1200;

/// The upstream response heads in flight.
pub struct HeadWatch {
    shards: Box<[Mutex<Shard>]>,
    /// Sweeps so far: the table's coarse clock, read by the request path for free.
    sweeps: AtomicU64,
}

#[derive(Default)]
struct Shard {
    entries: Slab<Entry>,
    /// Tells a ticket from a later one that reuses its slot.
    next_generation: u32,
}

struct Entry {
    generation: u32,
    /// The sweep count when the head began to be awaited.
    armed: u64,
    /// The route's `timeouts.read`, in milliseconds.
    read_ms: u64,
    fd: RawFd,
    local: SocketAddr,
    peer: SocketAddr,
    /// The sweep that shut the connection down: the request failed on the head clock.
    fired: Option<u64>,
}

/// One armed head, held by the request until its head arrives or the attempt fails.
#[derive(Debug)]
pub struct Ticket {
    shard: u8,
    slot: u32,
    generation: u32,
}

/// The connection a head is awaited on.
pub struct Connection {
    pub fd: RawFd,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

impl Default for HeadWatch {
    fn default() -> Self {
        HeadWatch::new()
    }
}

impl HeadWatch {
    pub fn new() -> HeadWatch {
        HeadWatch {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            sweeps: AtomicU64::new(0),
        }
    }

    /// Starts watching the head awaited on `conn`, due within `read` of the last byte sent.
    pub fn arm(&self, conn: Connection, read: Duration) -> Ticket {
        let shard = conn.fd.unsigned_abs() as usize % SHARDS;
        let armed = self.sweeps.load(Ordering::Relaxed);
        let mut guard = lock(&self.shards[shard]);
        let generation = guard.next_generation;
        guard.next_generation = generation.wrapping_add(1);
        let slot = guard.entries.insert(Entry {
            generation,
            armed,
            read_ms: u64::try_from(read.as_millis()).unwrap_or(u64::MAX),
            fd: conn.fd,
            local: conn.local,
            peer: conn.peer,
            fired: None,
        });
        Ticket {
            shard: shard as u8,
            slot: slot as u32,
            generation,
        }
    }

    /// Stops watching; says whether the clock had run out (and so ended the connection).
    pub fn disarm(&self, ticket: Ticket) -> bool {
        let mut guard = lock(&self.shards[ticket.shard as usize]);
        let slot = ticket.slot as usize;
        match guard.entries.get(slot) {
            Some(entry) if entry.generation == ticket.generation => {
                guard.entries.remove(slot).fired.is_some()
            }
            _ => false,
        }
    }

    /// One sweep: shuts down the connection of every overdue head; returns how many.
    pub fn sweep(&self) -> usize {
        let now = self.sweeps.fetch_add(1, Ordering::Relaxed) + 1;
        let every_ms = SWEEP_EVERY.as_millis() as u64;
        let mut fired = 0;
        for shard in self.shards.iter() {
            let mut guard = lock(shard);
            guard.entries.retain(|_, entry| {
                if let Some(at) = entry.fired {
                    // A fired head waits for its request to read the verdict, unless the
                    // request is long gone.
                    return now - at < FORGET_AFTER_SWEEPS;
                }
                // Awaited for less than its timeout (counted coarsely, from below): it
                // cannot be overdue, whatever was sent since.
                if (now - entry.armed).saturating_sub(1) * every_ms < entry.read_ms {
                    return true;
                }
                if !still_connected(entry) {
                    // The request ended between two sweeps and its socket is closed (or
                    // its descriptor now belongs to another socket): nothing to cut.
                    return false;
                }
                match get_tcp_info(entry.fd) {
                    Ok(info) if u64::from(info.tcpi_last_data_sent) < entry.read_ms => true,
                    Ok(_) => {
                        // The pending read sees the end of the stream and the attempt fails.
                        let _ =
                            nix::sys::socket::shutdown(entry.fd, nix::sys::socket::Shutdown::Both);
                        entry.fired = Some(now);
                        fired += 1;
                        true
                    }
                    Err(_) => false,
                }
            });
        }
        fired
    }

    /// How many heads are being watched.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).entries.len()).sum()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sweeps the table every [`SWEEP_EVERY`] for as long as the process runs: through a
/// drain too, since the requests still in flight then are owed the same clock.
pub struct Sweeper(pub std::sync::Arc<HeadWatch>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Sweeper {
    async fn start(&self, _shutdown: pingora::server::ShutdownWatch) {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let cut = self.0.sweep();
            if cut > 0 {
                tracing::debug!(cut, "upstream response heads past timeouts.read");
            }
        }
    }
}

/// A shard's entries stay consistent whatever panicked while holding it: each change is a
/// single slab operation.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether the descriptor still names the watched connection.
fn still_connected(entry: &Entry) -> bool {
    let inet = |a: Option<PeerAddr>| a.and_then(|a| a.as_inet().copied());
    inet(PeerAddr::from_raw_fd(entry.fd, false)) == Some(entry.local)
        && inet(PeerAddr::from_raw_fd(entry.fd, true)) == Some(entry.peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::io::AsRawFd;
    use std::time::Instant;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    fn watched(stream: &TcpStream) -> Connection {
        Connection {
            fd: stream.as_raw_fd(),
            local: stream.local_addr().unwrap(),
            peer: stream.peer_addr().unwrap(),
        }
    }

    /// Sweeps as the sweeper would, for `span` of real time (the kernel's idle clock runs
    /// in real time); returns how many heads were cut.
    fn sweep_for(watch: &HeadWatch, span: Duration) -> usize {
        let end = Instant::now() + span;
        let mut cut = 0;
        while Instant::now() < end {
            std::thread::sleep(SWEEP_EVERY);
            cut += watch.sweep();
        }
        cut
    }

    const READ: Duration = Duration::from_millis(200);

    #[test]
    fn an_overdue_head_ends_its_connection_and_says_so() {
        let watch = HeadWatch::new();
        let (mut client, _server) = pair();
        let ticket = watch.arm(watched(&client), READ);
        assert_eq!(watch.sweep(), 0, "not due yet");
        assert_eq!(sweep_for(&watch, READ * 2), 1);
        // The pending read ends: the stream is shut down.
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap(), 0);
        assert!(watch.disarm(ticket), "the request learns its head ran out");
        assert!(watch.is_empty());
    }

    #[test]
    fn a_head_that_arrived_in_time_leaves_the_connection_alone() {
        let watch = HeadWatch::new();
        let (mut client, mut server) = pair();
        let ticket = watch.arm(watched(&client), READ);
        assert!(!watch.disarm(ticket));
        assert_eq!(sweep_for(&watch, READ * 2), 0);
        server.write_all(b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap(), 1);
    }

    #[test]
    fn bytes_still_being_sent_postpone_the_cut() {
        let watch = HeadWatch::new();
        let (mut client, _server) = pair();
        let ticket = watch.arm(watched(&client), READ);
        // A body trickling out for twice the timeout: the upstream owes nothing yet.
        for _ in 0..8 {
            client.write_all(b"x").unwrap();
            assert_eq!(sweep_for(&watch, READ / 4), 0);
        }
        // Then nothing more is sent: the clock runs out.
        assert_eq!(sweep_for(&watch, READ * 2), 1);
        assert!(watch.disarm(ticket));
    }

    #[test]
    fn a_descriptor_now_naming_another_socket_is_never_cut() {
        let watch = HeadWatch::new();
        let (client, _server) = pair();
        let (other, _other_server) = pair();
        // As if the watched connection closed and its descriptor went to `other`.
        let stale = Connection {
            fd: other.as_raw_fd(),
            local: client.local_addr().unwrap(),
            peer: client.peer_addr().unwrap(),
        };
        let ticket = watch.arm(stale, READ);
        assert_eq!(sweep_for(&watch, READ * 2), 0);
        assert!(watch.is_empty(), "the stale entry is forgotten");
        assert!(!watch.disarm(ticket));
        other.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1];
        let still_open =
            matches!((&other).read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        assert!(still_open, "the other socket was not shut down");
    }

    #[test]
    fn a_ticket_for_a_reused_slot_disarms_nothing_else() {
        let watch = HeadWatch::new();
        let (client, _server) = pair();
        let first = watch.arm(watched(&client), READ);
        let first_copy = Ticket {
            shard: first.shard,
            slot: first.slot,
            generation: first.generation,
        };
        watch.disarm(first);
        let _second = watch.arm(watched(&client), READ);
        watch.disarm(first_copy);
        assert_eq!(watch.len(), 1, "the later head is still watched");
    }
}
