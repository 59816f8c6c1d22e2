//! One JSON line per request, written by a thread of its own.
//!
//! The request path only moves an entry into a bounded queue; formatting and writing happen
//! on the writer thread, which wakes every [`WRITE_EVERY`], writes what was queued and
//! flushes. It never waits *on* the queue: a waiting consumer would have to be woken by
//! every request (a futex call and a context switch each, measured at several times the cost
//! of the line itself). When the queue is full (the disk or the terminal cannot keep up) the
//! entry is dropped and `gatehouse_access_log_dropped_total` counts it: a slow log never
//! slows traffic.

use super::metrics::METRICS;
use crate::wire::{push_ip, write_hex};
use http::Method;
use opentelemetry::trace::TraceId;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

/// Entries waiting to be written; beyond this they are dropped (and counted). With
/// [`WRITE_EVERY`], room for 160,000 requests per second.
pub const QUEUE: usize = 16_384;
/// How often the writer wakes to write what was queued.
pub const WRITE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// One request, as logged.
#[derive(Debug)]
pub struct Entry {
    /// RFC 3339, UTC, milliseconds.
    pub time: SystemTime,
    pub request_id: String,
    pub trace_id: Option<TraceId>,
    pub client_ip: IpAddr,
    pub method: Method,
    /// Path and query as the client sent them.
    pub path: String,
    /// The matched route's id; empty when none matched.
    pub route: Arc<str>,
    /// The upstream chosen, if any.
    pub upstream: Option<Arc<str>>,
    /// The node the request was last sent to, if any.
    pub node: Option<SocketAddr>,
    pub consumer: Option<Arc<str>>,
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: usize,
    /// Seconds from the request's arrival to its last byte.
    pub duration: f64,
}

impl Entry {
    /// Appends the entry as one JSON object (no newline), on the writer thread.
    ///
    /// Field names and the values the gateway renders itself (time, hex ids, addresses,
    /// the method token, numbers) cannot hold a character JSON must escape, so they are
    /// written as they are; what came from a client or a resource (the path, ids, the
    /// consumer, the client's own request id) goes through serde_json's string escaping.
    /// Rendering through `Serialize` escaped every key and value and cost a third more.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        let _ = write!(out, "{}", humantime::format_rfc3339_millis(self.time));
        out.extend_from_slice(b"\",\"request_id\":");
        json_str(out, &self.request_id);
        out.extend_from_slice(b",\"trace_id\":\"");
        if let Some(id) = self.trace_id {
            let mut hex = [0u8; 32];
            write_hex(&mut hex, &id.to_bytes());
            out.extend_from_slice(&hex);
        }
        out.extend_from_slice(b"\",\"client_ip\":\"");
        push_ip_bytes(out, self.client_ip);
        out.extend_from_slice(b"\",\"method\":");
        // A method is an HTTP token: no quote, backslash or control character, but still
        // escaped, as a token may be any of 15 punctuation characters.
        json_str(out, self.method.as_str());
        out.extend_from_slice(b",\"path\":");
        json_str(out, &self.path);
        out.extend_from_slice(b",\"route\":");
        json_str(out, &self.route);
        if let Some(upstream) = &self.upstream {
            out.extend_from_slice(b",\"upstream\":");
            json_str(out, upstream);
        }
        if let Some(node) = self.node {
            out.extend_from_slice(b",\"node\":\"");
            if node.is_ipv6() {
                out.push(b'[');
                push_ip_bytes(out, node.ip());
                out.push(b']');
            } else {
                push_ip_bytes(out, node.ip());
            }
            out.push(b':');
            push_number(out, u64::from(node.port()));
            out.push(b'"');
        }
        if let Some(consumer) = &self.consumer {
            out.extend_from_slice(b",\"consumer\":");
            json_str(out, consumer);
        }
        out.extend_from_slice(b",\"status\":");
        push_number(out, u64::from(self.status));
        out.extend_from_slice(b",\"bytes\":");
        push_number(out, self.bytes as u64);
        out.extend_from_slice(b",\"duration\":");
        if serde_json::to_writer(&mut *out, &self.duration).is_err() {
            out.push(b'0');
        }
        out.push(b'}');
    }
}

/// A JSON string, escaped by serde_json.
fn json_str(out: &mut Vec<u8>, text: &str) {
    if serde_json::to_writer(&mut *out, text).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

fn push_ip_bytes(out: &mut Vec<u8>, ip: IpAddr) {
    let mut text = String::with_capacity(15);
    push_ip(&mut text, ip);
    out.extend_from_slice(text.as_bytes());
}

fn push_number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// Where the lines go.
pub enum Target {
    Stdout,
    File(std::path::PathBuf),
}

/// The sending side, held by the proxy.
pub struct AccessLog {
    target: Target,
    /// Started by the first request: a thread started before the process daemonizes would
    /// not survive the fork.
    tx: OnceLock<Option<SyncSender<Entry>>>,
    /// Passes the writer has made over the queue; [`AccessLog::flush`] waits on it.
    passes: Arc<AtomicU64>,
}

impl AccessLog {
    /// Checks that `target` can be written (a file is created if needed and appended to).
    pub fn open(target: Target) -> std::io::Result<AccessLog> {
        drop(target.writer()?);
        Ok(AccessLog {
            target,
            tx: OnceLock::new(),
            passes: Arc::default(),
        })
    }

    /// Queues one entry; never waits.
    pub fn log(&self, entry: Entry) {
        let Some(tx) = self.tx.get_or_init(|| self.start()) else {
            METRICS.access_log_dropped.inc();
            return;
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(entry) {
            METRICS.access_log_dropped.inc();
        }
    }

    fn start(&self) -> Option<SyncSender<Entry>> {
        let started = self.target.writer().and_then(|out| {
            let (tx, rx) = sync_channel(QUEUE);
            let passes = self.passes.clone();
            std::thread::Builder::new()
                .name("gatehouse-access-log".into())
                .spawn(move || write_loop(rx, out, &passes))?;
            Ok(tx)
        });
        match started {
            Ok(tx) => Some(tx),
            Err(error) => {
                tracing::error!(%error, "access log cannot be written; lines are dropped");
                None
            }
        }
    }
}

impl AccessLog {
    /// Waits (at most `within`) until every entry queued before the call is written and
    /// flushed: the process is about to exit, and a lost line is a lost record of a request.
    pub fn flush(&self, within: std::time::Duration) {
        if !matches!(self.tx.get(), Some(Some(_))) {
            return;
        }
        super::wait_for_passes(&self.passes, within);
    }
}

impl Target {
    fn writer(&self) -> std::io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        })
    }
}

fn write_loop(rx: Receiver<Entry>, out: Box<dyn Write + Send>, passes: &AtomicU64) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(512);
    loop {
        std::thread::sleep(WRITE_EVERY);
        let mut wrote = false;
        loop {
            match rx.try_recv() {
                Ok(entry) => {
                    line.clear();
                    entry.write_json(&mut line);
                    line.push(b'\n');
                    let _ = out.write_all(&line);
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        if wrote {
            if let Err(error) = out.flush() {
                tracing::warn!(%error, "access log write failed");
            }
        }
        passes.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(node: &str, trace: Option<u128>) -> serde_json::Value {
        let entry = Entry {
            time: SystemTime::UNIX_EPOCH,
            request_id: "r-1".into(),
            trace_id: trace.map(TraceId::from),
            client_ip: "10.1.22.7".parse().unwrap(),
            method: Method::PATCH,
            path: "/a?b=c".into(),
            route: Arc::from("orders"),
            upstream: None,
            node: Some(node.parse().unwrap()),
            consumer: None,
            status: 204,
            bytes: 0,
            duration: 0.25,
        };
        let mut line = Vec::new();
        entry.write_json(&mut line);
        serde_json::from_slice(&line).unwrap()
    }

    #[test]
    fn fields_render_as_their_display_forms() {
        let v = line("127.0.0.1:8080", Some(0xabc));
        assert_eq!(v["trace_id"], format!("{:032x}", 0xabc));
        assert_eq!(v["client_ip"], "10.1.22.7");
        assert_eq!(v["method"], "PATCH");
        assert_eq!(v["node"], "127.0.0.1:8080");
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert!(v.get("upstream").is_none());
        let v = line("[::1]:9", None);
        assert_eq!(v["node"], "[::1]:9");
        assert_eq!(v["trace_id"], "");
        assert_eq!(v["status"], 204);
        assert_eq!(v["bytes"], 0);
        assert_eq!(v["duration"], 0.25);
        assert_eq!(v["route"], "orders");
        assert_eq!(v["request_id"], "r-1");
    }

    #[test]
    fn what_clients_send_is_escaped() {
        let entry = Entry {
            time: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
            request_id: "a\"b".into(),
            trace_id: None,
            client_ip: "::1".parse().unwrap(),
            method: Method::from_bytes(b"PURGE").unwrap(),
            path: "/q?x=\"\\\u{1}".into(),
            route: Arc::from(""),
            upstream: Some(Arc::from("users")),
            node: None,
            consumer: Some(Arc::from("al\"ice")),
            status: 599,
            bytes: 18_446_744_073_709,
            duration: 1e-6,
        };
        let mut line = Vec::new();
        entry.write_json(&mut line);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["request_id"], "a\"b");
        assert_eq!(v["client_ip"], "::1");
        assert_eq!(v["method"], "PURGE");
        assert_eq!(v["path"], "/q?x=\"\\\u{1}");
        assert_eq!(v["upstream"], "users");
        assert_eq!(v["consumer"], "al\"ice");
        assert!(v.get("node").is_none());
        assert_eq!(v["bytes"], 18_446_744_073_709u64);
        assert_eq!(v["duration"], 1e-6);
    }
}
