//! How the source of resources is doing, as the provider last saw it.
//!
//! The snapshot in force says *what* is configured; this says whether it still reflects the
//! source: connected or not since when, and why not (a lost connection, a source that is no
//! longer trusted). The provider writes it, `/admin/status` and `gatehouse_config_source_up`
//! read it, and `POST /admin/resync` asks the provider through it to read everything again
//! and accept it. Nothing here is touched per request.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;
use tokio::sync::{watch, Notify};

/// Which kind of provider feeds the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    File,
    Etcd,
}

/// The `source` object of `/admin/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceReport {
    pub kind: SourceKind,
    /// The provider holds a working connection to its source (etcd answers; the configured
    /// paths can be read).
    pub connected: bool,
    /// When `connected` or `error` last changed (RFC 3339).
    pub since: String,
    /// Why the snapshot in force may not reflect the source; `null` while it does.
    pub error: Option<String>,
    /// The snapshot in force was read from the last-known-good cache: the source has not
    /// answered since this instance started.
    pub from_cache: bool,
}

struct State {
    kind: SourceKind,
    connected: bool,
    since: SystemTime,
    error: Option<String>,
    from_cache: bool,
}

/// Shared between the provider (writer), the admin API (reader, resync requests) and the
/// metrics.
pub struct SourceHealth {
    state: Mutex<State>,
    /// Wakes the provider when a resync is requested; a request made while the provider is
    /// busy is kept as a permit, so none is lost.
    resync: Notify,
    /// Resync requests made, and the last of them the provider has carried out (watched
    /// by whoever asked for one).
    requested: AtomicU64,
    done: watch::Sender<u64>,
}

impl SourceHealth {
    pub fn new(kind: SourceKind) -> SourceHealth {
        set_up_metric(false);
        SourceHealth {
            state: Mutex::new(State {
                kind,
                connected: false,
                since: SystemTime::now(),
                error: None,
                from_cache: false,
            }),
            resync: Notify::new(),
            requested: AtomicU64::new(0),
            done: watch::Sender::new(0),
        }
    }

    /// Says which provider reports here (set once, when the provider is built).
    pub fn set_kind(&self, kind: SourceKind) {
        self.lock().kind = kind;
    }

    /// The source answers and what it holds is in force.
    pub fn healthy(&self) {
        self.set(true, None);
    }

    /// The source cannot be reached or read; the last snapshot stays in force.
    pub fn lost(&self, error: impl Into<String>) {
        self.set(false, Some(error.into()));
    }

    /// The source answers but what it holds is not accepted (see `provider::etcd::Distrust`);
    /// the last snapshot stays in force until a resync or a restart.
    pub fn untrusted(&self, error: impl Into<String>) {
        self.set(true, Some(error.into()));
    }

    /// Whether the snapshot in force came from the last-known-good cache.
    pub fn set_from_cache(&self, from_cache: bool) {
        self.lock().from_cache = from_cache;
    }

    /// Connected, and no reason to doubt what the source holds.
    pub fn is_up(&self) -> bool {
        let state = self.lock();
        state.connected && state.error.is_none()
    }

    pub fn report(&self) -> SourceReport {
        let state = self.lock();
        SourceReport {
            kind: state.kind,
            connected: state.connected,
            since: humantime::format_rfc3339_millis(state.since).to_string(),
            error: state.error.clone(),
            from_cache: state.from_cache,
        }
    }

    /// Asks the provider to read everything again and accept it whatever it is; returns a
    /// ticket for [`SourceHealth::resynced`].
    pub fn request_resync(&self) -> u64 {
        let ticket = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.resync.notify_one();
        ticket
    }

    /// Waits for a resync request (provider side). Returns the newest ticket it covers.
    pub async fn resync_requested(&self) -> u64 {
        self.resync.notified().await;
        self.requested.load(Ordering::Acquire)
    }

    /// The provider carried out the requests up to `ticket`.
    pub fn resync_done(&self, ticket: u64) {
        self.done.send_if_modified(|done| {
            let newer = ticket > *done;
            *done = (*done).max(ticket);
            newer
        });
    }

    /// Whether the request with `ticket` has been carried out.
    pub fn resynced(&self, ticket: u64) -> bool {
        *self.done.borrow() >= ticket
    }

    /// Waits (at most `within`) for the request with `ticket` to be carried out; whether it
    /// was.
    pub async fn wait_resynced(&self, ticket: u64, within: std::time::Duration) -> bool {
        let mut done = self.done.subscribe();
        let carried_out = done.wait_for(|done| *done >= ticket);
        let outcome = tokio::time::timeout(within, carried_out).await;
        outcome.is_ok_and(|seen| seen.is_ok())
    }

    fn set(&self, connected: bool, error: Option<String>) {
        let mut state = self.lock();
        if state.connected != connected || state.error != error {
            state.connected = connected;
            state.error = error;
            state.since = SystemTime::now();
        }
        set_up_metric(state.connected && state.error.is_none());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn set_up_metric(up: bool) {
    crate::telemetry::metrics::METRICS
        .config_source_up
        .set(i64::from(up));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_moves_only_when_the_state_changes() {
        let health = SourceHealth::new(SourceKind::Etcd);
        assert!(!health.is_up());
        health.healthy();
        let first = health.report();
        assert!(first.connected && first.error.is_none());
        std::thread::sleep(std::time::Duration::from_millis(5));
        health.healthy();
        assert_eq!(health.report().since, first.since, "same state, same since");
        health.untrusted("revision went back");
        let report = health.report();
        assert!(report.connected && !health.is_up());
        assert_eq!(report.error.as_deref(), Some("revision went back"));
        health.lost("refused");
        assert!(!health.report().connected);
        let json = serde_json::to_value(health.report()).unwrap();
        assert_eq!(json["kind"], "etcd");
        assert_eq!(json["from_cache"], false);
    }

    #[tokio::test]
    async fn a_resync_request_is_kept_until_the_provider_takes_it() {
        let health = SourceHealth::new(SourceKind::File);
        let ticket = health.request_resync();
        assert!(!health.resynced(ticket));
        let taken = health.resync_requested().await;
        assert_eq!(taken, ticket);
        health.resync_done(taken);
        assert!(health.resynced(ticket));
    }
}
