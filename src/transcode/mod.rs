//! HTTP/JSON → gRPC transcoding (SPEC §9), what grpc-gateway and Envoy's transcoder do: a
//! route's `grpc_transcode` binds REST calls to the methods of gRPC services, by their
//! `google.api.http` annotations and the route's own `rules`.
//!
//! - [`template`]: path templates, parsed once and matched per request;
//! - [`bindings`]: the bindings resolved against the descriptors;
//! - [`request`]: a REST request into a request message's bytes;
//! - [`response`]: gRPC frames and statuses into JSON and HTTP statuses;
//! - [`reflection`]: the descriptors read from an upstream's server reflection.
//!
//! Everything here is pure but for reading a descriptor file and the reflection client:
//! the call itself is made by the proxy, through the route's upstream and its attempts.

pub mod bindings;
pub mod reflection;
pub mod request;
pub mod response;
pub mod template;

use crate::resource::transcode::GrpcTranscode;
use crate::resource::FieldError;
use arc_swap::ArcSwapOption;
use base64::Engine;
use bindings::Bindings;
use prost_reflect::DescriptorPool;
use std::sync::Arc;

/// The largest descriptor set read, from a file or inline.
const MAX_DESCRIPTORS: u64 = 32 << 20;

/// A route's transcoding: its bindings, fixed when read from a descriptor set, replaced
/// whenever reflection reads the upstream's services again.
#[derive(Debug)]
pub struct Transcoder {
    pub spec: GrpcTranscode,
    bindings: ArcSwapOption<Bindings>,
    /// Where reading the descriptors by reflection stands (only its service touches it).
    reflected: std::sync::Mutex<reflection::Reflected>,
}

impl Transcoder {
    /// Builds the route's transcoding. With `descriptors`, the set is read and every
    /// binding resolved now, each error named; with `reflection`, the bindings come later,
    /// from the reflection service, and a previous version's are kept meanwhile.
    pub fn compile(
        spec: &GrpcTranscode,
        previous: Option<&Transcoder>,
    ) -> Result<Transcoder, Vec<FieldError>> {
        let bindings = match &spec.descriptors {
            Some(source) => {
                let pool = load(source)
                    .map_err(|e| vec![FieldError::new("grpc_transcode.descriptors", e)])?;
                Some(Arc::new(Bindings::resolve(spec, &pool)?))
            }
            None => previous
                .filter(|p| p.spec.reflection)
                .and_then(|p| p.bindings.load_full()),
        };
        Ok(Transcoder {
            spec: spec.clone(),
            bindings: ArcSwapOption::new(bindings),
            reflected: Default::default(),
        })
    }

    /// The bindings in force; `None` while reflection has not answered yet.
    pub fn bindings(&self) -> Option<Arc<Bindings>> {
        self.bindings.load_full()
    }

    /// Resolves descriptors read by reflection and puts their bindings in force.
    pub fn learn(&self, pool: &DescriptorPool) -> Result<(), Vec<FieldError>> {
        let bindings = Bindings::resolve(&self.spec, pool)?;
        self.bindings.store(Some(Arc::new(bindings)));
        Ok(())
    }
}

/// Reads a FileDescriptorSet: `base64:…` inline, or a file's path.
pub fn load(source: &str) -> Result<DescriptorPool, String> {
    let bytes = match source.strip_prefix("base64:") {
        Some(encoded) => {
            let encoded: String = encoded.split_ascii_whitespace().collect();
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| format!("is not base64: {e}"))?
        }
        None => {
            use std::io::Read;
            let file =
                std::fs::File::open(source).map_err(|e| format!("cannot read `{source}`: {e}"))?;
            let mut bytes = Vec::new();
            file.take(MAX_DESCRIPTORS + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read `{source}`: {e}"))?;
            if bytes.len() as u64 > MAX_DESCRIPTORS {
                return Err(format!("`{source}` is over {} MiB", MAX_DESCRIPTORS >> 20));
            }
            bytes
        }
    };
    DescriptorPool::decode(bytes.as_slice())
        .map_err(|e| format!("is not a FileDescriptorSet (protoc --include_imports -o): {e}"))
}
