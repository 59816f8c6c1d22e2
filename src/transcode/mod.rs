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

/// Percent-decodes `raw`: `%XY` escapes (a broken one kept as it is), `+` as a space when
/// `plus_is_space` (query strings), `%2F` left encoded when `keep_slash` (a path value over
/// several segments, whose own slashes must stay apart from the path's).
pub(crate) fn percent_decode(raw: &[u8], plus_is_space: bool, keep_slash: bool) -> Vec<u8> {
    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => match (hex(raw.get(i + 1)), hex(raw.get(i + 2))) {
                (Some(h), Some(l)) if !(keep_slash && h == 2 && l == 0xf) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn escapes_are_decoded_and_broken_ones_kept() {
        assert_eq!(
            percent_decode(b"a%20b%2fc%zz%4", false, false),
            b"a b/c%zz%4"
        );
        assert_eq!(percent_decode(b"a+b%2Bc", true, false), b"a b+c");
        assert_eq!(percent_decode(b"a+b%2Fc", false, true), b"a+b%2Fc");
    }
}
