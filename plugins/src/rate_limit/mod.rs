//! The rate-limit plugin: GCRA (the `governor` crate) per key, with `RateLimit-*` headers.
//!
//! What a limiter remembers is bounded whatever clients send: a key longer than
//! [`MAX_KEY_BYTES`] is kept as a keyed 128-bit digest, and each limiter keeps at most
//! `max_keys` keys in a bounded cache (S3-FIFO: when it is full, keys seen once go before
//! keys in steady use, so a flood of made-up keys cannot push a busy client's bucket out and
//! hand it a fresh one).
//!
//! With `scope: cluster` the buckets live in a store the fleet shares ([`shared`]); the
//! instance's own limiter then only stands in when the store fails (`on_store_error: local`).

pub mod shared;

use crate::digest::Digester;
use crate::registry::{Config, ConfigError, Resources};
use crate::selector::{Forms, Selected, Selector, SelectorKind};
use crate::{Access, ErrorAnswer, Exchange, Flow, Plugin, Stage, Tally};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderName, HeaderValue, StatusCode};
use pingora_http::RequestHeader;
use quick_cache::sync::Cache;
use shared::{OnStoreError, Scope, SharedLimit, Verdict};
use std::convert::Infallible;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The longest key kept as sent; longer ones are kept as a digest (SPEC §8).
pub const MAX_KEY_BYTES: usize = 256;
/// Keys one limiter keeps when its route does not say (`rate_limit.max_keys`).
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// The longest a bucket may take to fill again.
const MAX_REFILL: Duration = crate::units::Span::MAX;

/// What requests are counted together: a request selector (`rate_limit.key`), of the
/// forms [`KEY_FORMS`]. A request without the key's value is counted by client address
/// ([`Selector::select_or_client_ip`]), so leaving a header out never escapes the limit.
pub type LimitKey = Selector;

/// The selectors `rate_limit.key` takes (SPEC §3): the ones that name a caller, or the
/// whole route.
pub const KEY_FORMS: Forms = Forms(&[
    SelectorKind::ClientIp,
    SelectorKind::Consumer,
    SelectorKind::Route,
    SelectorKind::Header,
]);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Bucket {
    Ip(IpAddr),
    /// A key of at most [`MAX_KEY_BYTES`], as sent.
    Text(Box<[u8]>),
    /// A longer key, by its digest.
    Digest(u128),
    Route,
}

impl Bucket {
    fn text(key: &[u8], digester: &Digester) -> Bucket {
        if key.len() <= MAX_KEY_BYTES {
            Bucket::Text(key.into())
        } else {
            Bucket::Digest(digester.digest(key))
        }
    }
}

/// One key's GCRA state: its theoretical arrival time, in the limiter's nanoseconds; 0 for a
/// key not counted yet.
#[derive(Default)]
struct Arrival(AtomicU64);

/// A limiter's keys, in a cache bounded by entry count.
struct Buckets {
    states: Cache<Bucket, Arc<Arrival>>,
}

impl StateStore for Buckets {
    type Key = Bucket;

    fn measure_and_replace<T, F, E>(&self, key: &Bucket, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let arrival = match self
            .states
            .get_or_insert_with(key, || Ok::<_, Infallible>(Arc::default()))
        {
            Ok(arrival) => arrival,
            Err(never) => match never {},
        };
        // As governor's own in-memory state: retry the decision until no other request
        // changed the state under it.
        let state = &arrival.0;
        let mut prev = state.load(Ordering::Acquire);
        loop {
            let (result, next) = f((prev != 0).then(|| Nanos::from(prev)))?;
            match state.compare_exchange_weak(
                prev,
                next.into(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(result),
                Err(changed) => prev = changed,
            }
        }
    }
}

impl ShrinkableKeyedStateStore<Bucket> for Buckets {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = u64::from(drop_below);
        self.states
            .retain(|_, arrival| arrival.0.load(Ordering::Relaxed) > drop_below);
    }

    fn len(&self) -> usize {
        self.states.len()
    }

    fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}

type Limiter = RateLimiter<Bucket, Buckets, DefaultClock, StateInformationMiddleware>;

/// A route's limiter state: kept across reloads while its `rate_limit` does not change.
pub struct RateLimitState {
    limiter: Limiter,
    burst: u32,
    /// Time for one token to come back.
    interval: Duration,
    max_keys: usize,
    /// Turns keys longer than [`MAX_KEY_BYTES`] into digests.
    digester: Digester,
}

impl std::fmt::Debug for RateLimitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitState")
            .field("burst", &self.burst)
            .field("interval", &self.interval)
            .field("keys", &self.limiter.len())
            .field("max_keys", &self.max_keys)
            .finish()
    }
}

impl RateLimitState {
    /// `rate` requests per `per`, with a bucket of `burst` (a full bucket admits `burst` at
    /// once; it refills at `rate` per `per`), for at most `max_keys` keys at a time.
    pub fn new(rate: u32, per: Duration, burst: u32, max_keys: usize) -> Option<RateLimitState> {
        let interval = per / rate.max(1);
        let quota = Quota::with_period(interval)?.allow_burst(NonZeroU32::new(burst)?);
        if max_keys == 0 {
            return None;
        }
        let buckets = Buckets {
            // Entries are allocated as keys arrive, not up front.
            states: Cache::new(max_keys),
        };
        Some(RateLimitState {
            limiter: Limiter::new(quota, buckets, DefaultClock::default()),
            burst,
            interval,
            max_keys,
            digester: Digester::new(),
        })
    }

    /// Forgets keys whose buckets are full again (idle ones), so memory follows the clients
    /// active recently, well below `max_keys` most of the time. Called periodically, off the
    /// request path.
    pub fn cleanup(&self) {
        self.limiter.retain_recent();
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }

    /// The most keys this limiter keeps.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }
}

/// The plugin instance of one route.
pub struct RateLimitPlugin {
    pub state: Arc<RateLimitState>,
    pub key: LimitKey,
    /// The fleet's buckets, for `scope: cluster`.
    pub shared: Option<SharedLimit>,
}

const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

fn seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl RateLimitPlugin {
    #[cfg(test)]
    fn bucket(&self, req: &RequestHeader, ex: &Exchange) -> Bucket {
        self.local_bucket(&self.key.select_or_client_ip(req, ex))
    }

    fn local_bucket(&self, selected: &Selected<'_>) -> Bucket {
        match selected {
            Selected::ClientIp(ip) => Bucket::Ip(*ip),
            // The limiter is the route's own: one bucket is the whole route.
            Selected::Route(_) => Bucket::Route,
            Selected::Text(key) => Bucket::text(key, &self.state.digester),
        }
    }

    /// The instance's own decision.
    fn decide_locally(&self, bucket: &Bucket, ex: &mut Exchange) -> Flow {
        let state = &self.state;
        match state.limiter.check_key(bucket) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                // Until the bucket is full again.
                let reset = state.interval * (state.burst - remaining.min(state.burst));
                self.admitted(remaining, reset, ex)
            }
            Err(not_until) => self.refused(
                not_until.wait_time_from(state.limiter.clock().now()),
                "rate limit exceeded",
            ),
        }
    }

    /// The fleet's decision, or the policy's when the store gives none.
    async fn decide_shared(
        &self,
        shared: &SharedLimit,
        key: Vec<u8>,
        fallback: Option<Bucket>,
        ex: &mut Exchange,
    ) -> Flow {
        match shared.store.step(key, shared.quota).await {
            Ok(Verdict {
                admitted: true,
                remaining,
                reset,
                ..
            }) => self.admitted(remaining, reset, ex),
            Ok(Verdict { wait, .. }) => self.refused(wait, "rate limit exceeded"),
            Err(e) => {
                crate::metrics::RATE_LIMIT_STORE_ERRORS.inc();
                tracing::debug!(route = %ex.route_id, "{e}; on_store_error: {:?}", shared.on_error);
                match shared.on_error {
                    OnStoreError::Local => {
                        fallback.map_or(Flow::Continue, |bucket| self.decide_locally(&bucket, ex))
                    }
                    OnStoreError::Allow => Flow::Continue,
                    OnStoreError::Deny => {
                        self.refused(Duration::from_secs(1), "rate limit store unavailable")
                    }
                }
            }
        }
    }

    fn admitted(&self, remaining: u32, reset: Duration, ex: &mut Exchange) -> Flow {
        ex.response_headers
            .push((LIMIT, HeaderValue::from(self.state.burst)));
        ex.response_headers
            .push((REMAINING, HeaderValue::from(remaining)));
        ex.response_headers
            .push((RESET, HeaderValue::from(seconds_up(reset))));
        Flow::Continue
    }

    fn refused(&self, wait: Duration, why: &str) -> Flow {
        let retry = seconds_up(wait).max(1);
        let reply = ErrorAnswer::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("{why}; retry in {retry}s"),
        )
        .with_header(http::header::RETRY_AFTER, HeaderValue::from(retry))
        .with_header(LIMIT, HeaderValue::from(self.state.burst))
        .with_header(REMAINING, HeaderValue::from(0u32))
        .with_header(RESET, HeaderValue::from(retry))
        .counted_as(Tally::RateLimited);
        Flow::Respond(reply)
    }
}

impl Plugin for RateLimitPlugin {
    fn name(&self) -> &'static str {
        "rate-limit"
    }

    /// A shared limit waits for its step in the store.
    fn may_wait(&self) -> bool {
        self.shared.is_some()
    }

    /// Forgets the clients not seen for a while, so a flood of one-off keys does not stay.
    fn housekeep(&self) {
        self.state.cleanup();
    }

    /// A limit keyed by the consumer waits for authentication; every other key is known
    /// from the request alone, so it runs first and a flood is refused before it costs a
    /// signature check or an introspection call.
    fn stage(&self) -> Stage {
        if self.key.needs_identity() {
            Stage::Limit
        } else {
            Stage::Throttle
        }
    }

    fn access<'a>(&'a self, req: &'a mut RequestHeader, ex: &'a mut Exchange) -> Access<'a> {
        let selected = self.key.select_or_client_ip(req, ex);
        match &self.shared {
            None => Access::Now(self.decide_locally(&self.local_bucket(&selected), ex)),
            Some(shared) => {
                let key = shared.key(&selected);
                // The instance's own bucket, made only where it may stand in for the store.
                let fallback =
                    (shared.on_error == OnStoreError::Local).then(|| self.local_bucket(&selected));
                Access::Wait(Box::pin(self.decide_shared(shared, key, fallback, ex)))
            }
        }
    }
}

/// `rate_limit`: a route's `rate_limit` field (SPEC §3), as a registry plugin. Each build
/// starts empty buckets; a route keeps the plugin, buckets and all, while the field does
/// not change.
pub struct Factory;

/// Why `on_store_error` is refused on a limit without a store.
pub const ON_STORE_ERROR_ALONE: &str =
    "applies to `scope: cluster` only: a `scope: local` limit has no store to fail";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    rate: u32,
    per: crate::units::Span,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default = "client_ip")]
    key: String,
    #[serde(default = "max_keys")]
    max_keys: u32,
    #[serde(default)]
    scope: Scope,
    #[serde(default)]
    on_store_error: OnStoreError,
}

fn client_ip() -> String {
    "client_ip".into()
}

fn max_keys() -> u32 {
    DEFAULT_MAX_KEYS as u32
}

impl Factory {
    /// The plugin with its local limiter; the shared part is added by [`Factory::build_with`].
    fn local(config: &Config) -> Result<(RateLimitPlugin, Settings), ConfigError> {
        let s: Settings = crate::registry::decode(config)?;
        if s.scope == Scope::Local && s.on_store_error != OnStoreError::Local {
            // Likely a `scope: cluster` forgotten: say so rather than count alone in silence.
            return Err(ConfigError::new("on_store_error", ON_STORE_ERROR_ALONE));
        }
        let key = Selector::parse_as(&s.key, KEY_FORMS)
            .map_err(|e| ConfigError::new("key", e.to_string()))?;
        let burst = s.burst.unwrap_or(s.rate);
        for (field, value) in [("rate", s.rate), ("burst", burst), ("max_keys", s.max_keys)] {
            if value == 0 {
                return Err(ConfigError::new(field, "must be at least 1"));
            }
        }
        // A full bucket's refill time, in nanoseconds, must fit the limiter's clock.
        let refill = (s.per.0 / s.rate).as_nanos() * u128::from(burst);
        if refill > MAX_REFILL.as_nanos() {
            return Err(ConfigError::new(
                "burst",
                "a full bucket would take more than ten years to refill (`per` / `rate` × `burst`)",
            ));
        }
        let state = RateLimitState::new(s.rate, s.per.0, burst, s.max_keys as usize)
            .ok_or_else(|| ConfigError::new("per", "must be more than 0s"))?;
        let plugin = RateLimitPlugin {
            state: Arc::new(state),
            key,
            shared: None,
        };
        Ok((plugin, s))
    }
}

impl crate::registry::PluginFactory for Factory {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    /// Checks the configuration alone, as admission does. Whether a shared store exists is
    /// known only where the gateway compiles routes ([`Factory::build_with`]), so a
    /// `scope: cluster` limit built here is checked, not fit to serve: it counts locally.
    fn build(&self, config: &Config) -> Result<Box<dyn Plugin>, ConfigError> {
        Ok(Box::new(Factory::local(config)?.0))
    }

    fn build_with(
        &self,
        config: &Config,
        resources: &dyn Resources,
    ) -> Result<Box<dyn Plugin>, ConfigError> {
        let (mut plugin, settings) = Factory::local(config)?;
        if settings.scope == Scope::Cluster {
            // Counted from 0 on /metrics as soon as a limit may count anything.
            std::sync::LazyLock::force(&crate::metrics::RATE_LIMIT_STORE_ERRORS);
            let store = resources.limit_store().ok_or_else(|| {
                ConfigError::new("scope", "`cluster` needs `redis` in the bootstrap")
            })?;
            let owner = match (resources.route(), resources.global_rule()) {
                (Some(route), _) => format!("route:{route}"),
                (None, Some(rule)) => format!("global:{rule}"),
                (None, None) => "-".to_string(),
            };
            let quota = shared::Quota {
                interval: plugin.state.interval,
                burst: plugin.state.burst,
            };
            // What counts requests, not what the instance does alone (`max_keys`,
            // `on_store_error`): changing those keeps the fleet's buckets.
            let counting = format!(
                "{}/{}/{}/{}",
                settings.rate,
                settings.per.0.as_nanos(),
                quota.burst,
                settings.key
            );
            plugin.shared = Some(SharedLimit::new(
                store,
                &owner,
                &counting,
                quota,
                settings.on_store_error,
            ));
        }
        Ok(Box::new(plugin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(ip: &str) -> Exchange {
        Exchange::new("r".into(), "id".into(), ip.parse().unwrap())
    }

    fn limiter(rate: u32, per: Duration, burst: u32, max_keys: usize) -> Arc<RateLimitState> {
        Arc::new(RateLimitState::new(rate, per, burst, max_keys).unwrap())
    }

    fn check_request(
        plugin: &RateLimitPlugin,
        req: &mut RequestHeader,
        ex: &mut Exchange,
    ) -> Result<(), ErrorAnswer> {
        let flow = match plugin.access(req, &mut *ex) {
            Access::Now(flow) => flow,
            Access::Wait(_) => panic!("the limiter never waits"),
        };
        match flow {
            Flow::Continue => Ok(()),
            Flow::Respond(reply) => Err(reply),
            Flow::Answer(_) => panic!("the limiter only refuses"),
        }
    }

    fn check(plugin: &RateLimitPlugin, ex: &mut Exchange) -> Result<(), ErrorAnswer> {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        check_request(plugin, &mut req, ex)
    }

    fn keyed(value: &[u8]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-key", HeaderValue::from_bytes(value).unwrap())
            .unwrap();
        req
    }

    #[test]
    fn a_full_bucket_admits_burst_then_refuses_with_headers() {
        let plugin = RateLimitPlugin {
            state: limiter(1, Duration::from_secs(60), 3, DEFAULT_MAX_KEYS),
            key: LimitKey::ClientIp,
            shared: None,
        };
        let mut e = ex("10.0.0.1");
        for expected_remaining in [2u32, 1, 0] {
            e.response_headers.clear();
            check(&plugin, &mut e).unwrap();
            let remaining = e
                .response_headers
                .iter()
                .find(|(n, _)| n == REMAINING)
                .unwrap();
            assert_eq!(remaining.1, HeaderValue::from(expected_remaining));
        }
        let reply = check(&plugin, &mut e).unwrap_err();
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reply.code, "rate_limited");
        let retry = reply
            .headers
            .iter()
            .find(|(n, _)| n == http::header::RETRY_AFTER)
            .unwrap();
        let retry: u64 = retry.1.to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        // Another client has its own bucket.
        check(&plugin, &mut ex("10.0.0.2")).unwrap();
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let state = limiter(1000, Duration::from_secs(1), 1, DEFAULT_MAX_KEYS);
        let plugin = RateLimitPlugin {
            state: state.clone(),
            key: LimitKey::ClientIp,
            shared: None,
        };
        for i in 0..100u8 {
            check(&plugin, &mut ex(&format!("10.1.0.{i}"))).unwrap();
        }
        assert_eq!(state.len(), 100);
        std::thread::sleep(Duration::from_millis(20));
        state.cleanup();
        assert_eq!(state.len(), 0, "buckets full again are dropped");
    }

    #[test]
    fn only_consumer_limits_wait_for_authentication() {
        let state = limiter(1, Duration::from_secs(1), 1, 10);
        let stage = |key| {
            RateLimitPlugin {
                state: state.clone(),
                key,
                shared: None,
            }
            .stage()
        };
        for key in [
            LimitKey::ClientIp,
            LimitKey::Route,
            LimitKey::Header(HeaderName::from_static("x-key")),
        ] {
            assert!(stage(key.clone()) < Stage::Authenticate, "{key:?}");
        }
        assert!(stage(LimitKey::Consumer) > Stage::Authenticate);
    }

    #[test]
    fn a_limiter_keeps_at_most_max_keys_and_a_busy_key_survives_a_flood() {
        // One request an hour: a key that is forgotten would be admitted again at once.
        let state = limiter(1, Duration::from_secs(3600), 1, 1000);
        let plugin = RateLimitPlugin {
            state: state.clone(),
            key: LimitKey::ClientIp,
            shared: None,
        };
        let mut busy = ex("192.0.2.1");
        check(&plugin, &mut busy).unwrap();
        for i in 0..50_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let _ = check(&plugin, &mut ex(&ip.to_string()));
            if i % 100 == 0 {
                assert!(
                    check(&plugin, &mut busy).is_err(),
                    "the busy client kept its empty bucket after {i} other keys"
                );
            }
            assert!(state.len() <= 1000, "{} keys", state.len());
        }
        assert!(state.len() > 500, "the cache is used: {} keys", state.len());
    }

    #[test]
    fn long_keys_are_kept_as_digests_and_still_limited() {
        let state = limiter(1, Duration::from_secs(3600), 1, 100);
        let plugin = RateLimitPlugin {
            state: state.clone(),
            key: LimitKey::Header(HeaderName::from_static("x-key")),
            shared: None,
        };
        let e = ex("10.0.0.1");
        let short = vec![b'a'; MAX_KEY_BYTES];
        assert!(matches!(plugin.bucket(&keyed(&short), &e), Bucket::Text(t) if *t == *short));
        let long = vec![b'b'; 30 * 1024];
        let bucket = plugin.bucket(&keyed(&long), &e);
        assert!(matches!(bucket, Bucket::Digest(_)), "{bucket:?}");
        assert!(std::mem::size_of_val(&bucket) <= 32);

        // The same long key shares one bucket; another long key has its own.
        let mut e = ex("10.0.0.1");
        check_request(&plugin, &mut keyed(&long), &mut e).unwrap();
        assert!(check_request(&plugin, &mut keyed(&long), &mut e).is_err());
        let mut other = long.clone();
        *other.last_mut().unwrap() = b'c';
        check_request(&plugin, &mut keyed(&other), &mut e).unwrap();
        assert_eq!(state.len(), 2);
    }

    #[test]
    fn requests_without_the_key_are_counted_by_client_address() {
        let plugin = RateLimitPlugin {
            state: limiter(1, Duration::from_secs(3600), 1, 100),
            key: LimitKey::Header(HeaderName::from_static("x-key")),
            shared: None,
        };
        let e = ex("10.0.0.1");
        let bare = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(plugin.bucket(&bare, &e), Bucket::Ip(e.client_ip));
        // An empty value is no key either: it never makes one bucket for everybody.
        assert_eq!(plugin.bucket(&keyed(b""), &e), Bucket::Ip(e.client_ip));
        assert_eq!(
            plugin.bucket(&keyed(b"k1"), &e),
            Bucket::Text(b"k1".as_slice().into())
        );

        let consumer = RateLimitPlugin {
            state: limiter(1, Duration::from_secs(3600), 1, 100),
            key: LimitKey::Consumer,
            shared: None,
        };
        let mut e = ex("10.0.0.2");
        assert_eq!(consumer.bucket(&bare, &e), Bucket::Ip(e.client_ip));
        e.consumer = Some("alice".into());
        assert_eq!(
            consumer.bucket(&bare, &e),
            Bucket::Text(b"alice".as_slice().into())
        );

        let route = RateLimitPlugin {
            state: limiter(1, Duration::from_secs(3600), 1, 100),
            key: LimitKey::Route,
            shared: None,
        };
        assert_eq!(route.bucket(&bare, &e), Bucket::Route);
    }

    #[test]
    fn key_forms_are_the_ones_the_spec_lists() {
        assert_eq!(
            KEY_FORMS.to_string(),
            "client_ip, consumer, route, header:NAME"
        );
        for text in ["client_ip", "consumer", "route", "header:X-Key"] {
            assert!(Selector::parse_as(text, KEY_FORMS).is_ok(), "{text}");
        }
        for text in ["path", "cookie:a", "query:a"] {
            assert!(Selector::parse_as(text, KEY_FORMS).is_err(), "{text}");
        }
    }

    #[test]
    fn a_store_policy_needs_a_store() {
        use crate::registry::PluginFactory;
        let build = |extra: &str| {
            let config = serde_json::from_str(&format!(r#"{{"rate": 5, "per": "1s"{extra}}}"#));
            Factory.build(&config.unwrap()).map(|_| ())
        };
        for extra in [
            r#", "on_store_error": "deny""#,
            r#", "scope": "local", "on_store_error": "allow""#,
        ] {
            let e = build(extra).unwrap_err();
            assert_eq!(e.field, "on_store_error", "{extra}");
            assert!(e.message.contains("scope: cluster"), "{e}");
        }
        for extra in [
            "",
            r#", "on_store_error": "local""#,
            r#", "scope": "cluster", "on_store_error": "deny""#,
        ] {
            assert!(build(extra).is_ok(), "{extra}");
        }
    }
}
