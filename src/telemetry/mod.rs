//! What the gateway tells operators about itself: Prometheus metrics, traces, access logs.

pub mod access_log;
pub mod metrics;
pub mod trace;

use crate::bootstrap;
use access_log::{AccessLog, Target};
use trace::Tracer;

/// The per-request observers the proxy reports to, started from the bootstrap config.
pub struct Telemetry {
    pub tracer: Tracer,
    pub access_log: Option<AccessLog>,
    /// Use the trace id as the request id when the client sent none.
    pub trace_id_as_request_id: bool,
}

impl Telemetry {
    pub fn start(config: &bootstrap::Telemetry) -> anyhow::Result<Telemetry> {
        let otlp = &config.otlp;
        let tracer = if otlp.endpoint.is_empty() {
            Tracer::propagate_only(otlp.sample_ratio)
        } else {
            Tracer::exporting(&otlp.endpoint, &otlp.service_name, otlp.sample_ratio)
                .map_err(|e| anyhow::anyhow!("telemetry.otlp: {e}"))?
        };
        let access_log = match config.access_log.target.as_str() {
            "off" => None,
            "stdout" => Some(AccessLog::open(Target::Stdout)?),
            path => Some(
                AccessLog::open(Target::File(path.into()))
                    .map_err(|e| anyhow::anyhow!("telemetry.access_log.target `{path}`: {e}"))?,
            ),
        };
        Ok(Telemetry {
            tracer,
            access_log,
            trace_id_as_request_id: config.trace_id_as_request_id,
        })
    }
}
