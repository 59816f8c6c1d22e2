//! A gRPC answer turned into a REST one: length-prefixed messages read off the stream,
//! each written as proto3 canonical JSON, and a non-OK `grpc-status` turned into the HTTP
//! status of the google.rpc code mapping with the JSON error body of SPEC §9.

use super::bindings::Binding;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, SerializeOptions};

/// The largest message taken from an upstream: gRPC's own default receive limit.
pub const MAX_MESSAGE: usize = 4 << 20;
/// The most values (fields, list and map entries) one answer message may hold: each becomes
/// a value of a dynamic message, tens to hundreds of bytes in memory, so a 4 MiB answer of
/// empty messages would otherwise cost the gateway hundreds of MiB.
pub const MAX_VALUES: usize = 500_000;
/// The deepest nesting of messages read (prost's own decoding limit).
const MAX_DEPTH: usize = 100;

/// Splits a gRPC body stream into messages.
#[derive(Debug, Default)]
pub struct Frames {
    buffer: BytesMut,
}

/// Why a gRPC body cannot be read: the upstream's answer is invalid (a 502).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a message of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("a compressed message, though the gateway asked for none")]
    Compressed,
    #[error("the stream ended inside a message")]
    Cut,
}

impl Frames {
    pub fn push(&mut self, piece: &[u8]) {
        self.buffer.extend_from_slice(piece);
    }

    /// The next whole message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buffer.len() < 5 {
            return Ok(None);
        }
        let compressed = self.buffer[0];
        let len = u32::from_be_bytes([
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
            self.buffer[4],
        ]) as usize;
        if compressed != 0 {
            return Err(FrameError::Compressed);
        }
        if len > MAX_MESSAGE {
            return Err(FrameError::TooLarge(len));
        }
        if self.buffer.len() < 5 + len {
            return Ok(None);
        }
        self.buffer.advance(5);
        Ok(Some(self.buffer.split_to(len).freeze()))
    }

    /// The stream ended: nothing may be left half-read.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buffer.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Cut)
        }
    }
}

/// One message framed for the wire: uncompressed, its length first.
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.freeze()
}

/// Counts the values an encoded message of `desc` holds before it is decoded, walking the
/// wire format with the descriptor; an error past [`MAX_VALUES`] or [`MAX_DEPTH`].
pub fn check_size(desc: &MessageDescriptor, message: &[u8]) -> Result<(), String> {
    let mut left = MAX_VALUES;
    count(desc, message, &mut left, 0)
}

fn count(
    desc: &MessageDescriptor,
    mut buf: &[u8],
    left: &mut usize,
    depth: usize,
) -> Result<(), String> {
    use prost::encoding::{decode_key, decode_varint, WireType};
    if depth > MAX_DEPTH {
        return Err(format!("messages nest deeper than {MAX_DEPTH}"));
    }
    let spend = |n: usize, left: &mut usize| {
        *left = left
            .checked_sub(n)
            .ok_or_else(|| format!("the answer holds more than {MAX_VALUES} values"))?;
        Ok::<(), String>(())
    };
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        spend(1, left)?;
        let skip = |buf: &mut &[u8], n: usize| {
            if buf.len() < n {
                return Err("a field runs past the message".to_string());
            }
            *buf = &buf[n..];
            Ok(())
        };
        match wire {
            WireType::Varint => {
                decode_varint(&mut buf).map_err(|e| e.to_string())?;
            }
            WireType::SixtyFourBit => skip(&mut buf, 8)?,
            WireType::ThirtyTwoBit => skip(&mut buf, 4)?,
            WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).map_err(|e| e.to_string())? as usize;
                if buf.len() < len {
                    return Err("a field runs past the message".into());
                }
                let (inner, rest) = buf.split_at(len);
                buf = rest;
                match desc.get_field(tag).map(|f| (f.kind(), f.is_list())) {
                    Some((Kind::Message(m), _)) => count(&m, inner, left, depth + 1)?,
                    // Packed scalars: a value per varint's last byte, or per fixed width.
                    Some((Kind::Double | Kind::Fixed64 | Kind::Sfixed64, true)) => {
                        spend(len / 8, left)?
                    }
                    Some((Kind::Float | Kind::Fixed32 | Kind::Sfixed32, true)) => {
                        spend(len / 4, left)?
                    }
                    Some((Kind::String | Kind::Bytes, _)) | None => {}
                    Some((_, true)) => {
                        spend(inner.iter().filter(|b| *b & 0x80 == 0).count(), left)?
                    }
                    Some(_) => {}
                }
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err("a group, which proto3 has not".into())
            }
        }
    }
    Ok(())
}

/// A response message as JSON: the whole message, or its `response_body` field.
pub fn to_json(binding: &Binding, message: &[u8]) -> Result<Vec<u8>, String> {
    check_size(&binding.method.output(), message)?;
    let decoded = DynamicMessage::decode(binding.method.output(), message).map_err(|e| {
        format!(
            "the answer is not a {}: {e}",
            binding.method.output().full_name()
        )
    })?;
    let mut out = Vec::with_capacity(message.len() * 2 + 16);
    let options = SerializeOptions::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    match &binding.response_body {
        None => decoded.serialize_with_options(&mut ser, &options),
        Some(field) => {
            let value = decoded.get_field(field);
            match value.as_message() {
                Some(inner) => inner.serialize_with_options(&mut ser, &options),
                None => {
                    // A scalar or list field: its JSON form, taken from the whole message's.
                    let options = options.skip_default_fields(false);
                    let whole = decoded
                        .serialize_with_options(serde_json::value::Serializer, &options)
                        .map_err(|e| e.to_string())?;
                    let part = whole.get(field.json_name()).cloned().unwrap_or_default();
                    serde::Serialize::serialize(&part, &mut ser)
                }
            }
        }
    }
    .map_err(|e| e.to_string())?;
    Ok(out)
}

/// A call's outcome, read from the head (trailers-only) or the trailers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStatus {
    pub code: u16,
    pub message: String,
}

impl GrpcStatus {
    /// The status the headers carry, if any.
    pub fn of(headers: &HeaderMap) -> Option<GrpcStatus> {
        let code = headers.get("grpc-status")?;
        let code = std::str::from_utf8(code.as_bytes())
            .ok()
            .and_then(|c| c.trim().parse::<u16>().ok())
            .unwrap_or(2);
        let message = headers
            .get("grpc-message")
            .map(|m| percent_decode(m.as_bytes()))
            .unwrap_or_default();
        Some(GrpcStatus { code, message })
    }

    pub fn ok(&self) -> bool {
        self.code == 0
    }

    /// The HTTP status and error code of the google.rpc mapping.
    pub fn http(&self) -> (StatusCode, &'static str) {
        let (status, name) = match self.code {
            0 => (200, "ok"),
            1 => (499, "cancelled"),
            3 => (400, "invalid_argument"),
            4 => (504, "deadline_exceeded"),
            5 => (404, "not_found"),
            6 => (409, "already_exists"),
            7 => (403, "permission_denied"),
            8 => (429, "resource_exhausted"),
            9 => (400, "failed_precondition"),
            10 => (409, "aborted"),
            11 => (400, "out_of_range"),
            12 => (501, "unimplemented"),
            13 => (500, "internal"),
            14 => (503, "unavailable"),
            15 => (500, "data_loss"),
            16 => (401, "unauthenticated"),
            _ => (500, "unknown"),
        };
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            name,
        )
    }

    /// `{"error": CODE, "message": grpc-message, "request_id": ID, "grpc_status": N}`.
    pub fn body(&self, request_id: &str) -> Vec<u8> {
        let (_, name) = self.http();
        let body = serde_json::json!({
            "error": name,
            "message": self.message,
            "request_id": request_id,
            "grpc_status": self.code,
        });
        body.to_string().into_bytes()
    }
}

/// `grpc-message` is percent-encoded UTF-8; a broken escape is kept as it is.
fn percent_decode(raw: &[u8]) -> String {
    String::from_utf8_lossy(&super::percent_decode(raw, false, false)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_whole_across_pieces() {
        let mut frames = Frames::default();
        let wire = [frame(b"abc"), frame(b""), frame(b"de")].concat();
        for piece in wire.chunks(2) {
            frames.push(piece);
        }
        assert_eq!(frames.next_message().unwrap().as_deref(), Some(&b"abc"[..]));
        assert_eq!(frames.next_message().unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(frames.next_message().unwrap().as_deref(), Some(&b"de"[..]));
        assert_eq!(frames.next_message().unwrap(), None);
        assert!(frames.finish().is_ok());
    }

    #[test]
    fn bad_frames_are_refused() {
        let mut frames = Frames::default();
        frames.push(&[1, 0, 0, 0, 1, 7]);
        assert_eq!(frames.next_message(), Err(FrameError::Compressed));
        let mut frames = Frames::default();
        frames.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            frames.next_message(),
            Err(FrameError::TooLarge(_))
        ));
        let mut frames = Frames::default();
        frames.push(&[0, 0, 0, 0, 9, 1]);
        assert_eq!(frames.next_message(), Ok(None));
        assert_eq!(frames.finish(), Err(FrameError::Cut));
    }

    #[test]
    fn statuses_map_to_http_and_the_error_body() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", "5".parse().unwrap());
        headers.insert("grpc-message", "no user %E2%9C%93 50%".parse().unwrap());
        let status = GrpcStatus::of(&headers).unwrap();
        assert_eq!(status.http(), (StatusCode::NOT_FOUND, "not_found"));
        assert_eq!(status.message, "no user ✓ 50%");
        let body: serde_json::Value = serde_json::from_slice(&status.body("r1")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "not_found", "message": "no user ✓ 50%",
                "request_id": "r1", "grpc_status": 5})
        );
        for (code, http) in [
            (3, 400),
            (4, 504),
            (7, 403),
            (14, 503),
            (16, 401),
            (99, 500),
        ] {
            let s = GrpcStatus {
                code,
                message: String::new(),
            };
            assert_eq!(s.http().0.as_u16(), http, "{code}");
        }
        assert_eq!(GrpcStatus::of(&HeaderMap::new()), None);
    }
}
