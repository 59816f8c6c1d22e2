//! A real HTTP/1.1 upstream for tests: answers every request with a JSON echo of what it
//! received, counts requests, and can be told to answer slowly.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// What the upstream saw, as it echoes it.
#[derive(Debug, Deserialize)]
pub struct Echo {
    pub upstream: String,
    pub method: String,
    /// Path and query as received.
    pub path: String,
    /// Header names in lower case; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

pub struct TestUpstream {
    pub addr: SocketAddr,
    pub name: String,
    hits: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    status: Arc<AtomicU64>,
    /// Every connection's task, so `kill` can cut them.
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestUpstream {
    pub async fn start(name: &str) -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let status = Arc::new(AtomicU64::new(200));
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (h, d, n, c, st, cs, o) = (
            hits.clone(),
            delay_ms.clone(),
            name.to_string(),
            connections.clone(),
            status.clone(),
            conns.clone(),
            open.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let (h, d, n, st, o) = (h.clone(), d.clone(), n.clone(), st.clone(), o.clone());
                let conn = tokio::spawn(async move {
                    let _ = serve(stream, &n, &h, &d, &st).await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
                cs.lock().unwrap().push(conn.abort_handle());
            }
        });
        TestUpstream {
            addr,
            name: name.to_string(),
            hits,
            connections,
            open,
            delay_ms,
            status,
            conns,
            task,
        }
    }

    /// Every later request is answered with this status (and the usual echo body).
    pub fn set_status(&self, status: u16) {
        self.status.store(u64::from(status), Ordering::SeqCst);
    }

    /// Stops accepting and cuts every open connection: the node is dead.
    pub fn kill(&self) {
        self.task.abort();
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Connections open now (the client has not closed them).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Every later request waits this long before being answered.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Stops accepting; the port then refuses connections.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// An `Upstream` resource with this server as its only node.
    pub fn resource(&self, id: &str) -> String {
        format!(
            "kind: Upstream\nid: {id}\nnodes: [{{ addr: \"{}\" }}]\n",
            self.addr
        )
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One HTTP/1.1 request as read off the wire.
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lower case; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// Reads the next request on a connection; `None` when the client closed it.
pub async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).await?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers
                .entry(k.trim().to_ascii_lowercase())
                .and_modify(|e| {
                    e.push_str(", ");
                    e.push_str(v.trim());
                })
                .or_insert_with(|| v.trim().to_string());
        }
    }
    let mut body = Vec::new();
    if let Some(len) = headers
        .get("content-length")
        .and_then(|l| l.parse::<usize>().ok())
    {
        body.resize(len, 0);
        reader.read_exact(&mut body).await?;
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).await?;
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Ok(Some(Request {
        method,
        path,
        headers,
        body,
    }))
}

async fn serve(
    stream: tokio::net::TcpStream,
    name: &str,
    hits: &AtomicUsize,
    delay_ms: &AtomicU64,
    status: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    while let Some(Request {
        method,
        path,
        headers,
        body,
    }) = read_request(&mut reader).await?
    {
        hits.fetch_add(1, Ordering::SeqCst);
        let delay = delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let echo = serde_json::json!({
            "upstream": name,
            "method": method,
            "path": path,
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        })
        .to_string();
        let status = status.load(Ordering::SeqCst);
        let response = format!(
            "HTTP/1.1 {status} Status\r\nContent-Type: application/json\r\nContent-Length: {}\r\nServer: test-upstream\r\nX-Upstream: {name}\r\n\r\n{echo}",
            echo.len()
        );
        reader.get_mut().write_all(response.as_bytes()).await?;
    }
    Ok(())
}
