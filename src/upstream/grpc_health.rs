//! The gRPC health-checking protocol (`grpc.health.v1.Health/Check`) as an active probe
//! sends and reads it: one request message in one gRPC frame, one answer.

use crate::transcode::response::{frame, Frames};
use prost::Message;

/// The path of the check.
pub const PATH: &str = "/grpc.health.v1.Health/Check";

#[derive(Clone, PartialEq, Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `ServingStatus.SERVING`.
const SERVING: i32 = 1;

/// The request body: `HealthCheckRequest { service }` in an uncompressed gRPC frame.
pub fn request(service: &str) -> bytes::Bytes {
    let message = HealthCheckRequest {
        service: service.to_string(),
    };
    frame(&message.encode_to_vec())
}

/// Whether a node's answer passes: a gRPC answer (not a page that happens to decode) whose
/// status, in its trailers or its head, is OK, and whose message says SERVING.
pub async fn passed(resp: reqwest::Response) -> bool {
    use http_body_util::BodyExt;
    let grpc = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !resp.status().is_success() || !grpc {
        return false;
    }
    let head = resp.headers().get("grpc-status").cloned();
    let Ok(collected) = http::Response::<reqwest::Body>::from(resp)
        .into_body()
        .collect()
        .await
    else {
        return false;
    };
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned())
        .or(head);
    status.is_some_and(|s| s == "0") && serving(&collected.to_bytes())
}

/// Whether an answer's body says SERVING. A failed call (an unknown service answers
/// NOT_FOUND with no message) has no frame, and so is not serving.
pub fn serving(body: &[u8]) -> bool {
    let mut frames = Frames::default();
    frames.push(body);
    matches!(
        frames.next_message(),
        Ok(Some(m)) if HealthCheckResponse::decode(&m[..]).is_ok_and(|r| r.status == SERVING)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_is_framed_and_only_serving_passes() {
        assert_eq!(&request("")[..], [0, 0, 0, 0, 0]);
        assert_eq!(
            &request("a.B")[..],
            [0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
        let answer = |status: i32| {
            let m = HealthCheckResponse { status }.encode_to_vec();
            let mut b = vec![0];
            b.extend_from_slice(&(m.len() as u32).to_be_bytes());
            b.extend_from_slice(&m);
            b
        };
        assert!(serving(&answer(1)));
        assert!(!serving(&answer(2)), "NOT_SERVING");
        assert!(!serving(&answer(0)), "UNKNOWN");
        assert!(!serving(&[]));
        assert!(!serving(&[1, 0, 0, 0, 2, 8, 1]), "compressed");
        assert!(!serving(&[0, 0, 0, 0, 9, 8, 1]), "short");
    }
}
