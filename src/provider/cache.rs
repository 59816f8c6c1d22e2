//! The last-known-good cache (`provider.etcd.cache`, SPEC §13): what etcd held when the
//! last snapshot was applied, kept on disk so an instance that starts while etcd is
//! unreachable still serves.
//!
//! The file holds etcd's keys and values as stored (not the parsed resources, whose
//! secrets are never written back out), the prefix, cluster id and revision they came
//! from, and a SHA-256 of the entries. It is written whole to a temporary file beside it,
//! flushed and renamed over the old one, so a crash mid-write leaves the previous cache; a
//! file that does not parse, fails its checksum or was written for another prefix is
//! refused whole, never half-loaded. Writing happens off the provider's loop, on a task
//! that always writes the newest state and skips those superseded meanwhile.

use crate::etcd::Entry;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

/// The format this version writes and reads.
const FORMAT: &str = "gatehouse-last-good/1";

/// What a cache file holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    format: String,
    prefix: String,
    cluster_id: u64,
    revision: i64,
    written_at: String,
    /// Hex SHA-256 of `entries` as serialized here.
    sha256: String,
    entries: Vec<CachedEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CachedEntry {
    key: String,
    /// Values are YAML or JSON text; one that is not UTF-8 would be refused by admission
    /// anyway, and is kept so (with its bad bytes replaced).
    value: String,
    /// The revision of the key's last change.
    mod_revision: i64,
}

/// A snapshot read back from the cache.
#[derive(Debug)]
pub struct LastGood {
    pub cluster_id: u64,
    pub revision: i64,
    pub entries: Vec<Entry>,
}

/// Why a cache file is not used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: the cache cannot be read: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a gatehouse cache, or corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: the cache was written for prefix `{found}`, not `{expected}`")]
    Foreign {
        path: PathBuf,
        found: String,
        expected: String,
    },
}

/// Reads the cache at `path` for resources under `prefix`.
pub fn read(path: &Path, prefix: &str) -> Result<LastGood, CacheError> {
    let bytes = std::fs::read(path).map_err(|source| CacheError::Unreadable {
        path: path.into(),
        source,
    })?;
    let corrupt = |reason: String| CacheError::Corrupt {
        path: path.into(),
        reason,
    };
    let file: CacheFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.format != FORMAT {
        return Err(corrupt(format!(
            "format `{}`, expected `{FORMAT}`",
            file.format
        )));
    }
    if checksum(&file.entries) != file.sha256 {
        return Err(corrupt("the entries do not match their checksum".into()));
    }
    if file.prefix != prefix {
        return Err(CacheError::Foreign {
            path: path.into(),
            found: file.prefix,
            expected: prefix.into(),
        });
    }
    Ok(LastGood {
        cluster_id: file.cluster_id,
        revision: file.revision,
        entries: file
            .entries
            .into_iter()
            .map(|e| Entry {
                key: e.key,
                value: e.value.into_bytes(),
                mod_revision: e.mod_revision,
            })
            .collect(),
    })
}

fn checksum(entries: &[CachedEntry]) -> String {
    let json = serde_json::to_vec(entries).expect("strings serialize");
    Sha256::digest(&json)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What one write of the cache holds.
#[derive(Debug)]
pub struct Saved {
    pub prefix: String,
    pub cluster_id: u64,
    pub revision: i64,
    /// Each key's value as stored, and the revision of its last change.
    pub entries: BTreeMap<String, (Bytes, i64)>,
}

/// Writes `saved` to `path`: whole to a temporary file beside it, flushed, renamed over it.
pub fn write(path: &Path, saved: &Saved) -> std::io::Result<()> {
    let entries: Vec<CachedEntry> = saved
        .entries
        .iter()
        .map(|(key, (value, mod_revision))| CachedEntry {
            key: key.clone(),
            value: String::from_utf8_lossy(value).into_owned(),
            mod_revision: *mod_revision,
        })
        .collect();
    let file = CacheFile {
        format: FORMAT.into(),
        prefix: saved.prefix.clone(),
        cluster_id: saved.cluster_id,
        revision: saved.revision,
        written_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        sha256: checksum(&entries),
        entries,
    };
    let json = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the cache path names no file"))?
        .to_string_lossy();
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut out = std::fs::File::create(&temporary)?;
        out.write_all(&json)?;
        out.sync_all()?;
        std::fs::rename(&temporary, path)?;
        // The rename itself is durable once the directory is.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Keeps the cache file up to date with the newest applied snapshot, off the caller's
/// path: a save replaces any not yet written.
pub struct CacheWriter {
    newest: watch::Sender<Option<Arc<Saved>>>,
}

impl CacheWriter {
    /// Starts the writing task on the current runtime.
    pub fn start(path: PathBuf) -> CacheWriter {
        let (newest, mut pending) = watch::channel(None::<Arc<Saved>>);
        tokio::spawn(async move {
            while pending.changed().await.is_ok() {
                let Some(saved) = pending.borrow_and_update().clone() else {
                    continue;
                };
                let path = path.clone();
                let revision = saved.revision;
                let outcome = tokio::task::spawn_blocking(move || write(&path, &saved)).await;
                match outcome {
                    Ok(Ok(())) => tracing::debug!(revision, "etcd: last-known-good cache written"),
                    Ok(Err(e)) => {
                        tracing::warn!("etcd: the last-known-good cache was not written: {e}")
                    }
                    Err(e) => {
                        tracing::warn!("etcd: the last-known-good cache was not written: {e}")
                    }
                }
            }
        });
        CacheWriter { newest }
    }

    pub fn save(&self, saved: Saved) {
        self.newest.send_replace(Some(Arc::new(saved)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(prefix: &str) -> Saved {
        Saved {
            prefix: prefix.into(),
            cluster_id: 42,
            revision: 7,
            entries: BTreeMap::from([
                (
                    "/gh/routes/a".into(),
                    (Bytes::from_static(b"kind: Route\n"), 5),
                ),
                (
                    "/gh/upstreams/u".into(),
                    (Bytes::from_static(b"{\"nodes\": []}"), 6),
                ),
            ]),
        }
    }

    #[test]
    fn a_written_cache_reads_back_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last-good.json");
        write(&path, &saved("/gh")).unwrap();
        let back = read(&path, "/gh").unwrap();
        assert_eq!((back.cluster_id, back.revision), (42, 7));
        assert_eq!(back.entries.len(), 2);
        assert_eq!(back.entries[0].key, "/gh/routes/a");
        assert_eq!(back.entries[0].value, b"kind: Route\n");
        assert_eq!(back.entries[1].mod_revision, 6);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left");
    }

    #[test]
    fn a_corrupt_truncated_or_foreign_cache_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last-good.json");
        write(&path, &saved("/gh")).unwrap();
        let good = std::fs::read_to_string(&path).unwrap();

        let foreign = read(&path, "/other").unwrap_err();
        assert!(matches!(foreign, CacheError::Foreign { .. }));
        assert!(foreign.to_string().contains("last-good.json"), "{foreign}");
        assert!(foreign.to_string().contains("`/gh`"), "{foreign}");

        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        let truncated = read(&path, "/gh").unwrap_err();
        assert!(
            matches!(truncated, CacheError::Corrupt { .. }),
            "{truncated}"
        );

        std::fs::write(&path, good.replace("kind: Route", "kind: Rout3")).unwrap();
        let flipped = read(&path, "/gh").unwrap_err();
        assert!(flipped.to_string().contains("checksum"), "{flipped}");

        std::fs::write(&path, "routes: []").unwrap();
        assert!(matches!(
            read(&path, "/gh"),
            Err(CacheError::Corrupt { .. })
        ));

        let missing = read(&dir.path().join("none.json"), "/gh").unwrap_err();
        assert!(matches!(missing, CacheError::Unreadable { .. }));
    }
}
