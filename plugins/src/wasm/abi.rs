//! The numbers and wire formats of proxy-wasm ABI 0.2.1, as the spec names them.

/// What a host function answers (`WasmResult`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

/// What a stream callback asks of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// Hold the stream: wait for an HTTP call, or buffer the body seen so far.
    Pause,
}

impl Action {
    pub fn of(code: i32) -> Action {
        if code == 1 {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

/// The header maps a plugin may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapType {
    RequestHeaders,
    ResponseHeaders,
    HttpCallResponseHeaders,
    /// Trailers and gRPC metadata: always empty here.
    Other,
}

impl MapType {
    pub fn of(code: i32) -> Option<MapType> {
        Some(match code {
            0 => MapType::RequestHeaders,
            2 => MapType::ResponseHeaders,
            6 => MapType::HttpCallResponseHeaders,
            1 | 3 | 4 | 5 | 7 => MapType::Other,
            _ => return None,
        })
    }
}

/// The byte buffers a plugin may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferType {
    RequestBody,
    ResponseBody,
    HttpCallResponseBody,
    VmConfiguration,
    PluginConfiguration,
    /// Connection data, gRPC messages, foreign-call data: never present here.
    Other,
}

impl BufferType {
    pub fn of(code: i32) -> Option<BufferType> {
        Some(match code {
            0 => BufferType::RequestBody,
            1 => BufferType::ResponseBody,
            4 => BufferType::HttpCallResponseBody,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            2 | 3 | 5 | 8 => BufferType::Other,
            _ => return None,
        })
    }
}

/// `proxy_continue_stream`'s argument.
pub const STREAM_REQUEST: i32 = 0;
pub const STREAM_RESPONSE: i32 = 1;

/// The log levels, trace (0) to critical (5).
pub fn log_level(level: i32) -> tracing::Level {
    match level {
        0 => tracing::Level::TRACE,
        1 => tracing::Level::DEBUG,
        2 => tracing::Level::INFO,
        3 => tracing::Level::WARN,
        _ => tracing::Level::ERROR,
    }
}

/// Serialises header pairs: a count, each pair's two lengths, then each name and value
/// followed by a NUL, all integers little-endian u32.
pub fn encode_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let count = pairs.clone().count();
    let text: usize = pairs.clone().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + 8 * count + text);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Reads header pairs serialised by [`encode_pairs`]; `None` when they do not add up.
pub fn decode_pairs(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0)?;
    let mut sizes = Vec::with_capacity(count.min(1024));
    for i in 0..count {
        sizes.push((word(4 + 8 * i)?, word(8 + 8 * i)?));
    }
    let mut at = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut pairs = Vec::with_capacity(sizes.len());
    for (k, v) in sizes {
        let key = bytes.get(at..at.checked_add(k)?)?.to_vec();
        at += k + 1;
        let value = bytes.get(at..at.checked_add(v)?)?.to_vec();
        at += v + 1;
        pairs.push((key, value));
    }
    (at <= bytes.len()).then_some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_go_there_and_back() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b":path", b"/a?b"), (b"x-empty", b"")];
        let bytes = encode_pairs(pairs.iter().copied());
        assert_eq!(&bytes[..4], &2u32.to_le_bytes());
        let back = decode_pairs(&bytes).unwrap();
        assert_eq!(back[0], (b":path".to_vec(), b"/a?b".to_vec()));
        assert_eq!(back[1], (b"x-empty".to_vec(), Vec::new()));
    }

    #[test]
    fn truncated_or_lying_pairs_are_refused() {
        let bytes = encode_pairs([(&b"k"[..], &b"v"[..])].into_iter());
        assert!(decode_pairs(&bytes[..bytes.len() - 2]).is_none());
        let mut lying = bytes.clone();
        lying[0] = 200;
        assert!(decode_pairs(&lying).is_none());
        assert!(decode_pairs(&[1, 0]).is_none());
        assert_eq!(decode_pairs(&[]), Some(Vec::new()));
    }
}
