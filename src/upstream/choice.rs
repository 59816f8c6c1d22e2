//! Choosing a route's upstream (SPEC §4: canary rules, then weights/sticky, then the
//! default), compiled once per route.

use super::{Picker, UpstreamTarget};
use crate::resource::{Route, STICKY_FORMS};
use crate::router::{Predicates, RouteRequest, ValueMatcher};
use gatehouse_plugins::request::cookie;
use gatehouse_plugins::selector::{Selected, Selector};
use gatehouse_plugins::Exchange;
use pingora_http::RequestHeader;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// A canary rule: when every condition holds, the request goes to `target`.
#[derive(Debug)]
struct CanaryRule {
    /// Header and query conditions, as route matching has them.
    predicates: Predicates,
    cookies: Vec<(Box<str>, ValueMatcher)>,
    target: Arc<UpstreamTarget>,
}

#[derive(Debug)]
struct Member {
    target: Arc<UpstreamTarget>,
    weight: f64,
    /// Mixed into the key's hash: derived from the upstream id, so reordering the list or
    /// changing another member's weight never moves anybody between two other members.
    seed: u64,
}

#[derive(Debug)]
enum Split {
    One(Arc<UpstreamTarget>),
    Weighted {
        members: Vec<Member>,
        /// Smooth weighted round robin over the members, for requests without a sticky key.
        picker: Picker,
        /// What a sticky split hashes.
        sticky: Option<Selector>,
    },
}

/// How a route picks its upstream.
#[derive(Debug)]
pub struct UpstreamChoice {
    canary: Vec<CanaryRule>,
    split: Split,
}

impl UpstreamChoice {
    /// Compiles the route's `canary`, `weights`/`sticky` and `upstream` against the compiled
    /// upstreams (admission has resolved every reference).
    pub fn compile(
        route: &Route,
        upstreams: &HashMap<String, Arc<UpstreamTarget>>,
    ) -> Result<UpstreamChoice, String> {
        let target = |field: &str, id: &str| {
            upstreams
                .get(id)
                .cloned()
                .ok_or_else(|| format!("{field}: unknown upstream `{id}`"))
        };
        let mut canary = Vec::new();
        for (i, rule) in route.canary.iter().flatten().enumerate() {
            let m = &rule.matcher;
            let headers: Vec<_> = m
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let query: Vec<_> = m
                .query
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let predicates = Predicates::compile(&headers, &query)
                .map_err(|e| format!("canary[{i}].match: {e}"))?;
            let mut cookies = Vec::with_capacity(m.cookies.len());
            for (name, value) in &m.cookies {
                cookies.push((name.as_str().into(), ValueMatcher::parse(value.as_str())?));
            }
            canary.push(CanaryRule {
                predicates,
                cookies,
                target: target(&format!("canary[{i}].upstream"), &rule.upstream)?,
            });
        }
        let split = match (&route.weights, &route.upstream) {
            (Some(weights), _) => {
                let mut members = Vec::with_capacity(weights.len());
                for (i, w) in weights.iter().enumerate() {
                    members.push(Member {
                        target: target(&format!("weights[{i}].upstream"), &w.upstream)?,
                        weight: w.weight as f64,
                        seed: fnv1a(w.upstream.as_bytes()),
                    });
                }
                let sticky = match &route.sticky {
                    Some(key) => Some(
                        key.selector(STICKY_FORMS)
                            .map_err(|e| format!("sticky: {e}"))?
                            .clone(),
                    ),
                    None => None,
                };
                let picker =
                    Picker::round_robin(&weights.iter().map(|w| w.weight).collect::<Vec<_>>());
                Split::Weighted {
                    members,
                    picker,
                    sticky,
                }
            }
            (None, Some(id)) => Split::One(target("upstream", id)?),
            (None, None) => return Err("upstream: the route has no upstream".into()),
        };
        Ok(UpstreamChoice { canary, split })
    }

    /// Every upstream this choice may pick, to tell whether it must be recompiled.
    pub fn targets(&self) -> impl Iterator<Item = &Arc<UpstreamTarget>> {
        let canary = self.canary.iter().map(|r| &r.target);
        let split: Box<dyn Iterator<Item = &Arc<UpstreamTarget>>> = match &self.split {
            Split::One(t) => Box::new(std::iter::once(t)),
            Split::Weighted { members, .. } => Box::new(members.iter().map(|m| &m.target)),
        };
        canary.chain(split)
    }

    /// The upstream for this request.
    pub fn choose(&self, req: &RequestHeader, ex: &Exchange) -> &Arc<UpstreamTarget> {
        if let Some(rule) = self.canary.iter().find(|rule| rule.holds(req)) {
            return &rule.target;
        }
        match &self.split {
            Split::One(target) => target,
            Split::Weighted {
                members,
                picker,
                sticky,
            } => {
                let key = sticky.as_ref().and_then(|k| sticky_hash(k, req, ex));
                match key {
                    Some(hash) => rendezvous(members, hash),
                    // No key to stick to: an even, non-sticky split.
                    None => &members[picker.pick().unwrap_or(0)].target,
                }
            }
        }
    }
}

impl CanaryRule {
    fn holds(&self, req: &RequestHeader) -> bool {
        let request = RouteRequest {
            host: None,
            path: req.uri.path(),
            method: &req.method,
            headers: &req.headers,
            query: req.uri.query(),
        };
        self.predicates.hold(&request, &mut None)
            && self
                .cookies
                .iter()
                .all(|(name, m)| cookie(req, name).is_some_and(|v| m.matches(v)))
    }
}

/// The hash of the sticky key's value, or `None` when the request lacks it: such a request
/// gets the plain weighted split, which keeps users without the key in the split's
/// proportions rather than sending them all to the side their common fallback (a shared
/// proxy's address, say) would hash to.
fn sticky_hash(key: &Selector, req: &RequestHeader, ex: &Exchange) -> Option<u64> {
    Some(match key.select(req, ex)? {
        Selected::ClientIp(IpAddr::V4(ip)) => fnv1a(&ip.octets()),
        Selected::ClientIp(IpAddr::V6(ip)) => fnv1a(&ip.octets()),
        Selected::Route(id) => fnv1a(id.as_bytes()),
        Selected::Text(value) => fnv1a(value),
    })
}

/// Weighted rendezvous hashing: every member scores the key, `weight / -ln(u)` with `u`
/// uniform in (0, 1) from the key and the member's seed, and the highest score wins. The
/// same key always gets the same member; raising one member's weight raises only its
/// scores, so keys can only move onto it (a monotone ramp); members hold shares in
/// proportion to their weights.
fn rendezvous(members: &[Member], key: u64) -> &Arc<UpstreamTarget> {
    let mut best = &members[0];
    let mut best_score = f64::NEG_INFINITY;
    for member in members {
        if member.weight <= 0.0 {
            continue;
        }
        let h = mix(key ^ member.seed);
        // (h + 0.5) / 2^64 is strictly inside (0, 1).
        let u = (h as f64 + 0.5) / 18_446_744_073_709_551_616.0;
        let score = member.weight / -u.ln();
        if score > best_score {
            best_score = score;
            best = member;
        }
    }
    &best.target
}

/// FNV-1a, 64-bit: stable across processes and versions, so every gateway agrees.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= *b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A finalizer (splitmix64's) so that close inputs give unrelated outputs.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(weights: &[(&str, u32)]) -> Vec<Member> {
        weights
            .iter()
            .map(|(id, w)| Member {
                target: Arc::new(UpstreamTarget::compile(Arc::new(
                    crate::resource::Upstream {
                        id: id.to_string(),
                        nodes: vec![crate::resource::NodeSpec {
                            addr: "127.0.0.1:1".into(),
                            weight: 1,
                            metadata: Default::default(),
                        }],
                        discovery: None,
                        scheme: Default::default(),
                        tls: None,
                        lb: Default::default(),
                        hash_key: None,
                        health_check: None,
                        circuit_breaker: None,
                        pool: None,
                        lanes: None,
                        concurrency: None,
                        retry_budget: None,
                    },
                ))),
                weight: *w as f64,
                seed: fnv1a(id.as_bytes()),
            })
            .collect()
    }

    fn side(members: &[Member], user: u32) -> String {
        rendezvous(members, fnv1a(format!("user-{user}").as_bytes()))
            .id
            .to_string()
    }

    #[test]
    fn sticky_shares_follow_weights() {
        let m = members(&[("v1", 90), ("v2", 10)]);
        let on_v2 = (0..20_000).filter(|u| side(&m, *u) == "v2").count();
        // Expected 2,000; the binomial standard deviation is ~42, allow six.
        assert!((on_v2 as i64 - 2_000).abs() < 260, "{on_v2}");
    }

    #[test]
    fn raising_a_weight_only_moves_users_onto_that_side() {
        let before = members(&[("v1", 90), ("v2", 10), ("v3", 30)]);
        let after = members(&[("v1", 90), ("v2", 20), ("v3", 30)]);
        let mut moved = 0;
        for user in 0..20_000 {
            let (b, a) = (side(&before, user), side(&after, user));
            if b != a {
                assert_eq!(a, "v2", "user {user} moved from {b} to {a}");
                moved += 1;
            }
        }
        assert!(moved > 500, "some users moved onto v2: {moved}");
    }

    #[test]
    fn hashes_are_stable() {
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn a_sticky_key_hashes_its_value_and_a_request_without_it_has_none() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("x-user-id", "u1").unwrap();
        req.append_header("x-blank", "").unwrap();
        req.append_header("cookie", "uid=c1").unwrap();
        let mut ex = Exchange::new("r".into(), "id".into(), "10.0.0.7".parse().unwrap());
        let key = |text: &str| Selector::parse_as(text, STICKY_FORMS).unwrap();
        assert_eq!(
            sticky_hash(&key("header:X-User-Id"), &req, &ex),
            Some(fnv1a(b"u1"))
        );
        assert_eq!(
            sticky_hash(&key("cookie:uid"), &req, &ex),
            Some(fnv1a(b"c1"))
        );
        // The address by its octets, as before selectors were shared.
        assert_eq!(
            sticky_hash(&key("client_ip"), &req, &ex),
            Some(fnv1a(&[10, 0, 0, 7]))
        );
        for absent in [
            "header:X-Other",
            "header:X-Blank",
            "cookie:other",
            "consumer",
        ] {
            assert_eq!(sticky_hash(&key(absent), &req, &ex), None, "{absent}");
        }
        ex.consumer = Some("alice".into());
        assert_eq!(
            sticky_hash(&key("consumer"), &req, &ex),
            Some(fnv1a(b"alice"))
        );
    }
}
