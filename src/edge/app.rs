//! The door every client connection comes through: the connection table's caps, the TLS
//! handshake, the head clock, and a drain that lets kept-alive connections bring one last request.
//!
//! It wraps the proxy as a Pingora `ServerApp` so the rest of the gateway never deals with
//! raw connections; each connection is admitted (or closed at once), wrapped in a
//! [`ClientStream`], and handed to the proxy.

use super::clients::ClientTable;
use super::stream::ClientStream;
use super::tls::TlsListeners;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The drain of a stopping process: set once it is told to stop or hand over (from then on
/// every answer closes its connection, and `/readyz` says 503), then told when the proxy has
/// closed its idle connections (from then on no new request can begin).
#[derive(Debug, Default)]
pub struct Draining {
    /// A stop was asked for: no longer ready, though still serving (`shutdown.grace`).
    stopping: AtomicBool,
    on: AtomicBool,
    /// Watched by the drain, which waits for it rather than polling.
    doors_closed: tokio::sync::watch::Sender<bool>,
}

impl Draining {
    /// A stop or hand-over was asked for: readiness ends at once, service goes on.
    pub fn request_stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    pub fn start(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.on.store(true, Ordering::Relaxed);
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Whether the proxy has stopped taking requests on kept-alive connections.
    pub fn doors_closed(&self) -> bool {
        *self.doors_closed.borrow()
    }

    /// Waits until the proxy has stopped taking requests on kept-alive connections.
    pub async fn wait_doors_closed(&self) {
        let mut closed = self.doors_closed.subscribe();
        // The sender lives in `self`, so the wait can only end by the doors closing.
        let _ = closed.wait_for(|closed| *closed).await;
    }
}

/// How long, once listeners have stopped, a kept-alive connection may still bring one more
/// request before it is closed. A client that had already sent its next request when the
/// drain began gets an answer (with `Connection: close`) instead of a reset.
pub const LAST_CALL: Duration = Duration::from_millis(500);

/// The proxy behind the connection table and the head clock.
pub struct ClientDoor<A> {
    inner: Arc<A>,
    table: Arc<ClientTable>,
    header_timeout: Duration,
    draining: Arc<Draining>,
    tls: TlsListeners,
}

impl<A> ClientDoor<A> {
    pub fn new(
        inner: A,
        table: Arc<ClientTable>,
        header_timeout: Duration,
        draining: Arc<Draining>,
        tls: TlsListeners,
    ) -> ClientDoor<A> {
        ClientDoor {
            inner: Arc::new(inner),
            table,
            header_timeout,
            draining,
            tls,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ClientDoor<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let ip = stream
            .get_socket_digest()
            .and_then(|d| match d.peer_addr() {
                Some(SocketAddr::Inet(addr)) => Some(addr.ip()),
                _ => None,
            });
        // Over a cap: dropping the stream closes the connection before a byte is read.
        let _admitted = self.table.admit(ip)?;
        let accepted = Instant::now();
        let deadline = accepted + self.header_timeout;
        // A TLS handshake is part of the first head's clock; one that fails or runs out
        // closes the connection.
        let stream = if self.tls.is_empty() {
            stream
        } else {
            tokio::time::timeout_at(deadline, self.tls.accept(stream))
                .await
                .ok()??
        };
        let stream: Stream = Box::new(ClientStream::due(stream, self.header_timeout, deadline));
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        // The proxy's cleanup closes every idle kept-alive connection at once; first give
        // those whose next request is already on its way a moment to deliver it.
        tokio::time::sleep(LAST_CALL).await;
        self.inner.cleanup().await;
        self.draining.doors_closed.send_replace(true);
    }
}
