//! One request's attempts at its upstream: the rules of SPEC §3 `retries` in one place.
//!
//! Each attempt is admitted through the upstream's circuit breaker, leases a node (another
//! one than the node that just failed, when there is one), and reports how it ended; the
//! outcome feeds passive health and the breaker, and decides whether the request is tried
//! again. The proxy phases only translate Pingora's events into these calls, so the rules
//! can be read, and tested, without a socket. The protections of SPEC §11 are applied here
//! too: the request's place under the upstream's concurrency limit (taken at its first
//! attempt, held until it ends), the latency of each answer (for slow calls and an
//! adaptive limit), and the retry budget every retry must fit.

use crate::snapshot::RouteTimeouts;
use crate::upstream::{
    now_ms, Breaker, LaneChoice, LaneRefusal, Node, NodeLease, Outcome, Pass, Permit,
    UpstreamTarget,
};
use gatehouse_plugins::Exchange;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

/// No attempt started yet: a peer that cannot be reached.
const UNSPECIFIED: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// The attempts of one request at the upstream chosen for it (chosen once: retries go to
/// other nodes of the same upstream).
#[derive(Debug)]
pub struct Attempts {
    upstream: Arc<UpstreamTarget>,
    /// Extra attempts the route allows (`retries`).
    allowed: u32,
    /// Failed attempts counted against `allowed`.
    failed: u32,
    /// The node of the current (or last) attempt.
    node: Option<Arc<Node>>,
    /// Holds the node's in-flight count (for `least_conn`) and kept connection (for
    /// `pool.max_idle`) while the request is on it.
    lease: Option<NodeLease>,
    /// How the current attempt passed the breaker, until its outcome is recorded.
    pass: Option<Pass>,
    /// The current attempt is being abandoned on purpose, to retry a 502/503.
    retrying_status: bool,
    /// A kept connection already turned out stale once for this request.
    stale_retried: bool,
    /// The request's lane (on an upstream with lanes), chosen at its first attempt.
    lane: Option<LaneChoice>,
    /// The first attempt was made: the lane is chosen, the request counted.
    begun: bool,
    /// The request's place under the upstream's concurrency limit, until it ends.
    permit: Option<Permit>,
    /// When the current attempt began, and when the request was all sent: the clock of
    /// the upstream's latency, which a client's slow upload must not run.
    began: Option<Instant>,
    sent: Option<Instant>,
    /// The request was counted by the upstream's retry budget (at its first send).
    counted: bool,
}

/// Why no attempt could start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The upstream's circuit is open: 503 `circuit_open`.
    CircuitOpen,
    /// The upstream has as many requests in flight as its concurrency limit: 503
    /// `overloaded`.
    Overloaded,
    /// No node is healthy (or the request's lane has none): 503 `no_upstream`.
    NoNode,
    /// The request's lane tag is too long to be one: 400.
    BadTag,
}

/// Whether a request can be sent again without repeating a side effect twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    pub idempotent: bool,
    pub has_body: bool,
}

impl Replay {
    pub fn of(req: &RequestHeader) -> Replay {
        Replay {
            idempotent: req.method.is_idempotent(),
            has_body: has_body(req),
        }
    }

    /// An idempotent method and no body (nothing streamed that would have to be replayed).
    pub fn safe(self) -> bool {
        self.idempotent && !self.has_body
    }
}

/// How an attempt that reached the upstream failed.
#[derive(Debug, Clone, Copy)]
pub struct Failure {
    pub replay: Replay,
    /// The attempt ran on a pooled connection.
    pub reused: bool,
    /// The connection was closed or reset under the attempt (not a timeout, not a bad
    /// answer): on a pooled connection, the mark of one the upstream closed while idle.
    pub connection_lost: bool,
    /// Part of an answer already went to the client.
    pub client_answered: bool,
    /// The request body went past what Pingora keeps for a replay.
    pub body_truncated: bool,
    /// Whether Pingora itself would retry this error on this connection.
    pub engine_would_retry: bool,
    /// The attempt ended for a reason that says nothing of the node: the client reset or
    /// left, an open WebSocket tunnel ended, the caller's own deadline passed.
    pub not_the_node: bool,
}

impl Failure {
    /// The failure Pingora reports for the current attempt, `reused` telling whether it ran
    /// on a pooled connection.
    pub fn of(session: &Session, e: &Error, reused: bool, not_the_node: bool) -> Failure {
        Failure {
            not_the_node: not_the_node || e.esource() == &pingora::ErrorSource::Downstream,
            replay: Replay::of(session.req_header()),
            reused,
            connection_lost: matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            ),
            client_answered: session.response_written().is_some(),
            body_truncated: session.as_ref().retry_buffer_truncated(),
            engine_would_retry: {
                let mut engine = e.retry;
                engine.decide_reuse(reused);
                engine.retry()
            },
        }
    }
}

impl Failure {
    /// The failure of a call the gateway makes itself with the request's body held whole
    /// (a transcoded one): nothing is truncated, and Pingora has no say.
    pub fn of_call(e: &Error, reused: bool, replay: Replay, client_answered: bool) -> Failure {
        Failure {
            replay,
            reused,
            connection_lost: matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            ),
            client_answered,
            body_truncated: false,
            engine_would_retry: false,
            not_the_node: false,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again, on another node when there is one.
    Again,
    /// Try again on a fresh connection: the pooled one was stale, which says nothing of the
    /// node, so this try is not counted against `retries` nor the node's health.
    Fresh,
    /// The failure is the gateway's own abandoning of a 502/503, already decided.
    AsDecided,
    /// Give up: the failure goes to the client.
    No,
}

impl Attempts {
    pub fn new(upstream: Arc<UpstreamTarget>, allowed: u32) -> Attempts {
        Attempts {
            upstream,
            allowed,
            failed: 0,
            node: None,
            lease: None,
            pass: None,
            retrying_status: false,
            stale_retried: false,
            lane: None,
            begun: false,
            permit: None,
            began: None,
            sent: None,
            counted: false,
        }
    }

    /// The breaker the request passes: its lane's own, or the upstream's.
    fn breaker(&self) -> Option<&Arc<Breaker>> {
        self.lane
            .as_ref()
            .and_then(|l| l.breaker.as_ref())
            .or(self.upstream.breaker.as_ref())
    }

    pub fn upstream(&self) -> &Arc<UpstreamTarget> {
        &self.upstream
    }

    /// The node of the current (or last) attempt.
    pub fn node(&self) -> Option<&Arc<Node>> {
        self.node.as_ref()
    }

    /// Whether the current attempt's connection is used once and closed (`Connection:
    /// close`): one over `pool.max_idle`, or the one more try after a stale kept
    /// connection, which must neither find another stale one in the pool nor leave its own
    /// there for the next such try.
    pub fn one_shot(&self) -> bool {
        self.lease.as_ref().is_some_and(NodeLease::one_shot)
            || (self.stale_retried && !self.upstream.spec.scheme.grpc())
    }

    /// Starts an attempt: through the breaker, onto a healthy node (another one than the
    /// last when another exists), leased for as long as the attempt lasts.
    pub fn start(&mut self, req: &RequestHeader, ex: &Exchange) -> Result<&Arc<Node>, Refused> {
        if !self.begun {
            self.begin(req)?;
        }
        // A retry after a stale kept connection still holds its pass: the upstream never
        // saw that attempt.
        if self.pass.is_none() {
            if let Some(breaker) = self.breaker() {
                let pass = breaker.admit(now_ms()).ok_or(Refused::CircuitOpen)?;
                self.pass = Some(pass);
            }
        }
        let lane = self.lane.as_ref().and_then(|l| l.name.as_deref());
        let node = self
            .upstream
            .pick_in(lane, req, ex, self.node.as_deref())
            .ok_or(Refused::NoNode)?;
        self.began = Some(Instant::now());
        self.sent = None;
        // A retryable status decided the last attempt (a transcoded call retries without
        // reporting it as failed): it says nothing of this one.
        self.retrying_status = false;
        // Replaces (and so ends) the lease of a previous attempt.
        self.lease = self.upstream.lease(&node);
        Ok(self.node.insert(node))
    }

    /// The first attempt: the request's lane, its place under the concurrency limit, and
    /// its count for the retry budget.
    fn begin(&mut self, req: &RequestHeader) -> Result<(), Refused> {
        self.lane = self.upstream.lane(req).map_err(|r| match r {
            LaneRefusal::TagTooLong => Refused::BadTag,
            LaneRefusal::NoLane => Refused::NoNode,
        })?;
        self.begun = true;
        if let Some(limit) = &self.upstream.concurrency {
            self.permit = Some(limit.acquire().ok_or(Refused::Overloaded)?);
        }
        Ok(())
    }

    /// The current attempt's request is on its way upstream (its head; called again when
    /// the last of a body went, so the latency clock starts once the client is done).
    /// A request is counted by the retry budget when it is first sent, so requests
    /// refused before (an open circuit, no node) pay for no retries.
    pub fn sending(&mut self, now: Instant) {
        self.sent = Some(now);
        if !self.counted {
            self.counted = true;
            if let Some(budget) = &self.upstream.retry_budget {
                budget.request(now_ms());
            }
        }
    }

    /// When the current attempt was sent, if it was.
    pub fn sent(&self) -> Option<Instant> {
        self.sent
    }

    /// Where the current attempt goes, as Pingora's peer: the node, the upstream's TLS and
    /// pool, the route's timeouts.
    pub fn peer(&self, timeouts: &RouteTimeouts) -> HttpPeer {
        let addr = self.node.as_ref().map_or(UNSPECIFIED, |n| n.addr);
        let mut peer = self.upstream.peer(addr, self.lease.as_ref());
        if self.one_shot() {
            // A new connection, from the pool of one-shot ones, which holds none idle (the
            // pool of kept ones may hold another connection the upstream closed).
            peer.group_key = self.upstream.pool_key(self.lease.as_ref()) | 1;
        }
        peer.options.connection_timeout = Some(timeouts.connect);
        peer.options.read_timeout = Some(timeouts.read);
        peer.options.write_timeout = Some(timeouts.write);
        peer
    }

    /// Connecting failed: nothing was sent, so another node may be tried for any method.
    pub fn connect_failed(&mut self) -> bool {
        self.node_failed();
        self.count_retry()
    }

    /// The upstream answered `req` with `status`. Returns whether to abandon this answer
    /// and try another node: a 502 or 503, while retries remain, for a request that is safe
    /// to send again (a 504 is not sent again: the node may still be working on it).
    pub fn answered(&mut self, status: u16, req: &RequestHeader) -> bool {
        let now = Instant::now();
        let took = self.sent.map(|sent| now.saturating_duration_since(sent));
        if let Some(took) = took {
            self.upstream.metrics.observe(took.as_secs_f64());
            if let (Some(permit), true) = (&self.permit, status < 500) {
                permit.answered(took, now);
            }
        }
        self.record(status < 500, took.unwrap_or_default());
        if !matches!(status, 502..=504) {
            return false;
        }
        if let Some(node) = &self.node {
            self.upstream.failed(node);
        }
        if status != 504
            && self.failed < self.allowed
            && Replay::of(req).safe()
            && self.budget_allows()
        {
            self.failed += 1;
            self.retrying_status = true;
            return true;
        }
        false
    }

    /// The attempt ended for a reason that says nothing of the node (the client left, say):
    /// neither health nor the breaker hears of it, and nothing is tried again.
    pub fn unjudged(&mut self) {
        if let Some(pass) = self.pass.take() {
            if let Some(breaker) = self.breaker() {
                breaker.release(pass);
            }
        }
    }

    /// The attempt failed after it was sent.
    pub fn failed(&mut self, f: Failure) -> Retry {
        if std::mem::take(&mut self.retrying_status) {
            return Retry::AsDecided;
        }
        if f.not_the_node {
            self.unjudged();
            return Retry::No;
        }
        if f.reused
            && f.connection_lost
            && f.replay.safe()
            && !self.stale_retried
            && !f.client_answered
        {
            // A kept connection the upstream closed while it sat in the pool (its reset
            // meets the next request), as nginx and Envoy retry it.
            self.stale_retried = true;
            return Retry::Fresh;
        }
        self.node_failed();
        let worth_it = if f.replay.safe() && !f.client_answered {
            // Nothing reached the client and nothing is sent twice that could change state
            // twice: another node may answer instead (a node that died mid-request, a
            // timeout), as nginx's `proxy_next_upstream error timeout` does.
            true
        } else if !f.replay.idempotent || f.body_truncated {
            false
        } else {
            f.engine_would_retry
        };
        if worth_it && self.count_retry() {
            Retry::Again
        } else {
            Retry::No
        }
    }

    /// Counts a failed attempt; whether another one is allowed (by `retries`, then by the
    /// upstream's retry budget).
    fn count_retry(&mut self) -> bool {
        self.failed += 1;
        self.failed <= self.allowed && self.budget_allows()
    }

    /// Whether the upstream's retry budget takes one more retry (counted if so).
    fn budget_allows(&self) -> bool {
        self.upstream
            .retry_budget
            .as_ref()
            .is_none_or(|b| b.try_retry(now_ms()))
    }

    /// The current attempt failed on its node: passive health and the breaker hear of it.
    fn node_failed(&mut self) {
        if let Some(node) = &self.node {
            self.upstream.failed(node);
        }
        // A connect failure is timed from the attempt's start.
        let took = self
            .sent
            .or(self.began)
            .map(|s| s.elapsed())
            .unwrap_or_default();
        self.record(false, took);
    }

    /// Tells the breaker how the current attempt ended, after `took`.
    fn record(&mut self, ok: bool, took: std::time::Duration) {
        if let Some(pass) = self.pass.take() {
            if let Some(breaker) = self.breaker() {
                let outcome = Outcome {
                    ok,
                    took_us: took.as_micros() as u64,
                };
                breaker.record(pass, outcome, now_ms());
            }
        }
    }
}

/// Whether a request carries a body (so a retry would have to replay it).
pub use gatehouse_plugins::request::has_body;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn upstream(yaml: &str) -> Arc<UpstreamTarget> {
        let spec: crate::resource::Upstream = serde_yaml::from_str(yaml).unwrap();
        Arc::new(UpstreamTarget::compile(Arc::new(spec)))
    }

    fn two_nodes() -> Arc<UpstreamTarget> {
        upstream("id: u\nnodes: [{ addr: \"127.0.0.1:1\" }, { addr: \"127.0.0.1:2\" }]\n")
    }

    fn get() -> RequestHeader {
        RequestHeader::build("GET", b"/", None).unwrap()
    }

    fn exchange() -> Exchange {
        Exchange::new(
            Arc::from("r"),
            String::new(),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        )
    }

    const GET: Replay = Replay {
        idempotent: true,
        has_body: false,
    };
    const POST: Replay = Replay {
        idempotent: false,
        has_body: true,
    };
    const PUT_WITH_BODY: Replay = Replay {
        idempotent: true,
        has_body: true,
    };

    /// A request with the method and body of `replay`.
    fn req(replay: Replay) -> RequestHeader {
        let method = if replay.idempotent { "PUT" } else { "POST" };
        let mut req = RequestHeader::build(method, b"/", None).unwrap();
        if replay.has_body {
            req.insert_header("Content-Length", "2").unwrap();
        }
        req
    }

    fn failure(replay: Replay) -> Failure {
        Failure {
            replay,
            reused: false,
            connection_lost: false,
            client_answered: false,
            body_truncated: false,
            engine_would_retry: false,
            not_the_node: false,
        }
    }

    fn started(a: &mut Attempts) -> std::net::SocketAddr {
        a.start(&get(), &exchange()).unwrap().addr
    }

    #[test]
    fn a_failed_connect_is_retried_for_any_method_up_to_the_allowance() {
        let mut a = Attempts::new(two_nodes(), 2);
        started(&mut a);
        assert!(a.connect_failed());
        assert!(a.connect_failed());
        assert!(!a.connect_failed(), "two retries allowed, a third is not");
        let mut none = Attempts::new(two_nodes(), 0);
        started(&mut none);
        assert!(!none.connect_failed(), "retries: 0 means one attempt");
    }

    #[test]
    fn a_retry_goes_to_another_node() {
        let mut a = Attempts::new(two_nodes(), 3);
        for _ in 0..3 {
            let first = started(&mut a);
            a.connect_failed();
            assert_ne!(started(&mut a), first);
            a.connect_failed();
        }
    }

    #[test]
    fn bad_gateway_and_unavailable_are_retried_only_when_safe() {
        let mut a = Attempts::new(two_nodes(), 1);
        started(&mut a);
        assert!(a.answered(502, &req(GET)));
        assert_eq!(a.failed(failure(GET)), Retry::AsDecided);
        started(&mut a);
        assert!(!a.answered(503, &req(GET)), "the one retry is used");

        for replay in [POST, PUT_WITH_BODY] {
            let mut a = Attempts::new(two_nodes(), 1);
            started(&mut a);
            assert!(
                !a.answered(503, &req(replay)),
                "{replay:?} is never sent twice"
            );
        }
        let mut a = Attempts::new(two_nodes(), 1);
        started(&mut a);
        assert!(!a.answered(504, &req(GET)), "a 504 may still be worked on");
        assert!(!a.answered(200, &req(GET)));
    }

    #[test]
    fn a_failure_after_sending_is_retried_when_nothing_is_repeated_or_answered() {
        let mut a = Attempts::new(two_nodes(), 1);
        started(&mut a);
        assert_eq!(a.failed(failure(GET)), Retry::Again);
        started(&mut a);
        assert_eq!(a.failed(failure(GET)), Retry::No, "allowance spent");

        let mut a = Attempts::new(two_nodes(), 1);
        started(&mut a);
        assert_eq!(a.failed(failure(POST)), Retry::No);

        // Part of the answer reached the client: only the engine's own rule (a reused
        // connection) can send it again, and only for an idempotent request.
        let mut answered = failure(GET);
        answered.client_answered = true;
        let mut a = Attempts::new(two_nodes(), 1);
        started(&mut a);
        assert_eq!(a.failed(answered), Retry::No);
        answered.engine_would_retry = true;
        let mut a = Attempts::new(two_nodes(), 1);
        started(&mut a);
        assert_eq!(a.failed(answered), Retry::Again);
        let mut truncated = answered;
        truncated.replay = PUT_WITH_BODY;
        truncated.body_truncated = true;
        let mut a = Attempts::new(two_nodes(), 1);
        started(&mut a);
        assert_eq!(a.failed(truncated), Retry::No);
    }

    #[test]
    fn a_stale_pooled_connection_is_tried_once_more_without_counting() {
        let up = upstream(
            "id: u\nnodes: [{ addr: \"127.0.0.1:1\" }]\n\
             health_check: { passive: { max_fails: 1, fail_timeout: 10s } }\n",
        );
        let mut a = Attempts::new(up.clone(), 0);
        started(&mut a);
        let mut stale = failure(GET);
        stale.reused = true;
        stale.connection_lost = true;
        assert_eq!(a.failed(stale), Retry::Fresh);
        // The node stays healthy (one failure would have taken it out).
        started(&mut a);
        assert_eq!(a.failed(stale), Retry::No, "only once, and retries: 0");
        assert!(
            a.start(&get(), &exchange()).is_err(),
            "the real failure counted against the node"
        );

        let mut with_body = stale;
        with_body.replay = PUT_WITH_BODY;
        let mut a = Attempts::new(two_nodes(), 0);
        started(&mut a);
        assert_eq!(a.failed(with_body), Retry::No, "a body is never replayed");
    }

    #[test]
    fn the_breaker_admits_each_attempt_and_hears_each_outcome() {
        let up = upstream(
            "id: u\nnodes: [{ addr: \"127.0.0.1:1\" }, { addr: \"127.0.0.1:2\" }]\n\
             circuit_breaker: { error_rate: 0.5, min_requests: 2, window: 10s, open_for: 60s }\n",
        );
        let mut a = Attempts::new(up.clone(), 5);
        started(&mut a);
        assert!(a.connect_failed());
        started(&mut a);
        assert!(a.connect_failed());
        assert_eq!(
            a.start(&get(), &exchange()).unwrap_err(),
            Refused::CircuitOpen,
            "two failures of two requests open the circuit"
        );
        let mut other = Attempts::new(up, 0);
        assert_eq!(
            other.start(&get(), &exchange()).unwrap_err(),
            Refused::CircuitOpen
        );
    }

    #[test]
    fn each_lane_has_its_own_nodes_and_breaker() {
        let up = upstream(
            "id: u\nnodes: [{ addr: \"127.0.0.1:1\" }, { addr: \"127.0.0.1:2\", metadata: { lane: s } },\n\
             { addr: \"127.0.0.1:3\", metadata: { lane: s } }]\nlanes: { header: x-lane }\n\
             circuit_breaker: { error_rate: 0.5, min_requests: 2, window: 10s, open_for: 60s }\n",
        );
        let mut tagged = get();
        tagged.insert_header("x-lane", "s").unwrap();
        // Balancing within the lane: both of its nodes, never the baseline's.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..8 {
            let mut a = Attempts::new(up.clone(), 0);
            seen.insert(a.start(&tagged, &exchange()).unwrap().addr.port());
        }
        assert_eq!(seen, [2, 3].into());
        // The lane's failures open the lane's circuit, not the baseline's.
        for _ in 0..2 {
            let mut a = Attempts::new(up.clone(), 0);
            a.start(&tagged, &exchange()).unwrap();
            assert!(!a.connect_failed());
        }
        let mut a = Attempts::new(up.clone(), 0);
        assert_eq!(
            a.start(&tagged, &exchange()).unwrap_err(),
            Refused::CircuitOpen
        );
        let mut a = Attempts::new(up, 0);
        assert_eq!(a.start(&get(), &exchange()).unwrap().addr.port(), 1);
    }

    #[test]
    fn a_stale_retry_keeps_its_pass_through_the_breaker() {
        // With the circuit half-open, the probe's pass is the only one: a fresh try after a
        // stale connection must not need a second.
        let up = upstream(
            "id: u\nnodes: [{ addr: \"127.0.0.1:1\" }]\n\
             circuit_breaker: { error_rate: 0.5, min_requests: 1, window: 10s, open_for: 200ms }\n",
        );
        let mut opener = Attempts::new(up.clone(), 0);
        started(&mut opener);
        opener.connect_failed();
        // Past `open_for`, so the next request is the probe; a probe that has not reported
        // within `open_for` is given up, so what follows must take less than 200 ms.
        std::thread::sleep(std::time::Duration::from_millis(210));
        let mut probe = Attempts::new(up.clone(), 0);
        started(&mut probe);
        let mut stale = failure(GET);
        stale.reused = true;
        stale.connection_lost = true;
        assert_eq!(probe.failed(stale), Retry::Fresh);
        assert!(probe.start(&get(), &exchange()).is_ok(), "still the probe");
        let mut other = Attempts::new(up, 0);
        assert_eq!(
            other.start(&get(), &exchange()).unwrap_err(),
            Refused::CircuitOpen,
            "one probe at a time"
        );
    }

    #[test]
    fn no_healthy_node_refuses_the_attempt() {
        let up = upstream(
            "id: u\nnodes: [{ addr: \"127.0.0.1:1\" }]\n\
             health_check: { passive: { max_fails: 1, fail_timeout: 10s } }\n",
        );
        let mut a = Attempts::new(up, 1);
        started(&mut a);
        assert!(a.connect_failed());
        assert_eq!(a.start(&get(), &exchange()).unwrap_err(), Refused::NoNode);
    }

    #[test]
    fn a_body_is_told_by_its_framing_headers() {
        let mut req = get();
        assert!(!has_body(&req));
        req.insert_header("Content-Length", "0").unwrap();
        assert!(!has_body(&req));
        req.insert_header("Content-Length", "3").unwrap();
        assert!(has_body(&req));
        let mut chunked = get();
        chunked
            .insert_header("Transfer-Encoding", "chunked")
            .unwrap();
        assert!(has_body(&chunked));
    }
}
