//! `fault`: faults injected on purpose, for resilience drills (SPEC §10). A matching request
//! is delayed by `delay.duration` with probability `delay.percent`, and answered
//! `abort.status` with the error `fault_injected` with probability `abort.percent` (after
//! its delay, when both fall), as Envoy's fault filter and APISIX's `fault-injection` do.
//! Injected faults are counted in `gatehouse_faults_injected_total{route,fault}`.

use crate::matcher::{MatchSpec, RequestMatch};
use crate::metrics::FAULTS_INJECTED;
use crate::registry::{self, Config, ConfigError, PluginFactory};
use crate::units::Span;
use crate::{Access, ErrorAnswer, Exchange, Flow, Plugin, Stage};
use http::StatusCode;
use pingora_http::RequestHeader;
use serde::Deserialize;
use std::time::Duration;

/// The longest delay a drill may inject.
const MAX_DELAY: Duration = Duration::from_secs(3600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    abort: Option<AbortSettings>,
    #[serde(default)]
    delay: Option<DelaySettings>,
    #[serde(default, rename = "match")]
    matcher: MatchSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortSettings {
    status: u16,
    percent: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DelaySettings {
    duration: Span,
    percent: f64,
}

pub struct Fault {
    abort: Option<(StatusCode, f64)>,
    delay: Option<(Duration, f64)>,
    matcher: RequestMatch,
}

/// Whether a draw with `percent` chances in a hundred falls.
fn falls(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
}

impl Fault {
    fn abort(&self, ex: &Exchange) -> Flow {
        match self.abort {
            Some((status, percent)) if falls(percent) => {
                FAULTS_INJECTED
                    .with_label_values(&[&*ex.route_id, "abort"])
                    .inc();
                Flow::Respond(ErrorAnswer::new(
                    status,
                    "fault_injected",
                    "the fault plugin aborted the request",
                ))
            }
            _ => Flow::Continue,
        }
    }
}

impl Plugin for Fault {
    fn name(&self) -> &'static str {
        "fault"
    }

    fn stage(&self) -> Stage {
        Stage::Admit
    }

    fn may_wait(&self) -> bool {
        self.delay.is_some()
    }

    fn access<'a>(&'a self, req: &'a mut RequestHeader, ex: &'a mut Exchange) -> Access<'a> {
        if !self.matcher.holds(req) {
            return Access::Now(Flow::Continue);
        }
        match self.delay {
            Some((duration, percent)) if falls(percent) => {
                FAULTS_INJECTED
                    .with_label_values(&[&*ex.route_id, "delay"])
                    .inc();
                Access::Wait(Box::pin(async move {
                    tokio::time::sleep(duration).await;
                    self.abort(ex)
                }))
            }
            _ => Access::Now(self.abort(ex)),
        }
    }
}

pub struct Factory;

fn percent(field: &str, value: f64) -> Result<f64, ConfigError> {
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::new(field, "must be between 0 and 100"))
    }
}

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        "fault"
    }

    fn build(&self, config: &Config) -> Result<Box<dyn Plugin>, ConfigError> {
        let settings: Settings = registry::decode(config)?;
        if settings.abort.is_none() && settings.delay.is_none() {
            return Err(ConfigError::new("", "needs `abort`, `delay` or both"));
        }
        let abort = match settings.abort {
            Some(a) => {
                // 204 and 304 carry no body, and an abort answers the JSON error.
                let status = StatusCode::from_u16(a.status)
                    .ok()
                    .filter(|s| {
                        (200..=599).contains(&s.as_u16()) && !matches!(s.as_u16(), 204 | 304)
                    })
                    .ok_or_else(|| {
                        ConfigError::new("abort.status", "must be 200-599, other than 204 and 304")
                    })?;
                Some((status, percent("abort.percent", a.percent)?))
            }
            None => None,
        };
        let delay = match settings.delay {
            Some(d) => {
                if d.duration.0.is_zero() || d.duration.0 > MAX_DELAY {
                    return Err(ConfigError::new(
                        "delay.duration",
                        "must be more than 0s and at most 1h",
                    ));
                }
                Some((d.duration.0, percent("delay.percent", d.percent)?))
            }
            None => None,
        };
        Ok(Box::new(Fault {
            abort,
            delay,
            matcher: RequestMatch::compile(&settings.matcher)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn exchange() -> Exchange {
        Exchange::new("r".into(), String::new(), "127.0.0.1".parse().unwrap())
    }

    async fn run(plugin: &dyn Plugin, req: &mut RequestHeader) -> Flow {
        let mut ex = exchange();
        let flow = match plugin.access(req, &mut ex) {
            Access::Now(flow) => flow,
            Access::Wait(pending) => pending.await,
        };
        flow
    }

    #[tokio::test]
    async fn aborts_fall_about_as_often_as_asked_and_only_on_matching_requests() {
        let plugin = Factory
            .build(&json!({"abort": {"status": 503, "percent": 30},
                           "match": {"headers": {"x-drill": "on"}}}))
            .unwrap();
        let mut plain = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(matches!(run(&*plugin, &mut plain).await, Flow::Continue));
        let mut drilled = RequestHeader::build("GET", b"/", None).unwrap();
        drilled.insert_header("x-drill", "on").unwrap();
        let mut aborted = 0;
        for _ in 0..2000 {
            if let Flow::Respond(answer) = run(&*plugin, &mut drilled).await {
                assert_eq!(
                    (answer.status.as_u16(), answer.code),
                    (503, "fault_injected")
                );
                aborted += 1;
            }
        }
        // 30 % of 2,000 is 600; 5 standard deviations (about 20.5 each) either side.
        assert!((498..=702).contains(&aborted), "{aborted}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_holds_the_request_then_lets_it_go_on() {
        let plugin = Factory
            .build(&json!({"delay": {"duration": "200ms", "percent": 100}}))
            .unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        let started = tokio::time::Instant::now();
        assert!(matches!(run(&*plugin, &mut req).await, Flow::Continue));
        assert_eq!(started.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn delays_fall_about_as_often_as_asked() {
        let plugin = Factory
            .build(&json!({"delay": {"duration": "1s", "percent": 40}}))
            .unwrap();
        let mut delayed = 0;
        for _ in 0..2000 {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            let started = tokio::time::Instant::now();
            run(&*plugin, &mut req).await;
            if started.elapsed() >= Duration::from_secs(1) {
                delayed += 1;
            }
        }
        // 40 % of 2,000 is 800; 5 standard deviations (about 21.9 each) either side.
        assert!((690..=910).contains(&delayed), "{delayed}");
    }

    #[test]
    fn bad_settings_are_refused_naming_the_field() {
        for (config, field) in [
            (
                json!({"abort": {"status": 503, "percent": 101}}),
                "abort.percent",
            ),
            (
                json!({"abort": {"status": 503, "percent": -1}}),
                "abort.percent",
            ),
            (
                json!({"abort": {"status": 99, "percent": 1}}),
                "abort.status",
            ),
            (
                json!({"abort": {"status": 204, "percent": 1}}),
                "abort.status",
            ),
            (
                json!({"delay": {"duration": "0s", "percent": 1}}),
                "delay.duration",
            ),
            (
                json!({"delay": {"duration": "1s", "percent": 200}}),
                "delay.percent",
            ),
            (
                json!({"abort": {"status": 503, "percent": 1}, "match": {"headers": {"x": "~("}}}),
                "match.headers.x",
            ),
            (json!({}), ""),
        ] {
            let Err(err) = Factory.build(&config) else {
                panic!("accepted: {config}");
            };
            assert_eq!(err.field, field, "{config}");
        }
    }
}
