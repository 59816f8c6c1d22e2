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
    /// The highest `mod_revision` among the resources under the prefix: an instance whose
    /// revision in force is lower has not applied that change.
    pub config_revision: u64,
    pub instances: Vec<Listed>,
}

/// Reads the fleet under `prefix`: the records, and which lag the newest resource.
///
/// A lag is judged against the newest write of a resource; a deletion that is the very last
/// change leaves no key to compare with, so an instance that missed only that is not
/// flagged until the next write.
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
    let config_revision = resources
        .kvs()
        .iter()
        .filter(|kv| !is_instance_key(prefix, &String::from_utf8_lossy(kv.key())))
        .map(|kv| kv.mod_revision().max(0) as u64)
        .max()
        .unwrap_or(0);
    let mut instances: Vec<Listed> = records
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice::<InstanceRecord>(kv.value()).ok())
        .map(|record| Listed {
            lagging: record.revision < config_revision,
            record,
        })
        .collect();
    instances.sort_by(|a, b| a.record.id.cmp(&b.record.id));
    Ok(Fleet {
        config_revision,
        instances,
    })
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
