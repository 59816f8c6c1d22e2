//! Traffic lanes (SPEC §10, kratos' "color"): an upstream with `lanes` splits its nodes by
//! the lane their metadata names, and a request tagged with a lane (`X-Traffic-Tag:
//! stress-v3`) goes to that lane's nodes only. An untagged request never reaches a lane
//! node; a request tagged with a lane that has no node goes to the nodes in no lane
//! (`fallback: baseline`) or is refused (`fallback: refuse`).
//!
//! Each lane is a node set of its own: its own balancing, and its own circuit breaker (a
//! failing stress lane must not open the circuit of production). The groups are rebuilt
//! with the nodes, as the registry's instances come and go, off the request path; a lane's
//! breaker and counter carry over to the next build while the lane exists.

use super::breaker::{Breaker, BreakerPolicy};
use super::{Members, Node};
use crate::resource::{LaneFallback, Lanes, Upstream, MAX_LANE_TAG};
use http::HeaderName;
use pingora::http::RequestHeader;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::sync::Arc;

/// The name the nodes in no lane are counted under.
const BASELINE: &str = "baseline";

/// An upstream's nodes split by lane.
#[derive(Debug)]
pub struct LaneGroups {
    /// The nodes in no lane.
    pub(super) baseline: Members,
    baseline_count: IntCounter,
    lanes: HashMap<Arc<str>, Lane>,
}

/// One lane's nodes, breaker and request counter.
#[derive(Debug)]
struct Lane {
    members: Members,
    breaker: Option<Arc<Breaker>>,
    count: IntCounter,
}

/// The lane a request goes to, chosen once for all its attempts.
#[derive(Debug, Clone)]
pub struct LaneChoice {
    /// `None`: the nodes in no lane.
    pub name: Option<Arc<str>>,
    /// The lane's own breaker (the baseline uses the upstream's).
    pub breaker: Option<Arc<Breaker>>,
}

/// Why a request has no lane to go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneRefusal {
    /// The tag is longer than [`MAX_LANE_TAG`]: 400.
    TagTooLong,
    /// The lane has no node and `fallback: refuse`: 503 `no_upstream`.
    NoLane,
}

/// What an upstream's lanes are, compiled once with it.
#[derive(Debug)]
pub struct LaneSpec {
    pub header: HeaderName,
    key: String,
    fallback: LaneFallback,
}

impl LaneSpec {
    /// `None` for an upstream without lanes, or a header name admission would refuse.
    pub fn of(spec: &Upstream) -> Option<LaneSpec> {
        let lanes: &Lanes = spec.lanes.as_ref()?;
        Some(LaneSpec {
            header: HeaderName::from_bytes(lanes.header.as_bytes()).ok()?,
            key: lanes.metadata.clone(),
            fallback: lanes.fallback,
        })
    }

    /// Whether a request for a lane without nodes goes to the nodes in no lane.
    pub fn falls_back(&self) -> bool {
        self.fallback == LaneFallback::Baseline
    }

    /// The lane a node's metadata puts it in. An empty value is no lane: a registry often
    /// writes the key with nothing behind it, and no tag could name such a lane.
    pub fn lane_of<'m>(
        &self,
        metadata: impl IntoIterator<Item = (&'m str, &'m str)>,
    ) -> Option<Arc<str>> {
        metadata
            .into_iter()
            .find(|(k, v)| *k == self.key && !v.is_empty())
            .map(|(_, v)| Arc::from(v))
    }
}

impl LaneGroups {
    /// Splits `nodes` by lane; each lane keeps its breaker and counter from `previous`.
    pub(super) fn new(
        spec: &Upstream,
        nodes: &[Arc<Node>],
        breaker: Option<BreakerPolicy>,
        previous: Option<&LaneGroups>,
    ) -> LaneGroups {
        let mut by_lane: HashMap<Arc<str>, Vec<Arc<Node>>> = HashMap::new();
        let mut baseline = Vec::new();
        for node in nodes {
            match &node.lane {
                Some(lane) => by_lane.entry(lane.clone()).or_default().push(node.clone()),
                None => baseline.push(node.clone()),
            }
        }
        let counter = |lane: &str| {
            crate::telemetry::metrics::METRICS
                .lane_requests
                .with_label_values(&[spec.id.as_str(), lane])
        };
        let lanes = by_lane
            .into_iter()
            .map(|(name, nodes)| {
                let kept = previous.and_then(|p| p.lanes.get(&name));
                let lane = Lane {
                    members: Members::plain(spec, nodes),
                    breaker: match kept {
                        Some(k) => k.breaker.clone(),
                        None => breaker.map(|p| Arc::new(Breaker::new(p))),
                    },
                    count: kept.map_or_else(|| counter(&name), |k| k.count.clone()),
                };
                (name, lane)
            })
            .collect();
        LaneGroups {
            baseline: Members::plain(spec, baseline),
            baseline_count: counter(BASELINE),
            lanes,
        }
    }

    /// The lane for a request, counted.
    pub fn choose(&self, spec: &LaneSpec, req: &RequestHeader) -> Result<LaneChoice, LaneRefusal> {
        let tag = req
            .headers
            .get(&spec.header)
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty());
        let Some(tag) = tag else {
            return Ok(self.baseline());
        };
        if tag.len() > MAX_LANE_TAG {
            return Err(LaneRefusal::TagTooLong);
        }
        let lane = std::str::from_utf8(tag)
            .ok()
            .and_then(|t| self.lanes.get_key_value(t));
        match (lane, spec.fallback) {
            (Some((name, lane)), _) => {
                lane.count.inc();
                Ok(LaneChoice {
                    name: Some(name.clone()),
                    breaker: lane.breaker.clone(),
                })
            }
            (None, LaneFallback::Baseline) => Ok(self.baseline()),
            (None, LaneFallback::Refuse) => Err(LaneRefusal::NoLane),
        }
    }

    fn baseline(&self) -> LaneChoice {
        self.baseline_count.inc();
        LaneChoice {
            name: None,
            breaker: None,
        }
    }

    /// The nodes of `lane` (`None`: the nodes in no lane); `None` for a lane that has no
    /// node (any more).
    pub(super) fn members(&self, lane: Option<&str>) -> Option<&Members> {
        match lane {
            None => Some(&self.baseline),
            Some(name) => self.lanes.get(name).map(|l| &l.members),
        }
    }
}
