//! The header-rewrite plugin: `request_headers` and `response_headers` of a route.

use crate::template::Template;
use crate::{Exchange, Flow, Plugin, Stage};
use http::HeaderName;
use pingora_http::{RequestHeader, ResponseHeader};

/// Headers to set and remove on one side of the exchange. Removal runs first, so a header
/// both removed and set ends up with the set value.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    pub set: Vec<(HeaderName, Template)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// Rewrites the upstream request's and the client response's headers.
#[derive(Debug, Clone, Default)]
pub struct HeaderRewrite {
    pub request: HeaderEdits,
    pub response: HeaderEdits,
}

impl Plugin for HeaderRewrite {
    fn name(&self) -> &'static str {
        "header-rewrite"
    }

    fn stage(&self) -> Stage {
        Stage::Transform
    }

    fn upstream_request(&self, req: &mut RequestHeader, ex: &Exchange) {
        for name in &self.request.remove {
            req.remove_header(name);
        }
        for (name, template) in &self.request.set {
            if let Some(value) = template.render(ex) {
                // Only invalid values fail, and render() never yields one.
                let _ = req.insert_header(name.clone(), value);
            }
        }
    }

    fn response(&self, resp: &mut ResponseHeader, ex: &mut Exchange) -> Flow {
        for name in &self.response.remove {
            resp.remove_header(name);
        }
        for (name, template) in &self.response.set {
            if let Some(value) = template.render(ex) {
                let _ = resp.insert_header(name.clone(), value);
            }
        }
        Flow::Continue
    }
}

/// `header_rewrite`: a route's `request_headers` and `response_headers` fields, as a
/// registry plugin with `config: { request: RULES, response: RULES }`, each `RULES` being
/// `{ set: { NAME: TEMPLATE }, remove: [NAME] }`.
pub struct Factory;

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rules {
    #[serde(default)]
    set: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    request: Rules,
    #[serde(default)]
    response: Rules,
}

fn edits(side: &str, rules: Rules) -> Result<HeaderEdits, crate::registry::ConfigError> {
    use crate::registry::ConfigError;
    let mut out = HeaderEdits::default();
    for (name, value) in rules.set {
        let field = format!("{side}.set.{name}");
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| ConfigError::new(&field, e.to_string()))?;
        let template =
            Template::parse(&value).map_err(|e| ConfigError::new(&field, e.to_string()))?;
        out.set.push((header, template));
    }
    for (at, name) in rules.remove.iter().enumerate() {
        out.remove.push(
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| ConfigError::new(format!("{side}.remove[{at}]"), e.to_string()))?,
        );
    }
    Ok(out)
}

impl crate::registry::PluginFactory for Factory {
    fn name(&self) -> &'static str {
        "header_rewrite"
    }

    fn build(
        &self,
        config: &crate::registry::Config,
    ) -> Result<Box<dyn Plugin>, crate::registry::ConfigError> {
        let s: Settings = crate::registry::decode(config)?;
        Ok(Box::new(HeaderRewrite {
            request: edits("request", s.request)?,
            response: edits("response", s.response)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PluginChain;
    use std::net::{IpAddr, Ipv6Addr};

    fn rewrite() -> HeaderRewrite {
        HeaderRewrite {
            request: HeaderEdits {
                set: vec![(
                    HeaderName::from_static("x-route"),
                    Template::parse("${route_id}").unwrap(),
                )],
                remove: vec![HeaderName::from_static("x-debug")],
            },
            response: HeaderEdits {
                set: vec![(
                    HeaderName::from_static("x-served-by"),
                    Template::parse("gatehouse").unwrap(),
                )],
                remove: vec![HeaderName::from_static("server")],
            },
        }
    }

    #[test]
    fn edits_both_sides() {
        let chain = PluginChain::new(vec![Box::new(rewrite())]);
        let mut ex = Exchange::new(
            "orders".into(),
            "r1".into(),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        );

        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("X-Debug", "1").unwrap();
        req.insert_header("X-Route", "spoofed").unwrap();
        chain.upstream_request(&mut req, &ex);
        assert!(req.headers.get("x-debug").is_none());
        assert_eq!(req.headers.get("x-route").unwrap(), "orders");

        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("Server", "upstream").unwrap();
        chain.response(&mut resp, &mut ex);
        assert!(resp.headers.get("server").is_none());
        assert_eq!(resp.headers.get("x-served-by").unwrap(), "gatehouse");
    }
}
