//! Following one key prefix: everything under it at revision R, then a watch from R+1.
//!
//! The caller pulls [`WatchEvent`]s and decides what the keys mean; the loop owns the
//! connection. A watch that loses its place — the revision it starts from was compacted,
//! etcd canceled it, or a response comes from another cluster than the one read — cannot
//! say what was missed, so everything is read again and handed over whole. A failed
//! connection is reported once, then retried with [`Backoff`]; the first event after it is
//! again a full read, so a caller never has to guess what changed while it was away.

use super::EtcdSettings;
use super::{connect_member, Backoff, EtcdError};
use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchResponse, WatchStream};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::Instant;

/// The most watch responses folded into one [`WatchEvent::Changed`], so a flood of writes
/// still shows progress rather than being folded forever.
pub const MAX_FOLDED: usize = 1024;

/// One key and its value, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision of the key's last change.
    pub mod_revision: i64,
}

/// One change to a key, in the order etcd made them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Entry),
    Delete {
        key: String,
        /// The revision of the deletion.
        revision: i64,
    },
}

impl Change {
    pub fn key(&self) -> &str {
        match self {
            Change::Put(entry) => &entry.key,
            Change::Delete { key, .. } => key,
        }
    }

    /// The revision etcd made this change at.
    pub fn revision(&self) -> i64 {
        match self {
            Change::Put(entry) => entry.mod_revision,
            Change::Delete { revision, .. } => *revision,
        }
    }
}

/// What following the prefix brought.
#[derive(Debug)]
pub enum WatchEvent {
    /// Everything under the prefix at `revision`, as answered by the cluster `cluster_id`:
    /// after connecting, and whenever the watch lost its place. It replaces whatever the
    /// caller held; the changes that follow start after `revision`.
    Loaded {
        revision: i64,
        cluster_id: u64,
        entries: Vec<Entry>,
    },
    /// Changes since the previous event: the watch responses that were already waiting,
    /// folded (up to [`MAX_FOLDED`]) so a burst of writes costs the caller one update.
    /// `revision` is that of the newest response that carried a header.
    Changed {
        revision: Option<i64>,
        changes: Vec<Change>,
    },
    /// The connection failed. What the caller holds is all it has until the next
    /// [`WatchEvent::Loaded`]; the watch connects again after `retry_in` (the next call to
    /// [`PrefixWatch::next`] waits for it).
    Lost {
        error: EtcdError,
        retry_in: Duration,
    },
}

/// A followed key prefix. Pull events with [`PrefixWatch::next`].
pub struct PrefixWatch {
    settings: EtcdSettings,
    prefix: String,
    /// Names the caller in the loop's own logs (`etcd`, `registry`).
    label: &'static str,
    backoff: Backoff,
    /// The member (an index into the endpoints, counting round) the watch connects to: the
    /// next one after each failure.
    member: usize,
    state: State,
}

/// Where the loop is. Every change of state happens between awaits, so dropping a call to
/// [`PrefixWatch::next`] at any await leaves a state the next call resumes from.
enum State {
    /// No connection; connect once `retry_at` (if any) has passed.
    Disconnected { retry_at: Option<Instant> },
    /// Connected; everything is to be read.
    Connected { client: Client },
    /// Everything was read at `revision`; the watch from `revision + 1` is to start.
    Loaded {
        client: Client,
        revision: i64,
        cluster_id: u64,
    },
    /// Following changes of the store the cluster `cluster_id` holds.
    Watching {
        client: Client,
        /// Boxed: the other states are as large as the client alone.
        stream: Box<WatchStream>,
        cluster_id: u64,
        /// The revision of the newest change handed over (or of the full read).
        revision: i64,
        /// When the watch was opened.
        opened: Instant,
        /// When it first broke, if it was opened again since.
        broken_since: Option<Instant>,
    },
    /// The watch's stream broke (its member died, say): it is opened again at once on the
    /// next member that answers, from the revision after `revision` when nothing was
    /// written since (nothing read again); when something was (the new watch's creation
    /// says), that member is read whole instead (etcd would hand the missed changes to a
    /// watch opened in the past only at its next sync, up to 100 ms later). A revision
    /// compacted meanwhile means a full read, as for any watch.
    Resuming {
        /// The next member's client; `None` until it is connected.
        client: Option<Client>,
        revision: i64,
        cluster_id: u64,
        broken_since: Instant,
    },
}

impl State {
    /// A watch just opened.
    fn watching(
        client: Client,
        stream: WatchStream,
        cluster_id: u64,
        revision: i64,
        broken_since: Option<Instant>,
    ) -> State {
        State::Watching {
            client,
            stream: Box::new(stream),
            cluster_id,
            revision,
            opened: Instant::now(),
            broken_since,
        }
    }
}

/// The changes under the prefix after `revision`.
fn watch_after(revision: i64) -> WatchOptions {
    WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1)
}

/// How long a broken watch is tried again before the connection counts as lost (a full
/// read after the backoff): time to try every member of a cluster a few times, one after
/// the other, short enough that a hung etcd is still reported soon.
const RESUME_WITHIN: Duration = Duration::from_millis(500);
/// The pause between two tries to open a broken watch again.
const RESUME_PAUSE: Duration = Duration::from_millis(2);

impl PrefixWatch {
    /// Follows every key that starts with `prefix` (exactly as given, usually ending in
    /// `/`), connecting with `settings` (whose own `prefix` is not used here). Nothing
    /// happens until the first [`PrefixWatch::next`].
    pub fn new(settings: EtcdSettings, prefix: impl Into<String>, label: &'static str) -> Self {
        PrefixWatch {
            settings,
            prefix: prefix.into(),
            label,
            backoff: Backoff::reconnect(),
            member: 0,
            state: State::Disconnected { retry_at: None },
        }
    }

    /// The next event. Never ends: after [`WatchEvent::Lost`] it connects again.
    ///
    /// Cancel safe: dropped at an await (say in a `select!` on shutdown), it loses no
    /// change — the next call resumes the same connection, watch or wait.
    pub async fn next(&mut self) -> WatchEvent {
        loop {
            match self.step().await {
                Ok(Some(event)) => return event,
                Ok(None) => {}
                Err(error) => {
                    // The next connection goes to the next member.
                    self.member = self.member.wrapping_add(1);
                    let retry_in = self.back_off();
                    return WatchEvent::Lost { error, retry_in };
                }
            }
        }
    }

    /// Drops the connection; the next [`PrefixWatch::next`] connects again at once and
    /// starts with a full read. For a caller that wants everything anew (an operator asked
    /// for it) or will not read for a while (it does not accept this store).
    pub fn restart(&mut self) {
        self.state = State::Disconnected { retry_at: None };
    }

    /// Drops the connection as if it had failed: the next [`PrefixWatch::next`] connects
    /// again after the returned delay. For a caller that could not use what it was given,
    /// so trying again at once would likely fail the same way.
    pub fn back_off(&mut self) -> Duration {
        let delay = self.backoff.next_delay();
        self.state = State::Disconnected {
            retry_at: Some(Instant::now() + delay),
        };
        delay
    }

    /// A watch being opened again goes on with the next member.
    fn next_member_resumes(&mut self) {
        if let State::Resuming { client, .. } = &mut self.state {
            *client = None;
        }
    }

    /// Moves one state on; an event when there is one to hand over.
    async fn step(&mut self) -> Result<Option<WatchEvent>, EtcdError> {
        match &mut self.state {
            State::Disconnected { retry_at } => {
                if let Some(at) = *retry_at {
                    tokio::time::sleep_until(at).await;
                }
                let client = connect_member(&self.settings, self.member).await?;
                self.state = State::Connected { client };
                Ok(None)
            }
            State::Connected { client } => {
                let response = client
                    .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()))
                    .await?;
                let revision = response.header().map_or(0, |h| h.revision());
                let cluster_id = response.header().map_or(0, |h| h.cluster_id());
                let entries = response
                    .kvs()
                    .iter()
                    .map(|kv| Entry {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        value: kv.value().to_vec(),
                        mod_revision: kv.mod_revision(),
                    })
                    .collect();
                // The connection proved itself; a later failure starts from the first delay.
                self.backoff.reset();
                self.state = State::Loaded {
                    client: client.clone(),
                    revision,
                    cluster_id,
                };
                Ok(Some(WatchEvent::Loaded {
                    revision,
                    cluster_id,
                    entries,
                }))
            }
            State::Loaded {
                client,
                revision,
                cluster_id,
            } => {
                let stream = client
                    .watch(self.prefix.as_str(), Some(watch_after(*revision)))
                    .await?;
                self.state = State::watching(client.clone(), stream, *cluster_id, *revision, None);
                Ok(None)
            }
            State::Resuming {
                client,
                revision,
                cluster_id,
                broken_since,
            } => {
                let left = RESUME_WITHIN.saturating_sub(broken_since.elapsed());
                if left.is_zero() {
                    return Err(EtcdError::Resume(format!(
                        "no member took it within {RESUME_WITHIN:?}"
                    )));
                }
                // The member the watch was on failed it: the next one is asked.
                let client = match client {
                    Some(client) => client,
                    None => {
                        self.member = self.member.wrapping_add(1);
                        match connect_member(&self.settings, self.member).await {
                            Ok(next) => client.insert(next),
                            Err(e) => {
                                tracing::debug!(
                                    "{}: member {} cannot be reached: {e}",
                                    self.label,
                                    self.member
                                );
                                tokio::time::sleep(RESUME_PAUSE).await;
                                return Ok(None);
                            }
                        }
                    }
                };
                // The member that answers must hold the same store, at least as far as
                // the watch got: an etcd restarted empty or restored from a backup (or
                // another cluster) is read whole instead, for the caller to judge. The
                // member answers from its own copy (serializable), so an election going on
                // does not hold the question up.
                let probe = GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_limit(1)
                    .with_serializable();
                let probed =
                    tokio::time::timeout(left, client.get(self.prefix.as_str(), Some(probe)));
                match probed.await {
                    Ok(Ok(answer)) => {
                        let header = answer.header();
                        let same = header.is_some_and(|h| {
                            h.cluster_id() == *cluster_id && h.revision() >= *revision
                        });
                        if !same {
                            tracing::warn!(
                                "{}: the member that answers holds another store; reading \
                                 everything again",
                                self.label
                            );
                            self.state = State::Connected {
                                client: client.clone(),
                            };
                            return Ok(None);
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(
                            "{}: member {} does not answer: {e}",
                            self.label,
                            self.member
                        );
                        self.next_member_resumes();
                        tokio::time::sleep(RESUME_PAUSE).await;
                        return Ok(None);
                    }
                    // Out of time: the next step says so.
                    Err(_) => return Ok(None),
                }
                let left = RESUME_WITHIN.saturating_sub(broken_since.elapsed());
                let options = watch_after(*revision);
                let opened =
                    tokio::time::timeout(left, client.watch(self.prefix.as_str(), Some(options)));
                match opened.await {
                    Ok(Ok(mut stream)) => {
                        // Something written since the watch's last change (while it was
                        // down, or since the question) leaves the reopened watch in the
                        // past: etcd hands such a watch its first changes only at its next
                        // sync of them (every 100 ms). The watch's creation says the
                        // revision it was made at; if that is past the last change, what
                        // was missed is read whole now and the watch opened at the present.
                        let left = RESUME_WITHIN.saturating_sub(broken_since.elapsed());
                        match tokio::time::timeout(left, stream.message()).await {
                            Ok(Ok(Some(created)))
                                if created.created()
                                    && !created.canceled()
                                    && created
                                        .header()
                                        .is_some_and(|h| h.revision() <= *revision) => {}
                            Ok(Ok(Some(_))) => {
                                tracing::info!(
                                    "{}: changes were made while the watch was down; reading \
                                     everything at member {}",
                                    self.label,
                                    self.member % self.settings.endpoints.len().max(1)
                                );
                                self.state = State::Connected {
                                    client: client.clone(),
                                };
                                return Ok(None);
                            }
                            Ok(Ok(None)) | Ok(Err(_)) => {
                                self.next_member_resumes();
                                tokio::time::sleep(RESUME_PAUSE).await;
                                return Ok(None);
                            }
                            // Out of time: the next step says so.
                            Err(_) => return Ok(None),
                        }
                        tracing::info!(
                            revision = *revision,
                            "{}: the watch goes on at member {} ({:?} after it broke)",
                            self.label,
                            self.member % self.settings.endpoints.len().max(1),
                            broken_since.elapsed()
                        );
                        self.state = State::watching(
                            client.clone(),
                            stream,
                            *cluster_id,
                            *revision,
                            Some(*broken_since),
                        );
                        Ok(None)
                    }
                    Ok(Err(e)) => {
                        tracing::debug!("{}: the watch could not be opened again: {e}", self.label);
                        self.next_member_resumes();
                        tokio::time::sleep(RESUME_PAUSE).await;
                        Ok(None)
                    }
                    // Out of time: the next step says so.
                    Err(_) => Ok(None),
                }
            }
            State::Watching {
                client,
                stream,
                cluster_id,
                revision,
                opened,
                broken_since,
            } => {
                let cluster_id = *cluster_id;
                let mut batch = Batch::default();
                let mut message = Some(stream.message().await);
                let mut folded = 0;
                // Responses already waiting are folded in without awaiting, so this call
                // is either still waiting for the first one or done.
                while let Some(received) = message.take() {
                    let response = match received {
                        Ok(Some(response)) => response,
                        broken => {
                            let why = match broken {
                                Err(e) => e.to_string(),
                                _ => EtcdError::WatchEnded.to_string(),
                            };
                            // A watch that lived a while broke anew; one that broke again
                            // at once goes on with the time it had.
                            let since = match *broken_since {
                                Some(since) if opened.elapsed() < RESUME_WITHIN => since,
                                _ => Instant::now(),
                            };
                            if since.elapsed() >= RESUME_WITHIN {
                                return Err(EtcdError::Resume(why));
                            }
                            tracing::info!(
                                revision = *revision,
                                "{}: the watch broke ({why}); opening it again",
                                self.label
                            );
                            // What was folded so far is handed over; the watch goes on
                            // after it.
                            let revision = batch.last_change().unwrap_or(*revision);
                            self.state = State::Resuming {
                                client: None,
                                revision,
                                cluster_id,
                                broken_since: since,
                            };
                            return Ok(batch.into_event());
                        }
                    };
                    if let Some(lost) = LostPlace::of(&response, cluster_id) {
                        lost.log(self.label);
                        self.state = State::Connected {
                            client: client.clone(),
                        };
                        return Ok(None);
                    }
                    batch.add(&response);
                    folded += 1;
                    if folded < MAX_FOLDED {
                        message = ready_now(stream.message());
                    }
                }
                if let Some(last) = batch.last_change() {
                    *revision = last;
                }
                Ok(batch.into_event())
            }
        }
    }
}

/// Why a watch can no longer say what changed.
enum LostPlace {
    Compacted(i64),
    Canceled(String),
    OtherCluster { was: u64, now: u64 },
}

impl LostPlace {
    fn of(response: &WatchResponse, cluster_id: u64) -> Option<LostPlace> {
        if let Some(header) = response.header() {
            if header.cluster_id() != cluster_id {
                return Some(LostPlace::OtherCluster {
                    was: cluster_id,
                    now: header.cluster_id(),
                });
            }
        }
        if response.compact_revision() > 0 {
            return Some(LostPlace::Compacted(response.compact_revision()));
        }
        if response.canceled() {
            return Some(LostPlace::Canceled(response.cancel_reason().to_string()));
        }
        None
    }

    fn log(&self, label: &str) {
        match self {
            LostPlace::Compacted(compacted) => tracing::warn!(
                compacted,
                "{label}: the watched revision was compacted; reading everything again"
            ),
            LostPlace::Canceled(reason) => tracing::warn!(
                reason = reason.as_str(),
                "{label}: watch canceled; reading everything again"
            ),
            LostPlace::OtherCluster { was, now } => tracing::warn!(
                "{label}: the watch answers from cluster {now:x}, not {was:x}; reading \
                 everything again"
            ),
        }
    }
}

/// Watch responses folded into one event.
#[derive(Default)]
struct Batch {
    /// A response with events was folded in.
    changed: bool,
    revision: Option<i64>,
    changes: Vec<Change>,
}

impl Batch {
    fn add(&mut self, response: &WatchResponse) {
        // A response without events is a progress notification: nothing to hand over.
        if response.events().is_empty() {
            return;
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            self.changes.push(match event.event_type() {
                EventType::Put => Change::Put(Entry {
                    key,
                    value: kv.value().to_vec(),
                    mod_revision: kv.mod_revision(),
                }),
                EventType::Delete => Change::Delete {
                    key,
                    revision: kv.mod_revision(),
                },
            });
        }
        self.changed = true;
        self.revision = response.header().map(|h| h.revision()).or(self.revision);
    }

    /// The revision of the newest change folded in.
    fn last_change(&self) -> Option<i64> {
        self.changes.iter().map(Change::revision).max()
    }

    fn into_event(self) -> Option<WatchEvent> {
        self.changed.then_some(WatchEvent::Changed {
            revision: self.revision,
            changes: self.changes,
        })
    }
}

/// The output of `future` if it is ready at once. Polling with a waker that does nothing
/// is enough: a pending stream is polled again, with a real waker, by the next call.
fn ready_now<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_ready_future_is_taken() {
        assert_eq!(ready_now(std::future::ready(7)), Some(7));
        assert_eq!(ready_now(std::future::pending::<u8>()), None);
    }
}
