//! W3C trace context for every request, and one OTLP server span per sampled request.
//!
//! The context is decided when the request arrives: an incoming `traceparent` is continued
//! (same trace, our span as the child), otherwise a trace is started. Either way the
//! upstream request carries a `traceparent` naming the gateway's span as its parent, whether
//! or not spans are exported. Sampling is parent-based: a sampled parent is followed, and a
//! new trace is kept with probability `sample_ratio` (the SDK's trace-id ratio sampler, so
//! every service that uses the same ratio agrees).
//!
//! Spans are built only at the end of a request, and only when sampled and exported. They
//! go into a bounded queue that a dedicated thread drains every [`EXPORT_EVERY`], in batches,
//! to the OTLP/HTTP exporter: a full queue drops the span and counts it, so export never
//! slows a request. The thread never waits on the queue, so a request never has to wake it.

use super::metrics::METRICS;
use crate::wire::{hex_id, push_ip, write_hex};
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, StringValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, ShouldSample, SpanData, SpanEvents, SpanExporter, SpanLinks,
};
use opentelemetry_sdk::Resource;
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Spans waiting for export; beyond this they are dropped (and counted). With
/// [`EXPORT_EVERY`], room for 80,000 sampled requests per second.
pub const QUEUE: usize = 8192;
/// Spans per export call.
pub const BATCH: usize = 512;
/// How often queued spans are sent.
pub const EXPORT_EVERY: Duration = Duration::from_millis(100);
/// How long one export call may take.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The W3C header naming the caller's trace and span.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The W3C header carrying vendors' trace state along.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The trace context of one request.
#[derive(Debug, Clone)]
pub struct RequestTrace {
    pub trace_id: TraceId,
    /// The gateway's span for this request.
    pub span_id: SpanId,
    /// The caller's span, when the request came with a `traceparent`.
    pub parent: Option<SpanId>,
    pub sampled: bool,
    /// The caller's `tracestate`, passed on unchanged.
    pub state: TraceState,
}

impl RequestTrace {
    /// The `traceparent` for the upstream request: this trace, the gateway's span.
    pub fn traceparent(&self) -> HeaderValue {
        let mut value = *b"00-00000000000000000000000000000000-0000000000000000-00";
        write_hex(&mut value[3..35], &self.trace_id.to_bytes());
        write_hex(&mut value[36..52], &self.span_id.to_bytes());
        if self.sampled {
            value[54] = b'1';
        }
        let value =
            HeaderValue::from_bytes(&value).expect("hex digits and dashes make a header value");
        crate::wire::unique_per_request(value)
    }

    /// The trace id in hex, as it appears in `traceparent`.
    pub fn trace_id_hex(&self) -> String {
        hex_id(u128::from_be_bytes(self.trace_id.to_bytes()))
    }
}

/// What a finished request contributes to its span.
pub struct SpanFacts<'a> {
    pub start: SystemTime,
    pub end: SystemTime,
    pub method: &'a str,
    pub path: &'a str,
    /// The route's path pattern (`http.route`), when a route matched.
    pub pattern: Option<&'a Arc<str>>,
    pub route: &'a Arc<str>,
    pub status: u16,
    pub node: Option<std::net::SocketAddr>,
}

/// Starts, continues and exports traces.
pub struct Tracer {
    sampler: Sampler,
    export: Option<Export>,
    scope: InstrumentationScope,
}

/// The export side: the exporter is built at startup (so a bad endpoint fails then), its
/// thread started by the first span (a thread started before the process daemonizes would
/// not survive the fork).
struct Export {
    exporter: std::sync::Mutex<Option<opentelemetry_otlp::SpanExporter>>,
    tx: std::sync::OnceLock<Option<SyncSender<SpanData>>>,
    /// Passes the export thread has made over an emptied queue; `flush` waits on it.
    passes: Arc<AtomicU64>,
}

impl Export {
    fn sender(&self) -> Option<&SyncSender<SpanData>> {
        self.tx
            .get_or_init(|| {
                let exporter = self.exporter.lock().ok()?.take()?;
                let (tx, rx) = sync_channel(QUEUE);
                let passes = self.passes.clone();
                let spawned = std::thread::Builder::new()
                    .name("gatehouse-otlp".into())
                    .spawn(move || export_loop(rx, exporter, &passes));
                match spawned {
                    Ok(_) => Some(tx),
                    Err(error) => {
                        tracing::error!(%error, "no trace export thread; spans are dropped");
                        None
                    }
                }
            })
            .as_ref()
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

impl Tracer {
    /// A tracer that propagates context but exports nothing.
    pub fn propagate_only(sample_ratio: f64) -> Tracer {
        Tracer {
            sampler: Sampler::TraceIdRatioBased(sample_ratio),
            export: None,
            scope: scope(),
        }
    }

    /// A tracer exporting to `{endpoint}/v1/traces` over OTLP/HTTP protobuf.
    pub fn exporting(
        endpoint: &str,
        service_name: &str,
        sample_ratio: f64,
    ) -> anyhow::Result<Tracer> {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(HttpClient(
                reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build()?,
            ))
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(service_name.to_string())
                .build(),
        );
        tracing::info!(%url, sample_ratio, "exporting traces");
        Ok(Tracer {
            sampler: Sampler::TraceIdRatioBased(sample_ratio),
            export: Some(Export {
                exporter: std::sync::Mutex::new(Some(exporter)),
                tx: std::sync::OnceLock::new(),
                passes: Arc::default(),
            }),
            scope: scope(),
        })
    }

    /// The trace context of a request arriving with `headers`.
    pub fn start(&self, headers: &HeaderMap) -> RequestTrace {
        let parent = if headers.contains_key(&TRACEPARENT) {
            let cx = TraceContextPropagator::new().extract(&Headers(headers));
            let span = cx.span();
            let parent = span.span_context();
            parent.is_valid().then(|| parent.clone())
        } else {
            None
        };
        let span_id = SpanId::from(fastrand::u64(1..));
        match parent {
            Some(parent) => RequestTrace {
                trace_id: parent.trace_id(),
                span_id,
                parent: Some(parent.span_id()),
                sampled: parent.is_sampled(),
                state: parent.trace_state().clone(),
            },
            None => {
                let trace_id = TraceId::from(fastrand::u128(1..));
                let decision = self
                    .sampler
                    .should_sample(None, trace_id, "", &SpanKind::Server, &[], &[])
                    .decision;
                RequestTrace {
                    trace_id,
                    span_id,
                    parent: None,
                    sampled: decision == SamplingDecision::RecordAndSample,
                    state: TraceState::NONE,
                }
            }
        }
    }

    /// Whether finished requests are exported at all.
    /// Exports every span queued so far, waiting at most `within`.
    pub fn flush(&self, within: std::time::Duration) {
        if let Some(export) = &self.export {
            if matches!(export.tx.get(), Some(Some(_))) {
                super::wait_for_passes(&export.passes, within);
            }
        }
    }

    pub fn exports(&self) -> bool {
        self.export.is_some()
    }

    /// Queues the span of a finished request, if it is sampled and spans are exported.
    pub fn finish(&self, trace: &RequestTrace, facts: SpanFacts<'_>) {
        let Some(export) = &self.export else { return };
        if !trace.sampled {
            return;
        }
        // Shared and static strings where there are some: a span is built per request.
        let method: StringValue = match standard_method(facts.method) {
            Some(method) => method.into(),
            None => facts.method.to_string().into(),
        };
        let mut attributes = Vec::with_capacity(7);
        attributes.push(KeyValue::new("http.request.method", method.clone()));
        attributes.push(KeyValue::new("url.path", facts.path.to_string()));
        if let Some(pattern) = facts.pattern {
            attributes.push(KeyValue::new("http.route", Arc::clone(pattern)));
        }
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(facts.status),
        ));
        attributes.push(KeyValue::new("gatehouse.route", Arc::clone(facts.route)));
        if let Some(node) = facts.node {
            let mut address = String::with_capacity(15);
            push_ip(&mut address, node.ip());
            attributes.push(KeyValue::new("server.address", address));
            attributes.push(KeyValue::new("server.port", i64::from(node.port())));
        }
        let name = match facts.pattern {
            Some(pattern) => {
                let mut name = String::with_capacity(facts.method.len() + 1 + pattern.len());
                name.push_str(facts.method);
                name.push(' ');
                name.push_str(pattern);
                Cow::Owned(name)
            }
            None => Cow::Owned(method.as_str().to_owned()),
        };
        let span = SpanData {
            span_context: SpanContext::new(
                trace.trace_id,
                trace.span_id,
                TraceFlags::SAMPLED,
                false,
                trace.state.clone(),
            ),
            parent_span_id: trace.parent.unwrap_or(SpanId::INVALID),
            parent_span_is_remote: trace.parent.is_some(),
            span_kind: SpanKind::Server,
            name,
            start_time: facts.start,
            end_time: facts.end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            // Server spans: 5xx is an error, 4xx is the client's (OTel HTTP conventions).
            status: if facts.status >= 500 {
                Status::error("")
            } else {
                Status::Unset
            },
            instrumentation_scope: self.scope.clone(),
        };
        let queued = export.sender().is_some_and(|tx| tx.try_send(span).is_ok());
        if !queued {
            METRICS.spans_dropped.inc();
        }
    }
}

/// The methods of RFC 9110 as static strings, so a span names them without allocating.
fn standard_method(method: &str) -> Option<&'static str> {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    STANDARD.into_iter().find(|m| *m == method)
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("gatehouse")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// The export thread: every [`EXPORT_EVERY`], what is queued, in batches of up to
/// [`BATCH`] spans; ends when the tracer is dropped.
fn export_loop(
    rx: Receiver<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
    passes: &AtomicU64,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "no runtime for the trace exporter; spans are dropped");
            return;
        }
    };
    let mut batch = Vec::with_capacity(BATCH);
    let mut open = true;
    let mut full = false;
    loop {
        // After a full batch more may be waiting: send it without sleeping first.
        if !full {
            std::thread::sleep(EXPORT_EVERY);
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(span) => batch.push(span),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        full = batch.len() == BATCH;
        if !batch.is_empty() {
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            let count = spans.len() as u64;
            match runtime.block_on(exporter.export(spans)) {
                Ok(()) => METRICS.spans_exported.inc_by(count),
                Err(error) => {
                    METRICS.spans_dropped.inc_by(count);
                    tracing::warn!(%error, spans = count, "trace export failed");
                }
            }
        }
        if !full {
            passes.fetch_add(1, Ordering::Release);
        }
        if !open {
            return;
        }
    }
}

/// The OTLP exporter's HTTP client: the gateway's own reqwest, so one HTTP stack serves the
/// identity provider calls and the trace export.
#[derive(Debug)]
struct HttpClient(reqwest::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let response = self.0.execute(request).await?;
        let mut answer = http::Response::builder().status(response.status());
        if let Some(headers) = answer.headers_mut() {
            *headers = response.headers().clone();
        }
        let body = response.bytes().await?;
        Ok(answer.body(body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incoming_traceparent_is_continued_with_a_new_span() {
        let tracer = Tracer::propagate_only(0.0);
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        headers.insert("tracestate", HeaderValue::from_static("vendor=abc"));
        let t = tracer.start(&headers);
        assert_eq!(t.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent.unwrap().to_string(), "00f067aa0ba902b7");
        assert_ne!(t.span_id.to_string(), "00f067aa0ba902b7");
        assert!(t.sampled, "a sampled parent is followed even at ratio 0");
        assert_eq!(t.state.header(), "vendor=abc");
        let forwarded = t.traceparent();
        assert!(
            forwarded.is_sensitive(),
            "one request's value is kept out of HTTP/2's header table"
        );
        let forwarded = forwarded.to_str().unwrap();
        assert_eq!(
            forwarded,
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", t.span_id)
        );
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_new_trace_follows_the_ratio_and_bad_parents_are_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static("00-zz-nope-01"));
        let on = Tracer::propagate_only(1.0).start(&headers);
        assert!(on.parent.is_none() && on.sampled);
        assert_eq!(on.traceparent().len(), 55);
        let off = Tracer::propagate_only(0.0).start(&HeaderMap::new());
        assert!(!off.sampled);
        assert!(off.traceparent().to_str().unwrap().ends_with("-00"));
    }
}
