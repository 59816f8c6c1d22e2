//! What the gateway tells operators about itself: Prometheus metrics, traces, access logs.

pub mod access_log;
pub mod metrics;
pub mod trace;

use crate::bootstrap;
use access_log::{AccessLog, Target};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use trace::Tracer;

/// The per-request observers the proxy reports to, started from the bootstrap config.
pub struct Telemetry {
    pub tracer: Tracer,
    pub access_log: Option<AccessLog>,
    /// Use the trace id as the request id when the client sent none.
    pub trace_id_as_request_id: bool,
}

impl Telemetry {
    pub fn start(config: &bootstrap::TelemetrySettings) -> anyhow::Result<Telemetry> {
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

impl Telemetry {
    /// Writes out every access-log line and span queued so far, waiting at most `within`
    /// for each: called once the last request is done, just before the process exits.
    pub fn flush(&self, within: Duration) {
        if let Some(log) = &self.access_log {
            log.flush(within);
        }
        self.tracer.flush(within);
    }
}

/// Waits until a writer thread that counts its passes over its queue in `passes` has begun
/// and finished a whole pass after this call: then everything queued before the call is out.
fn wait_for_passes(passes: &AtomicU64, within: Duration) {
    let start = passes.load(Ordering::Acquire);
    let deadline = Instant::now() + within;
    while passes.load(Ordering::Acquire) < start + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}
