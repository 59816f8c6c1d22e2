//! HTTP/JSON → gRPC transcoding (SPEC §9), what grpc-gateway and Envoy's transcoder do: a
//! route's `grpc_transcode` binds REST calls to the methods of gRPC services, by their
//! `google.api.http` annotations and the route's own `rules`.
//!
//! - [`template`]: path templates, parsed once and matched per request;
//! - [`rule`]: a `google.api.http` rule and the checks of its syntax;
//! - [`bindings`]: the rules resolved against the descriptors;
//! - [`request`]: a REST request into a request message's bytes;
//! - [`response`]: gRPC frames and statuses into JSON and HTTP statuses;
//! - [`reflection`]: the client that reads descriptors from a server's reflection service.
//!
//! Everything here knows protobuf and HTTP, not the gateway: a route's `Transcoder` and the
//! service that keeps reflected descriptors fresh live in `snapshot`, and the call itself
//! is made by the proxy, through the route's upstream and its attempts.

pub mod bindings;
pub mod reflection;
pub mod request;
pub mod response;
pub mod rule;
pub mod template;

use base64::Engine;
use prost_reflect::DescriptorPool;

/// The largest descriptor set read, from a file or inline.
const MAX_DESCRIPTORS: u64 = 32 << 20;

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
