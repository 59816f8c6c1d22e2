//! The etcd prefix watch the provider and the registry share, against a real etcd: the full
//! read, changes in order, a watch that lost its place to compaction, a lost connection, a
//! restart asked for by the caller.

mod common;

use common::Etcd;
use gatehouse::bootstrap::EtcdSettings;
use gatehouse::etcd::{Change, Entry, PrefixWatch, WatchEvent};
use std::time::Duration;

/// Long enough for any event to arrive; a test that waits this long has failed.
const WAIT: Duration = Duration::from_secs(20);

fn watch_of(etcd: &Etcd) -> PrefixWatch {
    let settings = EtcdSettings::with_endpoints(vec![etcd.url()], "/t".into());
    PrefixWatch::new(settings, "/t/", "test")
}

async fn next(watch: &mut PrefixWatch) -> WatchEvent {
    tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("an event in time")
}

/// A change as the tests compare it: its key and new value (none for a deletion).
type Seen = (String, Option<String>);

fn put(key: &str, value: &str) -> Seen {
    (key.into(), Some(value.into()))
}

fn seen(change: &Change) -> Seen {
    match change {
        Change::Put(Entry { key, value, .. }) => {
            (key.clone(), Some(String::from_utf8(value.clone()).unwrap()))
        }
        Change::Delete { key, .. } => (key.clone(), None),
    }
}

/// Expects a full read; returns its revision and entries as text.
fn loaded(event: WatchEvent) -> (i64, Vec<(String, String)>) {
    match event {
        WatchEvent::Loaded {
            revision, entries, ..
        } => (
            revision,
            entries
                .into_iter()
                .map(|e| (e.key, String::from_utf8(e.value).unwrap()))
                .collect(),
        ),
        other => panic!("expected a full read, got {other:?}"),
    }
}

/// Gives the loop time to start its watch. Nothing has changed, so the call is given up on;
/// a call given up on must lose nothing, which the changes that follow check.
async fn start_watching(watch: &mut PrefixWatch) {
    let waited = tokio::time::timeout(Duration::from_millis(300), watch.next()).await;
    assert!(waited.is_err(), "nothing changed, yet: {waited:?}");
}

/// Collects changes until `count` have arrived; returns them and the last revision seen.
/// Each change carries the revision it was made at, and those only go forward.
async fn changes(watch: &mut PrefixWatch, count: usize) -> (Vec<Seen>, Option<i64>) {
    let mut all = Vec::new();
    let mut last = None;
    let mut made_at = 0;
    while all.len() < count {
        match next(watch).await {
            WatchEvent::Changed { revision, changes } => {
                assert!(!changes.is_empty());
                assert!(revision >= last, "revisions only go forward");
                last = revision;
                for change in &changes {
                    assert!(change.revision() > made_at, "one revision per change");
                    made_at = change.revision();
                }
                assert!(Some(made_at) <= revision);
                all.extend(changes.iter().map(seen));
            }
            other => panic!("expected changes, got {other:?}"),
        }
    }
    (all, last)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_read_then_every_change_in_order() {
    let etcd = Etcd::start();
    etcd.put("/t/a", "1");
    etcd.put("/t/b", "2");
    etcd.put("/other/c", "not watched");
    let mut watch = watch_of(&etcd);

    let (revision, entries) = loaded(next(&mut watch).await);
    assert_eq!(revision as u64, etcd.revision());
    assert_eq!(
        entries,
        [("/t/a".into(), "1".into()), ("/t/b".into(), "2".into())]
    );

    start_watching(&mut watch).await;
    // Many writes at once: however they are folded, every one arrives, in order.
    let writes: Vec<(String, String)> = (0..50)
        .map(|i| (format!("/t/k{}", i % 5), i.to_string()))
        .collect();
    etcd.put_many(&writes).await;
    etcd.put("/other/d", "not watched");
    etcd.delete("/t/a");
    let (seen, last) = changes(&mut watch, writes.len() + 1).await;
    let mut expected: Vec<Seen> = writes.iter().map(|(k, v)| put(k, v)).collect();
    expected.push(("/t/a".into(), None));
    assert_eq!(seen, expected);
    assert_eq!(last, Some(etcd.revision() as i64));
}

/// etcd cannot replay changes older than its compacted revision: a watch that would start
/// there is told so, and the loop reads everything again instead of missing them.
#[tokio::test(flavor = "multi_thread")]
async fn a_compacted_start_revision_means_a_full_read() {
    let etcd = Etcd::start();
    etcd.put("/t/a", "1");
    let mut watch = watch_of(&etcd);
    let (first, _) = loaded(next(&mut watch).await);

    // Before the watch starts (it starts on the next call), its start revision is compacted.
    etcd.put("/t/a", "2");
    etcd.put("/t/b", "3");
    let out = etcd.ctl(&["compact", &etcd.revision().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (revision, entries) = loaded(next(&mut watch).await);
    assert!(revision > first);
    assert_eq!(revision as u64, etcd.revision());
    assert_eq!(
        entries,
        [("/t/a".into(), "2".into()), ("/t/b".into(), "3".into())]
    );
    // And it follows from there.
    start_watching(&mut watch).await;
    etcd.put("/t/c", "4");
    assert_eq!(changes(&mut watch, 1).await.0, [put("/t/c", "4")]);
}

/// A lost connection is said once per attempt; once etcd answers again the caller gets the
/// whole store, changes made meanwhile included, and the watch goes on from there.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_connection_is_reported_then_everything_is_read_again() {
    let mut etcd = Etcd::start();
    etcd.put("/t/a", "1");
    let mut watch = watch_of(&etcd);
    loaded(next(&mut watch).await);
    start_watching(&mut watch).await;

    etcd.kill9();
    match next(&mut watch).await {
        WatchEvent::Lost { retry_in, .. } => assert!(
            retry_in <= Duration::from_millis(150),
            "a connection that worked starts again from the first delay: {retry_in:?}"
        ),
        other => panic!("expected the connection lost, got {other:?}"),
    }
    // While etcd is down, each attempt is another loss.
    match next(&mut watch).await {
        WatchEvent::Lost { error, .. } => assert!(!error.to_string().is_empty()),
        other => panic!("etcd is down, yet {other:?}"),
    }

    etcd.spawn();
    etcd.put("/t/b", "2");
    let reread = loop {
        match next(&mut watch).await {
            WatchEvent::Lost { .. } => continue,
            event => break loaded(event),
        }
    };
    assert_eq!(
        reread.1,
        [("/t/a".into(), "1".into()), ("/t/b".into(), "2".into())]
    );
    start_watching(&mut watch).await;
    etcd.put("/t/c", "3");
    assert_eq!(changes(&mut watch, 1).await.0, [put("/t/c", "3")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_reads_everything_again_on_a_new_connection() {
    let etcd = Etcd::start();
    etcd.put("/t/a", "1");
    let mut watch = watch_of(&etcd);
    loaded(next(&mut watch).await);
    start_watching(&mut watch).await;

    etcd.put("/t/a", "2");
    watch.restart();
    let (revision, entries) = loaded(next(&mut watch).await);
    assert_eq!(revision as u64, etcd.revision());
    assert_eq!(entries, [("/t/a".into(), "2".into())]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_etcd_that_is_not_there_is_reported_without_waiting() {
    let etcd = Etcd::not_started();
    let mut watch = watch_of(&etcd);
    match next(&mut watch).await {
        WatchEvent::Lost { retry_in, .. } => assert!(retry_in <= Duration::from_millis(150)),
        other => panic!("expected the connection lost, got {other:?}"),
    }
}
