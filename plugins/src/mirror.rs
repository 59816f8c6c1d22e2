//! `mirror`: a copy of matching requests sent to another upstream (SPEC §10), for shadow
//! traffic: a new version fed production's requests without answering any of them.
//!
//! The copy (head, `X-Gatehouse-Mirror: 1`, and a body of at most `max_body`) leaves once the
//! client's body has arrived, on a task of its own; its answer is read and dropped. Nothing
//! of it reaches the client's exchange: not its latency, not its failure, not its absence.
//! Copies waiting or in flight are bounded per route (`queue`): past it they are dropped, so
//! a mirror upstream that hangs holds at most `queue` copies, never more memory.
//! `gatehouse_mirror_requests_total{route,result}` counts `sent` (the mirror answered),
//! `failed` (it did not, within `timeout`) and `dropped` (queue full, or body over
//! `max_body`).

use crate::matcher::{MatchSpec, RequestMatch};
use crate::metrics::MIRROR_REQUESTS;
use crate::registry::UpstreamSender;
use crate::registry::{self, Config, ConfigError, PluginFactory, Reference, Resources};
use crate::request::{declared_length, has_body};
use crate::units::{ByteSize, Span};
use crate::{Access, Exchange, Flow, Plugin, Stage};
use bytes::Bytes;
use http::header;
use pingora_http::RequestHeader;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    upstream: String,
    /// The share of matching requests copied, 0 to 1.
    #[serde(default = "Settings::all")]
    sample: f64,
    #[serde(default, rename = "match")]
    matcher: MatchSpec,
    #[serde(default = "Settings::default_max_body")]
    max_body: ByteSize,
    #[serde(default = "Settings::default_queue")]
    queue: u32,
    #[serde(default = "Settings::default_timeout")]
    timeout: Span,
}

impl Settings {
    fn all() -> f64 {
        1.0
    }
    fn default_max_body() -> ByteSize {
        ByteSize(64 << 10)
    }
    fn default_queue() -> u32 {
        1000
    }
    fn default_timeout() -> Span {
        Span::secs(5)
    }
}

/// The most copies a route may hold waiting or in flight.
const MAX_QUEUE: u32 = 100_000;
/// The longest a copy may take.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// The header every copy carries.
const MIRROR_MARK: &str = "x-gatehouse-mirror";

/// Each route's copy slots, by route and mirror upstream: a route compiled again (its
/// mirror plugin built anew) takes the slots of the version before, still held by the
/// copies in flight, so `queue` bounds the route across reloads. Read when a route is
/// compiled, never per request.
type Kept = std::collections::HashMap<(String, String), (std::sync::Weak<Semaphore>, u32)>;
static SLOTS: std::sync::LazyLock<std::sync::Mutex<Kept>> =
    std::sync::LazyLock::new(Default::default);

/// The slots of `route`'s copies to `upstream`: the ones still alive with the same size,
/// or new ones.
fn slots(route: Option<&str>, upstream: &str, queue: u32) -> Arc<Semaphore> {
    let Some(route) = route else {
        return Arc::new(Semaphore::new(queue as usize));
    };
    let mut all = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|_, (slots, _)| slots.strong_count() > 0);
    let key = (route.to_owned(), upstream.to_owned());
    let kept = all
        .get(&key)
        .filter(|(_, size)| *size == queue)
        .and_then(|(slots, _)| slots.upgrade());
    if let Some(kept) = kept {
        return kept;
    }
    let fresh = Arc::new(Semaphore::new(queue as usize));
    all.insert(key, (Arc::downgrade(&fresh), queue));
    fresh
}

pub struct Mirror {
    /// `None` when built only to check the config (admission).
    target: Option<Arc<dyn UpstreamSender>>,
    sample: f64,
    matcher: RequestMatch,
    max_body: usize,
    timeout: Duration,
    /// One permit per copy waiting or in flight.
    slots: Arc<Semaphore>,
}

/// A copy being gathered while the client's body arrives.
struct Copy {
    head: RequestHeader,
    body: Vec<u8>,
}

impl Mirror {
    fn count(route: &str, result: &str) {
        MIRROR_REQUESTS.with_label_values(&[route, result]).inc();
    }

    /// Sends the copy off the request path, or drops it when the route's copies are many.
    fn dispatch(&self, mut head: RequestHeader, body: Bytes, route: &Arc<str>) {
        let Some(target) = self.target.clone() else {
            return;
        };
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            Mirror::count(route, "dropped");
            return;
        };
        let _ = head.insert_header(MIRROR_MARK, "1");
        let _ = head.insert_header(header::CONTENT_LENGTH, body.len());
        head.remove_header(&header::TRANSFER_ENCODING);
        let (route, timeout) = (route.clone(), self.timeout);
        tokio::spawn(async move {
            let result = match target.send(head, body, timeout).await {
                Ok(_) => "sent",
                Err(_) => "failed",
            };
            drop(slot);
            Mirror::count(&route, result);
        });
    }
}

impl Plugin for Mirror {
    fn name(&self) -> &'static str {
        "mirror"
    }

    /// After the checks that may refuse the request: only requests the upstream would see
    /// are copied.
    fn stage(&self) -> Stage {
        Stage::Transform
    }

    fn access<'a>(&'a self, req: &'a mut RequestHeader, ex: &'a mut Exchange) -> Access<'a> {
        if req.headers.contains_key(MIRROR_MARK) {
            // A copy is never copied again: a mirror upstream that leads back here (directly
            // or through other gateways) would otherwise turn one request into endless ones.
            return Access::Now(Flow::Continue);
        }
        let sampled = self.sample >= 1.0 || fastrand::f64() < self.sample;
        if !sampled || !self.matcher.holds(req) {
            return Access::Now(Flow::Continue);
        }
        if !has_body(req) {
            self.dispatch(req.clone(), Bytes::new(), &ex.route_id);
            return Access::Now(Flow::Continue);
        }
        let declared = declared_length(req).and_then(|l| usize::try_from(l).ok());
        if declared.is_some_and(|length| length > self.max_body) {
            Mirror::count(&ex.route_id, "dropped");
            return Access::Now(Flow::Continue);
        }
        let copy = Copy {
            head: req.clone(),
            body: Vec::with_capacity(declared.unwrap_or(0)),
        };
        ex.keep(self, copy);
        Access::Now(Flow::Continue)
    }

    fn wants_request_body(&self) -> bool {
        true
    }

    fn request_body(&self, body: &mut Option<Bytes>, end: bool, ex: &mut Exchange) -> Flow {
        let Some(copy) = ex.kept_mut::<Copy, _>(self) else {
            return Flow::Continue;
        };
        if let Some(piece) = body {
            if copy.body.len() + piece.len() > self.max_body {
                ex.take_kept::<Copy, _>(self);
                Mirror::count(&ex.route_id, "dropped");
                return Flow::Continue;
            }
            copy.body.extend_from_slice(piece);
        }
        if end {
            if let Some(copy) = ex.take_kept::<Copy, _>(self) {
                self.dispatch(copy.head, Bytes::from(copy.body), &ex.route_id);
            }
        }
        Flow::Continue
    }
}

pub struct Factory;

impl Factory {
    fn settings(config: &Config) -> Result<Settings, ConfigError> {
        let settings: Settings = registry::decode(config)?;
        if settings.upstream.is_empty() {
            return Err(ConfigError::new("upstream", "must name an Upstream"));
        }
        if !(0.0..=1.0).contains(&settings.sample) {
            return Err(ConfigError::new("sample", "must be between 0 and 1"));
        }
        if settings.queue == 0 || settings.queue > MAX_QUEUE {
            return Err(ConfigError::new(
                "queue",
                format!("must be between 1 and {MAX_QUEUE}"),
            ));
        }
        if settings.timeout.0.is_zero() || settings.timeout.0 > MAX_TIMEOUT {
            return Err(ConfigError::new(
                "timeout",
                "must be more than 0s and at most 5m",
            ));
        }
        Ok(settings)
    }

    fn mirror(
        settings: Settings,
        target: Option<Arc<dyn UpstreamSender>>,
        route: Option<&str>,
    ) -> Result<Box<dyn Plugin>, ConfigError> {
        let slots = match target {
            // Only a plugin that sends holds the route's slots.
            Some(_) => slots(route, &settings.upstream, settings.queue),
            None => Arc::new(Semaphore::new(settings.queue as usize)),
        };
        Ok(Box::new(Mirror {
            target,
            sample: settings.sample,
            matcher: RequestMatch::compile(&settings.matcher)?,
            max_body: settings.max_body.0,
            timeout: settings.timeout.0,
            slots,
        }))
    }
}

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        "mirror"
    }

    fn build(&self, config: &Config) -> Result<Box<dyn Plugin>, ConfigError> {
        Factory::mirror(Factory::settings(config)?, None, None)
    }

    fn build_with(
        &self,
        config: &Config,
        resources: &dyn Resources,
    ) -> Result<Box<dyn Plugin>, ConfigError> {
        let settings = Factory::settings(config)?;
        let target = resources.upstream(&settings.upstream).ok_or_else(|| {
            ConfigError::new("upstream", format!("no upstream `{}`", settings.upstream))
        })?;
        Factory::mirror(settings, Some(target), resources.route())
    }

    fn references(&self, config: &Config) -> Vec<Reference> {
        match config.get("upstream").and_then(|u| u.as_str()) {
            Some(id) if !id.is_empty() => vec![Reference::Upstream {
                field: "upstream".into(),
                id: id.to_string(),
            }],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;

    /// An upstream that records what it is sent, answering after `wait`.
    struct Recorder {
        sent: Mutex<Vec<(RequestHeader, Bytes)>>,
        wait: Duration,
    }

    impl UpstreamSender for Recorder {
        fn send(
            &self,
            head: RequestHeader,
            body: Bytes,
            _timeout: Duration,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u16, String>> + Send>>
        {
            self.sent.lock().unwrap().push((head, body));
            let wait = self.wait;
            Box::pin(async move {
                tokio::time::sleep(wait).await;
                Ok(200)
            })
        }
    }

    struct With(Arc<Recorder>);

    impl Resources for With {
        fn auth_policy(&self, _id: &str) -> Option<Arc<crate::auth::Authenticator>> {
            None
        }
        fn upstream(&self, id: &str) -> Option<Arc<dyn UpstreamSender>> {
            (id == "shadow").then(|| self.0.clone() as Arc<dyn UpstreamSender>)
        }
    }

    fn exchange() -> Exchange {
        Exchange::new("r".into(), String::new(), "127.0.0.1".parse().unwrap())
    }

    fn recorder(wait: Duration) -> Arc<Recorder> {
        Arc::new(Recorder {
            sent: Mutex::default(),
            wait,
        })
    }

    #[tokio::test]
    async fn a_copy_carries_the_head_the_mark_and_the_body() {
        let up = recorder(Duration::ZERO);
        let plugin = Factory
            .build_with(&json!({"upstream": "shadow"}), &With(up.clone()))
            .unwrap();
        let mut req = RequestHeader::build("POST", b"/orders?x=1", None).unwrap();
        req.insert_header("content-length", "5").unwrap();
        let mut ex = exchange();
        assert!(matches!(
            plugin.access(&mut req, &mut ex),
            Access::Now(Flow::Continue)
        ));
        let mut piece = Some(Bytes::from_static(b"hel"));
        plugin.request_body(&mut piece, false, &mut ex);
        let mut piece = Some(Bytes::from_static(b"lo"));
        plugin.request_body(&mut piece, true, &mut ex);
        assert_eq!(
            piece.as_deref(),
            Some(&b"lo"[..]),
            "the client's body is untouched"
        );
        tokio::task::yield_now().await;
        let sent = up.sent.lock().unwrap();
        let (head, body) = &sent[0];
        assert_eq!(head.uri, "/orders?x=1");
        assert_eq!(head.headers["x-gatehouse-mirror"], "1");
        assert_eq!(&body[..], b"hello");
    }

    #[tokio::test]
    async fn past_the_queue_and_over_max_body_copies_are_dropped() {
        let up = recorder(Duration::from_secs(3600));
        let plugin = Factory
            .build_with(
                &json!({"upstream": "shadow", "queue": 2, "max_body": "4B"}),
                &With(up.clone()),
            )
            .unwrap();
        for _ in 0..5 {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            plugin.access(&mut req, &mut exchange());
        }
        tokio::task::yield_now().await;
        assert_eq!(
            up.sent.lock().unwrap().len(),
            2,
            "two slots, both held by a hung mirror"
        );
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.insert_header("content-length", "5").unwrap();
        let mut ex = exchange();
        plugin.access(&mut req, &mut ex);
        assert!(
            ex.kept::<Copy, _>(&*plugin).is_none(),
            "over max_body: no copy"
        );
    }

    #[test]
    fn settings_are_checked_and_the_upstream_is_a_reference() {
        for (config, field) in [
            (json!({"upstream": "s", "sample": 1.5}), "sample"),
            (json!({"upstream": "s", "queue": 0}), "queue"),
            (json!({"upstream": ""}), "upstream"),
            (
                json!({"upstream": "s", "match": {"headers": {"x": "~("}}}),
                "match.headers.x",
            ),
        ] {
            assert_eq!(
                Factory.build(&config).err().unwrap().field,
                field,
                "{config}"
            );
        }
        let config = json!({"upstream": "users-shadow"});
        assert_eq!(
            Factory.references(&config),
            [Reference::Upstream {
                field: "upstream".into(),
                id: "users-shadow".into()
            }]
        );
        let missing = Factory
            .build_with(
                &json!({"upstream": "nope"}),
                &With(recorder(Duration::ZERO)),
            )
            .err()
            .unwrap();
        assert_eq!(missing.field, "upstream");
    }
}
