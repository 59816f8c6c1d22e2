//! Descriptors read from an upstream's gRPC server reflection (`grpc.reflection.v1`, then
//! `v1alpha` for servers that only have the older one), for routes with
//! `grpc_transcode.reflection: true`.
//!
//! A background service follows the snapshot in force: a route that needs descriptors, or
//! whose upstream's nodes changed since they were read, has them read again from one of its
//! healthy nodes. Until a first read succeeds, its REST calls are answered 503; a read that
//! fails keeps the bindings already in force and is tried again a few seconds later.
//!
//! The protocol is a bidirectional stream, but each exchange here is a batch: every
//! request in one body, the server's answers read to the end. The services come first
//! (`list_services`, unless the route names them), then the files that hold them, then any
//! file those import that has not come along.

use super::Transcoder;
use crate::snapshot::Live;
use crate::upstream::{now_ms, UpstreamTarget};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prost::Message;
use prost_reflect::DescriptorPool;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the routes are looked over.
const TICK: Duration = Duration::from_millis(250);
/// How long after a failed read it is tried again.
const RETRY: Duration = Duration::from_secs(3);
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

/// Where a route stands with reflection.
#[derive(Debug, Default)]
pub struct Reflected {
    /// The nodes (sorted) when the descriptors in force were read.
    read_with: Option<Vec<SocketAddr>>,
    /// When the last read began, and the nodes then.
    tried: Option<(Instant, Vec<SocketAddr>)>,
    /// A read is under way.
    busy: bool,
}

impl Reflected {
    /// Whether to read now, the upstream's nodes being `nodes`: they changed since the
    /// descriptors in force were read (or none were), and no read is under way or failed
    /// with these same nodes a moment ago.
    fn due(&self, nodes: &[SocketAddr]) -> bool {
        if self.busy || nodes.is_empty() || self.read_with.as_deref() == Some(nodes) {
            return false;
        }
        match &self.tried {
            Some((at, with)) => with != nodes || at.elapsed() >= RETRY,
            None => true,
        }
    }
}

/// The background service that reads routes' descriptors by reflection.
pub struct Reflector {
    live: Arc<Live>,
    plain: reqwest::Client,
    tls: reqwest::Client,
    insecure: reqwest::Client,
}

impl Reflector {
    pub fn new(live: Arc<Live>) -> anyhow::Result<Reflector> {
        let builder = || {
            reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(0)
        };
        Ok(Reflector {
            live,
            plain: builder().http2_prior_knowledge().build()?,
            tls: builder().build()?,
            insecure: builder().danger_accept_invalid_certs(true).build()?,
        })
    }

    /// Starts a read for every route that needs one.
    fn look_over(&self) {
        let snapshot = self.live.load();
        for route in snapshot.routes.values() {
            let Some(transcoder) = &route.transcoder else {
                continue;
            };
            if !transcoder.spec.reflection {
                continue;
            }
            let Some(upstream) = route.upstreams().next() else {
                continue;
            };
            self.maybe_read(transcoder.clone(), upstream.clone());
        }
    }

    fn maybe_read(&self, transcoder: Arc<Transcoder>, upstream: Arc<UpstreamTarget>) {
        let members = upstream.members();
        let mut nodes: Vec<SocketAddr> = members.nodes.iter().map(|n| n.addr).collect();
        nodes.sort_unstable();
        {
            let mut state = lock(&transcoder.reflected);
            if !state.due(&nodes) {
                return;
            }
            state.busy = true;
            state.tried = Some((Instant::now(), nodes.clone()));
        }
        let now = now_ms();
        let node = members
            .nodes
            .iter()
            .find(|n| n.health.is_up(now))
            .or_else(|| members.nodes.first())
            .map(|n| n.addr);
        let Some(node) = node else {
            lock(&transcoder.reflected).busy = false;
            return;
        };
        let (client, scheme) = match &upstream.tls {
            None => (self.plain.clone(), "http"),
            Some(tls) if tls.verify => (self.tls.clone(), "https"),
            Some(_) => (self.insecure.clone(), "https"),
        };
        let route_services = transcoder.spec.services.clone();
        tokio::spawn(async move {
            let base = format!("{scheme}://{node}");
            let result = read(&client, &base, &route_services).await;
            let mut state = lock(&transcoder.reflected);
            state.busy = false;
            match result {
                Ok(pool) => match transcoder.learn(&pool) {
                    Ok(()) => {
                        state.read_with = Some(nodes);
                        tracing::info!(
                            upstream = %upstream.id,
                            node = %node,
                            "transcoding descriptors read by reflection"
                        );
                    }
                    Err(errors) => {
                        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                        tracing::warn!(
                            upstream = %upstream.id,
                            errors = %errors.join("; "),
                            "descriptors read by reflection do not resolve the route's bindings"
                        );
                    }
                },
                Err(e) => tracing::warn!(
                    upstream = %upstream.id,
                    node = %node,
                    error = %e,
                    "reading descriptors by reflection failed"
                ),
            }
        });
    }
}

fn lock(state: &Mutex<Reflected>) -> std::sync::MutexGuard<'_, Reflected> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl BackgroundService for Reflector {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut every = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = every.tick() => self.look_over(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_due_when_the_nodes_change_and_not_hammered_when_it_fails() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut state = Reflected::default();
        assert!(state.due(&[a]), "never read");
        assert!(!state.due(&[]), "no node to ask");
        state.tried = Some((Instant::now(), vec![a]));
        assert!(!state.due(&[a]), "failed a moment ago with the same nodes");
        assert!(state.due(&[a, b]), "the nodes changed since");
        state.tried = Some((Instant::now() - RETRY, vec![a]));
        assert!(state.due(&[a]), "failed long enough ago");
        state.read_with = Some(vec![a]);
        assert!(!state.due(&[a]), "read with these nodes");
        assert!(state.due(&[b]), "read with other nodes");
        state.busy = true;
        assert!(!state.due(&[b]), "a read is under way");
    }
}
