//! Parts of the resource schema this version reads and validates but cannot act on yet.
//! Refusing them is safer than accepting a setting and silently ignoring it: an upstream
//! whose health checks were ignored would keep sending traffic to dead nodes.

use super::fields::Problems;
use super::Upstream;

const LATER: &str = "is not supported by this version of gatehouse yet";

pub(super) fn check_upstream(upstream: &Upstream, p: &mut Problems) {
    let unsupported = [(
        "pool.max_idle",
        upstream.pool.as_ref().is_some_and(|p| p.max_idle.is_some()),
    )];
    for (field, used) in unsupported {
        if used {
            p.add(field, LATER);
        }
    }
}
