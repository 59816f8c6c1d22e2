//! The etcd store of resources: key layout, and the reads and writes the provider, the admin
//! API and the command line share. Connecting is [`crate::etcd::connect`]'s job.
//!
//! Keys are `{prefix}/routes/{id}`, `{prefix}/upstreams/{id}`, `{prefix}/auth/{id}`,
//! `{prefix}/global_rules/{id}`; values
//! are YAML or JSON documents of the resource (a `kind` and `id` inside are optional and
//! must agree with the key).

use crate::etcd::EtcdSettings;
use crate::etcd::{connect, EtcdError};
use crate::resource::{parse_stored, Document, FieldError, Kind, ObjectKey, Origin};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp, TxnOpResponse,
};

/// Why talking to etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error(transparent)]
    Connect(#[from] EtcdError),
    #[error("{0}")]
    Invalid(String),
}

/// What a write did; only one on condition (`If-Match`) may be `Changed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditional {
    /// Written, at this revision.
    Done(i64),
    /// Not written: the object was written after the revision the writer read it at.
    Changed,
    /// Not written: the object is not in etcd (deleted since, or never stored there).
    Absent,
    /// Not written: the object was to be created, and is in etcd already.
    Present,
}

/// What must hold in etcd for a write to apply (HTTP's conditional requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Nothing: the write applies whatever etcd holds.
    None,
    /// `If-Match`: the object is in etcd and was not written after this revision, so two
    /// editors who loaded the same version cannot overwrite each other.
    UnchangedSince(i64),
    /// `If-None-Match: *`: the object is not in etcd, so two who create the same object
    /// cannot overwrite each other.
    Absent,
}

/// The revision etcd answered at (0 when the answer carries no header).
fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision())
}

/// The etcd key of an object.
pub fn key_of(prefix: &str, key: &ObjectKey) -> String {
    format!("{prefix}/{}/{}", key.kind.collection(), key.id)
}

/// The object an etcd key names; `None` for keys outside the layout.
pub fn object_of(prefix: &str, key: &str) -> Option<ObjectKey> {
    let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
    let (collection, id) = rest.split_once('/')?;
    let kind = Kind::from_collection(collection)?;
    (!id.is_empty() && !id.contains('/')).then(|| ObjectKey {
        kind,
        id: id.to_string(),
    })
}

/// Reads one etcd key and value as a document. Keys outside the layout become failed
/// documents, so they are listed rather than silently skipped.
pub fn document_of(prefix: &str, key: &str, value: &[u8]) -> Document {
    let origin = Origin::key(key.into());
    match object_of(prefix, key) {
        Some(object) => parse_stored(origin, object, value),
        None => Document {
            origin,
            key: None,
            parsed: Err(vec![FieldError::new(
                "",
                format!(
                    "`{key}` is not {prefix}/COLLECTION/ID, COLLECTION being one of {}",
                    Kind::collections()
                ),
            )]),
        },
    }
}

/// A connected store under one prefix.
pub struct Store {
    pub client: Client,
    pub prefix: String,
}

/// Everything under the prefix at one revision.
pub struct Contents {
    pub revision: i64,
    /// The cluster that answered: a different one means a different store, whatever its
    /// revision says.
    pub cluster_id: u64,
    /// Keys and values as stored.
    pub entries: Vec<(String, Vec<u8>)>,
}

impl Store {
    pub async fn open(settings: &EtcdSettings) -> Result<Store, StoreError> {
        Ok(Store {
            client: connect(settings).await?,
            prefix: settings.prefix.clone(),
        })
    }

    /// All keys under `{prefix}/`, and the revision they were read at.
    pub async fn contents(&mut self) -> Result<Contents, StoreError> {
        let resp = self
            .client
            .get(
                format!("{}/", self.prefix),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let revision = revision_of(resp.header());
        let cluster_id = resp.header().map_or(0, |h| h.cluster_id());
        // The fleet's records share the prefix but are not resources.
        let entries = resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                )
            })
            .filter(|(key, _)| !crate::fleet::is_instance_key(&self.prefix, key))
            .collect();
        Ok(Contents {
            revision,
            cluster_id,
            entries,
        })
    }

    /// The stored value of one object.
    pub async fn get(&mut self, key: &ObjectKey) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.stored(key).await?.map(|(value, _)| value))
    }

    /// The stored value of one object and the revision it was last written at.
    pub async fn stored(&mut self, key: &ObjectKey) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        let resp = self.client.get(key_of(&self.prefix, key), None).await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
    }

    /// Writes one object, if `precondition` holds.
    pub async fn put(
        &mut self,
        key: &ObjectKey,
        value: Vec<u8>,
        precondition: Precondition,
    ) -> Result<Conditional, StoreError> {
        let key = key_of(&self.prefix, key);
        match precondition {
            Precondition::UnchangedSince(since) => {
                let write = TxnOp::put(key.clone(), value, None);
                self.unless_changed(key, since, write).await
            }
            Precondition::Absent => {
                let write = TxnOp::put(key.clone(), value, None);
                let txn = Txn::new()
                    .when([Compare::version(key, CompareOp::Equal, 0)])
                    .and_then([write]);
                let resp = self.client.txn(txn).await?;
                Ok(match resp.succeeded() {
                    true => Conditional::Done(revision_of(resp.header())),
                    false => Conditional::Present,
                })
            }
            Precondition::None => {
                let resp = self.client.put(key, value, None).await?;
                Ok(Conditional::Done(revision_of(resp.header())))
            }
        }
    }

    /// Deletes one object (with `since`, only if it has not changed after that revision);
    /// `Absent` when it is not in etcd.
    pub async fn delete(
        &mut self,
        key: &ObjectKey,
        since: Option<i64>,
    ) -> Result<Conditional, StoreError> {
        let key = key_of(&self.prefix, key);
        match since {
            Some(since) => {
                let delete = TxnOp::delete(key.clone(), None);
                self.unless_changed(key, since, delete).await
            }
            None => {
                let resp = self.client.delete(key, None::<DeleteOptions>).await?;
                Ok(match resp.deleted() {
                    0 => Conditional::Absent,
                    _ => Conditional::Done(revision_of(resp.header())),
                })
            }
        }
    }

    /// `op` on condition that `key` exists (a version past 0) and was last written at or
    /// before `revision`; when not, the key is read in the same transaction to say which.
    async fn unless_changed(
        &mut self,
        key: String,
        revision: i64,
        op: TxnOp,
    ) -> Result<Conditional, StoreError> {
        let txn = Txn::new()
            .when([
                Compare::version(key.clone(), CompareOp::Greater, 0),
                Compare::mod_revision(key.clone(), CompareOp::Less, revision.saturating_add(1)),
            ])
            .and_then([op])
            .or_else([TxnOp::get(key, Some(GetOptions::new().with_count_only()))]);
        let resp = self.client.txn(txn).await?;
        if resp.succeeded() {
            return Ok(Conditional::Done(revision_of(resp.header())));
        }
        let present = resp.op_responses().iter().any(|op| match op {
            TxnOpResponse::Get(get) => get.count() > 0,
            _ => false,
        });
        Ok(if present {
            Conditional::Changed
        } else {
            Conditional::Absent
        })
    }

    /// Writes every object in one transaction: all or nothing.
    pub async fn put_all(&mut self, objects: Vec<(ObjectKey, Vec<u8>)>) -> Result<i64, StoreError> {
        let ops: Vec<TxnOp> = objects
            .into_iter()
            .map(|(key, value)| TxnOp::put(key_of(&self.prefix, &key), value, None))
            .collect();
        let resp = self.client.txn(Txn::new().and_then(ops)).await?;
        if !resp.succeeded() {
            return Err(StoreError::Invalid("the transaction did not apply".into()));
        }
        Ok(revision_of(resp.header()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_objects_and_back() {
        let key = ObjectKey {
            kind: Kind::Upstream,
            id: "users-v1".into(),
        };
        assert_eq!(key_of("/gatehouse", &key), "/gatehouse/upstreams/users-v1");
        assert_eq!(
            object_of("/gatehouse", "/gatehouse/upstreams/users-v1"),
            Some(key)
        );
        assert_eq!(
            object_of("/gatehouse", "/gatehouse/auth/p").unwrap().kind,
            Kind::AuthPolicy
        );
        assert_eq!(
            object_of("/gatehouse", "/gatehouse/global_rules/g").unwrap(),
            ObjectKey {
                kind: Kind::GlobalRule,
                id: "g".into()
            }
        );
        assert_eq!(object_of("/gatehouse", "/gatehouse/widgets/x"), None);
        assert_eq!(object_of("/gatehouse", "/gatehouse/routes/a/b"), None);
        assert_eq!(object_of("/gatehouse", "/gatehouse/routes/"), None);
        assert_eq!(object_of("/gatehouse", "/gatehousex/routes/a"), None);
    }

    #[test]
    fn values_are_yaml_or_json_and_must_agree_with_the_key() {
        let doc = document_of(
            "/g",
            "/g/upstreams/u",
            br#"{"nodes": [{"addr": "127.0.0.1:80"}]}"#,
        );
        assert!(doc.parsed.is_ok());
        let doc = document_of(
            "/g",
            "/g/upstreams/u",
            b"id: other\nnodes: [{addr: \"h:1\"}]\n",
        );
        assert!(doc.parsed.unwrap_err()[0]
            .message
            .contains("does not match"));
        assert!(
            doc.key.is_some(),
            "a bad value still names its object, so its old version stays"
        );
        let doc = document_of("/g", "/g/routes/r", b"{ not yaml");
        assert!(doc.parsed.unwrap_err()[0]
            .message
            .contains("not valid YAML or JSON"));
        let doc = document_of("/g", "/g/things/x", b"{}");
        assert!(doc.key.is_none());
    }
}
