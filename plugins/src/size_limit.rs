//! `request_size_limit`: the largest request body a route takes (SPEC §12), answered 413
//! `payload_too_large`. A declared `Content-Length` over the limit is refused before the
//! request goes anywhere; a chunked body is counted as it streams and refused at the first
//! piece past the limit (the upstream has then seen part of it and the connection is cut,
//! as nginx's `client_max_body_size` does once it has started to pass a body on).

use crate::registry::{self, Config, ConfigError, PluginFactory};
use crate::units::ByteSize;
use crate::{Access, ErrorAnswer, Exchange, Flow, Plugin, Stage};
use bytes::Bytes;
use http::StatusCode;
use pingora_http::RequestHeader;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    max_body: ByteSize,
}

/// Refuses request bodies over `max_body` bytes.
pub struct SizeLimit {
    max_body: u64,
}

impl SizeLimit {
    fn too_large(&self) -> Flow {
        Flow::Respond(ErrorAnswer::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is over {} bytes", self.max_body),
        ))
    }
}

impl Plugin for SizeLimit {
    fn name(&self) -> &'static str {
        "request_size_limit"
    }

    fn stage(&self) -> Stage {
        Stage::Admit
    }

    fn access<'a>(&'a self, req: &'a mut RequestHeader, _ex: &'a mut Exchange) -> Access<'a> {
        match crate::request::declared_length(req) {
            Some(length) if length > self.max_body => Access::Now(self.too_large()),
            _ => Access::Now(Flow::Continue),
        }
    }

    fn wants_request_body(&self) -> bool {
        true
    }

    fn request_body(&self, _body: &mut Option<Bytes>, _end: bool, ex: &mut Exchange) -> Flow {
        if ex.request_body_bytes > self.max_body {
            self.too_large()
        } else {
            Flow::Continue
        }
    }
}

pub struct Factory;

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        "request_size_limit"
    }

    fn build(&self, config: &Config) -> Result<Box<dyn Plugin>, ConfigError> {
        let settings: Settings = registry::decode(config)?;
        Ok(Box::new(SizeLimit {
            max_body: settings.max_body.0 as u64,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limit(max: &str) -> Box<dyn Plugin> {
        Factory.build(&json!({ "max_body": max })).unwrap()
    }

    fn exchange() -> Exchange {
        Exchange::new("r".into(), String::new(), "127.0.0.1".parse().unwrap())
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_at_once() {
        let plugin = limit("1KiB");
        for (length, refused) in [("1024", false), ("1025", true), (" 99999 ", true)] {
            let mut req = RequestHeader::build("POST", b"/", None).unwrap();
            req.insert_header("Content-Length", length).unwrap();
            let flow = match plugin.access(&mut req, &mut exchange()) {
                Access::Now(flow) => flow,
                Access::Wait(_) => panic!("never waits"),
            };
            assert_eq!(matches!(flow, Flow::Respond(_)), refused, "{length}");
        }
    }

    #[test]
    fn a_streamed_body_is_refused_at_the_first_piece_past_the_limit() {
        let plugin = limit("10");
        let mut ex = exchange();
        let piece = Bytes::from_static(b"123456");
        ex.request_body_bytes = 6;
        assert!(matches!(
            plugin.request_body(&mut Some(piece.clone()), false, &mut ex),
            Flow::Continue
        ));
        ex.request_body_bytes = 12;
        match plugin.request_body(&mut Some(piece.clone()), false, &mut ex) {
            Flow::Respond(answer) => {
                assert_eq!(answer.status, 413);
                assert_eq!(answer.code, "payload_too_large");
            }
            _ => panic!("not refused"),
        }
    }

    #[test]
    fn the_size_is_checked_when_configured() {
        let err = Factory
            .build(&json!({ "max_body": "a lot" }))
            .err()
            .unwrap();
        assert_eq!(err.field, "max_body");
        assert_eq!(Factory.build(&json!({})).err().unwrap().field, "");
    }
}
