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
    pub trace_id: String,
    pub client_ip: IpAddr,
    pub method: String,
    /// Path and query as the client sent them.
    pub path: String,
    /// The matched route's id; empty when none matched.
    pub route: Arc<str>,
    /// The upstream chosen, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Arc<str>>,
    /// The node the request was last sent to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
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
