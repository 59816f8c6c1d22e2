//! The instance's own record in etcd: put under a lease when it starts, put again when its
//! revision in force or its connection to etcd changes, kept alive every few seconds,
//! revoked when it stops. A record whose instance died (`kill -9`, a lost host) goes with
//! its lease, ten seconds later.

use super::{InstanceRecord, INSTANCES, LEASE_TTL_SECS};
use crate::etcd::{connect, Backoff, EtcdError, EtcdSettings};
use crate::snapshot::Live;
use async_trait::async_trait;
use etcd_client::{Client, PutOptions};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// How often the lease is renewed: well within its TTL, so two lost renewals in a row
/// still leave the record in place.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(3);
/// How often the source's state is looked at (its revision is followed as it changes).
const LOOK_EVERY: Duration = Duration::from_secs(1);

pub struct Registration {
    settings: EtcdSettings,
    live: Arc<Live>,
    /// The record's fixed part; `revision` and `source_connected` are filled as they are.
    me: InstanceRecord,
}

/// Why the registration starts over (with a new connection and lease).
enum Lapse {
    Etcd(EtcdError),
    /// The lease is gone (etcd answered a keep-alive with a TTL of 0).
    Expired,
}

impl From<etcd_client::Error> for Lapse {
    fn from(e: etcd_client::Error) -> Lapse {
        Lapse::Etcd(e.into())
    }
}

impl From<EtcdError> for Lapse {
    fn from(e: EtcdError) -> Lapse {
        Lapse::Etcd(e)
    }
}

impl Registration {
    pub fn new(settings: EtcdSettings, live: Arc<Live>, me: InstanceRecord) -> Registration {
        Registration { settings, live, me }
    }

    fn key(&self) -> String {
        format!("{}/{INSTANCES}/{}", self.settings.prefix, self.me.id)
    }

    /// The record as things stand: the revision in force and what it has seen, from one
    /// snapshot.
    fn record(&self) -> InstanceRecord {
        let snapshot = self.live.load();
        InstanceRecord {
            revision: snapshot.revision,
            seen: Some(snapshot.seen.max(snapshot.revision)),
            source_connected: self.live.source().is_up(),
            ..self.me.clone()
        }
    }

    async fn put(
        &self,
        client: &mut Client,
        lease: i64,
        record: &InstanceRecord,
    ) -> Result<(), Lapse> {
        let value = serde_json::to_vec(record).expect("a record serializes");
        client
            .put(self.key(), value, Some(PutOptions::new().with_lease(lease)))
            .await?;
        Ok(())
    }

    /// One registration: a lease, the record, then keep-alives and updates until
    /// something fails or the process stops (`Ok`).
    async fn registered(&self, shutdown: &mut ShutdownWatch) -> Result<(), Lapse> {
        let mut client = connect(&self.settings).await?;
        let lease = client.lease_grant(LEASE_TTL_SECS, None).await?.id();
        let mut written = self.record();
        self.put(&mut client, lease, &written).await?;
        tracing::info!(id = %self.me.id, revision = written.revision, "registered in etcd");
        let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
        let mut revisions = self.live.subscribe_revision();
        let mut renew = tokio::time::interval(KEEP_ALIVE_EVERY);
        let mut look = tokio::time::interval(LOOK_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    // Gone at once rather than when the lease runs out.
                    let _ = client.lease_revoke(lease).await;
                    return Ok(());
                }
                _ = renew.tick() => {
                    keeper.keep_alive().await?;
                    match answers.message().await? {
                        Some(answer) if answer.ttl() > 0 => {}
                        _ => return Err(Lapse::Expired),
                    }
                }
                changed = revisions.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                _ = look.tick() => {}
            }
            let now = self.record();
            if now != written {
                self.put(&mut client, lease, &now).await?;
                written = now;
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Registration {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut backoff = Backoff::reconnect();
        loop {
            let began = std::time::Instant::now();
            // Every etcd call in it is bounded by the connection's `timeout`.
            let outcome = self.registered(&mut shutdown).await;
            if began.elapsed() > Duration::from_secs(LEASE_TTL_SECS as u64) {
                // A registration that held for a while: the next tries start quick again.
                backoff.reset();
            }
            let why = match outcome {
                Ok(()) => return,
                Err(Lapse::Expired) => "its lease expired".to_string(),
                Err(Lapse::Etcd(e)) => e.to_string(),
            };
            let wait = backoff.next_delay();
            tracing::warn!(
                retry_in_ms = wait.as_millis() as u64,
                "the instance record could not be kept in etcd: {why}"
            );
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
