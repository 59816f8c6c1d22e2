//! A client connection under the head clock (SPEC §8 `http.header_timeout`): the whole
//! request head must arrive within the timeout, however slowly its bytes trickle in.
//!
//! Pingora times each read of a head separately, so a client sending one byte a second
//! holds a connection forever. This wrapper sits between Pingora and the socket and fails
//! any read still waiting once the head's deadline has passed. The proxy tells it where
//! heads end ([`ClientStream::head_read`]) and where the connection falls idle between
//! requests ([`ClientStream::answered`]); an idle connection's wait is Pingora's keep-alive
//! timeout, and the next head's clock starts at its first byte.
//!
//! A read that completes at once (the common case: a whole head in one segment) touches no
//! timer; the deadline is worked out and a timer armed only when a read of a head has to wait.

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Reading a request head: reads are bounded by the head's deadline.
const HEAD: u8 = 0;
/// Past the head (body, HTTP/2 frames, an upgraded tunnel): the clock is off.
const PAST_HEAD: u8 = 1;
/// Between requests on a kept-alive connection: the next byte starts a new head.
const IDLE: u8 = 2;
/// HTTP/2 chosen by ALPN: its preface must arrive within the head clock, like a head.
const PREFACE: u8 = 3;

/// The first bytes of an HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A client connection whose request heads are timed as a whole.
pub struct ClientStream {
    inner: Stream,
    phase: AtomicU8,
    header_timeout: Duration,
    /// When the head being read must be complete; set at accept for the first head, and at
    /// the first wait of later ones.
    deadline: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    /// Bytes read ahead while telling HTTP/2 from HTTP/1, served before the socket's.
    rewound: Vec<u8>,
    /// Bytes of an ALPN HTTP/2 connection's preface read so far.
    preface_read: usize,
    /// Where the current head's request line has got to, while it is still being read.
    line: RequestLine,
    /// The client sent bytes that are not an HTTP/1 request line.
    junk: bool,
    /// Something was written since the current head began (the proxy answered itself).
    answered_head: bool,
}

impl std::fmt::Debug for ClientStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStream")
            .field("phase", &self.phase.load(Ordering::Relaxed))
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl ClientStream {
    /// Wraps a connection just accepted: its first head is due `header_timeout` from now.
    pub fn new(inner: Stream, header_timeout: Duration) -> ClientStream {
        ClientStream::due(inner, header_timeout, Instant::now() + header_timeout)
    }

    /// Wraps a connection whose first head is due by `deadline` (a TLS connection has spent
    /// part of its clock on the handshake).
    pub fn due(inner: Stream, header_timeout: Duration, deadline: Instant) -> ClientStream {
        // HTTP/2 negotiated by ALPN has no HTTP/1 head, but its preface is timed like one.
        let phase = match inner.selected_alpn_proto() {
            Some(ALPN::H2) => PREFACE,
            _ => HEAD,
        };
        ClientStream {
            inner,
            phase: AtomicU8::new(phase),
            header_timeout,
            deadline: Some(deadline),
            timer: None,
            rewound: Vec::new(),
            preface_read: 0,
            line: RequestLine::default(),
            junk: false,
            answered_head: false,
        }
    }

    /// The wrapper under a session's stream, if that stream is one.
    pub fn of(stream: &Stream) -> Option<&ClientStream> {
        stream.as_any().downcast_ref::<ClientStream>()
    }

    /// The head of the current request has been read: stop its clock.
    pub fn head_read(&self) {
        self.phase.store(PAST_HEAD, Ordering::Relaxed);
    }

    /// The current request is answered: the connection waits for the next one.
    pub fn answered(&self) {
        self.phase.store(IDLE, Ordering::Relaxed);
    }

    /// Follows the request line through bytes just read; on bytes that cannot start an
    /// HTTP/1 request, the connection is marked as junk.
    fn inspect(&mut self, bytes: &[u8]) {
        if self.line.done() {
            return;
        }
        if !self.line.feed(bytes) {
            self.junk = true;
        }
    }

    /// Reads what was read ahead first, then the socket.
    fn read_inner(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.rewound.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.rewound.len().min(buf.remaining());
        buf.put_slice(&self.rewound[..n]);
        self.rewound.drain(..n);
        Poll::Ready(Ok(()))
    }

    fn timed_out(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "request head not complete within http.header_timeout ({:?})",
                self.header_timeout
            ),
        )
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.phase.load(Ordering::Relaxed) {
            PAST_HEAD => this.read_inner(cx, buf),
            IDLE => {
                let before = buf.filled().len();
                let read = this.read_inner(cx, buf);
                if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
                    // The first bytes of the next head: its clock starts at its first wait.
                    this.phase.store(HEAD, Ordering::Relaxed);
                    this.deadline = None;
                    this.timer = None;
                    this.line = RequestLine::default();
                    this.answered_head = false;
                    this.inspect(&buf.filled()[before..]);
                }
                read
            }
            _ => {
                if this.junk {
                    // End of input for Pingora's parser; `shutdown` answers 400.
                    return Poll::Ready(Ok(()));
                }
                let before = buf.filled().len();
                let read = this.read_inner(cx, buf);
                if read.is_ready() {
                    if matches!(read, Poll::Ready(Ok(()))) {
                        let fresh = buf.filled().len() - before;
                        if this.phase.load(Ordering::Relaxed) == PREFACE {
                            this.preface_read += fresh;
                            if this.preface_read >= H2_PREFACE.len() {
                                this.phase.store(PAST_HEAD, Ordering::Relaxed);
                            }
                        } else {
                            this.inspect(&buf.filled()[before..]);
                        }
                    }
                    return read;
                }
                let header_timeout = this.header_timeout;
                let deadline = *this
                    .deadline
                    .get_or_insert_with(|| Instant::now() + header_timeout);
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(this.timed_out())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.answered_head = true;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.answered_head = true;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for ClientStream {
    async fn shutdown(&mut self) {
        if self.junk && !self.answered_head {
            use tokio::io::AsyncWriteExt;
            // Bytes that are not HTTP get SPEC §4's error and a close, not silence.
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                self.inner.write_all(&not_http_answer()),
            )
            .await;
        }
        self.inner.shutdown().await
    }
}

impl UniqueID for ClientStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ClientStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ClientStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for ClientStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for ClientStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for ClientStream {
    /// Pingora peeks for the HTTP/2 preface before anything else, and its own peek waits for
    /// all 24 bytes of it: a client that sends `GET\r\n\r\n` would wait for its answer until
    /// the head clock ran out. Here the peek stops as soon as the bytes cannot be the
    /// preface (they are kept and read again, as Pingora's peek does), and is bounded by the
    /// first head's deadline. A connection that turns out to be HTTP/2 leaves the head clock.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        use tokio::io::AsyncReadExt;
        let deadline = self
            .deadline
            .unwrap_or_else(|| Instant::now() + self.header_timeout);
        let want = buf.len();
        let read_ahead = async {
            while self.rewound.len() < want {
                let mut chunk = [0u8; 64];
                let room = (want - self.rewound.len()).min(chunk.len());
                let n = self.inner.read(&mut chunk[..room]).await?;
                if n == 0 {
                    break;
                }
                self.rewound.extend_from_slice(&chunk[..n]);
                if !H2_PREFACE.starts_with(&self.rewound) {
                    break;
                }
            }
            Ok::<(), io::Error>(())
        };
        match tokio::time::timeout_at(deadline, read_ahead).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(self.timed_out()),
        }
        let n = self.rewound.len().min(want);
        buf[..n].copy_from_slice(&self.rewound[..n]);
        buf[n..].fill(0);
        if buf == H2_PREFACE {
            self.phase.store(PAST_HEAD, Ordering::Relaxed);
        }
        Ok(true)
    }
}

/// The answer to bytes that are not HTTP: 400 `bad_request`, and the connection closes.
fn not_http_answer() -> Vec<u8> {
    bad_request_before_http("the request is not HTTP/1.x")
}

/// A 400 `bad_request` written by the door itself, before any HTTP session exists, with a
/// fresh request id; the connection closes after it.
pub(crate) fn bad_request_before_http(message: &str) -> Vec<u8> {
    let id = crate::wire::new_request_id();
    let body = crate::wire::error_body("bad_request", message, &id);
    let mut answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Request-Id: {id}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
}

/// An HTTP/1 request line (RFC 9112 §3), checked as its bytes arrive: `method SP target SP
/// HTTP/1.x CRLF`, after any empty lines. It only has to tell HTTP from junk early; Pingora
/// parses the head itself.
#[derive(Debug, Default, Clone, Copy)]
struct RequestLine {
    state: LineState,
    /// Bytes matched of the version, `HTTP/1.` then one digit.
    version: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum LineState {
    #[default]
    Start,
    Method,
    Target,
    TargetBody,
    Version,
    Cr,
    Done,
}

impl RequestLine {
    fn done(&self) -> bool {
        self.state == LineState::Done
    }

    /// Takes more bytes; false as soon as they cannot be part of a request line.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        const VERSION: &[u8] = b"HTTP/1.";
        for &b in bytes {
            self.state = match self.state {
                LineState::Start if b == b'\r' || b == b'\n' => LineState::Start,
                LineState::Start | LineState::Method if is_tchar(b) => LineState::Method,
                LineState::Method if b == b' ' => LineState::Target,
                LineState::Target | LineState::TargetBody if b.is_ascii_graphic() || b >= 0x80 => {
                    LineState::TargetBody
                }
                LineState::TargetBody if b == b' ' => LineState::Version,
                LineState::Version => {
                    let at = usize::from(self.version);
                    let fits = match VERSION.get(at) {
                        Some(&want) => b == want,
                        None => at == VERSION.len() && b.is_ascii_digit(),
                    };
                    if !fits {
                        return false;
                    }
                    self.version += 1;
                    if at == VERSION.len() {
                        LineState::Cr
                    } else {
                        LineState::Version
                    }
                }
                LineState::Cr if b == b'\r' => LineState::Cr,
                LineState::Cr if b == b'\n' => LineState::Done,
                LineState::Done => return true,
                _ => return false,
            };
        }
        true
    }
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(parts: &[&[u8]]) -> Option<bool> {
        let mut l = RequestLine::default();
        for part in parts {
            if !l.feed(part) {
                return None;
            }
        }
        Some(l.done())
    }

    #[test]
    fn request_lines_are_told_from_junk_as_they_arrive() {
        assert_eq!(line(&[b"GET /x HTTP/1.1\r\nHost: a\r\n"]), Some(true));
        assert_eq!(line(&[b"\r\nPOST /a?b=c HTTP/1.0\n"]), Some(true));
        assert_eq!(line(&[b"G", b"ET /x HT", b"TP/1.1\r", b"\n"]), Some(true));
        assert_eq!(line(&[b"GET http://a/b HTTP/1.1\r\n"]), Some(true));
        assert_eq!(line(&[b"GE"]), Some(false), "undecided yet");
        assert_eq!(line(&[b"THIS IS NOT HTTP\r\n\r\n"]), None);
        assert_eq!(line(&[b"GET\r\n\r\n"]), None);
        assert_eq!(line(&[b"\x16\x03\x01\x02\x00"]), None);
        assert_eq!(line(&[b"GET /x HTTP/2.0\r\n"]), None);
        assert_eq!(line(&[b"GET  /x HTTP/1.1\r\n"]), None);
    }

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pair(header_timeout: Duration) -> (tokio::io::DuplexStream, ClientStream) {
        let (client, server) = tokio::io::duplex(1024);
        (client, ClientStream::new(Box::new(server), header_timeout))
    }

    #[tokio::test]
    async fn a_short_request_is_told_from_http2_without_waiting_for_24_bytes() {
        let (mut client, mut stream) = pair(Duration::from_secs(30));
        client.write_all(b"GET\r\n\r\n").await.unwrap();
        let mut peeked = [0u8; 24];
        let told = tokio::time::timeout(Duration::from_secs(5), stream.try_peek(&mut peeked));
        assert!(told.await.expect("the peek waited").unwrap());
        assert_ne!(&peeked[..], H2_PREFACE);
        // What the peek read is read again, and seen for the junk it is.
        let mut got = [0u8; 16];
        let n = stream.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"GET\r\n\r\n");
        assert!(stream.junk);
        assert_eq!(
            stream.read(&mut got).await.unwrap(),
            0,
            "junk ends the input"
        );
    }

    #[tokio::test]
    async fn the_http2_preface_leaves_the_head_clock() {
        let (mut client, mut stream) = pair(Duration::from_millis(50));
        client.write_all(H2_PREFACE).await.unwrap();
        let mut peeked = [0u8; 24];
        assert!(stream.try_peek(&mut peeked).await.unwrap());
        assert_eq!(&peeked[..], H2_PREFACE);
        let mut got = [0u8; 24];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..], H2_PREFACE);
        // Past the head clock: a quiet HTTP/2 connection is not cut by it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.write_all(b"frame").await.unwrap();
        let n = stream.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"frame");
    }

    #[tokio::test]
    async fn an_alpn_http2_connection_must_send_its_preface_in_time() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut stream = ClientStream::new(Box::new(server), Duration::from_millis(100));
        stream.phase.store(PREFACE, Ordering::Relaxed);
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        let mut got = [0u8; 64];
        assert_eq!(stream.read(&mut got).await.unwrap(), 10);
        let cut = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut got)).await;
        assert_eq!(cut.unwrap().unwrap_err().kind(), io::ErrorKind::TimedOut);

        // A whole preface leaves the clock, and its bytes are never taken for junk.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut stream = ClientStream::new(Box::new(server), Duration::from_millis(50));
        stream.phase.store(PREFACE, Ordering::Relaxed);
        client.write_all(H2_PREFACE).await.unwrap();
        stream.read_exact(&mut got[..24]).await.unwrap();
        assert!(!stream.junk);
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.write_all(b"frame").await.unwrap();
        assert_eq!(stream.read(&mut got).await.unwrap(), 5);
    }

    #[tokio::test]
    async fn a_trickled_head_is_cut_when_its_time_is_up() {
        let (mut client, mut stream) = pair(Duration::from_millis(100));
        client.write_all(b"G").await.unwrap();
        let mut got = [0u8; 16];
        assert_eq!(stream.read(&mut got).await.unwrap(), 1);
        let cut = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut got)).await;
        let err = cut.expect("the head clock never fired").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_read_head_stops_the_clock_and_the_next_one_starts_it_at_its_first_byte() {
        let (mut client, mut stream) = pair(Duration::from_millis(100));
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut got = [0u8; 64];
        assert_eq!(stream.read(&mut got).await.unwrap(), 18);
        stream.head_read();
        stream.answered();
        // Idle longer than the head clock: that wait is the keep-alive timeout's business.
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.write_all(b"GET / HT").await.unwrap();
        assert_eq!(stream.read(&mut got).await.unwrap(), 8);
        let cut = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut got)).await;
        assert_eq!(cut.unwrap().unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn the_answer_to_junk_is_a_json_400_that_closes() {
        let answer = String::from_utf8(not_http_answer()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(answer.contains("Connection: close"));
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "bad_request");
    }
}
