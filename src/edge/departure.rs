//! A client that leaves while the gateway waits on its behalf.
//!
//! Some work before the upstream is asked waits on something else: a fault delay, a token
//! introspection call, a Wasm plugin's HTTP call, a shared rate limit's step in Redis, a
//! transcoded call's answer. A client that hangs up meanwhile should not leave that work
//! running to its end and then send the upstream a request nobody reads the answer of
//! (Envoy cancels such waits; nginx notices only on its next read or write). While such a
//! wait is pending, the client is watched as well, and the wait is dropped the moment it
//! goes.
//!
//! - An HTTP/1 client is its connection. The watch needs only the connection's descriptor,
//!   not Pingora's session, which the waiting work borrows: a duplicate of the descriptor
//!   registered with the runtime for readability. End of stream or a reset wakes it; bytes
//!   that arrive (a body, a pipelined request) are only looked at, never taken.
//! - An HTTP/2 client cancels its stream (`RST_STREAM`), or drops the whole connection:
//!   the stream's own reset notice tells both. It needs the session, so the work is given
//!   the request head taken out of it for the wait.
//!
//! Work that answers at once is never watched.

use pingora::protocols::http::v2::server::Idle;
use pingora::protocols::http::ServerSession as HttpServerSession;
use std::future::Future;
use std::io;
use std::net::TcpStream;
use std::os::fd::{BorrowedFd, RawFd};
use std::pin::pin;
use std::task::Poll;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// What tells that the client left.
pub enum Watch<'a> {
    /// Nothing can (the work then runs its course).
    Nothing,
    /// An HTTP/1 client: its connection's descriptor.
    Connection(RawFd),
    /// An HTTP/2 client: its stream's reset notice.
    Stream(Idle<'a>),
}

impl Watch<'_> {
    /// The watch a client session allows: its connection (HTTP/1), its stream (HTTP/2).
    pub fn of(session: &mut HttpServerSession) -> Watch<'_> {
        match session {
            HttpServerSession::H2(stream) => Watch::Stream(stream.idle()),
            session => Watch::of_connection(session),
        }
    }

    /// An HTTP/1 client's connection; nothing for other sessions.
    pub fn of_connection(session: &HttpServerSession) -> Watch<'static> {
        session
            .stream()
            .map_or(Watch::Nothing, |s| Watch::Connection(s.id()))
    }
}

/// Runs `work`; `None` when the client left before it finished, in which case `work` was
/// dropped unfinished.
pub async fn unless_client_leaves<F: Future>(watch: Watch<'_>, work: F) -> Option<F::Output> {
    let mut work = pin!(work);
    // Most work answers at once: no watch for it.
    let first = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
    if let Poll::Ready(out) = first {
        return Some(out);
    }
    match watch {
        Watch::Nothing => Some(work.await),
        Watch::Connection(fd) => match Departure::watch(fd) {
            Ok(departure) => tokio::select! {
                biased;
                out = &mut work => Some(out),
                () = departure.gone() => None,
            },
            Err(_) => Some(work.await),
        },
        Watch::Stream(reset) => tokio::select! {
            biased;
            out = &mut work => Some(out),
            // A reset, or the connection's end (an error): either way nobody waits.
            _ = reset => None,
        },
    }
}

/// A watch on a client connection: ready once the client closed or reset it.
struct Departure {
    /// The duplicate descriptor, registered for readability (end of stream included).
    socket: AsyncFd<TcpStream>,
}

impl Departure {
    /// Watches the connection whose descriptor is `fd` (the caller's, which stays open).
    fn watch(fd: RawFd) -> io::Result<Departure> {
        if fd < 0 {
            // A stream that is no socket (Pingora gives such ones an id of its own).
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // SAFETY: `fd` is the descriptor of a connection the caller holds open for the whole
        // call; it is only duplicated here, never closed.
        let owned = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
        // The duplicate shares the original's non-blocking mode, which peeking relies on.
        let dup = TcpStream::from(owned);
        // SAFETY: the stream owns the duplicate, which stays open, the same descriptor, for
        // as long as the registration that owns the stream.
        let socket = unsafe { AsyncFd::register_with_interest(dup, Interest::READABLE) }?;
        Ok(Departure { socket })
    }

    /// Returns once the client has closed or reset the connection.
    async fn gone(&self) {
        let mut peek = [0u8; 1];
        loop {
            let Ok(mut ready) = self.socket.readable().await else {
                return;
            };
            if ready.ready().is_read_closed() {
                return;
            }
            match ready.get_inner().peek(&mut peek) {
                // End of stream: the client closed its side.
                Ok(0) => return,
                // Bytes of a body or of a next request: the client is still there. Wait for
                // the next change (readiness is edge-triggered: the same bytes wake nobody).
                Ok(_) => ready.clear_ready(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A reset, or anything else the connection cannot come back from.
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream as Client};

    /// A connected pair: the gateway's side and the client's.
    async fn pair() -> (tokio::net::TcpStream, Client) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = Client::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    /// A long wait on behalf of `client`, which closes its connection 50 ms in.
    async fn wait_while_it_closes(
        server: &tokio::net::TcpStream,
        client: Client,
    ) -> Option<&'static str> {
        let wait = unless_client_leaves(Watch::Connection(server.as_raw_fd()), async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "finished"
        });
        let close = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(client);
        };
        let (out, ()) =
            tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(wait, close) })
                .await
                .expect("the wait ended when the client closed");
        out
    }

    #[tokio::test]
    async fn work_that_answers_at_once_is_answered_even_when_its_client_left() {
        let (server, client) = pair().await;
        drop(client);
        server.readable().await.unwrap();
        let out = unless_client_leaves(Watch::Connection(server.as_raw_fd()), async { 7 }).await;
        assert_eq!(out, Some(7));
        // Without a descriptor, or with one that is no socket, the work simply runs.
        assert_eq!(
            unless_client_leaves(Watch::Nothing, async { 8 }).await,
            Some(8)
        );
        let out = unless_client_leaves(Watch::Connection(-1), async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            9
        });
        assert_eq!(out.await, Some(9));
    }

    #[tokio::test]
    async fn a_client_that_closes_ends_the_wait() {
        let (server, client) = pair().await;
        assert_eq!(wait_while_it_closes(&server, client).await, None);
        // The gateway's own descriptor is still open: only the duplicate was closed.
        let mut buf = [0u8; 1];
        server.readable().await.unwrap();
        assert_eq!(server.try_read(&mut buf).unwrap(), 0);
    }

    #[tokio::test]
    async fn bytes_from_a_client_that_stays_do_not_end_the_wait_and_are_not_taken() {
        let (server, mut client) = pair().await;
        let wait = unless_client_leaves(Watch::Connection(server.as_raw_fd()), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "finished"
        });
        let send = async {
            client.write_all(b"body bytes").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(b", more").await.unwrap();
        };
        let (out, ()) = tokio::join!(wait, send);
        assert_eq!(out, Some("finished"));
        let mut buf = [0u8; 32];
        server.readable().await.unwrap();
        let n = server.try_read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"body bytes, more");
        drop(client);
    }

    #[tokio::test]
    async fn a_client_that_sent_bytes_then_closed_ends_the_wait() {
        let (server, mut client) = pair().await;
        client.write_all(b"POST / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(wait_while_it_closes(&server, client).await, None);
    }

    #[tokio::test]
    async fn a_client_that_stays_lets_the_work_finish() {
        let (server, client) = pair().await;
        let out = unless_client_leaves(Watch::Connection(server.as_raw_fd()), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            5
        })
        .await;
        assert_eq!(out, Some(5));
        drop(client);
    }
}
