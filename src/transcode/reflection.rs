//! Descriptors read from a gRPC server's reflection service (`grpc.reflection.v1`, then
//! `v1alpha` for servers that only have the older one).
//!
//! The protocol is a bidirectional stream, but each exchange here is a batch: every
//! request in one body, the server's answers read to the end. The services come first
//! (`list_services`, unless the route names them), then the files that hold them, then any
//! file those import that has not come along.

use prost::Message;
use prost_reflect::DescriptorPool;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// One exchange with the reflection service.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Rounds of fetching missing imports before giving up on a server's files.
const MAX_ROUNDS: usize = 8;
/// The largest answer read from one exchange.
const MAX_ANSWER: usize = 32 << 20;

#[derive(Clone, PartialEq, Message)]
struct ServerReflectionRequest {
    #[prost(string, tag = "1")]
    host: String,
    #[prost(oneof = "Ask", tags = "3, 4, 7")]
    message_request: Option<Ask>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Ask {
    #[prost(string, tag = "3")]
    FileByFilename(String),
    #[prost(string, tag = "4")]
    FileContainingSymbol(String),
    #[prost(string, tag = "7")]
    ListServices(String),
}

#[derive(Clone, PartialEq, Message)]
struct ServerReflectionResponse {
    #[prost(oneof = "Answer", tags = "4, 6, 7")]
    message_response: Option<Answer>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Answer {
    #[prost(message, tag = "4")]
    Files(FileDescriptorResponse),
    #[prost(message, tag = "6")]
    Services(ListServiceResponse),
    #[prost(message, tag = "7")]
    Error(ErrorResponse),
}

#[derive(Clone, PartialEq, Message)]
struct FileDescriptorResponse {
    #[prost(bytes = "vec", repeated, tag = "1")]
    file_descriptor_proto: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct ListServiceResponse {
    #[prost(message, repeated, tag = "1")]
    service: Vec<ServiceResponse>,
}

#[derive(Clone, PartialEq, Message)]
struct ServiceResponse {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, Message)]
struct ErrorResponse {
    #[prost(int32, tag = "1")]
    error_code: i32,
    #[prost(string, tag = "2")]
    error_message: String,
}

/// The two versions of the service, newest first.
const PATHS: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReflectionError {
    #[error("the server has no reflection service of this version")]
    Unimplemented,
    #[error("{0}")]
    Failed(String),
}

fn failed(e: impl std::fmt::Display) -> ReflectionError {
    ReflectionError::Failed(e.to_string())
}

/// Reads the descriptors of `services` (all the server has when empty) from the node at
/// `base` (`http://addr` or `https://addr`).
pub async fn read(
    client: &reqwest::Client,
    base: &str,
    services: &[String],
) -> Result<DescriptorPool, ReflectionError> {
    let mut last = ReflectionError::Unimplemented;
    for path in PATHS {
        match read_with(client, &format!("{base}{path}"), services).await {
            Err(ReflectionError::Unimplemented) => continue,
            Err(e) => last = e,
            Ok(pool) => return Ok(pool),
        }
        break;
    }
    Err(last)
}

async fn read_with(
    client: &reqwest::Client,
    url: &str,
    services: &[String],
) -> Result<DescriptorPool, ReflectionError> {
    let services = if services.is_empty() {
        let answers = exchange(client, url, vec![Ask::ListServices(String::new())]).await?;
        let mut names = Vec::new();
        for answer in answers {
            if let Some(Answer::Services(list)) = answer {
                names.extend(list.service.into_iter().map(|s| s.name));
            }
        }
        names
    } else {
        services.to_vec()
    };
    // Each file as the server sent it, beside its name and imports: decoding it into
    // `prost_types` would drop the `google.api.http` option, an extension it does not know.
    let mut files: BTreeMap<String, (Vec<u8>, Vec<String>)> = BTreeMap::new();
    let mut asks: Vec<Ask> = services
        .iter()
        .map(|s| Ask::FileContainingSymbol(s.clone()))
        .collect();
    for _ in 0..MAX_ROUNDS {
        if asks.is_empty() {
            break;
        }
        for answer in exchange(client, url, std::mem::take(&mut asks)).await? {
            match answer {
                Some(Answer::Files(found)) => {
                    for bytes in found.file_descriptor_proto {
                        let file = prost_types::FileDescriptorProto::decode(bytes.as_slice())
                            .map_err(|e| {
                                failed(format!("a file descriptor does not decode: {e}"))
                            })?;
                        files.insert(file.name().to_owned(), (bytes, file.dependency));
                    }
                }
                Some(Answer::Error(e)) => {
                    return Err(failed(format!(
                        "the server refused a request ({}): {}",
                        e.error_code, e.error_message
                    )))
                }
                _ => {}
            }
        }
        let missing: HashSet<&String> = files
            .values()
            .flat_map(|(_, imports)| imports.iter())
            .filter(|d| !files.contains_key(*d))
            .collect();
        asks = missing
            .into_iter()
            .map(|d| Ask::FileByFilename(d.clone()))
            .collect();
    }
    if !asks.is_empty() {
        return Err(failed("imports were still missing after several rounds"));
    }
    // A FileDescriptorSet of the raw files, which the pool reads in any order, options kept.
    let mut set = Vec::new();
    for (bytes, _) in files.values() {
        prost::encoding::bytes::encode(1, bytes, &mut set);
    }
    DescriptorPool::decode(set.as_slice())
        .map_err(|e| failed(format!("the server's descriptors do not resolve: {e}")))
}

/// One batch: every request framed in one body; every answer, in order.
async fn exchange(
    client: &reqwest::Client,
    url: &str,
    asks: Vec<Ask>,
) -> Result<Vec<Option<Answer>>, ReflectionError> {
    let mut body = Vec::new();
    for ask in asks {
        let message = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(ask),
        }
        .encode_to_vec();
        body.extend_from_slice(&super::response::frame(&message));
    }
    let resp = client
        .post(url)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(failed)?;
    if !resp.status().is_success() {
        return Err(failed(format!(
            "the server answered HTTP {}",
            resp.status()
        )));
    }
    let head = super::response::GrpcStatus::of(resp.headers());
    use http_body_util::BodyExt;
    let collected = http_body_util::Limited::new(
        http::Response::<reqwest::Body>::from(resp).into_body(),
        MAX_ANSWER,
    )
    .collect()
    .await
    .map_err(failed)?;
    let status = collected
        .trailers()
        .and_then(super::response::GrpcStatus::of)
        .or(head);
    match status {
        Some(s) if s.code == 12 => return Err(ReflectionError::Unimplemented),
        Some(s) if !s.ok() => {
            return Err(failed(format!(
                "the call failed ({}): {}",
                s.code, s.message
            )))
        }
        Some(_) => {}
        None => return Err(failed("the call ended without grpc-status")),
    }
    let mut frames = super::response::Frames::default();
    frames.push(&collected.to_bytes());
    let mut answers = Vec::new();
    while let Some(message) = frames.next_message().map_err(failed)? {
        let answer = ServerReflectionResponse::decode(message).map_err(failed)?;
        answers.push(answer.message_response);
    }
    Ok(answers)
}
