//! `gatehouse apply`: resource files validated against what etcd holds, then written in one
//! transaction — all of them, or none.

use crate::provider::file::{read_text, FileSource};
use crate::resource::{admit, parse_file_with_values, Catalog, Document, ObjectKey, Origin};
use crate::store::{document_of, Contents};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

/// What applying the files would do.
pub struct Plan {
    /// Objects to write, with the value to store (the document as written, secrets
    /// included; comments are not kept).
    pub writes: Vec<(ObjectKey, Vec<u8>)>,
    /// Every problem, as `file:doc: field: message`; nothing is written unless empty.
    pub errors: Vec<String>,
}

/// Judges the files (and the YAML files under folders) as the gateway will once they are in etcd: each file document together
/// with everything already stored (which the files override), by the one admission function.
pub fn plan(paths: &[PathBuf], stored: &Contents, prefix: &str) -> Plan {
    let mut file_docs: Vec<Document> = Vec::new();
    let mut writes = Vec::new();
    let mut errors = Vec::new();
    // Folders are read as the file provider and `validate` read them.
    let listing = FileSource::new(paths.to_vec()).files();
    for (path, e) in &listing.unreadable {
        errors.push(format!("{}: cannot read: {e}", path.display()));
    }
    for file in &listing.files {
        let source: Arc<str> = file.display().to_string().into();
        let text = match read_text(file) {
            Ok(text) => text,
            Err(e) => {
                errors.push(format!("{source}: cannot read: {e}"));
                continue;
            }
        };
        for (doc, value) in parse_file_with_values(source, &text) {
            if let (Ok(resource), Some(value)) = (&doc.parsed, value) {
                match serde_yaml::to_string(&value) {
                    Ok(text) => writes.push((resource.key(), text.into_bytes())),
                    Err(e) => errors.push(format!("{}: cannot store: {e}", doc.origin)),
                }
            }
            file_docs.push(doc);
        }
    }

    let from_files: HashSet<Origin> = file_docs.iter().map(|d| d.origin.clone()).collect();
    let overridden: HashSet<ObjectKey> = file_docs.iter().filter_map(|d| d.key.clone()).collect();
    let mut all: Vec<Document> = stored
        .entries
        .iter()
        .map(|(key, value)| document_of(prefix, key, value))
        .filter(|d| d.key.as_ref().is_none_or(|k| !overridden.contains(k)))
        .collect();
    all.extend(file_docs);
    let (_, rejections) = admit(&all, &Catalog::default());
    for rejection in rejections.iter().filter(|r| from_files.contains(&r.origin)) {
        errors.extend(rejection.lines());
    }
    Plan { writes, errors }
}
