//! TLS on client connections, inside the door (SPEC §8): a TLS listener is a plain TCP
//! listener whose connections the door admits first and then hands through the handshake.
//!
//! Why not Pingora's own TLS listener: it runs the handshake (allowing a minute) before the
//! application sees the connection, so a client that opens TLS connections and never
//! finishes a handshake would hold them outside every cap and past `header_timeout`. Here
//! the handshake counts against `max_connections` and the per-IP cap from the first byte,
//! and shares the head clock that starts at accept.

use super::stream::bad_request_before_http;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::Stream;
use pingora::tls::ssl::{select_next_proto, AlpnError, SslAcceptor, SslFiletype, SslMethod};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// ALPN in wire format, HTTP/2 preferred: a client offering both speaks HTTP/2.
const H2_THEN_H1: &[u8] = b"\x02h2\x08http/1.1";

/// Why a TLS listener cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("listen.tls ({addr}): {what}: {source}")]
    Setup {
        addr: SocketAddr,
        what: &'static str,
        source: pingora::tls::error::ErrorStack,
    },
}

/// The TLS settings of each TLS listener, by the address it listens on.
#[derive(Default, Clone)]
pub struct TlsListeners {
    listeners: Vec<(SocketAddr, Arc<SslAcceptor>)>,
}

impl TlsListeners {
    /// Loads a listener's certificate chain and key, with Mozilla's intermediate settings
    /// and HTTP/2 offered by ALPN.
    pub fn add(&mut self, addr: SocketAddr, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let fail = |what| move |source| TlsError::Setup { addr, what, source };
        let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())
            .map_err(fail("cannot set up TLS"))?;
        builder
            .set_private_key_file(key, SslFiletype::PEM)
            .map_err(fail("cannot read the key (`key`)"))?;
        builder
            .set_certificate_chain_file(cert)
            .map_err(fail("cannot read the certificate chain (`cert`)"))?;
        builder
            .check_private_key()
            .map_err(fail("the key does not match the certificate"))?;
        builder.set_alpn_select_callback(|_, offered| {
            select_next_proto(H2_THEN_H1, offered).ok_or(AlpnError::NOACK)
        });
        self.listeners.push((addr, Arc::new(builder.build())));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    /// The TLS settings for a connection accepted on `local`, if it came to a TLS listener:
    /// a listener on that very address, or on the unspecified address of the same family
    /// and that port (a v4 client of a `[::]` listener shows a v4-mapped v6 address).
    fn for_local(&self, local: SocketAddr) -> Option<&SslAcceptor> {
        let exact = self.listeners.iter().find(|(addr, _)| *addr == local);
        let wildcard = || {
            self.listeners.iter().find(|(addr, _)| {
                addr.ip().is_unspecified()
                    && addr.is_ipv4() == local.is_ipv4()
                    && addr.port() == local.port()
            })
        };
        exact.or_else(wildcard).map(|(_, acceptor)| &**acceptor)
    }

    /// The connection as the proxy should read it: decrypted if it came to a TLS listener.
    /// `None` when its handshake failed (the connection is then closed).
    pub async fn accept(&self, stream: Stream) -> Option<Stream> {
        if self.listeners.is_empty() {
            return Some(stream);
        }
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(PeerAddr::as_inet).copied());
        // A connection whose listener cannot be told is closed, never served in plain text
        // on what may be a TLS port.
        let Some(acceptor) = self.for_local(local?) else {
            return Some(stream);
        };
        // Listeners hand the door Pingora's own TCP stream; the handshake wants it by type.
        let mut tcp = stream.into_any().downcast::<TcpStream>().ok()?;
        if !opens_tls(&mut tcp).await {
            return None;
        }
        match pingora::protocols::tls::server::handshake(acceptor, *tcp).await {
            Ok(tls) => Some(Box::new(tls)),
            Err(e) => {
                tracing::debug!(error = %e, "client TLS handshake failed");
                None
            }
        }
    }
}

/// A TLS connection opens with a handshake record (type 22). Anything else is answered
/// here, as nginx does: an HTTP request sent in plain text to the TLS port (an `http://` URL
/// with the TLS port, a health check without TLS) gets a 400 saying so instead of a
/// connection closed without a word; other bytes get the close alone. The byte read is put
/// back for the handshake.
async fn opens_tls(tcp: &mut TcpStream) -> bool {
    let mut first = [0u8; 1];
    match tcp.read(&mut first).await {
        Ok(1) if first[0] == TLS_HANDSHAKE_RECORD => {
            tcp.rewind(&first);
            true
        }
        Ok(1) if first[0].is_ascii_uppercase() => {
            let answer = bad_request_before_http(
                "plain HTTP was sent to a TLS port: use https:// with this port",
            );
            // The connection closes either way; a client gone meanwhile is nothing to report.
            let _ = tcp.write_all(&answer).await;
            let _ = tcp.shutdown().await;
            false
        }
        _ => false,
    }
}

/// The first byte of a TLS connection: a handshake record (RFC 8446 §5.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

#[cfg(test)]
mod tests {
    use super::*;

    fn listeners(addrs: &[&str]) -> TlsListeners {
        let acceptor = Arc::new(
            SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())
                .unwrap()
                .build(),
        );
        TlsListeners {
            listeners: addrs
                .iter()
                .map(|a| (a.parse().unwrap(), acceptor.clone()))
                .collect(),
        }
    }

    fn is_tls(tls: &TlsListeners, local: &str) -> bool {
        tls.for_local(local.parse().unwrap()).is_some()
    }

    #[test]
    fn a_connection_is_tls_by_the_listener_that_took_it() {
        let tls = listeners(&["127.0.0.1:8443", "0.0.0.0:9443", "[::]:7443"]);
        assert!(is_tls(&tls, "127.0.0.1:8443"));
        assert!(
            !is_tls(&tls, "127.0.0.2:8443"),
            "another address, same port"
        );
        assert!(is_tls(&tls, "10.1.2.3:9443"), "the v4 wildcard");
        assert!(
            !is_tls(&tls, "[::1]:9443"),
            "a v4 wildcard takes no v6 connection"
        );
        assert!(is_tls(&tls, "[::1]:7443"));
        assert!(
            is_tls(&tls, "[::ffff:127.0.0.1]:7443"),
            "v4 through a v6 wildcard"
        );
        assert!(
            !is_tls(&tls, "127.0.0.1:7443"),
            "that port's v4 listener is another one"
        );
        assert!(!is_tls(&tls, "127.0.0.1:8080"));
    }
}
