//! A fleet of gateway instances on one etcd (SPEC §13): each instance registers itself at
//! `{prefix}/instances/{id}` under a 10-second lease with the revision it has in force,
//! and anyone with access to etcd (the CLI, the admin API) can list them and see which lag.
//!
//! The records live under the resource prefix but are not resources: the provider and
//! the store skip them ([`is_instance_key`]), so an instance writing its record never
//! changes the configuration the others watch.

pub mod limits;
mod registration;

pub use registration::Registration;

use crate::etcd::EtcdError;
use etcd_client::{Client, GetOptions};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The collection the records are in.
pub const INSTANCES: &str = "instances";
/// How long a record outlives its instance's last keep-alive.
pub const LEASE_TTL_SECS: i64 = 10;

/// Whether `key` is an instance's record rather than a resource.
pub fn is_instance_key(prefix: &str, key: &str) -> bool {
    key.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(|rest| rest.strip_prefix(INSTANCES))
        .is_some_and(|rest| rest.starts_with('/'))
}

/// What an instance says of itself at `{prefix}/instances/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: String,
    /// Its first proxy listener.
    pub addr: String,
    pub version: String,
    /// The etcd revision of the snapshot it has in force.
    pub revision: u64,
    /// The etcd revision up to which it has seen every change (`Snapshot::seen`, or
    /// `revision` if higher): more than `revision` after a full read made when the newest
    /// changes were deletions or touched other keys. Absent from records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<u64>,
    /// Whether its connection to etcd works and what it holds is trusted.
    pub source_connected: bool,
    pub started_at: String,
}

/// An instance as listed: its record, and whether it lags the configuration in etcd.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub record: InstanceRecord,
    pub lagging: bool,
}

/// The instances registered, and the revision of the newest resource in etcd.
#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    /// The revision of the newest change to the resources: the highest `mod_revision` among
    /// them, or a later deletion (see [`read`]). An instance whose revision in force is
    /// lower has not applied that change.
    pub config_revision: u64,
    pub instances: Vec<Listed>,
}

/// Reads the fleet under `prefix`: the records, and which lag the newest change.
///
/// A deletion leaves no key behind, so when the newest change was one no `mod_revision`
/// tells it. The instances that applied it from their watch say its revision, but a record
/// is anyone's word: a revision a connected instance names past the newest key is taken
/// only once etcd confirms that resources were deleted at it (a revision at which a record
/// was written is no deletion, and is not even asked about). Each claim checked costs four
/// counts; none is made while no record names a revision past the newest key.
///
/// An instance lags when it has not seen that change: its `seen` (its `revision` for a
/// record without one) is below it. An instance started after a deletion holds the
/// resources that remain and the revision of the newest of them, below the deletion's, but
/// it has seen the deletion.
pub async fn read(client: &mut Client, prefix: &str) -> Result<Fleet, EtcdError> {
    let records = client
        .get(
            format!("{prefix}/{INSTANCES}/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let resources = client
        .get(
            format!("{prefix}/"),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    let newest_key = resources
        .kvs()
        .iter()
        .filter(|kv| !is_instance_key(prefix, &String::from_utf8_lossy(kv.key())))
        .map(|kv| kv.mod_revision().max(0) as u64)
        .max()
        .unwrap_or(0);
    let read_at = resources.header().map_or(0, |h| h.revision().max(0) as u64);
    // Revisions at which a record was written: no resource was deleted there.
    let record_writes: HashSet<u64> = records
        .kvs()
        .iter()
        .flat_map(|kv| [kv.create_revision(), kv.mod_revision()])
        .map(|revision| revision.max(0) as u64)
        .collect();
    let records: Vec<InstanceRecord> = records
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice::<InstanceRecord>(kv.value()).ok())
        .collect();
    let mut claims: Vec<u64> = records
        .iter()
        .filter(|r| r.source_connected && r.revision > newest_key && r.revision <= read_at)
        .map(|r| r.revision)
        .filter(|revision| !record_writes.contains(revision))
        .collect();
    claims.sort_unstable_by(|a, b| b.cmp(a));
    claims.dedup();
    let mut config_revision = newest_key;
    for claim in claims.into_iter().take(MAX_CLAIMS_CHECKED) {
        if deleted_at(client, prefix, claim as i64).await {
            config_revision = claim;
            break;
        }
    }
    let mut instances: Vec<Listed> = records
        .into_iter()
        .map(|record| Listed {
            lagging: record.seen.unwrap_or(record.revision) < config_revision,
            record,
        })
        .collect();
    instances.sort_by(|a, b| a.record.id.cmp(&b.record.id));
    Ok(Fleet {
        config_revision,
        instances,
    })
}

/// The most claimed deletion revisions checked in one read of the fleet: an instance names
/// at most one, so a few cover a fleet that is catching up.
const MAX_CLAIMS_CHECKED: usize = 3;

/// Whether etcd confirms that resources under `prefix` were deleted at `revision`: fewer
/// of them there than just before (instances' records left out: their leases end). `false`
/// when it cannot say (that history was compacted, etcd did not answer).
async fn deleted_at(client: &mut Client, prefix: &str, revision: i64) -> bool {
    let (Some(before), Some(at)) = (
        resources_at(client, prefix, revision - 1).await,
        resources_at(client, prefix, revision).await,
    ) else {
        return false;
    };
    at < before
}

/// How many keys under `prefix` that are not instances' records there were at `revision`.
async fn resources_at(client: &mut Client, prefix: &str, revision: i64) -> Option<i64> {
    let records = format!("{prefix}/{INSTANCES}/");
    // Everything under the prefix before the records, and after them.
    let ranges = [
        (format!("{prefix}/"), records.clone()),
        (format!("{prefix}/{INSTANCES}0"), format!("{prefix}0")),
    ];
    let mut count = 0;
    for (start, end) in ranges {
        let options = GetOptions::new()
            .with_range(end)
            .with_count_only()
            .with_revision(revision);
        count += client.get(start, Some(options)).await.ok()?.count();
    }
    Some(count)
}

/// The fleet as a table, for the command line.
pub fn table(fleet: &Fleet) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "ADDR".into(),
        "VERSION".into(),
        "REVISION".into(),
        "SOURCE".into(),
        "STARTED".into(),
        "LAGGING".into(),
    ]];
    for listed in &fleet.instances {
        let r = &listed.record;
        rows.push([
            r.id.clone(),
            r.addr.clone(),
            r.version.clone(),
            r.revision.to_string(),
            if r.source_connected {
                "connected"
            } else {
                "lost"
            }
            .into(),
            r.started_at.clone(),
            if listed.lagging { "yes" } else { "no" }.into(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_keys_are_told_from_resources() {
        assert!(is_instance_key("/gh", "/gh/instances/a:8080"));
        assert!(!is_instance_key("/gh", "/gh/instancesx/a"));
        assert!(!is_instance_key("/gh", "/gh/routes/instances"));
        assert!(!is_instance_key("/gh", "/ghx/instances/a"));
        assert!(!is_instance_key("/gh", "/gh/instances"));
    }

    #[test]
    fn the_table_flags_laggards() {
        let record = |id: &str, revision| InstanceRecord {
            id: id.into(),
            addr: "127.0.0.1:8080".into(),
            version: "0.1.0".into(),
            revision,
            seen: Some(revision),
            source_connected: true,
            started_at: "2026-11-30T00:00:00Z".into(),
        };
        let fleet = Fleet {
            config_revision: 9,
            instances: vec![
                Listed {
                    record: record("a", 9),
                    lagging: false,
                },
                Listed {
                    record: record("b", 7),
                    lagging: true,
                },
            ],
        };
        let text = table(&fleet);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID") && lines[0].ends_with("LAGGING"));
        assert!(lines[1].starts_with("a ") && lines[1].ends_with("no"));
        assert!(lines[2].starts_with("b ") && lines[2].ends_with("yes"));
    }
}
