//! Loading a plugin's module: read from a file or fetched once from a URL and checked
//! against its digest, compiled once, and kept by digest so a route compiled again (or a
//! second route naming the same file) does not compile it again.

use super::engine::{engine, linker};
use super::host::Host;
use crate::registry::ConfigError;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use wasmtime::{InstancePre, Module};

/// Where a module comes from, as written in `module:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Source {
    /// A file, relative to the gateway's working directory.
    Path(String),
    /// An `http://` or `https://` address and the SHA-256 its bytes must have.
    Remote { url: String, sha256: String },
}

/// The callbacks a module exports, looked up once.
#[derive(Debug, Clone, Copy, Default)]
pub struct Exports {
    pub request_body: bool,
    pub response_headers: bool,
    pub response_body: bool,
}

/// A compiled module, ready to be instantiated on any worker.
pub struct Compiled {
    pub pre: InstancePre<Host>,
    pub exports: Exports,
}

/// What a module must export to be a proxy-wasm plugin at all.
const REQUIRED: [&str; 1] = ["memory"];
const ABI_MARKERS: [&str; 2] = ["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"];
/// The most a fetched module may weigh.
const MAX_FETCH: usize = 64 << 20;
/// The most compiled modules kept for reuse.
const KEEP: usize = 32;

static COMPILED: Mutex<Vec<([u8; 32], Arc<Compiled>)>> = Mutex::new(Vec::new());

/// Loads and compiles the module `source` names; errors name the `module` field.
pub fn load(source: &Source) -> Result<Arc<Compiled>, ConfigError> {
    let err = |message: String| ConfigError::new("module", message);
    let (bytes, digest) = match source {
        Source::Path(path) => {
            let bytes =
                std::fs::read(path).map_err(|e| err(format!("cannot read `{path}`: {e}")))?;
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            (bytes, digest)
        }
        Source::Remote { url, sha256 } => {
            let mut want = [0u8; 32];
            hex::decode_to_slice(sha256.trim(), &mut want)
                .map_err(|_| ConfigError::new("module.sha256", "must be 64 hex digits"))?;
            if let Some(compiled) = cached(&want) {
                return Ok(compiled);
            }
            let bytes = fetch(url).map_err(|e| ConfigError::new("module.url", e))?;
            let got: [u8; 32] = Sha256::digest(&bytes).into();
            if got != want {
                return Err(ConfigError::new(
                    "module.sha256",
                    format!(
                        "`{url}` has SHA-256 {}, not the one given",
                        hex::encode(got)
                    ),
                ));
            }
            (bytes, got)
        }
    };
    if let Some(compiled) = cached(&digest) {
        return Ok(compiled);
    }
    let compiled = Arc::new(compile(&bytes).map_err(err)?);
    let mut kept = COMPILED.lock().unwrap_or_else(PoisonError::into_inner);
    if kept.len() >= KEEP {
        kept.remove(0);
    }
    kept.push((digest, compiled.clone()));
    Ok(compiled)
}

fn cached(digest: &[u8; 32]) -> Option<Arc<Compiled>> {
    let kept = COMPILED.lock().unwrap_or_else(PoisonError::into_inner);
    kept.iter()
        .find(|(d, _)| d == digest)
        .map(|(_, c)| c.clone())
}

/// Compiles `bytes` (binary Wasm, or its text form) and checks it is a proxy-wasm module.
fn compile(bytes: &[u8]) -> Result<Compiled, String> {
    let module = Module::new(engine(), bytes).map_err(|e| format!("not a Wasm module: {e:#}"))?;
    let has = |name: &str| module.get_export(name).is_some();
    if !ABI_MARKERS.iter().any(|m| has(m)) {
        return Err(
            "the module is not built for proxy-wasm ABI 0.2.x (it exports neither \
                    `proxy_abi_version_0_2_1` nor `proxy_abi_version_0_2_0`)"
                .into(),
        );
    }
    for name in REQUIRED {
        if !has(name) {
            return Err(format!("the module lacks the ABI export `{name}`"));
        }
    }
    if !has("proxy_on_memory_allocate") && !has("malloc") {
        return Err("the module lacks the ABI export `proxy_on_memory_allocate`".into());
    }
    // A module may import more of the ABI (queues, gRPC calls, metrics) than this host
    // gives: it still loads, and such a call traps.
    let mut linker = linker().clone();
    linker
        .define_unknown_imports_as_traps(&module)
        .map_err(|e| format!("the module cannot be linked: {e:#}"))?;
    let pre = linker
        .instantiate_pre(&module)
        .map_err(|e| format!("the module cannot be linked: {e:#}"))?;
    Ok(Compiled {
        exports: Exports {
            request_body: has("proxy_on_request_body"),
            response_headers: has("proxy_on_response_headers"),
            response_body: has("proxy_on_response_body"),
        },
        pre,
    })
}

/// Fetches `url` once, off any runtime the caller runs on (configuration is compiled in
/// synchronous code): a thread of its own, bounded by a timeout and a size limit.
fn fetch(url: &str) -> Result<Vec<u8>, String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("`{url}` is not an http:// or https:// address"));
    }
    let url = url.to_string();
    let fetched = std::thread::spawn(move || -> Result<Vec<u8>, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .map_err(|e| e.to_string())?;
            let mut resp = client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("cannot fetch `{url}`: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("`{url}` answered {}", resp.status()));
            }
            let mut body = Vec::new();
            while let Some(piece) = resp
                .chunk()
                .await
                .map_err(|e| format!("cannot fetch `{url}`: {e}"))?
            {
                if body.len() + piece.len() > MAX_FETCH {
                    return Err(format!("`{url}` is over {} MiB", MAX_FETCH >> 20));
                }
                body.extend_from_slice(&piece);
            }
            Ok(body)
        })
    })
    .join()
    .map_err(|_| "the fetch failed".to_string())?;
    fetched
}

/// Key/value data shared by every instance of one plugin (`proxy_get/set_shared_data`),
/// each value with a version for compare-and-swap.
#[derive(Default)]
pub struct SharedData(Mutex<HashMap<Vec<u8>, Versioned>>);

/// A shared value and its version (its `cas`).
type Versioned = (Vec<u8>, u32);

impl SharedData {
    pub fn get(&self, key: &[u8]) -> Option<Versioned> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Sets `key` unless `cas` is non-zero and the value moved on since that version (a
    /// key that does not exist yet is set whatever `cas` says, as Envoy does).
    pub fn set(&self, key: Vec<u8>, value: Vec<u8>, cas: u32) -> bool {
        let mut table = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match table.get_mut(&key) {
            Some(entry) if cas != 0 && entry.1 != cas => false,
            Some(entry) => {
                entry.0 = value;
                entry.1 = entry.1.wrapping_add(1).max(1);
                true
            }
            None => {
                table.insert(key, (value, 1));
                true
            }
        }
    }
}

/// The shared data of the plugins named `name`: one table for every plugin of that name,
/// for as long as one of them lives.
pub fn shared_data(name: &str) -> Arc<SharedData> {
    static TABLES: Mutex<Vec<(String, std::sync::Weak<SharedData>)>> = Mutex::new(Vec::new());
    let mut tables = TABLES.lock().unwrap_or_else(PoisonError::into_inner);
    tables.retain(|(_, table)| table.strong_count() > 0);
    if let Some(table) = tables
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, t)| t.upgrade())
    {
        return table;
    }
    let table = Arc::new(SharedData::default());
    tables.push((name.to_string(), Arc::downgrade(&table)));
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_data_refuses_a_stale_version() {
        let data = SharedData::default();
        assert!(data.get(b"k").is_none());
        assert!(data.set(b"k".to_vec(), b"1".to_vec(), 0));
        let (value, cas) = data.get(b"k").unwrap();
        assert_eq!(value, b"1");
        assert!(data.set(b"k".to_vec(), b"2".to_vec(), cas));
        assert!(!data.set(b"k".to_vec(), b"3".to_vec(), cas));
        assert_eq!(data.get(b"k").unwrap().0, b"2");
        // A key that does not exist is set whatever the version says.
        assert!(data.set(b"new".to_vec(), b"x".to_vec(), 7));
        assert_eq!(data.get(b"new").unwrap(), (b"x".to_vec(), 1));
    }

    #[test]
    fn a_module_without_the_abi_is_refused_with_what_it_lacks() {
        let not_wasm = compile(b"hello").err().unwrap();
        assert!(not_wasm.contains("not a Wasm module"), "{not_wasm}");
        let plain = compile(br#"(module (memory (export "memory") 1))"#)
            .err()
            .unwrap();
        assert!(plain.contains("proxy_abi_version_0_2_1"), "{plain}");
        let no_alloc = compile(
            br#"(module (memory (export "memory") 1)
                 (func (export "proxy_abi_version_0_2_1")))"#,
        )
        .err()
        .unwrap();
        assert!(no_alloc.contains("proxy_on_memory_allocate"), "{no_alloc}");
    }
}
