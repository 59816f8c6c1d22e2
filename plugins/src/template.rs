//! Header value templates: `X-From: gw-${route_id}`, parsed when config is compiled so a
//! request only concatenates.

use crate::Exchange;
use http::HeaderValue;
use std::fmt::Write;

/// A request variable a template may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variable {
    RequestId,
    ClientIp,
    RouteId,
    /// The authenticated caller; empty when the route has no auth.
    Consumer,
}

impl Variable {
    pub const NAMES: [&'static str; 4] = ["request_id", "client_ip", "route_id", "consumer"];

    fn parse(name: &str) -> Option<Variable> {
        Some(match name {
            "request_id" => Variable::RequestId,
            "client_ip" => Variable::ClientIp,
            "route_id" => Variable::RouteId,
            "consumer" => Variable::Consumer,
            _ => return None,
        })
    }

    fn write(self, out: &mut String, ex: &Exchange) {
        match self {
            Variable::RequestId => out.push_str(&ex.request_id),
            Variable::ClientIp => {
                let _ = write!(out, "{}", ex.client_ip);
            }
            Variable::RouteId => out.push_str(&ex.route_id),
            Variable::Consumer => out.push_str(ex.consumer.as_deref().unwrap_or("")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Var(Variable),
}

/// A parsed header value template.
#[derive(Debug, Clone)]
pub enum Template {
    /// No variables: the value is ready, and cloning it is a reference-count bump.
    Fixed(HeaderValue),
    Dynamic(Vec<Part>),
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown variable ${{{0}}}; known: ${{request_id}}, ${{client_ip}}, ${{route_id}}, ${{consumer}}")]
    UnknownVariable(String),
    #[error("unclosed ${{ in header value")]
    Unclosed,
    #[error("not a valid header value (control characters are not allowed)")]
    InvalidValue,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or(TemplateError::Unclosed)?;
            let name = &after[..end];
            let var = Variable::parse(name)
                .ok_or_else(|| TemplateError::UnknownVariable(name.to_string()))?;
            parts.push(Part::Var(var));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        // Text around variables must itself be a valid header value.
        for part in &parts {
            if let Part::Text(t) = part {
                HeaderValue::from_str(t).map_err(|_| TemplateError::InvalidValue)?;
            }
        }
        if parts.iter().all(|p| matches!(p, Part::Text(_))) {
            let value = HeaderValue::from_str(text).map_err(|_| TemplateError::InvalidValue)?;
            return Ok(Template::Fixed(value));
        }
        Ok(Template::Dynamic(parts))
    }

    /// The value for this request; `None` when a variable's content cannot be a header value.
    pub fn render(&self, ex: &Exchange) -> Option<HeaderValue> {
        match self {
            Template::Fixed(value) => Some(value.clone()),
            Template::Dynamic(parts) => {
                let mut out = String::with_capacity(64);
                for part in parts {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::Var(v) => v.write(&mut out, ex),
                    }
                }
                HeaderValue::from_str(&out).ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn exchange() -> Exchange {
        let mut ex = Exchange::new(
            "users".into(),
            "req-1".to_string(),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
        );
        ex.consumer = Some("alice".into());
        ex
    }

    #[test]
    fn fixed_text_needs_no_rendering_work() {
        let t = Template::parse("gatehouse").unwrap();
        assert!(matches!(t, Template::Fixed(_)));
        assert_eq!(t.render(&exchange()).unwrap(), "gatehouse");
    }

    #[test]
    fn variables_are_substituted() {
        let t =
            Template::parse("${route_id}/${request_id} from ${client_ip} as ${consumer}").unwrap();
        assert_eq!(
            t.render(&exchange()).unwrap(),
            "users/req-1 from 10.0.0.7 as alice"
        );
    }

    #[test]
    fn unknown_and_unclosed_variables_are_refused() {
        assert_eq!(
            Template::parse("${user}").unwrap_err(),
            TemplateError::UnknownVariable("user".into())
        );
        assert_eq!(
            Template::parse("a ${route_id").unwrap_err(),
            TemplateError::Unclosed
        );
        assert_eq!(
            Template::parse("bad\nvalue").unwrap_err(),
            TemplateError::InvalidValue
        );
    }

    #[test]
    fn a_lone_dollar_is_text() {
        let t = Template::parse("costs $5").unwrap();
        assert_eq!(t.render(&exchange()).unwrap(), "costs $5");
    }
}
