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
use serde::Serialize;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

/// Entries waiting to be written; beyond this they are dropped (and counted). With
/// [`WRITE_EVERY`], room for 160,000 requests per second.
pub const QUEUE: usize = 16_384;
/// How often the writer wakes to write what was queued.
pub const WRITE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// RFC 3339, UTC, milliseconds.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub request_id: String,
    #[serde(serialize_with = "trace_hex")]
    pub trace_id: Option<TraceId>,
    #[serde(serialize_with = "ip")]
    pub client_ip: IpAddr,
    #[serde(serialize_with = "method")]
    pub method: Method,
    /// Path and query as the client sent them.
    pub path: String,
    /// The matched route's id; empty when none matched.
    pub route: Arc<str>,
    /// The upstream chosen, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Arc<str>>,
    /// The node the request was last sent to, if any.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "node")]
    pub node: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<Arc<str>>,
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: usize,
    /// Seconds from the request's arrival to its last byte.
    pub duration: f64,
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*time))
}

// The renderings below run once per line; the request path only moved the values in.

fn trace_hex<S: serde::Serializer>(id: &Option<TraceId>, s: S) -> Result<S::Ok, S::Error> {
    let mut hex = [0u8; 32];
    let Some(id) = id else {
        return s.serialize_str("");
    };
    write_hex(&mut hex, &id.to_bytes());
    s.serialize_str(std::str::from_utf8(&hex).unwrap_or_default())
}

fn ip<S: serde::Serializer>(ip: &IpAddr, s: S) -> Result<S::Ok, S::Error> {
    let mut text = String::with_capacity(15);
    push_ip(&mut text, *ip);
    s.serialize_str(&text)
}

fn method<S: serde::Serializer>(method: &Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(method.as_str())
}

fn node<S: serde::Serializer>(node: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    let Some(node) = node else {
        return s.serialize_none();
    };
    let mut text = String::with_capacity(21);
    if node.is_ipv6() {
        text.push('[');
        push_ip(&mut text, node.ip());
        text.push(']');
    } else {
        push_ip(&mut text, node.ip());
    }
    text.push(':');
    push_port(&mut text, node.port());
    s.serialize_str(&text)
}

fn push_port(out: &mut String, port: u16) {
    let mut digits = [0u8; 5];
    let mut n = port;
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[start..]).unwrap_or_default());
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
}

impl AccessLog {
    /// Checks that `target` can be written (a file is created if needed and appended to).
    pub fn open(target: Target) -> std::io::Result<AccessLog> {
        drop(target.writer()?);
        Ok(AccessLog {
            target,
            tx: OnceLock::new(),
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
            std::thread::Builder::new()
                .name("gatehouse-access-log".into())
                .spawn(move || write_loop(rx, out))?;
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

fn write_loop(rx: Receiver<Entry>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    loop {
        std::thread::sleep(WRITE_EVERY);
        let mut wrote = false;
        loop {
            match rx.try_recv() {
                Ok(entry) => {
                    if serde_json::to_writer(&mut out, &entry).is_ok() {
                        let _ = out.write_all(b"\n");
                    }
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
        serde_json::to_value(&entry).unwrap()
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
    }
}
