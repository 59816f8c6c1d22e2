//! The rate-limit plugin: GCRA (the `governor` crate) per key, with `RateLimit-*` headers.

use crate::{Access, Exchange, Flow, Plugin, Reply, Stage};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderName, HeaderValue, StatusCode};
use pingora_http::RequestHeader;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// What requests are counted together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client address (the socket peer, or per `trusted_proxies`).
    ClientIp,
    /// The authenticated caller; requests without one are counted by client address.
    Consumer,
    /// Every request of the route together.
    Route,
    /// A header's value; requests without it are counted by client address.
    Header(HeaderName),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Bucket {
    Ip(IpAddr),
    Text(Box<str>),
    Route,
}

type Limiter =
    RateLimiter<Bucket, DefaultKeyedStateStore<Bucket>, DefaultClock, StateInformationMiddleware>;

/// A route's limiter state: kept across reloads while its `rate_limit` does not change.
pub struct RateLimitState {
    limiter: Limiter,
    burst: u32,
    /// Time for one token to come back.
    interval: Duration,
}

impl std::fmt::Debug for RateLimitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitState")
            .field("burst", &self.burst)
            .field("interval", &self.interval)
            .field("keys", &self.limiter.len())
            .finish()
    }
}

impl RateLimitState {
    /// `rate` requests per `per`, with a bucket of `burst` (a full bucket admits `burst` at
    /// once; it refills at `rate` per `per`).
    pub fn new(rate: u32, per: Duration, burst: u32) -> Option<RateLimitState> {
        let interval = per / rate.max(1);
        let quota = Quota::with_period(interval)?.allow_burst(NonZeroU32::new(burst)?);
        Some(RateLimitState {
            limiter: RateLimiter::dashmap(quota).with_middleware::<StateInformationMiddleware>(),
            burst,
            interval,
        })
    }

    /// Forgets keys whose buckets are full again (idle ones), keeping memory bounded however
    /// many distinct keys come and go. Called periodically, off the request path.
    pub fn cleanup(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

/// The plugin instance of one route.
pub struct RateLimit {
    pub state: Arc<RateLimitState>,
    pub key: LimitKey,
}

const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

fn seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl RateLimit {
    fn bucket(&self, req: &RequestHeader, ex: &Exchange) -> Bucket {
        match &self.key {
            LimitKey::ClientIp => Bucket::Ip(ex.client_ip),
            LimitKey::Route => Bucket::Route,
            LimitKey::Consumer => match &ex.consumer {
                Some(c) => Bucket::Text((**c).into()),
                None => Bucket::Ip(ex.client_ip),
            },
            LimitKey::Header(name) => match req.headers.get(name) {
                Some(v) => Bucket::Text(String::from_utf8_lossy(v.as_bytes()).into()),
                None => Bucket::Ip(ex.client_ip),
            },
        }
    }
}

impl Plugin for RateLimit {
    fn name(&self) -> &'static str {
        "rate-limit"
    }

    fn stage(&self) -> Stage {
        Stage::Limit
    }

    fn access<'a>(&'a self, req: &'a mut RequestHeader, ex: &'a mut Exchange) -> Access<'a> {
        let state = &self.state;
        let bucket = self.bucket(req, ex);
        let limit = HeaderValue::from(state.burst);
        match state.limiter.check_key(&bucket) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                // Until the bucket is full again.
                let reset = state.interval * (state.burst - remaining.min(state.burst));
                ex.response_headers.push((LIMIT, limit));
                ex.response_headers
                    .push((REMAINING, HeaderValue::from(remaining)));
                ex.response_headers
                    .push((RESET, HeaderValue::from(seconds_up(reset))));
                Access::Now(Flow::Continue)
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(state.limiter.clock().now());
                let retry = seconds_up(wait).max(1);
                let reply = Reply::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("rate limit exceeded; retry in {retry}s"),
                )
                .with_header(http::header::RETRY_AFTER, HeaderValue::from(retry))
                .with_header(LIMIT, limit)
                .with_header(REMAINING, HeaderValue::from(0u32))
                .with_header(RESET, HeaderValue::from(retry));
                Access::Now(Flow::Respond(reply))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(ip: &str) -> Exchange {
        Exchange::new("r".into(), "id".into(), ip.parse().unwrap())
    }

    fn check(plugin: &RateLimit, ex: &mut Exchange) -> Result<(), Reply> {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        let flow = match plugin.access(&mut req, &mut *ex) {
            Access::Now(flow) => flow,
            Access::Wait(_) => panic!("the limiter never waits"),
        };
        match flow {
            Flow::Continue => Ok(()),
            Flow::Respond(reply) => Err(reply),
        }
    }

    #[test]
    fn a_full_bucket_admits_burst_then_refuses_with_headers() {
        let plugin = RateLimit {
            state: Arc::new(RateLimitState::new(1, Duration::from_secs(60), 3).unwrap()),
            key: LimitKey::ClientIp,
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
        let state = Arc::new(RateLimitState::new(1000, Duration::from_secs(1), 1).unwrap());
        let plugin = RateLimit {
            state: state.clone(),
            key: LimitKey::ClientIp,
        };
        for i in 0..100u8 {
            check(&plugin, &mut ex(&format!("10.1.0.{i}"))).unwrap();
        }
        assert_eq!(state.len(), 100);
        std::thread::sleep(Duration::from_millis(20));
        state.cleanup();
        assert_eq!(state.len(), 0, "buckets full again are dropped");
    }
}
