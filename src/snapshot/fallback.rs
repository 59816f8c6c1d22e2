//! A route's `fallback` (SPEC §11), compiled: the degraded answer a route gives instead of
//! the errors it lists, ready to write, with its counters resolved.

use crate::resource::{Fallback, FallbackReason};
use crate::telemetry::metrics::METRICS;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use prometheus::IntCounter;

/// The header that tells a client (and its operator) the answer is a fallback, and why.
pub const FALLBACK_HEADER: HeaderName = HeaderName::from_static("x-gatehouse-fallback");

#[derive(Debug)]
pub struct FallbackAnswer {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `headers` without `Content-Type`: the metadata of a gRPC call's fallback.
    pub grpc_headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// For each reason of [`FallbackReason::ALL`], in order: its counter, when the route
    /// lists it.
    reasons: [Option<IntCounter>; FallbackReason::ALL.len()],
}

impl FallbackAnswer {
    /// Compiles the fallback of route `route`; admission checked the fields, so an error
    /// here names what it did not.
    pub fn compile(route: &str, spec: &Fallback) -> Result<FallbackAnswer, String> {
        let status = StatusCode::from_u16(spec.status)
            .map_err(|_| format!("fallback.status: {} is not a status", spec.status))?;
        let mut headers = Vec::with_capacity(spec.headers.len());
        for (name, value) in &spec.headers {
            let field = || format!("fallback.headers.{name}");
            let name = HeaderName::try_from(name.as_str())
                .map_err(|_| format!("{}: not a header name", field()))?;
            let value = HeaderValue::from_str(value.as_str())
                .map_err(|_| format!("{}: not a valid header value", field()))?;
            headers.push((name, value));
        }
        let mut reasons: [Option<IntCounter>; FallbackReason::ALL.len()] = Default::default();
        for name in &spec.on {
            let reason = FallbackReason::parse(name)
                .ok_or_else(|| format!("fallback.on: `{name}` is not a reason"))?;
            reasons[index(reason)] =
                Some(METRICS.fallback.with_label_values(&[route, reason.name()]));
        }
        let grpc_headers = headers
            .iter()
            .filter(|(name, _)| *name != http::header::CONTENT_TYPE)
            .cloned()
            .collect();
        Ok(FallbackAnswer {
            status,
            grpc_headers,
            headers,
            body: Bytes::from(spec.body.clone()),
            reasons,
        })
    }

    /// Whether the route answers `reason` with its fallback; if so, the answer is counted.
    pub fn take(&self, reason: FallbackReason) -> bool {
        match &self.reasons[index(reason)] {
            Some(counter) => {
                counter.inc();
                true
            }
            None => false,
        }
    }

    /// Whether the route answers `reason` with its fallback.
    pub fn covers(&self, reason: FallbackReason) -> bool {
        self.reasons[index(reason)].is_some()
    }
}

/// The place of `reason` in [`FallbackReason::ALL`], which lists them in declaration order.
fn index(reason: FallbackReason) -> usize {
    reason as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_place() {
        for (i, reason) in FallbackReason::ALL.into_iter().enumerate() {
            assert_eq!(index(reason), i, "{}", reason.name());
        }
    }
}
