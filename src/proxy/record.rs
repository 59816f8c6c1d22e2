//! What a finished request leaves behind: its route's metrics, its access-log line, its
//! span.

use super::attempt::Attempts;
use super::ctx::{RequestCtx, NO_ROUTE_METRICS};
use super::Gateway;
use crate::telemetry::access_log::Entry;
use crate::telemetry::trace::SpanFacts;
use pingora::proxy::Session;
use std::time::SystemTime;

impl Gateway {
    /// Records a request once it is over, however it ended.
    pub(super) fn record(&self, session: &Session, ctx: &mut RequestCtx) {
        // No final answer written (at most an interim one, a `100 Continue`): the client went
        // away first (nginx's 499). A `101` is final: the tunnel it opened was the answer.
        let status = match ctx.refused_as {
            Some(refused) => refused,
            None => session
                .response_written()
                .map(|r| r.status)
                .filter(|s| !s.is_informational() || *s == http::StatusCode::SWITCHING_PROTOCOLS)
                .map_or(499, |s| s.as_u16()),
        };
        let elapsed = ctx.arrived.elapsed();
        let route = ctx.route.as_deref();
        route
            .map_or(&*NO_ROUTE_METRICS, |r| &r.metrics)
            .observe(status, elapsed.as_secs_f64());
        for plugin in ctx.exchange.failed_plugins() {
            crate::telemetry::metrics::METRICS
                .plugin_errors
                .with_label_values(&[&**plugin])
                .inc();
        }
        let telemetry = &*self.telemetry;
        if telemetry.access_log.is_none() && !telemetry.tracer.exports() {
            return;
        }
        let req = session.req_header();
        let node = ctx
            .attempts
            .as_ref()
            .filter(|a| a.sent().is_some())
            .and_then(Attempts::node)
            .map(|n| n.addr);
        let now = SystemTime::now();
        let arrived_at = now.checked_sub(elapsed).unwrap_or(now);
        let trace_id = ctx.trace.as_ref().map(|t| t.trace_id);
        if let Some(log) = &telemetry.access_log {
            log.log(Entry {
                time: arrived_at,
                // The last phase: what the entry needs is moved out rather than copied.
                request_id: std::mem::take(&mut ctx.exchange.request_id),
                trace_id,
                client_ip: ctx.exchange.client_ip,
                method: req.method.clone(),
                path: req
                    .uri
                    .path_and_query()
                    .map_or_else(|| req.uri.path().to_string(), |p| p.as_str().to_string()),
                route: ctx.exchange.route_id.clone(),
                upstream: ctx.attempts.as_ref().map(|a| a.upstream().id.clone()),
                node,
                consumer: ctx.exchange.consumer.clone(),
                status,
                bytes: session.body_bytes_sent(),
                duration: elapsed.as_secs_f64(),
            });
        }
        if let Some(trace) = &ctx.trace {
            telemetry.tracer.finish(
                trace,
                SpanFacts {
                    start: arrived_at,
                    end: now,
                    method: req.method.as_str(),
                    path: req.uri.path(),
                    pattern: route.and_then(|r| r.pattern.as_ref()),
                    route: &ctx.exchange.route_id,
                    status,
                    node,
                },
            );
        }
    }
}
